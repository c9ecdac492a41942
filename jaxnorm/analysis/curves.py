"""Training curves of the ablation variants (thesis 1, Fig. 4.x style).

One figure, three panels against epoch (epochs completed = the trainer's 0-based epoch
+ 1): train_eval loss, train_eval accuracy and test accuracy, from the ``eval`` lines.
One line per variant in a fixed order and colour; the two baselines (vanilla, standard
BatchNorm ``bn_gamma_beta``) are drawn thicker and dashed. With several seeds per
variant the line is the mean over seeds with a ±std band (sample std), taken at each
epoch over the seeds evaluated there. A diverged run
is drawn up to its last evaluation and marked there with an ``x``.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from jaxnorm.analysis.runs import variant_order  # noqa: E402

COLORS = {"vanilla": "black", "bn": "tab:blue", "bn_gamma": "tab:orange", "bn_beta": "tab:green", "bn_gamma_beta": "tab:red"}
LABELS = {"vanilla": "vanilla (lower baseline)", "bn": "BN (no γ, β)", "bn_gamma": "BN_γ", "bn_beta": "BN_β",
          "bn_gamma_beta": "BN_γ,β (upper baseline)"}
BASELINES = ("vanilla", "bn_gamma_beta")
PANELS = (("train_eval", "loss", "train loss"), ("train_eval", "acc", "train accuracy"), ("test", "acc", "test accuracy"))


def seed_stack(runs, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` with ``values`` of shape ``(n_runs, n_epochs)``, NaN where a run
    has no evaluation at that epoch (e.g. after it diverged). ``epochs`` are 0-based."""
    series = [r.eval_series(split, key) for r in runs]
    epochs = np.array(sorted({int(e) for ep, _ in series for e in ep}), dtype=np.int64)
    idx = {e: i for i, e in enumerate(epochs)}
    vals = np.full((len(runs), len(epochs)), np.nan)
    for i, (ep, v) in enumerate(series):
        for e, x in zip(ep, v):
            vals[i, idx[int(e)]] = x
    return epochs, vals


def mean_std(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column mean and sample std (0 where fewer than 2 finite values), NaN-aware."""
    vals = np.where(np.isfinite(vals), vals, np.nan)
    n = np.sum(np.isfinite(vals), axis=0)
    with np.errstate(all="ignore"):
        mean = np.where(n > 0, np.nansum(vals, axis=0) / np.maximum(n, 1), np.nan)
        var = np.where(n > 1, np.nansum((vals - mean) ** 2, axis=0) / np.maximum(n - 1, 1), 0.0)
    return mean, np.sqrt(var)


def plot_curves(runs, path, title: str = "") -> pathlib.Path:
    """Writes the three-panel curve figure of ``runs`` (one lr group) to ``path``; returns it."""
    by_variant: dict[str, list] = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (split, key, name) in zip(axes, PANELS):
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
            if epochs.size:
                mean, std = mean_std(vals)
                x = epochs + 1
                (line,) = ax.plot(x, mean, label=label, **style)
                color = line.get_color()
                if len(vr) > 1:
                    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, lw=0)
            else:
                ax.plot([], [], label=label, **style)
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
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name} ({split})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
