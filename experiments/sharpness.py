"""Edge of stability (Cohen et al. 2021; source document 003): full-batch gradient descent
on a fixed subset, the Hessian's top eigenvalue (sharpness) against the 2/η line, with
and without BatchNorm.

For each norm and step size η: plain full-batch GD ``w <- w - η ∇L(w)`` on the first
``subset`` training examples (BatchNorm in training mode over the whole subset: the
training objective), and every ``every`` steps the sharpness -- the largest Ritz value of
a ``lanczos_order``-step Lanczos run (``jaxnorm.diagnostics.lanczos``: the top
*algebraic* eigenvalue, which power iteration misses while a negative eigenvalue is
larger in magnitude), started from the previous top Ritz vector. Loss: squared error
against one-hot targets (``'mse'``, as in most of Cohen et al.'s experiments; with
cross-entropy on a problem that is memorized, ``'ce'``, the sharpness collapses as the
loss goes to 0). Cohen et al.: the sharpness rises until it reaches 2/η and then hovers
there while the loss keeps falling non-monotonically -- with and without BN.

    python -m experiments.sharpness                 # digits, tanh MLP, η in (0.05, 0.1, 0.2): ~1.5 min on 2 CPU cores
    python -m experiments.sharpness --quick         # a few steps (tests)
    python -m experiments.sharpness --steps 4000 --step-sizes 0.02 0.05 --loss ce
    python -m experiments.sharpness cifar10_5k      # Cohen et al.'s fc-tanh on 5k CIFAR-10 images (a GPU; CIFAR-10 prepared)

In training, the :class:`jaxnorm.observers.Sharpness` observer records the same
quantity every k steps of any ``fit`` run (minibatch SGD) on a fixed probe set.

Results in ``<results>/sharpness/<config>/``: ``<norm>_lr<η>/`` with ``config.json`` and
``metrics.jsonl`` (lines ``{"kind": "sharpness", "step", "loss", "sharpness"}``; a
``divergence`` line if the loss became non-finite; ``{"kind": "spectrum", "when":
"init"|"end", "top", "outlier_ratio"}``: the top Ritz values and λ_1/λ_k),
``spectrum.npz`` (``init/grid``, ``init/density``, ``init/top``, the same for ``end``: the
spectral density by stochastic Lanczos quadrature); ``plots/density.png`` (the densities
at initialization and at the end, a panel per norm, middle η); ``plots/sharpness.png`` (sharpness
vs step per η with the dashed 2/η lines, a panel per norm; the loss below) and
``plots/summary.md`` (per run: the largest sharpness / (2/η), the median late sharpness
/ (2/η) and the fraction of the late records -- the last half -- within 10% of 2/η).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics import lanczos, outlier_ratio, spectral_density, top_eigenpairs
from jaxnorm.models import get_model
from jaxnorm.objective import cross_entropy
from jaxnorm.results import RunDir, rewrite_jsonl, write_json, write_npz

LOSSES: dict[str, Callable] = {
    "mse": lambda logits, y: 0.5 * jnp.sum(jnp.square(logits - jax.nn.one_hot(y, logits.shape[-1])), axis=-1),
    "ce": cross_entropy,
}


@dataclasses.dataclass(frozen=True)
class SharpnessConfig:
    """One edge-of-stability study.

    Attributes:
      dataset, subset: the fixed training subset (one full batch).
      model, model_kwargs: the network (``norm`` is set per run).
      loss: ``'mse'`` or ``'ce'``.
      norms: the normalizations compared; step_sizes: the GD step sizes η.
      steps: GD steps per run; every: sharpness interval; lanczos_order: Lanczos steps
        per measurement.
      density_order, density_vectors: the spectral density (stochastic Lanczos
        quadrature) at initialization and at the end; outlier_k: the outlier ratio
        λ_1/λ_k (Ghorbani et al. 2019) from the same Lanczos runs.
      divergence_factor: a run has diverged once its loss is non-finite or exceeds this
        multiple of its initial loss (GD past the edge can climb for many steps with a
        finite loss -- on a GPU a run reached 2e31 before any NaN).
      seed: initialization.
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: int = 1000
    model: str = "mlp"
    model_kwargs: dict = dataclasses.field(
        default_factory=lambda: {"depth": 3, "width": 64, "activation": "tanh", "kernel_init": "glorot_normal"}
    )
    loss: str = "mse"
    norms: tuple = ("vanilla", "bn_gamma_beta")
    step_sizes: tuple = (0.05, 0.1, 0.2)
    steps: int = 2000
    every: int = 10
    lanczos_order: int = 20
    density_order: int = 60
    density_vectors: int = 4
    outlier_k: int = 11  # classes + 1: past the ~C outliers of a C-class problem (Papyan 2019)
    divergence_factor: float = 100.0
    seed: int = 0

    def quick(self) -> "SharpnessConfig":
        return dataclasses.replace(self, name=self.name + "-quick", subset=64, steps=20, every=10, step_sizes=self.step_sizes[1:2], lanczos_order=8, density_order=12, density_vectors=2)


#: Studies by name. ``cifar10_5k`` is Cohen et al.'s canonical setting (their Fig. 1: a
#: fully connected tanh network, two hidden layers of 200, MSE, on the first 5,000
#: CIFAR-10 training images) for a GPU; the 2/η lines lie at 200, 100 and 50.
CONFIGS: dict[str, SharpnessConfig] = {
    "digits": SharpnessConfig(),
    "cifar10_5k": SharpnessConfig(
        name="cifar10_5k",
        dataset="cifar10",
        subset=5000,
        model_kwargs={"depth": 3, "width": 200, "activation": "tanh", "kernel_init": "glorot_normal"},
        step_sizes=(0.01, 0.02, 0.04),
        steps=5000,
        every=25,
    ),
}


def run_one(cfg: SharpnessConfig, norm: str, lr: float, root: pathlib.Path, log=print) -> list[dict]:
    """Full-batch GD of one (norm, η); writes and returns its records."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; known: {sorted(LOSSES)}.")
    ds = load(cfg.dataset, "train")
    x = normalize(jnp.asarray(ds.images[: cfg.subset]), ds.mean, ds.std)
    y = jnp.asarray(ds.labels[: cfg.subset])
    module = get_model(cfg.model, norm=norm, num_classes=ds.num_classes, **cfg.model_kwargs)
    variables = module.init(jax.random.PRNGKey(cfg.seed), x[:2], train=False)
    stats = variables.get("batch_stats", {})
    per_example = LOSSES[cfg.loss]

    def loss(params):
        logits, _ = module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(per_example(logits, y))

    @jax.jit
    def gd(params):
        step = lambda _, p: jax.tree.map(lambda w, g: w - lr * g, p, jax.grad(loss)(p))
        return jax.lax.fori_loop(0, cfg.every, step, params)

    @jax.jit
    def measure(params, v0):
        vals, vecs = top_eigenpairs(lanczos(loss, params, cfg.lanczos_order, v0=v0), 1)
        return loss(params), vals[0], vecs[0]

    @jax.jit
    def spectrum(params, key):
        d = spectral_density(loss, params, key=key, order=cfg.density_order, num_vectors=cfg.density_vectors, num_points=400)
        top = jnp.sort(d["nodes"][0])[::-1]  # Ritz values of the first start vector
        return d["grid"], d["density"], top[: cfg.outlier_k]

    run = RunDir(root / f"{norm}_lr{lr:g}")
    run.root.mkdir(parents=True, exist_ok=True)
    write_json(run.config, {**dataclasses.asdict(cfg), "norm": norm, "learning_rate": lr})
    params = variables["params"]
    spectra = {"init": spectrum(params, jax.random.PRNGKey(cfg.seed))}
    v = jnp.ones(sum(a.size for a in jax.tree.leaves(params)), jnp.float32)  # later starts are warm
    records = []
    initial = None
    for step in range(0, cfg.steps + 1, cfg.every):
        if step:
            params = gd(params)
        value, top, v = measure(params, v)
        value, top = float(value), float(top)
        initial = value if initial is None else initial
        if not np.isfinite(value) or value > cfg.divergence_factor * initial:
            what = "non-finite loss" if not np.isfinite(value) else f"loss above {cfg.divergence_factor:g} x its initial {initial:.3g}"
            records.append({"kind": "divergence", "step": step, "reason": f"{what} ({value:.3g}) at step {step}"})
            break
        records.append({"kind": "sharpness", "step": step, "loss": value, "sharpness": top})
    if records[-1]["kind"] != "divergence":
        spectra["end"] = spectrum(params, jax.random.PRNGKey(cfg.seed))
    arrays = {f"{when}/{k}": np.asarray(a) for when, sp in spectra.items() for k, a in zip(("grid", "density", "top"), sp)}
    write_npz(run.root / "spectrum.npz", arrays)
    for when, sp in spectra.items():
        records.append({"kind": "spectrum", "when": when, "top": [float(t) for t in sp[2]], "outlier_ratio": float(outlier_ratio(sp[2], cfg.outlier_k))})
    rewrite_jsonl(run.metrics, records)
    kept = [r for r in records if r["kind"] == "sharpness"]
    s = summarize(kept, lr)
    status = "diverged" if any(r["kind"] == "divergence" for r in records) else f"late sharpness {s['late_median_over_edge']:.2f} x 2/η"
    log(f"  {norm:>14s} η {lr:<5g} 2/η {2 / lr:6.1f}: max sharpness {s['max_over_edge']:.2f} x 2/η, {status}")
    return records


def summarize(records: list[dict], lr: float) -> dict:
    """Largest sharpness, median late sharpness (each / (2/η)), and the fraction of the
    last half of the records within 10% of 2/η (NaN without records)."""
    s = np.array([r["sharpness"] for r in records if r.get("kind") == "sharpness"], np.float64)
    edge = 2.0 / lr
    if not len(s):
        return {"max_over_edge": float("nan"), "late_median_over_edge": float("nan"), "late_within_10pct": float("nan")}
    late = s[len(s) // 2 :]
    return {
        "max_over_edge": float(s.max() / edge),
        "late_median_over_edge": float(np.median(late) / edge),
        "late_within_10pct": float(np.mean(np.abs(late - edge) <= 0.1 * edge)),
    }


def write_report(root: pathlib.Path, cfg: SharpnessConfig, results: dict) -> None:
    """``plots/sharpness.png`` and ``plots/summary.md`` from the runs' records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, len(cfg.norms), figsize=(6 * len(cfg.norms), 7), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, norm in enumerate(cfg.norms):
        top = 0.0
        for i, lr in enumerate(cfg.step_sizes):
            recs = [r for r in results.get((norm, lr), []) if r["kind"] == "sharpness"]
            c = colors[i % len(colors)]
            steps = [r["step"] for r in recs]
            axes[0, j].plot(steps, [r["sharpness"] for r in recs], color=c, label=f"η = {lr:g}")
            axes[0, j].axhline(2 / lr, color=c, ls="--", lw=1)
            axes[1, j].plot(steps, [r["loss"] for r in recs], color=c)
            # The axis covers the edges; a diverging run's sharpness (up to 1e10) would flatten the rest.
            top = max([top, 2.4 / lr] + [min(r["sharpness"], 3.0 * 2 / lr) for r in recs])
        axes[0, j].set_ylim(0, top)
        axes[0, j].set_title(f"{norm}: sharpness (top Hessian eigenvalue); dashed: 2/η", fontsize=10)
        axes[0, j].legend(fontsize=8)
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("full-batch GD step")
    axes[0, 0].set_ylabel("sharpness")
    axes[1, 0].set_ylabel(f"training loss ({cfg.loss})")
    fig.tight_layout()
    fig.savefig(plots / "sharpness.png", dpi=110)
    plt.close(fig)
    _plot_densities(plt, root, cfg)
    lines = [
        f"# Edge of stability: {cfg.name}",
        "",
        f"Full-batch GD on {cfg.subset} examples of {cfg.dataset}, {cfg.model} {json.dumps(cfg.model_kwargs)}, "
        f"{cfg.loss} loss, {cfg.steps} steps; sharpness every {cfg.every} steps (largest Ritz value of {cfg.lanczos_order} "
        "warm-started Lanczos steps). Late = the last half of the records.",
        "",
        f"| norm | η | 2/η | max sharpness / (2/η) | late median / (2/η) | late within 10% of 2/η | final loss | λ1/λ{cfg.outlier_k} init | λ1/λ{cfg.outlier_k} end | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (norm, lr), recs in results.items():
        s = summarize(recs, lr)
        kept = [r for r in recs if r["kind"] == "sharpness"]
        status = "diverged" if any(r["kind"] == "divergence" for r in recs) else "finished"
        ratio = {r["when"]: r["outlier_ratio"] for r in recs if r["kind"] == "spectrum"}
        fmt = lambda w: f"{ratio[w]:.1f}" if w in ratio else "-"
        final = f"{kept[-1]['loss']:.4g}" if kept else "-"
        # A diverged run has no late phase to speak of.
        late = ("-", "-") if status == "diverged" else (f"{s['late_median_over_edge']:.2f}", f"{s['late_within_10pct']:.0%}")
        lines.append(
            f"| {norm} | {lr:g} | {2 / lr:.1f} | {s['max_over_edge']:.3g} | {late[0]} | "
            f"{late[1]} | {final} | {fmt('init')} | {fmt('end')} | {status} |"
        )
    (plots / "summary.md").write_text("\n".join(lines) + "\n")


def _plot_densities(plt, root: pathlib.Path, cfg: SharpnessConfig) -> None:
    """``plots/density.png``: the Hessian's spectral density at initialization and at the
    end, a panel per norm, for the middle step size (Ghorbani et al. 2019, Fig. 1 style)."""
    from jaxnorm.results import read_npz

    lr = cfg.step_sizes[len(cfg.step_sizes) // 2]
    fig, axes = plt.subplots(1, len(cfg.norms), figsize=(6 * len(cfg.norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], cfg.norms):
        path = root / f"{norm}_lr{lr:g}" / "spectrum.npz"
        arrays = read_npz(path) if path.exists() else {}
        for when, style in (("init", "--"), ("end", "-")):
            if f"{when}/grid" in arrays:
                ax.semilogy(arrays[f"{when}/grid"], np.maximum(arrays[f"{when}/density"], 1e-8), style, label=when)
        ax.set_title(f"{norm}, η = {lr:g}: Hessian spectral density (SLQ)", fontsize=10)
        ax.set_xlabel("eigenvalue")
        ax.set_ylim(1e-6, None)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "plots" / "density.png", dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="digits", choices=sorted(CONFIGS), help="the study (default: digits)")
    p.add_argument("--quick", action="store_true", help="a few steps on a small subset (tests)")
    p.add_argument("--steps", type=int, help="GD steps per run")
    p.add_argument("--step-sizes", type=float, nargs="+", help="the step sizes η")
    p.add_argument("--loss", choices=sorted(LOSSES), help="mse (default) or ce")
    p.add_argument("--results", default="results", help="results folder")
    args = p.parse_args(argv)
    cfg = CONFIGS[args.config]
    changes = {k: v for k, v in {"steps": args.steps, "loss": args.loss}.items() if v is not None}
    if args.step_sizes:
        changes["step_sizes"] = tuple(args.step_sizes)
    cfg = dataclasses.replace(cfg, **changes)
    if args.quick:
        cfg = cfg.quick()
    root = pathlib.Path(args.results) / "sharpness" / cfg.name
    t0 = time.time()
    results = {(n, lr): run_one(cfg, n, lr, root) for n in cfg.norms for lr in cfg.step_sizes}
    write_report(root, cfg, results)
    print(f"done in {time.time() - t0:.1f} s; plots and summary.md in {root / 'plots'}")


if __name__ == "__main__":
    main()
