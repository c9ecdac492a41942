"""The sampler comparison's report: bootstrapped expected extremes of the stored per-draw
terms, curves over training with a band over seeds, and paired tests between samplers
(“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, Figs. 2.4, 3.2, 4.3).

Reads the ``samplers/*`` trajectories of
:class:`~jaxnorm.diagnostics.sampler_comparison.SamplerComparison` from every run under a
root. For each run, observation step and sampler, the thesis's statistic: the expected
extreme over ``k`` of the n draws, estimated by bootstrap (``draws`` subsets of k indices
drawn with replacement; κ_W: the mean of the subset maxima of the ratios; the minimum
cosine: of the subset minima; κ_X: per subset, eq. 3.16's mean over examples of the max
over the subset). Per seed the values are averaged over the observation steps; samplers
are compared paired by seed (:func:`jaxnorm.analysis.stats.paired_test`).
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from jaxnorm.analysis.curves import mean_band
from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import find_runs
from jaxnorm.analysis.stats import mean_interval, paired_test

__all__ = ["expected_extreme", "sampler_values", "COMPARISONS", "write_report"]

#: (trajectory prefix, reduce, panel title)
QUANTITIES = (
    ("w_ratio", "max", "κ_W: expected max over k draws (Fig. 2.4)"),
    ("x_ratio", "max", "κ_X: expected max over k draws (Fig. 3.2)"),
    ("w_cosine", "min", "min weight-gradient cosine: expected min over k (Fig. 4.3)"),
)
#: (quantity, sampler a, sampler b, the thesis's statement about a vs b)
COMPARISONS = (
    ("w_ratio", "targeted", "random", "targeted (Def. 2.6) finds a larger κ_W than random (Fig. 2.4)"),
    ("w_ratio", "limited_targeted", "random", "batch-averaged targeted (Def. 2.7) finds a larger κ_W than random (Fig. 2.4)"),
    ("w_ratio", "limited_targeted", "targeted", "batch-averaged targeted performs at least as well as per-example targeted (§2.3)"),
    ("w_ratio", "random_isotropic", "random", "(not in the thesis) isotropic random vs the thesis's per-leaf random"),
    ("x_ratio", "targeted", "uniform", "targeted input sampling (Def. 3.5) has no apparent benefit over uniform random (Fig. 3.2)"),
    ("x_ratio", "interpolation", "uniform", "interpolation performs identically to uniform random (Fig. 3.2)"),
    ("w_cosine", "targeted", "random", "targeted draws give a lower minimum cosine than random (Fig. 4.3)"),
    ("w_cosine", "limited_targeted", "random", "batch-averaged targeted vs random, minimum cosine (Fig. 4.3)"),
)


def expected_extreme(terms: np.ndarray, k: int, reduce: str, draws: int = 500, seed: int = 0) -> float:
    """Bootstrap estimate of ``E[reduce over k of the n draws]`` (module docstring).

    Args:
      terms: ``(n,)`` per-draw values, or ``(n, m)`` per draw and example (κ_X: the
        reduction over the subset is per example, then the mean over examples).
      k: subset size (with replacement, so k may exceed n).
      reduce: ``'max'`` or ``'min'``.
    """
    if reduce not in ("max", "min"):
        raise ValueError(f"reduce must be 'max' or 'min', got {reduce!r}.")
    t = np.asarray(terms, np.float64)
    if t.ndim == 1:
        t = t[:, None]
    idx = np.random.default_rng(seed).integers(0, t.shape[0], size=(draws, k))
    sub = t[idx]  # (draws, k, m)
    ext = sub.max(axis=1) if reduce == "max" else sub.min(axis=1)
    return float(ext.mean(axis=1).mean())


def sampler_values(runs, k: int = 16) -> dict:
    """``{quantity: {sampler: (steps, values (runs, steps))}}`` of the expected extremes;
    runs in the given order (one row each)."""
    out: dict = {}
    for prefix, reduce, _ in QUANTITIES:
        names = sorted({key.split(".", 1)[1] for r in runs for key in r.trajectories if key.startswith(f"samplers/{prefix}.")})
        for name in names:
            steps = runs[0].trajectories["samplers/steps"]
            vals = np.full((len(runs), len(steps)), np.nan)
            for i, r in enumerate(runs):
                arr = r.trajectories.get(f"samplers/{prefix}.{name}")
                for j in range(0 if arr is None else min(len(arr), len(steps))):
                    vals[i, j] = expected_extreme(arr[j], k, reduce, seed=j)
            out.setdefault(prefix, {})[name] = (np.asarray(steps), vals)
    return out


def _plot(values: dict, path: pathlib.Path, k: int, title: str) -> None:
    plt = pyplot()
    panels = [q for q in QUANTITIES if q[0] in values]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (prefix, _, label) in zip(axes[0], panels):
        for name, (steps, vals) in values[prefix].items():
            mean, half, _ = mean_band(vals)
            ax.plot(steps, mean, marker="o", ms=3, label=name)
            ax.fill_between(steps, mean - np.nan_to_num(half), mean + np.nan_to_num(half), alpha=0.2)
        ax.set_title(label.replace("k", str(k), 1) if "over k" in label else label, fontsize=9)
        ax.set_xlabel("step")
        if prefix != "w_cosine":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(root, k: int = 16, comparisons: Sequence = COMPARISONS) -> str:
    """Writes ``root/plots/samplers.png`` and ``root/plots/summary.md``; returns a one-line verdict."""
    root = pathlib.Path(root)
    runs = sorted((r for r in find_runs(root) if "samplers/steps" in r.trajectories), key=lambda r: r.seed)
    if not runs:
        raise ValueError(f"no run with sampler trajectories under {root}.")
    out = fresh_report_dir(root / "plots")
    values = sampler_values(runs, k)
    n = len(runs)
    title = ("Perturbation samplers during training (“Gradient Conditioning in Deep Neural Networks”, BYU 2022, "
             f"Figs. 2.4, 3.2, 4.3): mean ± 95% t-band over n = {n} seeds")  # fmt: skip
    _plot(values, out / "samplers.png", k, title)
    lines = [f"# Perturbation samplers (n = {n} seeds; expected extreme over k = {k} draws by bootstrap, "
             "averaged over the observation steps)", "", "| quantity | sampler | mean ± 95% CI |", "|---|---|---|"]  # fmt: skip
    per_seed = {q: {s: np.nanmean(v, axis=1) for s, (_, v) in d.items()} for q, d in values.items()}
    for q, d in per_seed.items():
        for s, v in d.items():
            lines.append(f"| {q} | {s} | {mean_interval(v).format(4)} |")
    lines += ["", "| thesis statement | a − b (paired by seed) | verdict |", "|---|---|---|"]
    verdicts = []
    for q, a, b, claim in comparisons:
        if a not in per_seed.get(q, {}) or b not in per_seed.get(q, {}):
            continue
        t = paired_test(per_seed[q][a], per_seed[q][b])
        sign = t.excludes_zero()
        word = "no test (n < 2)" if t.n < 2 else {1: f"{a} > {b}", -1: f"{a} < {b}", 0: f"not significant (n = {t.n})"}[sign]
        lines.append(f"| {claim} | {q}: {a} − {b} = {t.format(4)} | {word} |")
        verdicts.append(f"{q} {a}-{b}: {word}")
    write_summary(out, "\n".join(lines) + "\n")
    return "; ".join(verdicts)
