"""The toys' report: the Lemma 2.2 simulations (Figs. 2.1, 2.2) and the shattered-gradients
toy (Fig. 3.5) of “Gradient Conditioning in Deep Neural Networks” (BYU thesis 2022).

Reads ``lemma22.npz`` and ``shattered.npz`` under a root (``experiments/toys.py``).

* Lemma 2.2: per seed and setting (perturbation reading x magnitude bias), the fraction
  of distribution pairs whose result inequality holds in expectation in the condition's
  direction (the thesis: all 1000, in both figures) and the Pearson correlation of the
  per-sample agreement fractions (the thesis: "extremely strong"); mean ± 95%
  t-interval over seeds. Plot: result vs condition agreement (seed 0), as Figs. 2.1/2.2.
* Shattered gradients: per net, the lag-1 correlation and the spectral slope of
  ``f'(x)`` over the grid, mean ± 95% t-interval over seeds (initializations); the deep
  feedforward net is compared with the shallow one and the resnet paired by seed.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.stats import mean_interval, paired_test
from jaxnorm.results import read_npz

__all__ = ["lag_correlation", "spectral_slope", "summarize_lemma", "write_report"]

FIELDS = ("condition_gap", "result_gap", "condition_agreement", "result_agreement")


def summarize_lemma(sim: dict[str, np.ndarray]) -> dict[str, float]:
    """``same_direction`` (fraction of distribution pairs whose result holds in the
    condition's direction in expectation), ``agreement_correlation`` (Pearson r of the
    two agreement fractions) and ``gap_correlation`` (of the two gaps)."""
    return {
        "same_direction": float(np.mean(sim["result_gap"] > 0)),
        "agreement_correlation": float(np.corrcoef(sim["condition_agreement"], sim["result_agreement"])[0, 1]),
        "gap_correlation": float(np.corrcoef(sim["condition_gap"], sim["result_gap"])[0, 1]),
    }


def lag_correlation(g, lag: int = 1) -> float:
    """Pearson correlation of ``g[:-lag]`` and ``g[lag:]`` (NaN for a constant curve).

    Raises:
      ValueError: ``lag`` outside [1, len(g) − 2].
    """
    g = np.asarray(g, np.float64)
    if not 1 <= lag <= len(g) - 2:
        raise ValueError(f"lag must lie in [1, {len(g) - 2}], got {lag}.")
    a, b = g[:-lag] - g[:-lag].mean(), g[lag:] - g[lag:].mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def spectral_slope(g) -> float:
    """Slope of ``log |FFT|²`` against ``log frequency`` over the nonzero frequencies of
    the mean-removed curve (module docstring)."""
    g = np.asarray(g, np.float64)
    power = np.abs(np.fft.rfft(g - g.mean())) ** 2
    freq = np.fft.rfftfreq(len(g))
    keep = (freq > 0) & (power > 0)
    return float(np.polyfit(np.log(freq[keep]), np.log(power[keep]), 1)[0])


def _lemma(lemma: dict, out: pathlib.Path) -> list[str]:
    settings = sorted({k.rsplit(".", 1)[0] for k in lemma})  # "<reading>.<bias>.s<seed>"
    groups = sorted({s.rsplit(".", 1)[0] for s in settings})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False)
    lines = ["## Lemma 2.2 simulations (Figs. 2.1, 2.2)", "",
             "| perturbation | magnitude bias | same direction in expectation | corr. of agreement fractions | corr. of gaps | n |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for ax, g in zip(axes[0], groups):
        seeds = sorted(s for s in settings if s.rsplit(".", 1)[0] == g)
        stats = [summarize_lemma({f: lemma[f"{s}.{f}"] for f in FIELDS}) for s in seeds]
        col = {k: mean_interval([st[k] for st in stats]) for k in stats[0]}
        reading, bias = g.split(".")
        lines.append(f"| {reading} | {'yes' if bias == 'bias' else 'no'} | {col['same_direction'].format(3)} | "
                     f"{col['agreement_correlation'].format(3)} | {col['gap_correlation'].format(3)} | {len(seeds)} |")  # fmt: skip
        s0 = seeds[0]
        same = lemma[f"{s0}.result_gap"] > 0
        ax.scatter(100 * lemma[f"{s0}.condition_agreement"][same], 100 * lemma[f"{s0}.result_agreement"][same], s=2, label="same direction")
        ax.scatter(100 * lemma[f"{s0}.condition_agreement"][~same], 100 * lemma[f"{s0}.result_agreement"][~same], s=2, c="red", label="opposite")
        ax.set_title(f"{reading}, {'with' if bias == 'bias' else 'no'} magnitude bias", fontsize=8)
        ax.set_xlabel("condition: % samples agreeing")
        ax.set_ylabel("result: % samples agreeing")
        ax.legend(fontsize=6)
    fig.suptitle("Lemma 2.2 simulations (“Gradient Conditioning in Deep Neural Networks”, Figs. 2.1, 2.2), seed 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "lemma22.png", dpi=80)
    plt.close(fig)
    return lines


def _shattered(curves: dict, labels: dict, out: pathlib.Path) -> list[str]:
    grid = curves["grid"]
    nets = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in curves if k != "grid"))
    seeds = sorted({k.rsplit(".s", 1)[1] for k in curves if k != "grid"}, key=int)
    lag = {n: [lag_correlation(curves[f"{n}.s{s}"]) for s in seeds] for n in nets}
    slope = {n: [spectral_slope(curves[f"{n}.s{s}"]) for s in seeds] for n in nets}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(nets), figsize=(3.2 * len(nets), 2.8), squeeze=False)
    for ax, n in zip(axes[0], nets):
        ax.plot(grid, curves[f"{n}.s{seeds[0]}"], lw=0.8)
        ax.set_title(f"{labels.get(n, n)}\nlag-1 corr {lag[n][0]:.2f}", fontsize=8)
        ax.set_xlabel("input x")
    axes[0][0].set_ylabel("f'(x)")
    fig.suptitle("Shattered gradients at initialization (Balduzzi et al. 2017, Fig. 1; thesis Fig. 3.5), seed 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "shattered.png", dpi=80)
    plt.close(fig)
    lines = ["", "## Shattered gradients (Fig. 3.5)", "", "| net | lag-1 correlation of f'(x) | spectral slope | n |", "|---|---|---|---|"]
    for n in nets:
        lines.append(f"| {labels.get(n, n)} | {mean_interval(lag[n]).format(3)} | {mean_interval(slope[n]).format(2)} | {len(seeds)} |")
    deep = next((n for n in nets if n.startswith("ff24")), None)
    for other in (n for n in nets if not n.startswith("ff24")):
        if deep:
            lines.append(f"\nlag-1 correlation, {other} − {deep} (paired by seed): {paired_test(lag[other], lag[deep]).format(3)}")
    return lines


def write_report(root, labels: dict | None = None) -> str:
    """Writes ``root/plots/{lemma22,shattered}.png`` and ``root/plots/summary.md``; returns a one-line summary."""
    root = pathlib.Path(root)
    lemma, curves = read_npz(root / "lemma22.npz"), read_npz(root / "shattered.npz")
    if not lemma or not curves:
        raise ValueError(f"no lemma22.npz / shattered.npz under {root}: run the toys first.")
    out = fresh_report_dir(root / "plots")
    lines = ["# Toys of “Gradient Conditioning in Deep Neural Networks” (BYU 2022)", ""]
    lines += _lemma(lemma, out) + _shattered(curves, labels or {}, out)
    write_summary(out, "\n".join(lines) + "\n")
    return "; ".join(l for l in lines if l.startswith("| independent") or l.startswith("| feedforward"))[:400]
