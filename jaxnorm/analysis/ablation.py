"""The BatchNorm ablation study's analysis (``experiments/ablation.py``; the study of
"Dissecting BatchNorm: An Ablation Study on the Core Components", master thesis,
University of Tübingen, 2023).

A study root (``<results>/ablation/<setup>/``) holds the runs as
``lr<scale>/<variant>[_<placement>]_s<seed>/``; a non-default BN placement is the runs'
``tag``, so its rows read ``bn+first`` and are compared with the baselines of the same
placement. :func:`analyze_ablation` checks that the folder is an ablation root, writes
the report (:func:`jaxnorm.analysis.report.write_report`: curves, γ/β contours,
sparsity, ``activity.md``, ``summary.md``; grouped by learning rate, and by tag when the
root holds several) and returns a one-line verdict.

A folder is an ablation root when its ``study.json`` names the ablation study, or (runs
written before ``study.json`` existed) when it sits in a folder named ``ablation`` and
holds runs. Anything else -- another study's root, a single run, the parent of several
roots -- is refused with a ValueError that says what to pass instead, so that a
mistyped path never overwrites another study's ``summary.md``.
"""

from __future__ import annotations

import math
import pathlib

from jaxnorm.analysis.report import write_report
from jaxnorm.analysis.runs import find_runs, fmt_value
from jaxnorm.analysis.summary import summarize
from jaxnorm.results import read_json

__all__ = ["STUDY", "analyze_ablation", "check_ablation_root", "is_ablation_root"]

STUDY = "ablation"


def _study_of(root: pathlib.Path):
    path = root / "study.json"
    try:
        return read_json(path).get("study") if path.is_file() else None
    except (ValueError, OSError, AttributeError):
        return "?"


def is_ablation_root(root) -> bool:
    """Whether ``root`` is an ablation study's results folder (module docstring)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return False
    study = _study_of(root)
    if study is not None:
        return study == STUDY
    return root.parent.name == STUDY and not (root / "config.json").exists() and any(root.rglob("config.json"))


def check_ablation_root(root) -> pathlib.Path:
    """``root`` as a path if it is an ablation root, else ValueError saying why."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} does not exist.")
    if is_ablation_root(root):
        return root
    study = _study_of(root)
    if study is not None:
        raise ValueError(f"{root} holds the {study!r} study, not an ablation; use python -m experiments.{study} --plot-only.")
    inner = sorted(p.name for p in root.iterdir() if p.is_dir() and is_ablation_root(p))
    if inner:
        raise ValueError(f"{root} holds several ablation folders; pass one of them: {', '.join(inner)}.")
    if (root / "config.json").exists():
        raise ValueError(f"{root} is a single run; pass the ablation folder above it (results/ablation/<config>).")
    raise ValueError(f"{root} is not an ablation results folder (no study.json of the ablation study, not under ablation/).")


def _by(runs) -> tuple[str, ...]:
    return ("learning_rate", "tag") if len({r.tag for r in runs}) > 1 else ("learning_rate",)


def analyze_ablation(root, target_acc: float | None = None) -> str:
    """Writes the ablation report of ``root`` (module docstring) and returns a one-line
    verdict: per group, each variant's mean final test accuracy ± its 95% half-width
    over seeds (``(not final)`` after a variant with a seed that did not finish) and how
    many of the BN variants beat vanilla by the thesis's criterion, decided by the paired
    intervals (:mod:`jaxnorm.analysis.summary`). ValueError for a folder that is not an ablation root or holds no runs."""
    root = check_ablation_root(root)
    runs = find_runs(root, include_empty=True)
    if not runs:
        raise ValueError(f"no stored runs under {root}.")
    by = _by(runs)
    write_report(root, by=by, target_acc=target_acc)
    groups: dict[tuple, list[dict]] = {}
    for row in summarize(runs, target_acc, by=by):
        groups.setdefault(tuple(row["group"].items()), []).append(row)
    parts = []
    for key, rows in groups.items():
        name = ", ".join(("lr " if k == "learning_rate" else "") + fmt_value(v) for k, v in key if v not in ("", None))
        accs = ", ".join(f"{r['variant']} {r['final_test_acc_ci'].format(4, say_single=False)}" + ("" if r["all_finished"] else " (not final)")
                         for r in rows if not math.isnan(r["final_test_acc"]))
        beats = [r["beats_vanilla"] for r in rows if r["beats_vanilla"] is not None]
        parts.append(f"{name}: final test acc {accs or '—'}"
                     + (f"; {sum(b.startswith('yes') for b in beats)}/{len(beats)} beat vanilla (paired 95% intervals "
                        "of training loss and accuracy)" if beats else ""))
    return "; ".join(parts)
