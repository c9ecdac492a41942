"""The ablation summary table ("Dissecting BatchNorm: An Ablation Study on the Core
Components", master thesis, University of Tübingen, 2023; its Table 4.x style).

Per learning-rate group (or any config fields ``by``) and variant, over the seeds of
that variant, every number is a mean with the half-width of its 95% t-interval
(:func:`jaxnorm.analysis.stats.mean_interval`; one seed: the value, "no interval"):

* final and best train_eval loss / accuracy and final / best test accuracy (final = the
  last evaluation a run wrote); a diverged seed is left out of these means and counted
  (its last evaluations are of a broken net, and averaging them with the others would
  hide the divergence in a number); when a seed of the row did not finish (interrupted,
  running, failed) these cells carry a ``†`` and the table's footnote says they are
  last values, not final ones;
* each run's state (:attr:`~jaxnorm.analysis.runs.Run.state_note`: ``finished``,
  ``interrupted at step 120 of 600``, ``diverged at step 13``, ``no records`` for a run
  with an empty ``metrics.jsonl``, which is listed rather than dropped);
* epochs to reach the target test accuracy: per seed the first 0-based epoch whose test
  accuracy is ≥ target, plus 1; averaged over the seeds that reach it. A diverged seed
  never counts as reaching it (its evaluations after the blow-up are of a broken net,
  typically at chance, which a low target would count as a hit); a row where no seed
  reaches it reads ``diverged`` when every seed diverged, else ``not reached``;
* the paired comparison with vanilla (:func:`jaxnorm.analysis.stats.paired_test`, the
  variant's value minus vanilla's of the same seed: mean ± 95% half-width, paired
  t-test p, sign test) of the final training loss, training accuracy and test accuracy;
* whether the variant beats vanilla, by the thesis's criterion (§3.2: a modification is
  beneficial when it improves the Vanilla net's training loss and training accuracy),
  decided by the paired intervals (:func:`jaxnorm.analysis.stats.verdict`): ``yes`` only
  when the training-loss difference's interval lies below zero and the
  training-accuracy difference's above; ``no`` when one lies on the unfavourable side,
  or when the variant diverged on a seed where vanilla did not; ``yes (vanilla
  diverged)`` when vanilla diverged on every paired seed and the variant on none; else
  ``not significant`` (``no test`` with fewer than 2 paired seeds). Test accuracy is not
  part of the criterion and is reported beside it;
* its gap to standard BatchNorm ``bn_gamma_beta`` (the paired final test accuracy
  difference, in percentage points);
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
from jaxnorm.analysis.stats import CONFIDENCE, Interval, Paired, mean_interval, paired_test, verdict

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
NUM_CLASSES = {"digits": 10, "digits32": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
               "mnist1d": 10, "mnist1d_shuffle": 10, "mnist1d_20k": 10, "mnist1d_shuffle_20k": 10}


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


#: The paired comparisons with vanilla: (row key, statistic, favourable sign for the
#: verdict, or None: reported beside it, not part of the thesis's criterion).
PAIRED = (("vs_train_loss", "final_train_loss", -1), ("vs_train_acc", "final_train_acc", +1),
          ("vs_test_acc", "final_test_acc", None))


def _values(runs, name) -> list[float]:
    """The statistic ``name`` of each run, NaN for a diverged one (left out and counted)."""
    split, k, how = _STATS[name]
    return [math.nan if r.diverged else _stat(r, split, k, how) for r in runs]


def _by_seed(runs, name) -> dict:
    """``{seed: value}`` (:func:`_values`) for the seeds that occur once among ``runs``: a
    seed with two runs in one row (two configs the grouping does not tell apart) has no
    partner to pair with."""
    seeds = [r.seed for r in runs]
    return {s: v for s, v in zip(seeds, _values(runs, name)) if seeds.count(s) == 1}


def _paired(a: dict, b: dict) -> Paired:
    seeds = [s for s in a if s in b]
    return paired_test([a[s] for s in seeds], [b[s] for s in seeds])


def beats(variant_runs, baseline_runs) -> str:
    """The "beats vanilla" verdict of the module docstring for the runs of one variant
    against the baseline's, paired by seed."""
    div = {r.seed: r.diverged for r in variant_runs}
    base_div = {r.seed: r.diverged for r in baseline_runs}
    seeds = [s for s in div if s in base_div]
    if not seeds:
        return "no test"
    if any(div[s] and not base_div[s] for s in seeds):
        return "no"
    if all(base_div[s] and not div[s] for s in seeds):
        return "yes (vanilla diverged)"
    tests = [(_paired(_by_seed(variant_runs, stat), _by_seed(baseline_runs, stat)), fav) for _, stat, fav in PAIRED if fav]
    return verdict(*tests)


def summarize(runs, target_acc: float | None = None, by: Sequence[str] = ("learning_rate",),
              baseline: str = "vanilla", upper: str = "bn_gamma_beta") -> list[dict]:
    """One dict per (group, variant), groups sorted, variants in the fixed order. Keys:
    ``group`` (dict of the ``by`` fields), ``variant``, ``n``, ``seeds``, ``target``,
    each statistic of the module docstring as ``<name>`` (mean over the seeds that did
    not diverge) and ``<name>_ci`` (its :class:`~jaxnorm.analysis.stats.Interval`),
    ``epochs_to_target`` (mean over reaching seeds or None), ``reached`` (how many seeds),
    ``vs_train_loss``, ``vs_train_acc``, ``vs_test_acc`` (the paired
    :class:`~jaxnorm.analysis.stats.Paired` comparisons with the baseline; None for the
    baseline itself or without one), ``beats_vanilla`` (the verdict string; None for the
    baseline itself or without one), ``gap_to_upper`` (the Paired final test accuracy
    comparison with the upper baseline; None without an upper run) and
    ``gap_to_upper_pp`` (its mean in percentage points; None without a pair),
    ``diverged`` (how many seeds diverged), ``states`` (each seed's
    :attr:`~jaxnorm.analysis.runs.Run.state_note`), ``all_finished`` (whether every seed
    finished: only then are the ``final_*`` values final)."""
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
            for name in _STATS:
                ci = mean_interval(_values(vr, name))
                row[name], row[name + "_ci"] = ci.mean, ci
            hits = [] if target is None else [e for e in (epochs_to_target(r, target) for r in vr) if e is not None]
            row["epochs_to_target"] = float(np.mean(hits)) if hits else None
            row["reached"] = len(hits)
            row["diverged"] = sum(r.diverged for r in vr)
            row["states"] = [r.state_note for r in vr]
            row["all_finished"] = all(r.finished for r in vr)
            grows.append(row)
        for row in grows:
            # A tagged row (e.g. "bn+bn_only") is compared with the baselines of its own tag.
            tag = row["variant"].partition("+")[2]
            suffix = f"+{tag}" if tag else ""
            vr, base, up = by_variant[row["variant"]], by_variant.get(baseline + suffix), by_variant.get(upper + suffix)
            compare = base is not None and row["variant"] != baseline + suffix
            for name, stat, _ in PAIRED:
                row[name] = _paired(_by_seed(vr, stat), _by_seed(base, stat)) if compare else None
            row["beats_vanilla"] = beats(vr, base) if compare else None
            gap = None if up is None else _paired(_by_seed(vr, "final_test_acc"), _by_seed(up, "final_test_acc"))
            row["gap_to_upper"] = gap
            row["gap_to_upper_pp"] = None if gap is None or gap.n == 0 else float(gap.diff.mean * 100.0)
        rows += grows
    return rows


def _cell(ci: Interval, n: int, digits: int = 4) -> str:
    """The interval's text, with how many seeds went in when a diverged one was left out."""
    return ci.format(digits, say_single=False) + (f" (n = {ci.n})" if ci.n < n and ci.n else "")


def _states_cell(states: Sequence[str]) -> str:
    """The one state of all seeds (``finished``); else each distinct state with its count
    (``2× finished; interrupted at step 120 of 600``)."""
    counts: dict[str, int] = {}
    for st in states:
        counts[st] = counts.get(st, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(st if c == 1 else f"{c}× {st}" for st, c in counts.items())


def _caption(baseline: str) -> str:
    pct = f"{CONFIDENCE:.0%}"
    return (f"mean ± {pct} t-interval half-width over the n seeds (one seed: its value, no interval; diverged seeds "
            f"left out and counted under diverged). Δ: the variant minus {baseline} of the same seed, mean ± {pct} half-width (paired t-test p; "
            f"sign test: seeds above/below, p). beats {baseline}: the criterion of \"Dissecting BatchNorm: An Ablation "
            "Study on the Core Components\" (master thesis, University of Tübingen, 2023, §3.2), lower training loss and "
            "higher training accuracy: yes only when both paired intervals exclude zero on that side, no when one "
            f"excludes it on the other (or the variant diverged where {baseline} did not), else not significant; test "
            "accuracy beside it, not part of the criterion.")


def summary_markdown(runs, target_acc: float | None = None, baseline: str = "vanilla",
                     upper: str = "bn_gamma_beta", by: Sequence[str] = ("learning_rate",)) -> str:
    """The :func:`summarize` rows as markdown: one captioned table per group."""
    rows = summarize(runs, target_acc, by=by, baseline=baseline, upper=upper)
    out = []
    head = ["variant", "n", "final train loss", "final train acc", "best train loss", "best train acc",
            "final test acc", "best test acc", "epochs to target", f"beats {baseline}",
            f"Δ final train loss vs {baseline}", f"Δ final train acc vs {baseline}",
            f"Δ final test acc vs {baseline} (pp)", f"gap to {upper} (pp)", "diverged", "status"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["group"].items()), []).append(r)
    for gkey, grows in groups.items():
        # An empty field (the default placement's tag) names nothing: "lr = 1", not "lr = 1, tag = ".
        gname = ", ".join(f"{'lr' if k == 'learning_rate' else k} = {fmt_value(v)}" for k, v in gkey if v not in ("", None))
        target = grows[0]["target"]
        if target is None:
            tdesc = "no target (no run that did not diverge got a final test accuracy whose 90% is above chance)"
        elif target_acc is None:
            tdesc = f"target test accuracy {target:.2f} (90% of the best final test accuracy of this group, rounded to 0.01)"
        else:
            tdesc = f"target test accuracy {target:.4g} (given)"
        out.append(f"**{gname}** — {tdesc}; {_caption(baseline)}\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in grows:
            n = r["n"]
            if r["epochs_to_target"] is not None:
                ett = f"{r['epochs_to_target']:.1f}".rstrip("0").rstrip(".") + (f" ({r['reached']}/{n})" if r["reached"] < n else "")
            else:
                ett = "diverged" if r["diverged"] == n else "not reached"
            vs = ["—" if r[k] is None else r[k].format(4 if k != "vs_test_acc" else 2, 100.0 if k == "vs_test_acc" else 1.0)
                  for k, _, _ in PAIRED]
            gap = "—" if r["gap_to_upper_pp"] is None else r["gap_to_upper"].diff.format(2, 100.0, sign=True)
            div = "no" if not r["diverged"] else ("yes" if n == 1 else f"{r['diverged']}/{n}")
            mark = "" if r["all_finished"] else " †"
            stats = [_cell(r[s + "_ci"], n) + (mark if s.startswith("final") and np.isfinite(r[s]) else "") for s in _STATS]
            cells = [r["variant"], str(n)] + stats + [ett, r["beats_vanilla"] or "—", *vs, gap, div, _states_cell(r["states"])]
            out.append("| " + " | ".join(cells) + " |")
        if not all(r["all_finished"] for r in grows):
            out.append("\n† not final: the last values of runs that did not finish (see status).")
        out.append("")
    return "\n".join(out)
