"""The edge-of-stability study's analysis (``experiments/sharpness.py``), from stored files.

Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of
Stability" (2021): under full-batch gradient descent with step size η the sharpness
(the training loss's top Hessian eigenvalue) rises until it reaches 2/η and then hovers
there. Per run this module reads

* ``config.json`` (``norm``, ``learning_rate``, ``seed``), ``status.json``;
* ``metrics.jsonl``: the ``sharpness`` lines of :class:`jaxnorm.observers.Sharpness`
  (``step``, ``sharpness``, ``loss`` at the measured weights), the ``train`` lines (the
  full-batch loss of every step) and a ``divergence`` line if the run diverged;
* ``trajectories.npz``: the :class:`jaxnorm.observers.spectrum.SpectralDensity`
  records (``spectrum/steps``, ``/grid``, ``/density``, ``/nodes``) at initialization
  and at the end;

and the study's ``study.json`` (the setup as trained), and writes ``plots/sharpness.png``
(sharpness vs step per η with the dashed 2/η lines, a panel per norm; the loss below),
``plots/density.png`` (the densities at initialization and at the end, middle η) and
``plots/summary.md`` (:func:`summarize` and :func:`outlier_ratio` per run).

Never imports the trainer: everything comes from the run folders.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot
from jaxnorm.analysis.runs import Run, find_runs, variant_order
from jaxnorm.results import read_json

#: The outlier ratio λ_1/λ_k is reported only when the Lanczos order is at least
#: ``k + OUTLIER_MARGIN``. The k-th largest Ritz value θ_k is at most λ_k (Cauchy
#: interlacing) and approaches it only once the order is well above k, the later the
#: denser the top of the spectrum. Measured on the digits study at initialization (MLP
#: 64-64-64, 1000 examples, MSE; one start vector), θ_11 against order 12/16/22/31/40/45/
#: 50/60/120: without BN -4.4/2.9/10.29/10.29/... (converged from order 22 on); with BN
#: (train mode, a flat top) -10.2/-1.3/5.3/11.5/13.9/14.42/14.791/14.794/14.794 -- 2.5%
#: low at order 45, converged at 50 = k + 39. Hence the margin 40; the old quick mode's
#: order 12 gave ratios of -7 and 1170.
OUTLIER_MARGIN = 40


def summarize(sharpness: Sequence[float], learning_rate: float) -> dict[str, float]:
    """Edge-of-stability statistics of one run's sharpness series (in step order).

    Returns ``max_over_edge`` (largest sharpness / (2/η)), ``late_median_over_edge``
    (the median of the last half of the series / (2/η)) and ``late_within_10pct`` (the
    fraction of the last half within 10% of 2/η); NaN each for an empty series.

    Raises:
      ValueError: a learning rate that is not > 0.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    s = np.asarray(sharpness, np.float64)
    edge = 2.0 / learning_rate
    if not s.size:
        return {"max_over_edge": math.nan, "late_median_over_edge": math.nan, "late_within_10pct": math.nan}
    late = s[s.size // 2 :]
    return {
        "max_over_edge": float(s.max() / edge),
        "late_median_over_edge": float(np.median(late) / edge),
        "late_within_10pct": float(np.mean(np.abs(late - edge) <= 0.1 * edge)),
    }


def outlier_ratio(nodes: np.ndarray, k: int, margin: int = OUTLIER_MARGIN) -> Optional[float]:
    """λ_1/λ_k (Ghorbani et al. 2019, "An Investigation into Neural Net Optimization via
    Hessian Eigenvalue Density") from the Ritz values ``nodes (order,)`` of one Lanczos
    run: the largest over the k-th largest. None (n/a) when ``order < k + margin``: the
    k-th Ritz value of a short run does not estimate λ_k (see :data:`OUTLIER_MARGIN`).

    Raises:
      ValueError: ``k`` < 2 or ``nodes`` not one-dimensional.
    """
    nodes = np.asarray(nodes, np.float64)
    if k < 2:
        raise ValueError(f"outlier ratio needs k >= 2, got {k}.")
    if nodes.ndim != 1:
        raise ValueError(f"nodes must be the Ritz values of one Lanczos run (1-d), got shape {nodes.shape}.")
    if nodes.size < k + margin:
        return None
    top = np.sort(nodes)[::-1]
    return float(top[0] / top[k - 1])


def sharpness_series(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, sharpness, loss)`` of the run's ``sharpness`` lines, by step."""
    lines = sorted((m for m in run.metrics if m.get("kind") == "sharpness"), key=lambda m: m["step"])
    return (
        np.array([m["step"] for m in lines], np.int64),
        np.array([m["sharpness"] for m in lines], np.float64),
        np.array([m["loss"] for m in lines], np.float64),
    )


def loss_series(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, loss)`` of the ``train`` lines (full batch: the loss before each step)."""
    lines = sorted((m for m in run.metrics if m.get("kind") == "train"), key=lambda m: m["step"])
    return np.array([m["step"] for m in lines], np.int64), np.array([m["loss"] for m in lines], np.float64)


def spectra(run: Run, final_step: int) -> dict[str, dict[str, np.ndarray]]:
    """``{'init': {...}, 'end': {...}}``: the density records at step 0 and at
    ``final_step`` (absent when not recorded, e.g. 'end' of a diverged run); each with
    ``grid``, ``density``, ``nodes``."""
    t = run.trajectories
    if "spectrum/steps" not in t:
        return {}
    steps = list(np.asarray(t["spectrum/steps"]).tolist())
    out = {}
    for when, step in (("init", 0), ("end", final_step)):
        if step in steps and "spectrum/grid" in t:
            i = steps.index(step)
            out[when] = {k: np.asarray(t[f"spectrum/{k}"][i]) for k in ("grid", "density", "nodes")}
    return out


def run_row(run: Run, setup: dict) -> dict:
    """Everything the summary says about one run."""
    lr, k = float(run.lr), int(setup["outlier_k"])
    steps, sharp, loss = sharpness_series(run)
    div = run.divergence
    sp = spectra(run, int(setup["steps"]))
    ratios = {when: outlier_ratio(s["nodes"][0], k) for when, s in sp.items()}
    return {
        "norm": run.base_variant,
        "lr": lr,
        "seed": run.seed,
        "steps": steps,
        "sharpness": sharp,
        "loss": loss,
        "diverged": run.diverged,
        "divergence_step": div.get("step") if div else None,
        "final_loss": float(loss[-1]) if loss.size else math.nan,
        "ratios": ratios,
        "spectra": sp,
        **summarize(sharp, lr),
    }


def load_setup(root: pathlib.Path) -> dict:
    """The setup as trained (``study.json``)."""
    path = pathlib.Path(root) / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"no study.json under {root}: nothing trained there yet (run without --plot-only).")
    return read_json(path)["setup"]


def analyze(root) -> str:
    """Writes ``root/plots/{sharpness,density}.png`` and ``summary.md``; returns the
    verdict line.

    Raises:
      FileNotFoundError: no ``study.json`` under ``root``.
      ValueError: no stored runs under ``root``.
    """
    root = pathlib.Path(root)
    setup = load_setup(root)
    runs = [r for r in find_runs(root) if r.lr is not None]
    if not runs:
        raise ValueError(f"no stored runs under {root}")
    rows = [run_row(r, setup) for r in runs]
    norms = variant_order(r["norm"] for r in rows)
    rows.sort(key=lambda r: (norms.index(r["norm"]), r["lr"], r["seed"]))
    plots = fresh_report_dir(root / "plots")
    plt = pyplot()
    _plot_sharpness(plt, plots / "sharpness.png", rows, norms, runs, setup)
    _plot_densities(plt, plots / "density.png", rows, norms)
    (plots / "summary.md").write_text(summary_markdown(rows, setup))
    return verdict(rows)


def verdict(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        what = f"diverged at step {r['divergence_step']}" if r["diverged"] else f"{r['late_median_over_edge']:.2f}"
        seed = "" if len({q["seed"] for q in rows}) == 1 else f" seed {r['seed']}"
        parts.append(f"{r['norm']} η={r['lr']:g}{seed}: {what}")
    return "late median sharpness / (2/η): " + "; ".join(parts)


def _fmt_ratio(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def summary_markdown(rows: list[dict], setup: dict) -> str:
    k, margin = int(setup["outlier_k"]), OUTLIER_MARGIN
    lines = [
        f"# Edge of stability: {setup['name']}",
        "",
        f"Full-batch GD (Cohen et al. 2021) on the first {setup['subset']} training examples of {setup['dataset']}, "
        f"{setup['model']} {json.dumps(setup['model_kwargs'])}, {setup['loss']} loss, {setup['steps']} steps; sharpness "
        f"every {setup['every']} steps (the largest Ritz value of {setup['lanczos_order']} warm-started Lanczos steps, "
        "BN on the full batch's statistics, as trained). Late = the last half of the sharpness records. A run has "
        f"diverged when its loss left {setup['divergence_factor']:g} x its first step's loss (or became non-finite).",
        "",
        f"λ1/λ{k}: the outlier ratio (Ghorbani et al. 2019) from the Ritz values of the first of "
        f"{setup['density_vectors']} stochastic Lanczos quadrature runs of order {setup['density_order']}, at "
        f"initialization and at the end; n/a when the order is below {k} + {margin}: a short run's Ritz value θ{k} "
        f"lies below λ{k} (Cauchy interlacing) and does not estimate it.",
        "",
        f"| norm | η | seed | 2/η | max sharpness / (2/η) | late median / (2/η) | late within 10% of 2/η | final loss | λ1/λ{k} init | λ1/λ{k} end | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        # A diverged run has no late phase to speak of.
        late = ("-", "-") if r["diverged"] else (f"{r['late_median_over_edge']:.2f}", f"{r['late_within_10pct']:.0%}")
        ratio = {w: (_fmt_ratio(r["ratios"][w]) if w in r["ratios"] else "-") for w in ("init", "end")}
        status = f"diverged (step {r['divergence_step']})" if r["diverged"] else "finished"
        final = f"{r['final_loss']:.4g}" if math.isfinite(r["final_loss"]) else "-"
        lines.append(
            f"| {r['norm']} | {r['lr']:g} | {r['seed']} | {2 / r['lr']:.1f} | {r['max_over_edge']:.3g} | {late[0]} | {late[1]} | "
            f"{final} | {ratio['init']} | {ratio['end']} | {status} |"
        )
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) > 1:
        lines += ["", "Across seeds (finished runs): late median / (2/η), mean [min, max].", "", "| norm | η | runs | diverged | late median / (2/η) |", "|---|---:|---:|---:|---|"]
        for key in sorted({(r["norm"], r["lr"]) for r in rows}, key=lambda t: (rows[0]["norm"] != t[0], t)):
            group = [r for r in rows if (r["norm"], r["lr"]) == key]
            ok = np.array([r["late_median_over_edge"] for r in group if not r["diverged"]])
            stat = f"{ok.mean():.2f} [{ok.min():.2f}, {ok.max():.2f}]" if ok.size else "-"
            lines.append(f"| {key[0]} | {key[1]:g} | {len(group)} | {sum(r['diverged'] for r in group)} | {stat} |")
    return "\n".join(lines) + "\n"


def _plot_sharpness(plt, path, rows, norms, runs, setup) -> None:
    lrs = sorted({r["lr"] for r in rows})
    fig, axes = plt.subplots(2, len(norms), figsize=(6 * len(norms), 7), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    loss_by_row = {}
    for run in runs:
        loss_by_row[(run.base_variant, float(run.lr), run.seed)] = loss_series(run)
    for j, norm in enumerate(norms):
        top = 0.0
        for r in (r for r in rows if r["norm"] == norm):
            c = colors[lrs.index(r["lr"]) % len(colors)]
            first = r["seed"] == min(q["seed"] for q in rows if q["norm"] == norm and q["lr"] == r["lr"])
            axes[0, j].plot(r["steps"], r["sharpness"], color=c, lw=1.2 if first else 0.6, label=f"η = {r['lr']:g}" if first else None)
            s, l = loss_by_row[(norm, r["lr"], r["seed"])]
            axes[1, j].plot(s, l, color=c, lw=1.0 if first else 0.5)
            if r["diverged"] and len(l):
                axes[1, j].plot(s[-1], l[-1], "x", color=c)
            # The axis covers the edges; a diverging run's sharpness (up to 1e10) would flatten the rest.
            top = max([top, 2.4 / r["lr"]] + [min(v, 3.0 * 2 / r["lr"]) for v in r["sharpness"] if np.isfinite(v)])
        for lr in lrs:
            axes[0, j].axhline(2 / lr, color=colors[lrs.index(lr) % len(colors)], ls="--", lw=1)
        axes[0, j].set_ylim(0, top or None)
        axes[0, j].set_title(f"{norm}: sharpness (top Hessian eigenvalue); dashed: 2/η", fontsize=10)
        axes[0, j].legend(fontsize=8)
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("full-batch GD step")
    axes[0, 0].set_ylabel("sharpness")
    axes[1, 0].set_ylabel(f"training loss ({setup['loss']}); x: divergence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_densities(plt, path, rows, norms) -> None:
    """The Hessian's spectral density at initialization and at the end, a panel per norm,
    for the middle step size and the first seed (Ghorbani et al. 2019, Fig. 1 style)."""
    lrs = sorted({r["lr"] for r in rows})
    lr = lrs[len(lrs) // 2]
    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        cands = [r for r in rows if r["norm"] == norm and r["lr"] == lr]
        sp = min(cands, key=lambda r: r["seed"])["spectra"] if cands else {}
        for when, style in (("init", "--"), ("end", "-")):
            if when in sp:
                ax.semilogy(sp[when]["grid"], np.maximum(sp[when]["density"], 1e-8), style, label=when)
        ax.set_title(f"{norm}, η = {lr:g}: Hessian spectral density (SLQ)", fontsize=10)
        ax.set_xlabel("eigenvalue")
        ax.set_ylim(1e-6, None)
        if sp:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
