"""The ablation summary table (thesis 1, Table 4.x style).

Per learning-rate group (or any config fields ``by``) and variant, over the seeds of
that variant (mean ± sample std when n > 1):

* final and best train_eval loss / accuracy and final / best test accuracy (final = the
  last evaluation a run wrote, so a diverged run counts with its last values); when a
  seed of the row did not finish (interrupted, running, failed, diverged) these cells
  carry a ``†`` and the table's footnote says they are last values, not final ones;
* each run's state (:attr:`~jaxnorm.analysis.runs.Run.state_note`: ``finished``,
  ``interrupted at step 120 of 600``, ``diverged at step 13``, ``no records`` for a run
  with an empty ``metrics.jsonl``, which is listed rather than dropped);
* epochs to reach the target test accuracy: per seed the first 0-based epoch whose test
  accuracy is ≥ target, plus 1; averaged over the seeds that reach it. A diverged seed
  never counts as reaching it (its evaluations after the blow-up are of a broken net,
  typically at chance, which a low target would count as a hit); a row where no seed
  reaches it reads ``diverged`` when every seed diverged, else ``not reached``;
* whether the variant beats vanilla (mean final test accuracy strictly higher) and its
  gap to standard BatchNorm ``bn_gamma_beta`` (mean final test accuracy difference, in
  percentage points);
* how many seeds diverged.

The default target is 90% of the best final test accuracy among the runs of the group
that did not diverge, rounded to 0.01 -- and none when that is at or below chance
(1/classes, :func:`chance_level`) or every run diverged: a target a random guesser meets
would make every run "reach" it in one epoch, which is what ``--lr-scale 1e9`` used to
report (runs at chance accuracy, "epochs to target 1").
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxnorm.analysis.runs import fmt_value, group_runs, variant_order

_STATS = {  # name: (split, key, "final" | "min" | "max")
    "final_train_loss": ("train_eval", "loss", "final"),
    "final_train_acc": ("train_eval", "acc", "final"),
    "best_train_loss": ("train_eval", "loss", "min"),
    "best_train_acc": ("train_eval", "acc", "max"),
    "final_test_acc": ("test", "acc", "final"),
    "best_test_acc": ("test", "acc", "max"),
}


def _stat(run, split, key, how) -> float:
    _, v = run.eval_series(split, key)
    if how == "final":
        return float(v[-1]) if v.size else math.nan
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan
    return float(v.min() if how == "min" else v.max())


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value) of the finite ``values``; NaNs if none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def epochs_to_target(run, target: float) -> int | None:
    """First 0-based epoch whose test accuracy is ≥ ``target``, plus 1; None if never, or
    if the run diverged (module docstring)."""
    if run.diverged:
        return None
    epochs, acc = run.eval_series("test", "acc")
    hit = np.flatnonzero(acc >= target)
    return int(epochs[hit[0]]) + 1 if hit.size else None


#: Classes of the datasets of :data:`jaxnorm.data.DATASETS`, for :func:`chance_level`
#: (analysis may not import jaxnorm.data; tests/analysis/test_summary.py checks the two agree).
NUM_CLASSES = {"digits": 10, "digits32": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def base_dataset(name) -> str:
    """The dataset a name of :data:`jaxnorm.data.DATASETS` draws its classes from
    (``cifar10_corrupted/fog_5`` -> ``cifar10``)."""
    return str(name).split("/")[0].removesuffix("_corrupted")


def chance_level(run) -> float | None:
    """1 / the number of classes of the run (its ``model_kwargs['num_classes']``, else
    its dataset's in :data:`NUM_CLASSES`); None if unknown."""
    k = dict(run.config.get("model_kwargs") or {}).get("num_classes") or NUM_CLASSES.get(base_dataset(run.config.get("dataset")))
    return 1.0 / int(k) if k else None


def default_target(runs) -> float | None:
    """90% of the best final test accuracy among the ``runs`` that did not diverge,
    rounded to 0.01; None if there is none or it is not above chance (module docstring)."""
    finals = [x for x in (_stat(r, "test", "acc", "final") for r in runs if not r.diverged) if np.isfinite(x)]
    if not finals:
        return None
    target = round(0.9 * max(finals), 2)
    chance = max((c for c in map(chance_level, runs) if c is not None), default=0.0)
    return target if target > chance else None


def summarize(runs, target_acc: float | None = None, by: Sequence[str] = ("learning_rate",),
              baseline: str = "vanilla", upper: str = "bn_gamma_beta") -> list[dict]:
    """One dict per (group, variant), groups sorted, variants in the fixed order. Keys:
    ``group`` (dict of the ``by`` fields), ``variant``, ``n``, ``seeds``, ``target``,
    each statistic of the module docstring as ``<name>`` (mean) and ``<name>_std``,
    ``epochs_to_target`` (mean over reaching seeds or None), ``reached`` (how many seeds),
    ``beats_vanilla`` (None for the baseline itself or without one), ``gap_to_upper_pp``
    (None without an upper run), ``diverged`` (how many seeds diverged), ``states`` (each
    seed's :attr:`~jaxnorm.analysis.runs.Run.state_note`), ``all_finished`` (whether every
    seed finished: only then are the ``final_*`` values final)."""
    rows = []
    for key, group in group_runs(runs, by).items():
        target = default_target(group) if target_acc is None else float(target_acc)
        by_variant: dict[str, list] = {}
        for r in group:
            by_variant.setdefault(r.variant, []).append(r)
        grows = []
        for variant in variant_order(by_variant):
            vr = by_variant[variant]
            row = {"group": dict(zip(by, key)), "variant": variant, "n": len(vr),
                   "seeds": [r.seed for r in vr], "target": target}
            for name, (split, k, how) in _STATS.items():
                row[name], row[name + "_std"] = mean_std([_stat(r, split, k, how) for r in vr])
            hits = [] if target is None else [e for e in (epochs_to_target(r, target) for r in vr) if e is not None]
            row["epochs_to_target"] = float(np.mean(hits)) if hits else None
            row["reached"] = len(hits)
            row["diverged"] = sum(r.diverged for r in vr)
            row["states"] = [r.state_note for r in vr]
            row["all_finished"] = all(r.finished for r in vr)
            grows.append(row)
        final = {r["variant"]: r["final_test_acc"] for r in grows}
        for row in grows:
            acc = row["final_test_acc"]
            # A tagged row (e.g. "bn+bn_only") is compared with the baselines of its own tag.
            tag = row["variant"].partition("+")[2]
            suffix = f"+{tag}" if tag else ""
            base, up = final.get(baseline + suffix), final.get(upper + suffix)
            row["beats_vanilla"] = (None if row["variant"] == baseline + suffix or base is None or not np.isfinite(base)
                                    or not np.isfinite(acc) else bool(acc > base))
            row["gap_to_upper_pp"] = (None if up is None or not np.isfinite(up) or not np.isfinite(acc)
                                      else float((acc - up) * 100.0))
        rows += grows
    return rows


def _pm(mean: float, std: float, n: int, digits: int = 4) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _states_cell(states: Sequence[str]) -> str:
    """The one state of all seeds (``finished``); else each distinct state with its count
    (``2× finished; interrupted at step 120 of 600``)."""
    counts: dict[str, int] = {}
    for st in states:
        counts[st] = counts.get(st, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(st if c == 1 else f"{c}× {st}" for st, c in counts.items())


def summary_markdown(runs, target_acc: float | None = None, baseline: str = "vanilla",
                     upper: str = "bn_gamma_beta", by: Sequence[str] = ("learning_rate",)) -> str:
    """The :func:`summarize` rows as markdown: one captioned table per group."""
    rows = summarize(runs, target_acc, by=by, baseline=baseline, upper=upper)
    out = []
    head = ["variant", "n", "final train loss", "final train acc", "best train loss", "best train acc",
            "final test acc", "best test acc", "epochs to target", f"beats {baseline}",
            f"gap to {upper} (pp)", "diverged", "status"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["group"].items()), []).append(r)
    for gkey, grows in groups.items():
        gname = ", ".join(f"{'lr' if k == 'learning_rate' else k} = {fmt_value(v)}" for k, v in gkey)
        target = grows[0]["target"]
        if target is None:
            tdesc = "no target (no run that did not diverge got a final test accuracy whose 90% is above chance)"
        elif target_acc is None:
            tdesc = f"target test accuracy {target:.2f} (90% of the best final test accuracy of this group, rounded to 0.01)"
        else:
            tdesc = f"target test accuracy {target:.4g} (given)"
        out.append(f"**{gname}** — {tdesc}; mean ± sample std over seeds when n > 1.\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in grows:
            n = r["n"]
            if r["epochs_to_target"] is not None:
                ett = f"{r['epochs_to_target']:.1f}".rstrip("0").rstrip(".") + (f" ({r['reached']}/{n})" if r["reached"] < n else "")
            else:
                ett = "diverged" if r["diverged"] == n else "not reached"
            beats = {None: "—", True: "yes", False: "no"}[r["beats_vanilla"]]
            gap = "—" if r["gap_to_upper_pp"] is None else f"{r['gap_to_upper_pp']:+.2f}"
            div = "no" if not r["diverged"] else ("yes" if n == 1 else f"{r['diverged']}/{n}")
            mark = "" if r["all_finished"] else " †"
            stats = [_pm(r[s], r[s + "_std"], n) + (mark if s.startswith("final") and np.isfinite(r[s]) else "") for s in _STATS]
            cells = [r["variant"], str(n)] + stats + [ett, beats, gap, div, _states_cell(r["states"])]
            out.append("| " + " | ".join(cells) + " |")
        if not all(r["all_finished"] for r in grows):
            out.append("\n† not final: the last values of runs that did not finish (see status).")
        out.append("")
    return "\n".join(out)
