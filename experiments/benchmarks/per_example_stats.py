"""Per-example statistics benchmark: materialized per-example gradients vs the layer-wise path.

A benchmark, not a test. Writes a markdown section for this machine into BENCHMARKS.md
(between ``<!-- per_example_stats: <machine> -->`` markers; other sections stay).

    python -m experiments.benchmarks.per_example_stats            # full settings
    python -m experiments.benchmarks.per_example_stats --quick    # a few minutes on a 2-core CPU
    python -m experiments.benchmarks.per_example_stats --quick --out -   # print only

What is measured, batch 128 of synthetic CIFAR-shaped data (32x32x3, 10 classes), for
3C3D ``bn_gamma_beta`` and an 11-layer ``deep_fc`` (width 256) with BN (the
conditioning benchmark's two nets), BN in ``frozen`` mode:

* one batch gradient (``jax.grad`` of the training-mode mean loss, what a train step
  differentiates): the unit of the ratio column. The materialized variants are timed in
  a group of their own, with their own batch gradient: each call allocates and frees
  ``b × P`` floats, which slowed the next variant in the same round robin by up to 10x;
* ``per_example_sq_norms`` and ``per_example_gram`` with ``method='materialize'`` (the
  per-example gradients of the whole batch at once, then reduced) and with
  ``method='layerwise'`` (:mod:`jaxnorm.diagnostics.layerwise`: each layer's inputs and
  output gradients from one batch backward pass);
* ``per_example_statistics`` (squared norms, Gram, per-coordinate second moment and mean
  in one pass), layer-wise;
* where ``torch`` and ``backpack-for-pytorch`` import: BackPACK's ``BatchL2Grad`` (the
  per-example squared norms) on the same network in PyTorch, BN in eval mode (BackPACK
  refuses a BatchNorm in training mode), against a plain PyTorch batch gradient of the
  same network: its own ratio. For 3C3D the two frameworks' squared norms are compared
  on the same weights (``running`` mode, summed loss) as a parity check.

Before timing, every layer-wise result is compared with the materialized one (max error
relative to the scale, printed and reported).

Timing: each variant's first call (trace + compile + one run) is reported apart; then the
variants are timed in turns (round robin, one call each per turn) so machine load hits
them alike; median and interquartile range over the turns.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.conditioning import publish, round_robin
from experiments.benchmarks.train_step import CIFAR10, build_torch_model, load_average, load_flax_into_torch, machine_info, make_data, optional_import
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics import batch_loss_fn, num_coordinates, per_example_gram, per_example_sq_norms, per_example_statistics
from jaxnorm.diagnostics.layerwise import layer_plan
from jaxnorm.models import get_model

REPO = Path(__file__).resolve().parents[2]
CLASSES = 10
# (label, model, options)
MODELS = (
    ("3c3d bn_gamma_beta", "3c3d", {"norm": "bn_gamma_beta"}),
    ("deep_fc d11 w256 bn_gamma_beta", "deep_fc", {"norm": "bn_gamma_beta", "depth": 11, "width": 256}),
)
MODE = "frozen"


@dataclasses.dataclass
class Settings:
    batch: int
    turns: int  # timed calls per variant
    num_examples: int

    @staticmethod
    def full() -> "Settings":
        return Settings(batch=128, turns=20, num_examples=1_000)

    @staticmethod
    def quick() -> "Settings":
        return Settings(batch=128, turns=3, num_examples=256)


def _torch_deep_fc(depth: int, width: int, num_classes: int):
    """deep_fc in PyTorch: Linear(bias=False) -> BatchNorm1d -> ReLU for every hidden layer,
    a plain Linear head (jaxnorm's deep_fc with bn_gamma_beta; orthogonal init)."""
    torch = optional_import("torch")
    tnn = torch.nn
    layers, fin = [tnn.Flatten()], 32 * 32 * 3
    for _ in range(depth - 1):
        layers += [tnn.Linear(fin, width, bias=False), tnn.BatchNorm1d(width, eps=1e-5, momentum=0.1), tnn.ReLU()]
        fin = width
    layers.append(tnn.Linear(fin, num_classes))
    net = tnn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, tnn.Linear):
            tnn.init.orthogonal_(m.weight)
    return net


def torch_variants(model: str, options: dict, x: np.ndarray, y: np.ndarray, variables) -> tuple[dict, Optional[float]]:
    """``({label: fn}, parity)``: PyTorch's batch gradient and BackPACK's BatchL2Grad, and
    for 3C3D the max relative difference of BackPACK's squared norms from jaxnorm's
    (running mode, same weights). Empty where torch/BackPACK do not import."""
    torch, backpack = optional_import("torch"), optional_import("backpack")
    if torch is None or backpack is None:
        return {}, None
    from backpack import extend
    from backpack.extensions import BatchL2Grad

    if model == "3c3d":
        plain_net = build_torch_model("3c3d", "bn_gamma_beta", CLASSES)
        load_flax_into_torch(plain_net, variables, "3c3d")
    else:
        plain_net = _torch_deep_fc(options["depth"], options["width"], CLASSES)
    plain_net.eval()  # eval-mode BN: BackPACK refuses train-mode BatchNorm
    # The baseline is a copy without BackPACK's hooks (extend() hooks every forward).
    net = extend(copy.deepcopy(plain_net))
    plain_loss = torch.nn.CrossEntropyLoss(reduction="sum")
    loss_fn = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ty = torch.from_numpy(y.astype(np.int64))
    # BackPACK's hooks fire on module outputs (the input needs no gradient): expected.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    def plain():
        plain_net.zero_grad()
        plain_loss(plain_net(tx), ty).backward()
        return [p.grad for p in plain_net.parameters()]

    def l2():
        net.zero_grad()
        with backpack.backpack(BatchL2Grad()):
            loss_fn(net(tx), ty).backward()
        return sum(p.batch_l2 for p in net.parameters())

    parity = None
    if model == "3c3d":
        module = get_model(model, num_classes=CLASSES, **options)
        ours = np.asarray(per_example_sq_norms(module, variables, jnp.asarray(x), jnp.asarray(y), bn_mode="running"), np.float64)
        theirs = l2().detach().numpy().astype(np.float64)
        parity = float(np.abs(ours - theirs).max() / np.abs(ours).max())
    return {"torch batch gradient": plain, "BackPACK BatchL2Grad (eval BN)": l2}, parity


def run_model(cfg: Settings, log, label: str, model: str, options: dict) -> dict:
    images, labels, _ = make_data(cfg.num_examples, CLASSES)
    module = get_model(model, num_classes=CLASSES, **options)
    x = normalize(jnp.asarray(images[: cfg.batch]), *CIFAR10)
    y = jnp.asarray(labels[: cfg.batch])
    v = module.init(jax.random.PRNGKey(0), x[:1], train=False)
    P = num_coordinates(v["params"])
    kw = dict(bn_mode=MODE)
    jit = lambda f: jax.jit(lambda v, x, y: f(v, x, y))
    fns_jax: dict[str, Callable] = {
        "batch gradient": jit(lambda v, x, y: jax.grad(batch_loss_fn(module, v, x, y, bn_mode="batch"))(v["params"])),
        "sq_norms materialize": jit(lambda v, x, y: per_example_sq_norms(module, v, x, y, method="materialize", **kw)),
        "gram materialize": jit(lambda v, x, y: per_example_gram(module, v, x, y, method="materialize", **kw)),
        "sq_norms layerwise": jit(lambda v, x, y: per_example_sq_norms(module, v, x, y, method="layerwise", **kw)),
        "gram layerwise": jit(lambda v, x, y: per_example_gram(module, v, x, y, method="layerwise", **kw)),
        "all four statistics layerwise": jit(lambda v, x, y: per_example_statistics(module, v, x, y, method="layerwise", **kw)),
    }
    log(f"  {label}, batch {cfg.batch}, {P:,} parameters, BN {MODE} (load {load_average()})")
    fns = {k: (lambda f=f: f(v, x, y)) for k, f in fns_jax.items()}
    torch_fns, parity = torch_variants(model, options, np.asarray(x), np.asarray(y), jax.device_get(v))
    if parity is not None:
        log(f"    BackPACK vs jaxnorm squared norms (running mode), max error / scale: {parity:.2e}")
    fns.update(torch_fns)
    # Two groups, each with its own batch gradient: the materialized variants allocate and
    # free b x P floats per call, which (page faults, allocator) slows whatever runs next.
    materialized = ("sq_norms materialize", "gram materialize")
    res = []
    for group in ([k for k in fns if k not in materialized], ["batch gradient", *materialized]):
        log(f"    group: {', '.join(group)}")
        part = round_robin({k: fns[k] for k in group}, {k: cfg.turns for k in group}, log)
        if res:
            part[0].label = "batch gradient (with the materialized group)"
        res += part
    checks = {}  # after the timing, so that the first calls above include compilation
    for what in ("sq_norms", "gram"):
        a = np.asarray(fns_jax[f"{what} layerwise"](v, x, y), np.float64)
        b = np.asarray(fns_jax[f"{what} materialize"](v, x, y), np.float64)
        checks[what] = float(np.abs(a - b).max() / np.abs(b).max())
    log(f"    layerwise vs materialize, max error / scale: {checks}")
    plan = layer_plan(module, v, x)
    return {
        "label": label, "results": res, "params": P, "batch": cfg.batch, "checks": checks, "parity": parity,
        "torch": bool(torch_fns), "plan": plan, "load": load_average(),
    }


def render(info, cfg_name, cfg: Settings, runs: list, elapsed: float) -> str:
    key = info["key"]
    L = [f"<!-- per_example_stats: {key} -->", f"## Per-example statistics -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.per_example_stats{' --quick' if cfg_name == 'quick' else ''}` ({cfg_name} settings); whole run {elapsed / 60:.1f} min.")
    L.append(f"- Versions: jax {info['jax']}, flax {info['flax']}, torch {info['torch']}; devices {', '.join(info['devices'])}.")
    L.append(f"- Settings: {dataclasses.asdict(cfg)}; BN mode `{MODE}` (BackPACK: eval-mode BN).")
    L.append("")
    for r in runs:
        L.append(f"### {r['label']}, batch {r['batch']}, {r['params']:,} parameters")
        L.append("")
        L.append("| what | calls | median ms | IQR | x batch gradient (same framework) | first call s |")
        L.append("|---|---:|---:|---:|---:|---:|")
        base = {}
        for t in r["results"]:
            if t.label == "torch batch gradient":
                base["torch"] = t.median
        for t in r["results"]:
            if t.label.startswith("batch gradient"):
                base["jax"] = t.median  # each group's rows follow its own batch gradient
            unit = base["torch"] if t.label.startswith(("torch", "BackPACK")) else base["jax"]
            L.append(f"| {t.label} | {len(t.times)} | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / unit:.2f}** | {t.first_s:.1f} |")
        L.append("")
        med = {t.label: t.median for t in r["results"]}
        for what in ("sq_norms", "gram"):
            L.append(f"- `{what}`: layer-wise **{med[f'{what} materialize'] / med[f'{what} layerwise']:.1f}x** faster than materialized; max difference / scale {r['checks'][what]:.1e}.")
        if r["parity"] is not None:
            L.append(f"- BackPACK's squared norms vs jaxnorm's on the same weights (running mode): max difference / scale {r['parity']:.1e}.")
        if not r["torch"]:
            L.append("- torch / backpack-for-pytorch not importable here: no BackPACK rows.")
        plan = ", ".join(f"{p}: {h}" for p, h in r["plan"])
        L.append(f"- Layer plan (all four statistics): {plan}.")
        L.append(f"- Load average at the end: {r['load']}.")
        L.append("")
    L.append(f"<!-- end per_example_stats: {key} -->")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="settings for a small CPU")
    p.add_argument("--models", default=",".join(m[1] for m in MODELS), help="comma-separated subset of: 3c3d, deep_fc")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    cfg = Settings.quick() if args.quick else Settings.full()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    t0 = time.time()
    info = machine_info()
    log(f"per-example statistics benchmark on {info['key']}")
    chosen = set(args.models.split(","))
    runs = [run_model(cfg, log, *m) for m in MODELS if m[1] in chosen]
    section = render(info, "quick" if args.quick else "full", cfg, runs, time.time() - t0)
    publish(section, args.out, info["key"], "per_example_stats", log)


if __name__ == "__main__":
    main()
