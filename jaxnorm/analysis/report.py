"""One call that turns a results folder into plots and tables (never retrains).

``write_report(root)`` finds every run below ``root`` and writes into ``out_dir``
(default ``root/plots``):

* ``curves_lr<lr>.png`` -- per learning-rate group, :func:`~jaxnorm.analysis.curves.plot_curves`;
* ``gamma_beta_<variant>[_s<seed>]_lr<lr>.png`` -- per run with γ/β records,
  :func:`~jaxnorm.analysis.contours.plot_gamma_beta` (the seed suffix appears when the
  runs have more than one seed);
* ``sparsity_lr<lr>.png`` -- per learning-rate group with ``relu_sparsity`` records,
  :func:`~jaxnorm.analysis.sparsity.plot_sparsity`;
* ``activity.md`` -- the activity metrics of every run with γ/β records;
* ``summary.md`` -- the summary table (with each run's state; a run with an empty
  ``metrics.jsonl`` is a "no records" row, not left out), per group the ReLU-sparsity
  table and, for runs that stored ``final_logits.npz``, the logit-scale split of the
  loss gaps (:mod:`~jaxnorm.analysis.logit_scale`), then the activity table.

The folder is first cleared of what an earlier report wrote
(:func:`~jaxnorm.analysis.plotting.fresh_report_dir`: PNGs, ``summary.md``,
``activity.md``), so no stale figure survives a replot; a folder given as ``out_dir`` is
not cleared (it may hold the user's own files).

With ``by`` holding more than the learning rate, the other fields are appended to the
names (``curves_lr0.1_model3c3d.png``); names that would still collide get the run's
folder path appended.
"""

from __future__ import annotations

import pathlib
import re
from typing import Sequence

from jaxnorm.analysis.activity import activity_metrics, activity_table_md
from jaxnorm.analysis.contours import plot_gamma_beta
from jaxnorm.analysis.curves import plot_curves
from jaxnorm.analysis.gammabeta import gamma_beta_arrays
from jaxnorm.analysis.logit_scale import logit_scale_markdown
from jaxnorm.analysis.plotting import fresh_report_dir, write_summary
from jaxnorm.analysis.runs import find_runs, fmt_value, group_key, group_runs
from jaxnorm.analysis.sparsity import plot_sparsity, sparsity_table_md
from jaxnorm.analysis.summary import summary_markdown


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")


def _group_suffix(key: tuple, by: Sequence[str]) -> str:
    # An empty field (the default placement's tag) adds nothing: "lr0.1", not "lr0.1_tag".
    return "_".join(("lr" if k == "learning_rate" else _slug(k)) + _slug(fmt_value(v)) for k, v in zip(by, key) if v not in ("", None))


def write_report(root, out_dir=None, by: Sequence[str] = ("learning_rate",), target_acc: float | None = None) -> dict[str, pathlib.Path]:
    """Writes the plots and tables for the runs below ``root``; returns ``{file stem: path}``."""
    root = pathlib.Path(root)
    out = fresh_report_dir(pathlib.Path(out_dir) if out_dir is not None else root / "plots", owned=out_dir is None)
    by = tuple(by)
    if "learning_rate" not in by:
        by = ("learning_rate",) + by
    listed = find_runs(root, include_empty=True)  # the summary lists runs without records too
    runs = [r for r in listed if r.metrics]
    written: dict[str, pathlib.Path] = {}

    for key, group in group_runs(runs, by).items():
        suffix = _group_suffix(key, by)
        title = f"{group[0].config.get('study', root.name)}: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in zip(by, key))
        written[f"curves_{suffix}"] = plot_curves(group, out / f"curves_{suffix}.png", title)
        sparsity = plot_sparsity(group, out / f"sparsity_{suffix}.png", title)
        if sparsity is not None:
            written[f"sparsity_{suffix}"] = sparsity

    many_seeds = len({r.seed for r in runs}) > 1
    activity_rows = []
    for r in runs:
        if not gamma_beta_arrays(r.trajectories)[1]:
            continue
        stem = f"gamma_beta_{_slug(r.variant)}" + (f"_s{r.seed}" if many_seeds else "") + f"_{_group_suffix(group_key(r, by), by)}"
        if stem in written:
            stem += "_" + _slug(str(r.path.relative_to(root)))
        try:
            written[stem] = plot_gamma_beta(r, out / f"{stem}.png")["path"]
        except ValueError:
            continue
        lead = {"variant": r.variant, "learning_rate": fmt_value(r.lr), "seed": r.seed, "run": str(r.path.relative_to(root))}
        activity_rows += [{**lead, **row} for row in activity_metrics(r.trajectories)]

    activity = "# γ/β activity\n\nΔ = final value − neutral (1 for γ, 0 for β); zero crossings of the trajectory " \
               "minus neutral, per channel, averaged over channels.\n\n"
    activity += activity_table_md(activity_rows) if activity_rows else "No γ/β trajectories recorded.\n"
    (out / "activity.md").write_text(activity)
    written["activity"] = out / "activity.md"

    unfinished = [r for r in listed if not r.finished]
    summary = f"# Summary of {root}\n\n{len(listed)} runs" + (f", {len(unfinished)} not finished" if unfinished else "") + ".\n\n"
    summary += summary_markdown(listed, target_acc, by=by) if listed else "No runs found.\n"
    for key, group in group_runs(runs, by).items():
        table = sparsity_table_md(group)
        if table:
            summary += f"\n## ReLU sparsity, {_group_suffix(key, by)}\n\nFraction of each norm layer's outputs " \
                       "that the following ReLU zeroes, on the probe batch, at the last measurement.\n\n" + table
        logits = logit_scale_markdown(group)
        if logits:
            summary += f"\n## Logit scale, {_group_suffix(key, by)}\n\n" + logits
    summary += "\n" + activity.replace("# γ/β activity", "## γ/β activity", 1)
    written["summary"] = write_summary(out, summary)
    return written
