"""ReLU sparsity over training (the thesis's open question whether β changes it).

Reads the ``relu_sparsity`` lines the :class:`jaxnorm.train.ReluSparsity` observer
writes: per norm layer, the fraction of its outputs that the following ReLU zeroes, on
a fixed probe batch. One panel per layer, step on the horizontal axis, one line per
variant (mean over seeds), in the variant colours of the training curves.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxnorm.analysis.curves import COLORS, LABELS  # noqa: E402
from jaxnorm.analysis.runs import variant_order  # noqa: E402


def sparsity_series(run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (steps, fractions)}`` of one run ({} if it recorded none)."""
    lines = [m for m in run.metrics if m.get("kind") == "relu_sparsity"]
    layers = sorted({k for m in lines for k in m if k.startswith("norm")}, key=lambda s: (len(s), s))
    return {
        layer: (np.array([m["step"] for m in lines if layer in m]), np.array([m[layer] for m in lines if layer in m]))
        for layer in layers
    }


def plot_sparsity(runs, path, title: str = "") -> pathlib.Path | None:
    """Writes the sparsity figure of ``runs`` (one lr group); None if nothing was recorded."""
    per_run = [(r, sparsity_series(r)) for r in runs]
    layers = sorted({layer for _, s in per_run for layer in s}, key=lambda s: (len(s), s))
    if not layers:
        return None
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.0), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for variant in variant_order({r.variant for r, _ in per_run}):
            series = [s[layer] for r, s in per_run if r.variant == variant and layer in s]
            if not series:
                continue
            n = min(len(st) for st, _ in series)
            steps = series[0][0][:n]
            mean = np.mean([v[:n] for _, v in series], axis=0)
            plain, _, tag = variant.partition("+")
            label = LABELS.get(plain, plain) + (f" [{tag}]" if tag else "")
            ax.plot(steps, mean, color=COLORS.get(plain), label=label, lw=1.5)
        ax.set_title(f"{layer}: zeroed by ReLU")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction ≤ 0 (probe batch)")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sparsity_table_md(runs) -> str:
    """Final sparsity per variant and layer (mean over seeds), as markdown ('' if none)."""
    rows = {}
    for r in runs:
        for layer, (_, v) in sparsity_series(r).items():
            rows.setdefault(r.variant, {}).setdefault(layer, []).append(float(v[-1]))
    if not rows:
        return ""
    layers = sorted({layer for d in rows.values() for layer in d}, key=lambda s: (len(s), s))
    out = "| variant | " + " | ".join(layers) + " |\n|---|" + "---|" * len(layers) + "\n"
    for variant in variant_order(rows):
        cells = [f"{np.mean(rows[variant][l]):.3f}" if l in rows[variant] else "—" for l in layers]
        out += f"| {variant} | " + " | ".join(cells) + " |\n"
    return out
