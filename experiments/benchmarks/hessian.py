"""Hessian benchmark: HVP vs gradient, Lanczos vs k HVPs (and its compile time), and the
top eigenvalue against a PyHessian-style PyTorch power iteration.

A benchmark, not a test. Writes a section for this machine into BENCHMARKS.md (between
``<!-- hessian: <machine> -->`` markers).

    python -m experiments.benchmarks.hessian            # full settings (meant for a GPU)
    python -m experiments.benchmarks.hessian --quick    # a few minutes on a 2-core CPU
    python -m experiments.benchmarks.hessian --quick --out -

All on 3C3D ``bn_gamma_beta`` (10 classes), one batch of synthetic CIFAR-shaped data,
BatchNorm in training mode (batch statistics, differentiated through) on both sides:

* **hvp**: ``jax.grad`` of the batch loss vs ``jaxnorm.diagnostics.hvp`` (forward-over-reverse).
* **lanczos**: ``lanczos(order=k)`` (one compiled ``fori_loop`` with full
  reorthogonalization) vs k times the HVP; first-call (compile) time per k.
* **power**: 20 iterations of power iteration (tolerance 0, so both sides run all 20):
  ``jaxnorm.diagnostics.power_iteration`` (one compiled ``while_loop``, no host sync) vs
  the PyHessian pattern in PyTorch (``torch.autograd.grad`` with ``create_graph=True``,
  then a second ``autograd.grad`` per iteration, the eigenvalue pulled to the host every
  iteration), same network and parameters (loaded from the jaxnorm model), same batch;
  the two eigenvalue estimates are compared.

Timing: first call apart; then median over ``turns`` calls, the variants in turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.conditioning import REPO, round_robin, write_section
from experiments.benchmarks.train_step import CIFAR10, _torch, build_torch_model, load_flax_into_torch, machine_info, make_data
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics import hessian_loss_fn, hvp, lanczos, power_iteration
from jaxnorm.models import get_model

POWER_ITERS = 20


@dataclasses.dataclass
class Settings:
    batch: int
    turns: int
    orders: tuple
    lanczos_turns: int

    @staticmethod
    def full() -> "Settings":
        return Settings(batch=128, turns=20, orders=(10, 30, 90), lanczos_turns=3)

    @staticmethod
    def quick() -> "Settings":
        return Settings(batch=32, turns=5, orders=(10, 30), lanczos_turns=1)


def _setup(batch):
    images, labels, _ = make_data(max(batch, 64), 10)
    module = get_model("3c3d", norm="bn_gamma_beta", num_classes=10)
    x = normalize(jnp.asarray(images[:batch]), *CIFAR10)
    y = jnp.asarray(labels[:batch])
    variables = module.init(jax.random.PRNGKey(0), x[:1], train=False)
    return module, variables, x, y


def run_hvp_lanczos(cfg: Settings, log) -> dict:
    module, v, x, y = _setup(cfg.batch)
    loss = hessian_loss_fn(module, v, x, y, bn_mode="batch")
    params = v["params"]
    ones = jax.tree.map(jnp.ones_like, params)
    grad = jax.jit(jax.grad(loss))
    hv = jax.jit(lambda p, u: hvp(loss, p, u))
    fns = {"gradient": lambda: grad(params), "hvp": lambda: hv(params, ones)}
    log(f"  hvp vs gradient, 3c3d bn_gamma_beta, batch {cfg.batch}")
    res = round_robin(fns, {k: cfg.turns for k in fns}, log)
    t_hvp = res[1].median
    rows = []
    for k in cfg.orders:
        lz = jax.jit(lambda p, k=k: lanczos(loss, p, k).alphas)
        out = round_robin({f"lanczos k={k}": lambda: lz(params)}, {f"lanczos k={k}": cfg.lanczos_turns}, log)[0]
        rows.append({"k": k, "first_s": out.first_s, "median": out.median, "ratio": out.median / (k * t_hvp)})
    return {"hvp": res, "lanczos": rows, "t_hvp": t_hvp}


def _torch_power(tmodel, torch, xt, yt, iters: int):
    """PyHessian's pattern: gradients with a graph once, then one double-backward per
    iteration, the Rayleigh quotient pulled to the host each time."""
    params = [p for p in tmodel.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(tmodel(xt), yt)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((a * a).sum() for a in v))
    v = [a / norm for a in v]
    eig = None
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum((a * b).sum() for a, b in zip(hv, v)).item()  # host sync, as PyHessian
        norm = torch.sqrt(sum((a * a).sum() for a in hv))
        v = [a / norm for a in hv]
    return eig


def run_power(cfg: Settings, log) -> dict:
    module, v, x, y = _setup(cfg.batch)
    loss = hessian_loss_fn(module, v, x, y, bn_mode="batch")
    power = jax.jit(lambda p: power_iteration(loss, p, num_iters=POWER_ITERS, tol=0.0).eigenvalue)
    fns = {"jaxnorm power_iteration": lambda: power(v["params"])}
    torch = _torch()
    eig_t = None
    if torch is not None:
        tmodel = build_torch_model("3c3d", "bn_gamma_beta", 10, dropout=False)
        load_flax_into_torch(tmodel, v, "3c3d")
        # The same device as JAX: on a GPU machine torch runs on CUDA (its per-iteration
        # .item() is the host sync PyHessian does, so no extra synchronize is needed).
        dev = torch.device("cuda" if (torch.cuda.is_available() and jax.default_backend() == "gpu") else "cpu")
        tmodel.train().to(dev)
        xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(dev)
        yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(dev)
        torch.manual_seed(0)
        holder = {}

        def run_torch():
            holder["eig"] = _torch_power(tmodel, torch, xt, yt, POWER_ITERS)
            return jnp.zeros(())

        fns["torch PyHessian-style"] = run_torch
    log(f"  power iteration ({POWER_ITERS} iterations), 3c3d bn_gamma_beta, batch {cfg.batch}")
    res = round_robin(fns, {k: cfg.turns for k in fns}, log)
    eig_j = float(power(v["params"]))
    if torch is not None:
        eig_t = holder["eig"]
    return {"results": res, "eig_jax": eig_j, "eig_torch": eig_t}


def render(info, cfg_name, cfg, hl, pw, elapsed) -> str:
    key = info["key"]
    L = [f"<!-- hessian: {key} -->", f"## Hessian -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.hessian{' --quick' if cfg_name == 'quick' else ''}`; whole run {elapsed / 60:.1f} min; {info['torch'] and 'torch ' + info['torch']}.")
    L.append(f"- 3C3D `bn_gamma_beta`, batch {cfg.batch}, BatchNorm in training mode on both sides; settings {dataclasses.asdict(cfg)}.")
    L.append("")
    L.append("| what | median ms | IQR | ratio | first call s |")
    L.append("|---|---:|---:|---:|---:|")
    g = hl["hvp"][0].median
    for t in hl["hvp"]:
        L.append(f"| {t.label} | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / g:.2f}** x gradient | {t.first_s:.1f} |")
    for r in hl["lanczos"]:
        L.append(f"| lanczos k={r['k']} | {1e3 * r['median']:,.1f} | - | **{r['ratio']:.2f}** x (k HVPs) | {r['first_s']:.1f} |")
    base = pw["results"][0].median
    for t in pw["results"]:
        L.append(f"| {t.label}, {POWER_ITERS} iterations | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / base:.2f}** x jaxnorm | {t.first_s:.1f} |")
    L.append("")
    eig_t = pw["eig_torch"]
    L.append(f"Top eigenvalue after {POWER_ITERS} iterations: jaxnorm {pw['eig_jax']:.4g}" + (f", PyTorch {eig_t:.4g} (different random start vectors)." if eig_t is not None else "; PyTorch not installed."))
    L.append(f"<!-- end hessian: {key} -->")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    cfg = Settings.quick() if args.quick else Settings.full()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    t0 = time.time()
    info = machine_info()
    hl = run_hvp_lanczos(cfg, log)
    pw = run_power(cfg, log)
    section = render(info, "quick" if args.quick else "full", cfg, hl, pw, time.time() - t0)
    if args.out == "-":
        print(section)
    else:
        write_section(Path(args.out), section, info["key"], marker="hessian")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
