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
* **lanczos**: ``lanczos(order=k)`` with full reorthogonalization vs k times the HVP, in
  both loops: ``loop='lax'`` (one compiled ``fori_loop``) and ``loop='host'`` (a Python
  loop over one jitted iteration); first-call (compile) time per k.
* **power**: 20 iterations of power iteration (tolerance 0, so every side runs all 20):
  ``jaxnorm.diagnostics.power_iteration`` with ``loop='lax'`` (one compiled
  ``while_loop``, no host sync), with ``loop='lax', linearize=True`` (``jax.linearize``
  once, then 20 applications of the linear map in the loop), and with ``loop='host'``
  (one jitted iteration per Python step, the eigenvalue pulled to the host each time) vs
  the PyHessian pattern in PyTorch (``torch.autograd.grad`` with ``create_graph=True``,
  then a second ``autograd.grad`` per iteration, the eigenvalue pulled to the host every
  iteration), same network and parameters (loaded from the jaxnorm model), same batch;
  the eigenvalue estimates are compared (jaxnorm's loops from the same start vector).
* **linearize**: 20 HVPs as separate jitted calls, ``jvp`` of ``grad`` each time, vs 20
  applications of one ``jax.linearize`` (both inside one jitted ``fori_loop`` of 20
  products, so the only difference is the reuse).

Timing: first call apart; then median over ``turns`` calls, the variants in turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.conditioning import REPO, publish, round_robin
from experiments.benchmarks.train_step import CIFAR10, build_torch_model, load_flax_into_torch, machine_info, make_data, optional_import
from jaxnorm.data.augmentation import normalize
from jax.flatten_util import ravel_pytree

from jaxnorm.diagnostics import hessian_loss_fn, hvp, lanczos, power_iteration
from jaxnorm.diagnostics.curvature import curvature_matvec
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
        lz = jax.jit(lambda p, k=k: lanczos(loss, p, k, loop="lax").alphas)
        fns = {f"lanczos k={k} (lax)": lambda: lz(params), f"lanczos k={k} (host)": lambda k=k: lanczos(loss, params, k, loop="host").alphas}
        for out in round_robin(fns, {name: cfg.lanczos_turns for name in fns}, log):
            rows.append({"k": k, "label": out.label, "first_s": out.first_s, "median": out.median, "ratio": out.median / (k * t_hvp)})
    return {"hvp": res, "lanczos": rows, "t_hvp": t_hvp}


def run_linearize(cfg: Settings, log) -> dict:
    """20 products in one jitted fori_loop: recomputed (jvp of grad) vs one linearization reused."""
    module, v, x, y = _setup(cfg.batch)
    loss = hessian_loss_fn(module, v, x, y, bn_mode="batch")
    params = v["params"]
    flat = ravel_pytree(params)[0]
    u0 = jax.random.normal(jax.random.PRNGKey(0), flat.shape)

    def twenty(p, u, reuse):
        matvec = curvature_matvec(loss, p, "hessian")[0]
        if reuse:
            matvec = jax.linearize(matvec, jnp.zeros_like(u))[1]
        return jax.lax.fori_loop(0, POWER_ITERS, lambda i, w: (lambda hw: hw / jnp.linalg.norm(hw))(matvec(w)), u)

    plain = jax.jit(lambda p, u: twenty(p, u, False))
    reused = jax.jit(lambda p, u: twenty(p, u, True))
    fns = {f"{POWER_ITERS} HVPs, jvp of grad each": lambda: plain(params, u0), f"{POWER_ITERS} HVPs, one linearization": lambda: reused(params, u0)}
    log(f"  linearize reuse ({POWER_ITERS} products in one fori_loop), 3c3d bn_gamma_beta, batch {cfg.batch}")
    res = round_robin(fns, {k: cfg.lanczos_turns for k in fns}, log)
    diff = float(jnp.max(jnp.abs(plain(params, u0) - reused(params, u0))))
    return {"results": res, "max_abs_diff": diff}


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
    power = jax.jit(lambda p: power_iteration(loss, p, num_iters=POWER_ITERS, tol=0.0, loop="lax").eigenvalue)
    power_lin = jax.jit(lambda p: power_iteration(loss, p, num_iters=POWER_ITERS, tol=0.0, loop="lax", linearize=True).eigenvalue)
    host = lambda: power_iteration(loss, v["params"], num_iters=POWER_ITERS, tol=0.0, loop="host").eigenvalue
    fns = {"jaxnorm power_iteration (lax)": lambda: power(v["params"]), "jaxnorm power_iteration (lax, linearize)": lambda: power_lin(v["params"]), "jaxnorm power_iteration (host)": host}
    torch = optional_import("torch")
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
    eig_host = float(host())
    if torch is not None:
        eig_t = holder["eig"]
    return {"results": res, "eig_jax": eig_j, "eig_host": eig_host, "eig_torch": eig_t}


def render(info, cfg_name, cfg, hl, pw, lin, elapsed) -> str:
    key = info["key"]
    L = [f"<!-- hessian: {key} -->", f"## Hessian -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.hessian{' --quick' if cfg_name == 'quick' else ''}`; whole run {elapsed / 60:.1f} min; {info['torch'] and 'torch ' + info['torch']}.")
    L.append(f"- 3C3D `bn_gamma_beta`, batch {cfg.batch}, BatchNorm in training mode on both sides; settings {dataclasses.asdict(cfg)}.")
    L.append(f"- Load average (1/5/15 min) at the end: {' / '.join(f'{a:.1f}' for a in os.getloadavg())} ({os.cpu_count()} cores; above the core count other processes shared the CPU).")
    L.append("")
    L.append("| what | median ms | IQR | ratio | first call s |")
    L.append("|---|---:|---:|---:|---:|")
    g = hl["hvp"][0].median
    for t in hl["hvp"]:
        L.append(f"| {t.label} | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / g:.2f}** x gradient | {t.first_s:.1f} |")
    for r in hl["lanczos"]:
        L.append(f"| {r['label']} | {1e3 * r['median']:,.1f} | - | **{r['ratio']:.2f}** x (k HVPs) | {r['first_s']:.1f} |")
    lbase = lin["results"][0].median
    for t in lin["results"]:
        L.append(f"| {t.label} | {1e3 * t.median:,.1f} | - | **{t.median / lbase:.2f}** x recomputed | {t.first_s:.1f} |")
    base = pw["results"][0].median
    for t in pw["results"]:
        L.append(f"| {t.label}, {POWER_ITERS} iterations | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / base:.2f}** x jaxnorm (lax) | {t.first_s:.1f} |")
    L.append("")
    eig_t = pw["eig_torch"]
    L.append(f"Top eigenvalue after {POWER_ITERS} iterations: jaxnorm lax loop {pw['eig_jax']:.6g}, host loop {pw['eig_host']:.6g} (same start vector)" + (f", PyTorch {eig_t:.4g} (a different random start vector)." if eig_t is not None else "; PyTorch not installed."))
    L.append(f"Linearized vs recomputed products after {POWER_ITERS} normalized steps: max |difference| {lin['max_abs_diff']:.1e} (entries of a unit vector).")
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
    lin = run_linearize(cfg, log)
    section = render(info, "quick" if args.quick else "full", cfg, hl, pw, lin, time.time() - t0)
    publish(section, args.out, info["key"], "hessian", log)


if __name__ == "__main__":
    main()
