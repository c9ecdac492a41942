"""The mask-effectiveness report: error and time of every metric against the mask
fraction (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, §1.6; Figs.
2.3, 3.1, 3.6, 3.14, 3.15, 3.18, 4.1, 4.2).

Reads ``<run>/masking.json`` of every run under a root (written by the masking study's
``after`` step: per metric, ``errors[fraction][mask]`` = |masked − unmasked| / |unmasked|
on a fixed set of draws; ``timing[fraction or 'unmasked'][metric]`` = median seconds of a
call; a metric whose unmasked value is 0 in some run, listed in ``absolute_errors``,
has the absolute error there). Per metric and fraction the plot shows the median error over every mask of every
seed with the interquartile band; the table adds the mean over seeds of each seed's
median error with its 95% t-interval, and the time of the masked call relative to the
unmasked one (each divided by the batch-gradient time of its own timing call, which
cancels a change of the machine's load between the two calls).
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.stats import mean_interval
from jaxnorm.results import read_json

__all__ = ["load_masking", "write_report"]

LABELS = {
    "kappa_w": "κ_W (Fig. 2.3)", "kappa_x": "κ_X (Fig. 3.1)", "weight_rank": "relative rank of h_W (Fig. 3.6)",
    "confusion": "confusion (Fig. 3.14)", "diversity": "diversity (Fig. 3.15)", "coherence": "coherence (Fig. 3.18)",
    "min_cosine": "min weight-gradient cosine (Def. 4.1)", "weight_gradient_diversity": "Δ_W D (Fig. 4.1)",
    "weight_gradient_coherence": "Δ_W H (Fig. 4.2)",
}  # fmt: skip
#: Which timed call each metric's time is read from (the Def. 4.1 forms come with κ_W).
TIMED_AS = {"min_cosine": "kappa_w", "weight_gradient_diversity": "kappa_w", "weight_gradient_coherence": "kappa_w"}


def _relative_time(timing: dict, fraction: str, metric: str) -> float:
    """Masked over unmasked seconds of ``metric``, each divided by the batch-gradient time
    measured in the same timing call when there is one: the calls run minutes apart, and
    on a shared machine the load between them changes every time alike."""
    def norm(q):
        t = timing[q]
        return t[metric] / t["batch_gradient"] if "batch_gradient" in t else t[metric]

    return norm(fraction) / norm("unmasked")


def load_masking(root) -> list[dict]:
    """Every run's ``masking.json`` (with its ``run`` folder name), sorted by run name."""
    root = pathlib.Path(root)
    return [{**read_json(p), "run": p.parent.name} for p in sorted(root.glob("*/masking.json"))]


def write_report(root) -> str:
    """Writes ``root/plots/masking.png`` and ``root/plots/summary.md``; returns a one-line verdict."""
    root = pathlib.Path(root)
    runs = load_masking(root)
    if not runs:
        raise ValueError(f"no masking.json under {root}.")
    out = fresh_report_dir(root / "plots")
    fractions = np.asarray(runs[0]["fractions"])
    metrics = list(runs[0]["errors"])
    errs = {k: np.stack([np.asarray(r["errors"][k]) for r in runs]) for k in metrics}  # (seeds, fractions, masks)
    timing = next((r["timing"] for r in runs if r.get("timing")), {})
    plt = pyplot()
    cols = 3
    rows = -(-(len(metrics) + bool(timing)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, k in zip(axes.flat, metrics):
        e = errs[k].transpose(1, 0, 2).reshape(len(fractions), -1)
        q25, med, q75 = np.percentile(e, [25, 50, 75], axis=1)
        ax.plot(100 * fractions, med, marker="o", ms=3)
        ax.fill_between(100 * fractions, q25, q75, alpha=0.25)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-4)
        absolute = any(k in r.get("absolute_errors", ()) for r in runs)
        ax.set_title(LABELS.get(k, k) + (" (absolute: unmasked value 0)" if absolute else ""), fontsize=9)
        ax.set_xlabel("mask %")
        ax.set_ylabel("relative error")
    if timing:
        ax = axes.flat[len(metrics)]
        timed = sorted({m for t in timing.values() for m in t})
        masked = sorted((float(p) for p in timing if p != "unmasked"))
        for m in timed:
            line = ax.plot([100 * p for p in masked], [timing[str(p)][m] for p in masked], marker="o", ms=3, label=m)[0]
            ax.axhline(timing["unmasked"][m], color=line.get_color(), ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title("seconds per call (dashed: unmasked)", fontsize=9)
        ax.set_xlabel("mask %")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics) + bool(timing):]:
        ax.axis("off")
    fig.suptitle(f"Mask effectiveness (“Gradient Conditioning in Deep Neural Networks”, BYU 2022, §1.6): median and "
                 f"IQR over {errs[metrics[0]].shape[2]} masks x {len(runs)} seeds, {runs[0]['params']:,} parameters",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "masking.png", dpi=80)
    plt.close(fig)

    shown = [p for p in (0.01, 0.1, 0.5) if p in fractions] or list(fractions[:3])
    head = " | ".join(f"error at {100 * p:g}% (mean over seeds of the median ± 95% CI)" for p in shown)
    lines = [f"# Mask effectiveness (n = {len(runs)} seeds, {errs[metrics[0]].shape[2]} masks per fraction, "
             f"{runs[0]['params']:,} parameters)", "", f"| metric | {head} | time masked / unmasked at "
             + (", ".join(f"{100 * float(p):g}%" for p in sorted(float(q) for q in timing if q != 'unmasked')) or "— (not timed)") + " |",
             "|---" * (len(shown) + 2) + "|"]  # fmt: skip
    worst = {}
    for k in metrics:
        cells = []
        for p in shown:
            j = int(np.argmin(np.abs(fractions - p)))
            cells.append(mean_interval(np.median(errs[k][:, j], axis=1)).format(4))
            worst.setdefault(p, {})[k] = float(np.median(errs[k][:, j]))
        name = TIMED_AS.get(k, k)
        ratio = ", ".join(f"{_relative_time(timing, q, name):.2f}" for q in sorted((q for q in timing if q != "unmasked"), key=float)) \
            if timing and name in timing["unmasked"] else "—"  # fmt: skip
        lines.append(f"| {LABELS.get(k, k)} | " + " | ".join(cells) + f" | {ratio} |")
    write_summary(out, "\n".join(lines) + "\n")
    p = shown[len(shown) // 2]
    k = max(worst[p], key=worst[p].get)
    return f"largest median error at {100 * p:g}% masks: {k} {worst[p][k]:.3g}"
