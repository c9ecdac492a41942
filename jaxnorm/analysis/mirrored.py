"""The mirrored-weights report (“Gradient Conditioning in Deep Neural Networks”, BYU thesis
2022, Fig. 3.11): the fraction of mirrored pairs that stay mirrored during training.

Reads the ``mirrored/*`` trajectories (per observation step, per layer: the median
relative pair distance and the fractions within each tolerance) of every run under a
root, grouped by the run's ``tag`` (the initializer). Curves: the layer-mean fraction
within each tolerance against the step, mean ± 95% t-band over seeds; table: at the last
observation, mean ± 95% t-interval over seeds, the looks-linear net paired by seed with
the orthogonal control, and the final training loss and accuracy.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxnorm.analysis.curves import mean_band
from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import find_runs
from jaxnorm.analysis.stats import mean_interval, paired_test

__all__ = ["write_report"]


def write_report(root) -> str:
    """Writes ``root/plots/mirrored.png`` and ``root/plots/summary.md``; returns a one-line verdict."""
    root = pathlib.Path(root)
    runs = [r for r in find_runs(root) if "mirrored/steps" in r.trajectories]
    if not runs:
        raise ValueError(f"no run with mirrored trajectories under {root}.")
    out = fresh_report_dir(root / "plots")
    by_tag = {t: sorted((r for r in runs if r.tag == t), key=lambda r: r.seed) for t in sorted({r.tag for r in runs})}
    keys = sorted(k.split("/", 1)[1] for k in runs[0].trajectories if k.startswith("mirrored/within_"))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.4), squeeze=False)
    final = {}
    for tag, rs in by_tag.items():
        steps = rs[0].trajectories["mirrored/steps"]
        for ax, key in zip(axes[0], keys + ["median"]):
            vals = np.stack([r.trajectories[f"mirrored/{key}"].mean(axis=1) for r in rs])  # (seeds, steps): layer mean
            mean, half, _ = mean_band(vals)
            ax.plot(steps, mean, label=tag)
            ax.fill_between(steps, mean - np.nan_to_num(half), mean + np.nan_to_num(half), alpha=0.2)
            ax.set_title(f"pairs with |w_j + w_n+j| < {key.split('_')[1]} x rms" if key != "median" else "median |w_j + w_n+j| / rms", fontsize=8)
            ax.set_xlabel("step")
            final.setdefault(tag, {})[key] = vals[:, -1]
        final[tag]["loss"] = np.array([r.eval_series("train_eval", "loss")[1][-1] for r in rs])
        final[tag]["acc"] = np.array([r.eval_series("train_eval", "acc")[1][-1] for r in rs])
    for ax in axes[0]:
        ax.legend(fontsize=7)
    depth = runs[0].config["model_kwargs"]["depth"]
    fig.suptitle(f"Mirrored weights in a {depth}-layer CReLU net (“Gradient Conditioning in Deep Neural Networks”, Fig. 3.11): "
                 f"layer mean, 95% band over n = {len(next(iter(by_tag.values())))} seeds", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "mirrored.png", dpi=80)
    plt.close(fig)
    cols = keys + ["median", "loss", "acc"]
    lines = [f"# Mirrored pairs at the last observation ({depth} layers; mean ± 95% CI over seeds)", "",
             "| init | " + " | ".join(cols) + " | n |", "|---" * (len(cols) + 2) + "|"]  # fmt: skip
    for tag, f in final.items():
        lines.append(f"| {tag} | " + " | ".join(mean_interval(f[c]).format(4) for c in cols) + f" | {len(f['loss'])} |")
    verdict = ""
    if {"looks_linear", "orthogonal"} <= set(final) and keys:
        k = keys[0]
        t = paired_test(final["looks_linear"][k], final["orthogonal"][k])
        lines += ["", f"{k}, looks_linear − orthogonal (paired by seed): {t.format(4)}"]
        verdict = f"{k}: looks_linear − orthogonal = {t.format(4)}"
    write_summary(out, "\n".join(lines) + "\n")
    return verdict
