"""Trace estimators: Hutch++ against Hutchinson at an equal number of curvature products,
both against the exact trace of a dense float64 curvature matrix.

A benchmark, not a test. Writes a section for this machine into BENCHMARKS.md (between
``<!-- trace: <machine> -->`` markers).

    python -m experiments.benchmarks.trace_estimators            # 50 seeds per cell
    python -m experiments.benchmarks.trace_estimators --quick    # 20 seeds per cell
    python -m experiments.benchmarks.trace_estimators --out -

Network and data: an MLP (64-32-32-10, ReLU, 3,466 weights) at initialization on one batch
of 256 scikit-learn digits, float64 throughout (``jax.enable_x64``), so the reference is
exact to rounding: the curvature matrix C is built densely (P products with the unit
vectors) and ``tr(C)`` summed from its diagonal. For each curvature (the Hessian, which is
indefinite; the Gauss-Newton matrix and the empirical Fisher, which are positive
semi-definite: Hutch++'s O(1/m) guarantee is for those) and each budget m of products,
``hutchinson_trace(num_samples=m)`` and ``hutchpp_trace(num_matvecs=m)`` run with
``seeds`` different keys; the table gives the root-mean-square and the median of the
relative error ``|estimate − tr(C)| / |tr(C)|`` over the seeds, and, for Hutchinson, the
RMS the closed form predicts (per-probe variance ``2(‖C‖_F² − Σ C_ii²)`` for Rademacher
probes: a check that the estimator is the textbook one). Both estimators batch m/3 probes
per vectorized product, so they also cost the same number of network passes; the median
time per estimate is reported beside the error.
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

from experiments.benchmarks.conditioning import REPO, publish
from experiments.benchmarks.train_step import machine_info
from jaxnorm.data import load
from jaxnorm.diagnostics import hessian_loss_fn, hutchinson_trace, hutchpp_trace
from jaxnorm.diagnostics.curvature import curvature_matvec
from jaxnorm.models import get_model

CURVATURES = ("hessian", "ggn", "fisher")


@dataclasses.dataclass
class Settings:
    seeds: int
    budgets: tuple = (9, 30, 99, 300)
    batch: int = 256

    @staticmethod
    def full() -> "Settings":
        return Settings(seeds=50)

    @staticmethod
    def quick() -> "Settings":
        return Settings(seeds=20)


def _loss(batch: int):
    data = load("digits", "train")
    x = jnp.asarray(data.images[:batch], jnp.float64)
    y = jnp.asarray(data.labels[:batch])
    module = get_model("mlp", depth=3, width=32, num_classes=10)
    variables = module.init(jax.random.PRNGKey(0), x[:1], train=False)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    return hessian_loss_fn(module, variables, x, y, bn_mode="batch"), variables["params"]


def _dense(loss, params, curvature: str) -> np.ndarray:
    matvec, flat = curvature_matvec(loss, params, curvature)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
    cols = jax.jit(lambda e: jax.lax.map(matvec, e, batch_size=128))(eye)
    c = np.asarray(cols)
    return 0.5 * (c + c.T)  # symmetric to rounding; the estimators see the products themselves


def _timed(fn):
    t = time.perf_counter()
    out = float(jax.block_until_ready(fn()))
    return out, time.perf_counter() - t


def run(cfg: Settings, log) -> list[dict]:
    loss, params = _loss(cfg.batch)
    rows = []
    for curvature in CURVATURES:
        c = _dense(loss, params, curvature)
        exact = float(np.trace(c))
        var_probe = 2.0 * (float(np.sum(c * c)) - float(np.sum(np.diag(c) ** 2)))
        eig = np.linalg.eigvalsh(c)
        log(f"  {curvature}: P = {c.shape[0]}, tr = {exact:.6g}, eigenvalues in [{eig[0]:.3g}, {eig[-1]:.3g}]")
        for m in cfg.budgets:
            k = m // 3
            estimators = {
                "Hutchinson": lambda key, m=m, k=k: hutchinson_trace(loss, params, key=key, num_samples=m, curvature=curvature, probes_per_call=k).estimate,
                "Hutch++": lambda key, m=m, k=k: hutchpp_trace(loss, params, key=key, num_matvecs=m, curvature=curvature, probes_per_call=k).estimate,
            }
            for name, fn in estimators.items():
                fn(jax.random.PRNGKey(10_000))  # first call (tracing, compiling) apart
                errs, secs = [], []
                for s in range(cfg.seeds):
                    est, dt = _timed(lambda: fn(jax.random.PRNGKey(s)))
                    errs.append(abs(est - exact) / abs(exact))
                    secs.append(dt)
                errs = np.asarray(errs)
                row = {
                    "curvature": curvature, "m": m, "estimator": name, "trace": exact,
                    "rms": float(np.sqrt(np.mean(errs**2))), "median": float(np.median(errs)),
                    "predicted_rms": float(np.sqrt(var_probe / m)) / abs(exact) if name == "Hutchinson" else None,
                    "ms": 1e3 * float(np.median(secs)),
                }
                rows.append(row)
                log(f"    m = {m:3d} {name:<10s} rms {row['rms']:.2e}  median {row['median']:.2e}  {row['ms']:.0f} ms")
    return rows


def render(info, cfg_name, cfg, rows, elapsed) -> str:
    key = info["key"]
    L = [f"<!-- trace: {key} -->", f"## Trace estimators: Hutch++ vs Hutchinson -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.trace_estimators{' --quick' if cfg_name == 'quick' else ''}`; whole run {elapsed / 60:.1f} min.")
    L.append(f"- Versions: jax {info['jax']}, flax {info['flax']}; float64; MLP 64-32-32-10 (3,466 weights) at initialization, {cfg.batch} digits, {cfg.seeds} seeds per cell.")
    L.append("- Relative error |estimate − tr(C)| / |tr(C)| against the dense matrix's trace; 'predicted' is Hutchinson's closed-form RMS √(2(‖C‖_F² − Σ C_ii²)/m) / |tr(C)|.")
    L.append(f"- Load average (1/5/15 min) at the end: {' / '.join(f'{a:.1f}' for a in os.getloadavg())} ({os.cpu_count()} cores).")
    L.append("")
    L.append("| curvature | tr(C) | m products | Hutchinson RMS (predicted) | Hutch++ RMS | Hutchinson median | Hutch++ median | RMS ratio | ms Hutchinson / Hutch++ |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    by = {(r["curvature"], r["m"], r["estimator"]): r for r in rows}
    for curvature in CURVATURES:
        for m in cfg.budgets:
            h, pp = by[(curvature, m, "Hutchinson")], by[(curvature, m, "Hutch++")]
            L.append(
                f"| {curvature} | {h['trace']:.4g} | {m} | {h['rms']:.2e} ({h['predicted_rms']:.2e}) | {pp['rms']:.2e} | {h['median']:.2e} | {pp['median']:.2e} "
                f"| **{h['rms'] / pp['rms']:.1f}×** | {h['ms']:.0f} / {pp['ms']:.0f} |"
            )
    L.append("")
    L.append("RMS ratio: Hutchinson's RMS error over Hutch++'s at the same number of products (above 1: Hutch++ is more accurate).")
    L.append(f"<!-- end trace: {key} -->")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    cfg = Settings.quick() if args.quick else Settings.full()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    t0 = time.time()
    with jax.enable_x64(True):
        info = machine_info()
        log(f"trace-estimator benchmark on {info['key']}")
        rows = run(cfg, log)
    section = render(info, "quick" if args.quick else "full", cfg, rows, time.time() - t0)
    publish(section, args.out, info["key"], "trace", log)


if __name__ == "__main__":
    main()
