"""Training curves of the ablation variants (the Fig. 4.x style of "Dissecting BatchNorm:
An Ablation Study on the Core Components", master thesis, University of Tübingen, 2023).

One figure, three panels against epoch (epochs completed = the trainer's 0-based epoch
+ 1): train_eval loss on a log scale, train_eval accuracy and test accuracy, from the
``eval`` lines. The loss is drawn on a log scale because the BN variants end within a
few thousandths of each other, which a linear axis that also holds vanilla's first
epochs draws as one line. One line per variant in a fixed order and colour; the two
baselines (vanilla, standard BatchNorm ``bn_gamma_beta``) are drawn thicker and dashed.

With several seeds per variant the line is the mean over seeds with its 95% t-interval
as a band (:func:`jaxnorm.analysis.stats.mean_interval`), taken at each epoch over the
seeds evaluated there (no band where one seed is). On the log-scale loss panel mean and
interval are those of log(loss), drawn back as exp: the geometric mean over seeds and a
band that stays positive (an arithmetic interval of three seeds reaches below zero,
which a log axis cannot draw). Accuracy bands are cut to [0, 1], the range of the mean. A series with a single evaluation
(a ``--quick`` run) is drawn as a marker with its interval as an error bar: a line
through one point draws nothing. A diverged run is drawn up to its last evaluation and
marked there with an ``x``; the legend says ``[diverged]``.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from jaxnorm.analysis.runs import variant_order  # noqa: E402
from jaxnorm.analysis.stats import CONFIDENCE, mean_interval  # noqa: E402

COLORS = {"vanilla": "black", "bn": "tab:blue", "bn_gamma": "tab:orange", "bn_beta": "tab:green", "bn_gamma_beta": "tab:red"}
LABELS = {"vanilla": "vanilla (lower baseline)", "bn": "BN (no γ, β)", "bn_gamma": "BN_γ", "bn_beta": "BN_β",
          "bn_gamma_beta": "BN_γ,β (upper baseline)"}
BASELINES = ("vanilla", "bn_gamma_beta")
#: (split, key, axis label, log scale)
PANELS = (("train_eval", "loss", "train loss", True), ("train_eval", "acc", "train accuracy", False),
          ("test", "acc", "test accuracy", False))


def stack_series(series) -> tuple[np.ndarray, np.ndarray]:
    """``[(xs, values), ...]`` (one per run) -> ``(the sorted union of the integer xs,
    values of shape (n_runs, n_xs))``, NaN where a run has no value at that x."""
    xs = np.array(sorted({int(x) for run_xs, _ in series for x in run_xs}), dtype=np.int64)
    idx = {x: i for i, x in enumerate(xs)}
    vals = np.full((len(series), len(xs)), np.nan)
    for i, (run_xs, v) in enumerate(series):
        for x, y in zip(run_xs, v):
            vals[i, idx[int(x)]] = y
    return xs, vals


def seed_stack(runs, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` with ``values`` of shape ``(n_runs, n_epochs)``, NaN where a run
    has no evaluation at that epoch (e.g. after it diverged). ``epochs`` are 0-based."""
    return stack_series([r.eval_series(split, key) for r in runs])


def mean_band(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column (epoch) of ``vals`` (runs × epochs): the mean of the finite values, the
    half-width of its 95% t-interval (NaN where fewer than 2 are finite) and how many."""
    cols = [mean_interval(vals[:, j]) for j in range(vals.shape[1])]
    return (np.array([c.mean for c in cols]), np.array([c.half_width for c in cols]), np.array([c.n for c in cols], int))


def draw_curves(runs, title: str = ""):
    """The three-panel figure of ``runs`` (one lr group), not saved: ``(fig, axes)``."""
    by_variant: dict[str, list] = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (split, key, name, log) in zip(axes, PANELS):
        drawn, xs = [], []  # the finite means and band edges (the log axis's limits), their epochs
        for variant in variant_order(by_variant):
            vr = by_variant[variant]
            # A tagged variant ("bn_beta+bn_only") keeps its base variant's colour and style.
            plain, _, tag = variant.partition("+")
            color = COLORS.get(plain)
            base = plain in BASELINES
            style = dict(color=color, lw=2.4 if base else 1.4, ls="--" if base else "-")
            epochs, vals = seed_stack(vr, split, key)
            label = LABELS.get(plain, plain) + (f" [{tag}]" if tag else "") + (f" (n={len(vr)})" if len(vr) > 1 else "")
            if any(r.diverged for r in vr):
                label += " [diverged]"
            if log:  # the band of log(loss) (module docstring); a non-positive loss is not drawn
                with np.errstate(divide="ignore", invalid="ignore"):
                    vals = np.log(np.where(vals > 0, vals, np.nan))
            mean, half, _ = mean_band(vals) if epochs.size else (np.array([]),) * 3
            lo, hi = mean - half, mean + half
            if log:
                mean, lo, hi = np.exp(mean), np.exp(lo), np.exp(hi)
                vals = np.exp(vals)
            elif key == "acc":
                lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
            x, ok = epochs + 1, np.isfinite(mean)
            band = ok & np.isfinite(half)
            if ok.sum() == 1:  # one point: a marker (and its interval), else nothing shows
                yerr = np.where(band, [mean - lo, hi - mean], 0.0)[:, ok]
                line = ax.errorbar(x[ok], mean[ok], yerr=yerr, fmt="o", ms=7, capsize=4, label=label, color=color).lines[0]
            else:
                (line,) = ax.plot(x, mean, label=label, **style)
            color = line.get_color()
            if band.sum() > 1:
                ax.fill_between(x[band], lo[band], hi[band], color=color, alpha=0.15, lw=0)
            drawn += [mean[ok], lo[band], hi[band]]
            xs += list(x[ok])
            for i, r in enumerate(vr):
                if not r.diverged:
                    continue
                fin = np.flatnonzero(np.isfinite(vals[i])) if epochs.size else np.array([], int)
                if fin.size:
                    ax.plot(epochs[fin[-1]] + 1, vals[i, fin[-1]], marker="x", ms=10, mew=2.5, color=color, ls="none")
                else:  # diverged before its first evaluation: mark at the top of the axis
                    ep = (r.divergence or {}).get("epoch", 0)
                    ax.plot(int(ep) + 1, 0.97, marker="x", ms=10, mew=2.5, color=color, ls="none",
                            transform=ax.get_xaxis_transform())
        values = np.concatenate(drawn) if drawn else np.array([])
        positive = values[np.isfinite(values) & (values > 0)]
        if log and positive.size:
            ax.set_yscale("log")
            ax.set_ylim(positive.min() / 1.5, positive.max() * 1.5)
        if xs and min(xs) == max(xs):  # one epoch: a range the integer ticks can mark
            ax.set_xlim(xs[0] - 1, xs[0] + 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name + (" (log)" if log and positive.size else ""))
        ax.set_title(f"{name} ({split})", fontsize=10)
        ax.grid(alpha=0.3, which="both" if log else "major")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    if any(len(v) > 1 for v in by_variant.values()):
        fig.text(0.995, 0.005, f"mean over seeds (log loss panel: geometric mean), band: its {CONFIDENCE:.0%} t-interval", ha="right", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, axes


def plot_curves(runs, path, title: str = "") -> pathlib.Path:
    """Writes the three-panel curve figure of ``runs`` (one lr group) to ``path``; returns it."""
    fig, _ = draw_curves(runs, title)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
