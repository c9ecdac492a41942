"""The initialization-scale study's analysis (``experiments/init_scale.py``): outcomes,
per-layer profiles, weight-norm ratios, plots and ``summary.md``, from the stored runs.

Reads only what :func:`jaxnorm.train.fit` and the study wrote under a study root:
``study.json`` (the setup and seeds), and per run folder ``config.json`` (norm, c =
``model_kwargs.kernel_init_kwargs.c``, seed, depth, ``num_classes``), ``metrics.jsonl``
(``train``, ``eval``, ``divergence`` lines), ``status.json`` and ``trajectories.npz``
(the ``layer_statistics/...`` arrays of :class:`jaxnorm.observers.layer_statistics.LayerStatistics`).
Nothing here trains.

Over seeds (the study trains three by default): every summary number is a mean with
its 95% t-interval (:func:`jaxnorm.analysis.stats.mean_interval`; a diverged seed is
left out of a loss or an accuracy and counted), outcomes are counted per (norm, c), and
the comparisons -- a normalized net's weight growth against the unnormalized one's, the
spread of the final accuracy over c (:func:`spreads`) against the unnormalized one's --
are paired by seed (:func:`jaxnorm.analysis.stats.paired_test`) with a verdict (holds /
does not hold / not significant). Curves and per-layer profiles are the mean over seeds
with the 95% band (:func:`jaxnorm.analysis.curves.mean_band`; on log axes the geometric
mean, the interval of the log).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from jaxnorm.analysis.curves import mean_band, stack_series
from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import Run, find_runs
from jaxnorm.analysis.stats import CONFIDENCE, Interval, Paired, mean_interval, paired_test
from jaxnorm.analysis.stats import verdict as stats_verdict
from jaxnorm.results import read_json

#: What :func:`classify` returns.
OUTCOMES = ("diverged", "no progress", "trained")

#: Thresholds of :func:`classify` (the study's defaults too).
EXPLODE_FACTOR = 10.0
PROGRESS_FRACTION = 0.1
TAIL_FRACTION = 0.1

#: The lecture's outcomes for vanilla SGD without normalization, by c.
LECTURE_OUTCOMES = {1.0: "no progress", 2.0: "trained", 3.0: "diverged"}
#: ‖W_T‖/‖W_0‖ within this relative distance of 1 in every layer: "the scale persisted".
PERSIST_TOLERANCE = 0.25
#: Resolution of the plots (small PNGs for the README).
DPI = 100
#: The observer whose arrays the analysis reads.
OBSERVER = "layer_statistics"


def classify(
    losses: Sequence[float],
    *,
    chance: Optional[float] = None,
    explode_factor: float = EXPLODE_FACTOR,
    progress_fraction: float = PROGRESS_FRACTION,
    tail_fraction: float = TAIL_FRACTION,
) -> str:
    """The outcome of a training-loss curve: one of :data:`OUTCOMES`, ``'diverged'``,
    ``'no progress'`` or ``'trained'``.

    Args:
      losses: ``(T,)`` loss values in training order, ``losses[0]`` the initial loss;
        finite values must be ≥ 0 (a cross-entropy); NaN/±inf are allowed.
      chance: the chance-level loss (``ln K`` for K balanced classes), or None.
      explode_factor: > 1.
      progress_fraction: in (0, 1).
      tail_fraction: in (0, 1]: the share of the curve averaged as its final value.

    The rule, in order:

    * **diverged**: any value is non-finite, or any value exceeds ``explode_factor`` ×
      ``max(losses[0], chance)`` (an explosion SGD may not have turned into NaN yet);
    * **no progress**: the final loss -- the mean of the last
      ``max(1, round(tail_fraction · T))`` values, so one noisy step decides nothing --
      is above ``(1 − progress_fraction)`` × the reference ``min(losses[0], chance)``:
      it did not get ``progress_fraction`` below where it started *and* below chance (a
      run starting far above chance, e.g. at c = 3, must still beat chance). A curve of
      one value has made no progress;
    * **trained** otherwise.

    Raises:
      ValueError: an empty or not 1-D curve, a negative finite value, or a threshold
        out of range.
    """
    a = np.asarray(losses, dtype=np.float64)
    if a.ndim != 1 or not a.size:
        raise ValueError(f"classify needs a non-empty 1-D loss curve, got shape {a.shape}.")
    finite = np.isfinite(a)
    if np.any(a[finite] < 0):
        raise ValueError(f"classify: losses must be >= 0 (a cross-entropy), got min {a[finite].min():g}.")
    if chance is not None and not (math.isfinite(chance) and chance > 0):
        raise ValueError(f"classify: chance must be finite and > 0, got {chance!r}.")
    if not explode_factor > 1:
        raise ValueError(f"classify: explode_factor must be > 1, got {explode_factor!r}.")
    if not 0 < progress_fraction < 1:
        raise ValueError(f"classify: progress_fraction must be in (0, 1), got {progress_fraction!r}.")
    if not 0 < tail_fraction <= 1:
        raise ValueError(f"classify: tail_fraction must be in (0, 1], got {tail_fraction!r}.")
    if not finite.all():
        return "diverged"
    start = a[0]
    if np.any(a > explode_factor * max(start, chance or 0.0)):
        return "diverged"
    final = a[-max(1, round(tail_fraction * a.size)) :].mean()
    reference = start if chance is None else min(start, chance)
    return "no progress" if a.size == 1 or final > (1 - progress_fraction) * reference else "trained"


# --------------------------------------------------------------------------- reading runs


@dataclasses.dataclass
class InitScaleRun:
    """One stored run of the study: its identity, records and layer statistics.

    Attributes:
      norm, c, seed: what tells the runs apart (from ``config.json``).
      run: the loaded folder (:class:`jaxnorm.analysis.runs.Run`).
      arrays: the ``layer_statistics`` arrays without the prefix: ``steps`` ``(P,)``,
        ``loss``, ``acc`` ``(P,)``, ``activation_rms``, ``grad_norm``, ``weight_norm``
        ``(P, D)``.
      chance: ln K, K = the model's ``num_classes``.
    """

    norm: str
    c: float
    seed: int
    run: Run
    arrays: dict
    chance: float

    @property
    def name(self) -> str:
        return self.run.path.name


def _from_run(run: Run) -> InitScaleRun:
    kwargs = run.config.get("model_kwargs") or {}
    try:
        c = float((kwargs.get("kernel_init_kwargs") or {})["c"])
        classes = int(kwargs["num_classes"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{run.path} is not an init_scale run (config.json needs model_kwargs.kernel_init_kwargs.c and model_kwargs.num_classes)."
        ) from None
    prefix = OBSERVER + "/"
    arrays = {k[len(prefix) :]: np.asarray(v) for k, v in run.trajectories.items() if k.startswith(prefix)}
    return InitScaleRun(str(run.config.get("norm")), c, int(run.config.get("seed", 0)), run, arrays, math.log(classes))


def load_runs(root) -> list[InitScaleRun]:
    """Every run stored under the study root ``root``, ordered by norm (the order of
    ``study.json``'s setup, others after), c, seed.

    Raises:
      ValueError: no stored runs under ``root``, or a run folder that is not one of
        this study's.
    """
    root = pathlib.Path(root)
    runs = [_from_run(r) for r in find_runs(root)] if root.is_dir() else []
    if not runs:
        raise ValueError(f"no stored runs under {root}; train first (without --plot-only).")
    order = list(study_setup(root).get("norms") or [])
    rank = lambda n: order.index(n) if n in order else len(order)
    return sorted(runs, key=lambda r: (rank(r.norm), r.norm, r.c, r.seed))


def study_setup(root) -> dict:
    """The setup stored in ``root/study.json`` ({} if there is none)."""
    path = pathlib.Path(root) / "study.json"
    return dict(read_json(path).get("setup") or {}) if path.is_file() else {}


def loss_curve(r: InitScaleRun) -> list[float]:
    """The training-loss curve: the probe batch's loss at initialization (step 0), then
    every ``train`` line (the mean over the steps since the previous line), with NaN
    appended when the run stopped for divergence (``fit`` writes no line for a window
    that diverged)."""
    init = r.arrays.get("loss")
    curve = ([float(init[0])] if init is not None and len(init) and int(r.arrays["steps"][0]) == 0 else [])
    curve += [float(m["loss"]) for m in r.run.metrics if m.get("kind") == "train"]
    return curve + [math.nan] if r.run.diverged else curve



def final_loss(r: InitScaleRun, tail_fraction: float = TAIL_FRACTION) -> float:
    """The mean training loss over the last ``tail_fraction`` of the steps recorded (at
    least one line): the ``train`` lines' step-weighted mean (``fit`` writes a line every
    ``log_every_steps`` steps *and* at every epoch end, so one line may cover only a few
    steps). NaN without train lines."""
    train = [m for m in r.run.metrics if m.get("kind") == "train"]
    if not train:
        return float("nan")
    need = max(1, round(tail_fraction * sum(int(m.get("steps", 1)) for m in train)))
    total = count = 0.0
    for m in reversed(train):
        total += float(m["loss"]) * int(m.get("steps", 1))
        count += int(m.get("steps", 1))
        if count >= need:
            break
    return total / count


def weight_ratio(r: InitScaleRun) -> np.ndarray:
    """``(D,)`` ‖W_T‖_F / ‖W_0‖_F per layer: the last probe (at the final step) over the
    first (step 0); all NaN for a run that diverged or did not finish."""
    w, steps = r.arrays.get("weight_norm"), r.arrays.get("steps")
    if w is None or not len(w):
        return np.full(0, np.nan)
    done = r.run.status.get("status") == "finished" and int(steps[0]) == 0 and int(steps[-1]) == r.run.status.get("step")
    return w[-1] / w[0] if done else np.full(w.shape[1], np.nan)


def summarize(r: InitScaleRun, *, explode_factor: float = EXPLODE_FACTOR, progress_fraction: float = PROGRESS_FRACTION) -> dict:
    """A run in numbers: ``outcome`` (:func:`classify` of :func:`loss_curve`, chance ln K),
    ``initial_loss`` (probe batch at step 0), ``final_loss`` (:func:`final_loss`),
    ``eval_acc`` (the last eval line), ``diverged_at`` (step or None) and ``divergence``
    (its reason or None); at initialization ``act_first`` / ``act_last_hidden`` /
    ``act_logits`` (activation RMS of layers 1, D−1, D) and ``grad_first`` /
    ``grad_last`` (‖∂L/∂W‖ of layers 1 and D); ``ratio_min`` / ``ratio_median`` /
    ``ratio_max`` of :func:`weight_ratio`. NaN where unknown."""
    evals = [m for m in r.run.metrics if m.get("kind") == "eval"]
    div = r.run.divergence
    curve = loss_curve(r)
    nan = float("nan")
    act, grad = r.arrays.get("activation_rms"), r.arrays.get("grad_norm")
    at_init = lambda a, i: float(a[0][i]) if a is not None and len(a) else nan
    ratio = weight_ratio(r)
    ratio = ratio[np.isfinite(ratio)]
    stat = lambda f: float(f(ratio)) if ratio.size else nan
    return {
        "outcome": classify(curve, chance=r.chance, explode_factor=explode_factor, progress_fraction=progress_fraction) if curve else "no progress",
        "initial_loss": curve[0] if curve else nan,
        "final_loss": final_loss(r),
        "eval_acc": float(evals[-1]["acc"]) if evals else nan,
        "diverged_at": int(div["step"]) if div else None,
        "divergence": div["reason"] if div else None,
        "act_first": at_init(act, 0),
        "act_last_hidden": at_init(act, -2),
        "act_logits": at_init(act, -1),
        "grad_first": at_init(grad, 0),
        "grad_last": at_init(grad, -1),
        "ratio_min": stat(np.min),
        "ratio_median": stat(np.median),
        "ratio_max": stat(np.max),
    }


def _thresholds(setup: dict) -> dict:
    return {
        "explode_factor": float(setup.get("explode_factor", EXPLODE_FACTOR)),
        "progress_fraction": float(setup.get("progress_fraction", PROGRESS_FRACTION)),
    }


# --------------------------------------------------------------------------- over seeds


def _groups(runs) -> dict[tuple, list[InitScaleRun]]:
    """The runs by (norm, c), in the order of ``runs``; each a list over seeds."""
    out: dict[tuple, list[InitScaleRun]] = {}
    for r in runs:
        out.setdefault((r.norm, r.c), []).append(r)
    return out


def _counts(outcomes: Sequence[str]) -> str:
    """``trained 3/3`` or ``no progress 1/3, trained 2/3``."""
    return ", ".join(f"{o} {outcomes.count(o)}/{len(outcomes)}" for o in OUTCOMES if o in outcomes)


def _ci(iv: Interval, spec: str = ".3g") -> str:
    """A mean over seeds and its 95% half-width in significant figures (the values span
    1e-7 to 1e5, which fixed decimals cannot show): ``0.412 ± 0.031``; one value: the
    value; none: ``—``; ``(k of n)`` when non-finite values (diverged seeds) were left out."""
    if iv.n == 0 or not math.isfinite(iv.mean):
        return "—"
    out = format(iv.mean, spec) + (f" ± {iv.half_width:.2g}" if iv.n > 1 else "")
    return out + (f" ({iv.n} of {iv.n + iv.excluded})" if iv.excluded else "")


def _word(test: Paired, favourable: int) -> str:
    """The README's verdict words for one paired criterion (:func:`jaxnorm.analysis.stats.verdict`)."""
    v = stats_verdict((test, favourable))
    return {"yes": "holds", "no": "does not hold"}.get(v, f"{v} (n = {test.n})")


def _paired_by_seed(a: Sequence[InitScaleRun], b: Sequence[InitScaleRun], value) -> Paired:
    """``value(run)`` of ``a`` minus that of ``b``, paired by seed (the seeds both have)."""
    va, vb = {r.seed: value(r) for r in a}, {r.seed: value(r) for r in b}
    seeds = sorted(set(va) & set(vb))
    return paired_test([va[s] for s in seeds], [vb[s] for s in seeds])


def spreads(runs, summaries: dict, norm: str, scales: Sequence[float]) -> dict:
    """How much the outcome of ``norm`` depends on c, per seed, over the c of ``scales``:
    ``{seed: (acc_spread, loss_ratio)}``. ``acc_spread``: max − min over c of the final
    test accuracy, a diverged run counting as chance accuracy 1/K (a NaN network predicts
    one constant class); ``loss_ratio``: max / min over c of the final training loss,
    ``inf`` when some c diverged. NaN for a seed that lacks one of the c (or an accuracy);
    both NaN with fewer than two c."""
    out = {}
    for seed in sorted({r.seed for r in runs if r.norm == norm}):
        got = {r.c: r for r in runs if r.norm == norm and r.seed == seed}
        if len(scales) < 2 or not set(scales) <= set(got):
            out[seed] = (math.nan, math.nan)
            continue
        t = [summaries[got[c].name] for c in scales]
        div = [x["outcome"] == "diverged" for x in t]
        acc = [math.exp(-got[c].chance) if d else x["eval_acc"] for c, d, x in zip(scales, div, t)]
        loss = [x["final_loss"] for x in t]
        acc_spread = max(acc) - min(acc) if all(map(math.isfinite, acc)) else math.nan
        ok = all(math.isfinite(v) and v > 0 for v in loss)
        out[seed] = (acc_spread, math.inf if any(div) else max(loss) / min(loss) if ok else math.nan)
    return out


# --------------------------------------------------------------------------- plots


def _c_colors(plt, scales) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {c: cycle[i % len(cycle)] for i, c in enumerate(sorted(set(scales)))}


def _figure(plt, rows: int, cols: int, size, **kwargs):
    # Constrained layout is done within the one draw savefig makes (tight_layout draws twice).
    return plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained", **kwargs)


def _save(plt, fig, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _band(ax, x, rows, color, label, *, log: bool, **style) -> None:
    """The mean over ``rows`` (seeds × points) with its 95% t-interval as a band
    (:func:`jaxnorm.analysis.curves.mean_band`); ``log``: mean and interval of log(value),
    drawn back as exp (the geometric mean; a band a log axis can draw). Non-finite and,
    with ``log``, non-positive values are left out per point. One finite point: a marker."""
    v = np.asarray(rows, np.float64).reshape(len(rows), -1)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.log(np.where(np.isfinite(v) & (v > 0), v, np.nan))
    mean, half, _ = mean_band(v)
    lo, hi = mean - half, mean + half
    if log:
        mean, lo, hi = np.exp(mean), np.exp(lo), np.exp(hi)
    x = np.asarray(x)
    ok = np.isfinite(mean)
    ax.plot(x, mean, color=color, label=label, marker="o" if ok.sum() == 1 else None, **style)
    band = ok & np.isfinite(half)
    if band.any():
        ax.fill_between(x[band], lo[band], hi[band], color=color, alpha=0.2, lw=0)


def _loss_series(r: InitScaleRun) -> tuple[list, list]:
    train = [m for m in r.run.metrics if m.get("kind") == "train"]
    curve = loss_curve(r)
    return [0] + [m["step"] for m in train], [curve[0] if curve else math.nan] + [m["loss"] for m in train]


def _seeds_note(runs) -> str:
    n = len({r.seed for r in runs})
    return f"mean over {n} seeds (log axes: geometric mean), band: its {CONFIDENCE:.0%} t-interval" if n > 1 else "one seed"


def _plot_losses(plt, path, runs, norms, colors, summaries, every) -> None:
    # Not sharey: a c = 3 vanilla net starts near 1e5 and would flatten the other panels.
    fig, axes = _figure(plt, 1, len(norms), (5 * len(norms), 3.8))
    groups = _groups(runs)
    for ax, norm in zip(axes[0], norms):
        for (n, c), rs in groups.items():
            if n != norm:
                continue
            steps, vals = stack_series([_loss_series(r) for r in rs])
            label = f"c = {c:g}: " + _counts([summaries[r.name]["outcome"] for r in rs])
            _band(ax, steps, vals, colors[c], label, log=True)
            for r in rs:  # where a seed's loss left the finite numbers or exploded
                if r.run.divergence:
                    ax.plot([r.run.divergence["step"]], [_positive([_loss_series(r)[1][-1]])[0]], "x", color=colors[c], ms=9, mew=2)
        ax.axhline(runs[0].chance, color="grey", ls=":", lw=1, label="chance (ln K)")
        ax.set_yscale("log")
        ax.set_title(f"{norm}: training loss (x: a seed diverged)", fontsize=10)
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel(f"training loss (mean of <= {every} steps; 0: probe batch)" if every else "training loss")
    fig.suptitle(_seeds_note(runs), fontsize=8)
    _save(plt, fig, path)


def _positive(a) -> np.ndarray:
    """Values a log axis can show (non-finite and non-positive ones become gaps)."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _plot_layer_profiles(plt, path, runs, norms, colors, with_end: bool) -> None:
    """Rows: activation RMS, gradient norm; a panel per norm; per (norm, c) the per-layer
    profile at initialization over the seeds -- and, ``with_end``, dashed, with the
    profile at each seed's last probe solid (the end, or the last probe before a
    divergence)."""
    keys = (("activation_rms", "activation RMS (layer output)"), ("grad_norm", "‖∂L/∂W_i‖_F"))
    fig, axes = _figure(plt, 2, len(norms), (5 * len(norms), 7), sharex=True)
    groups = _groups(runs)
    for j, norm in enumerate(norms):
        for i, (key, label) in enumerate(keys):
            ax = axes[i, j]
            for (n, c), rs in groups.items():
                arrays = [r.arrays[key] for r in rs if n == norm and r.arrays.get(key) is not None and len(r.arrays[key])]
                if not arrays:
                    continue
                layers = np.arange(1, arrays[0].shape[1] + 1)
                if with_end:
                    _band(ax, layers, [a[0] for a in arrays], colors[c], None, log=True, ls="--", lw=1)
                    _band(ax, layers, [a[-1] for a in arrays], colors[c], f"c = {c:g}, last probe", log=True)
                else:
                    _band(ax, layers, [a[0] for a in arrays], colors[c], f"c = {c:g}", log=True, ms=3)
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{norm}: {label}" + (", init (dashed) and end" if with_end else " at initialization"), fontsize=10)
            ax.legend(fontsize=7)
        axes[1, j].set_xlabel("layer i (D = logits)")
    fig.suptitle(_seeds_note(runs), fontsize=8)
    _save(plt, fig, path)


def _plot_weight_ratio(plt, path, runs, norms, colors) -> None:
    fig, axes = _figure(plt, 1, len(norms), (5 * len(norms), 3.8), sharey=True)
    groups = _groups(runs)
    for ax, norm in zip(axes[0], norms):
        for (n, c), rs in groups.items():
            if n != norm:
                continue
            ratios = [weight_ratio(r) for r in rs]
            finished = [x for x in ratios if np.isfinite(x).any()]
            if finished:
                _band(ax, np.arange(1, len(finished[0]) + 1), finished, colors[c], f"c = {c:g} ({len(finished)} of {len(rs)} finished)", log=False)
            else:
                ax.plot([], [], color=colors[c], label=f"c = {c:g}: diverged")
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set_title(f"{norm}: ‖W_T‖_F / ‖W_0‖_F per layer", fontsize=10)
        ax.set_xlabel("layer i")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("weight-norm ratio after training")
    fig.suptitle(_seeds_note(runs).replace(" (log axes: geometric mean)", ""), fontsize=8)
    _save(plt, fig, path)


# --------------------------------------------------------------------------- summary


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else float("nan")


def _norms(runs) -> list[str]:
    return list(dict.fromkeys(r.norm for r in runs))


def _claim1(runs, s, split: str) -> list[str]:
    groups = _groups(runs)
    lines = [
        "## Claim 1: without normalization, c = 3 gives NaN, c = 2 trains, c = 1 makes no progress",
        "",
        "(Lecture, \"Initialization vs. optimization\": vanilla SGD on MNIST.) Per (norm, c) over its seeds: the outcomes "
        "counted, and mean ± 95% t-interval of the losses and the accuracy over the seeds that did not diverge "
        "(`(k of n)`: k seeds entered).",
        "",
        f"| norm | c | n | diverged | no progress | trained | initial loss | final train loss (last 10% of steps) | {split} acc | diverged at step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (norm, c), rs in groups.items():
        t = [s[r.name] for r in rs]
        oc = [x["outcome"] for x in t]
        ok = [x for x in t if x["outcome"] != "diverged"]
        nan = float("nan")
        steps = sorted(x["diverged_at"] for x in t if x["diverged_at"] is not None)
        lines.append(
            f"| {norm} | {c:g} | {len(rs)} | " + " | ".join(f"{oc.count(o)}/{len(oc)}" for o in OUTCOMES) + " | "
            f"{_ci(mean_interval([x['initial_loss'] for x in t]))} | "
            f"{_ci(mean_interval([x['final_loss'] if x in ok else nan for x in t]), '.4g')} | "
            f"{_ci(mean_interval([x['eval_acc'] if x in ok else nan for x in t]))} | {', '.join(map(str, steps)) or '-'} |"
        )
    lines.append("")
    vanilla = {c: [s[r.name]["outcome"] for r in rs] for (n, c), rs in groups.items() if n == "vanilla" and c in LECTURE_OUTCOMES}
    if vanilla:
        per = []
        for c, oc in vanilla.items():
            hit = oc.count(LECTURE_OUTCOMES[c])
            word = "holds" if hit == len(oc) else "does not hold" if hit == 0 else f"holds in {hit} of {len(oc)} seeds"
            per.append(f"c = {c:g} {LECTURE_OUTCOMES[c]}: {_counts(oc)}, {word}")
        agree = all(o == LECTURE_OUTCOMES[c] for c, oc in vanilla.items() for o in oc)
        lines += [
            "Without normalization, against the lecture: " + "; ".join(per)
            + f". Claim 1 {'holds' if agree else 'does not hold'} here (every seed of every c)."
            + "".join(f" {r.name} stopped at step {s[r.name]['diverged_at']}: {s[r.name]['divergence']}." for r in runs if r.norm == "vanilla" and s[r.name]["divergence"]),
            "",
        ]
    return lines


def _why(runs, s, d: int, width: int) -> list[str]:
    lines = [
        "## Why: the signal at initialization",
        "",
        "With zero biases, E[mean z_{i+1}²] = (c/2) · mean z_i² for z = relu(W z) (half of a symmetric pre-activation is cut), "
        f"so without normalization the RMS of layer {d - 1}'s output over that of layer 1 should be about (c/2)^(({d} - 2)/2); "
        "the gradients ‖∂L/∂W_i‖ pass back through the same matrices. With BN or LayerNorm every hidden layer's output is "
        "relu of a normalized pre-activation: RMS ≈ √(1/2) ≈ 0.71 whatever c, but the gradients need not be flat (deep BN nets "
        "without skip connections have gradients growing exponentially towards the input at initialization, Yang et al. 2019, "
        "\"A mean field theory of batch normalization\"). Probe batch at initialization, mean ± 95% t-interval over the seeds:",
        "",
        f"| norm | c | n | act RMS layer 1 | act RMS layer {d - 1} | measured ratio | (c/2)^(({d}-2)/2) | measured / law | logits RMS | ‖∂L/∂W_1‖ | ‖∂L/∂W_{d}‖ | ‖∂L/∂W_1‖ / ‖∂L/∂W_{d}‖ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (norm, c), rs in _groups(runs).items():
        t = [s[r.name] for r in rs]
        law = (c / 2) ** ((d - 2) / 2) if norm == "vanilla" else None
        measured = [_ratio(x["act_last_hidden"], x["act_first"]) for x in t]
        col = lambda k: _ci(mean_interval([x[k] for x in t]))
        lines.append(
            f"| {norm} | {c:g} | {len(rs)} | {col('act_first')} | {col('act_last_hidden')} | {_ci(mean_interval(measured))} | {_fmt(law)} | "
            f"{_ci(mean_interval([m / law for m in measured])) if law else '-'} | {col('act_logits')} | {col('grad_first')} | {col('grad_last')} | "
            f"{_ci(mean_interval([_ratio(x['grad_first'], x['grad_last']) for x in t]))} |"
        )
    if any(r.norm == "vanilla" for r in runs):
        # Within a seed the vanilla kernels of every c are the same draws times √c and relu
        # is positively homogeneous, so measured / law is one number per seed.
        lines += [
            "",
            "Without normalization measured / law is the same for every c of a seed (its kernels are the same draws scaled by "
            "√c and ReLU is positively homogeneous): it is the fluctuation of one finite-width draw (the log of a layer's mean "
            f"square varies by about √(5/n) per layer: over {d - 2} layers of {width}, a factor of about "
            f"{math.exp(0.5 * math.sqrt(5 * max(d - 2, 0) / width)):.2g} in the RMS either way); its spread over seeds is that fluctuation.",
        ]
    return lines + [""]


def _persist(values: Sequence[float], low: bool) -> str:
    """Whether the seeds' min (``low``) or max ratio stays within :data:`PERSIST_TOLERANCE`
    of 1, decided by its 95% interval."""
    iv = mean_interval(values)
    if iv.n < 2:
        return f"no test (n = {iv.n})"
    bound = 1 - PERSIST_TOLERANCE if low else 1 + PERSIST_TOLERANCE
    inside, outside = (iv.low >= bound, iv.high < bound) if low else (iv.high <= bound, iv.low > bound)
    return "holds" if inside else "does not hold" if outside else f"not significant (n = {iv.n})"


def _claim2(runs, s) -> list[str]:
    groups = _groups(runs)
    lines = [
        "## Claim 2: the scales set at initialization persist (‖W_T‖/‖W_0‖ ≈ 1 in every layer)",
        "",
        "(Lecture: \"even when trained successfully, the effects/scales present at initialization *persist* throughout training\".) "
        f"Per (norm, c), over the seeds that did not diverge: the smallest, median and largest layer ratio, mean ± 95% t-interval; "
        f"\"persists\": every layer within {PERSIST_TOLERANCE:.0%} of 1, counted over seeds, and the verdict: the interval "
        f"of the largest ratio below {1 + PERSIST_TOLERANCE:g} and that of the smallest above {1 - PERSIST_TOLERANCE:g} (holds), "
        "one of them beyond its bound (does not hold), else not significant.",
        "",
        "| norm | c | n finished | min ‖W_T‖/‖W_0‖ | median | max | persists (seeds) | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (norm, c), rs in groups.items():
        t = [s[r.name] for r in rs if math.isfinite(s[r.name]["ratio_min"])]
        if not t:
            continue
        ok = [x["ratio_min"] >= 1 - PERSIST_TOLERANCE and x["ratio_max"] <= 1 + PERSIST_TOLERANCE for x in t]
        lo, hi = _persist([x["ratio_min"] for x in t], True), _persist([x["ratio_max"] for x in t], False)
        word = hi if lo == "holds" else lo if hi == "holds" or lo == "does not hold" else hi
        lines.append(
            f"| {norm} | {c:g} | {len(t)} | {_ci(mean_interval([x['ratio_min'] for x in t]), '.4g')} | "
            f"{_ci(mean_interval([x['ratio_median'] for x in t]), '.4g')} | {_ci(mean_interval([x['ratio_max'] for x in t]), '.4g')} | "
            f"{sum(ok)}/{len(t)} | {word} |"
        )
    pairs = []
    for (norm, c), rs in groups.items():
        base = groups.get(("vanilla", c))
        if norm == "vanilla" or not base:
            continue
        p = _paired_by_seed(rs, base, lambda r: s[r.name]["ratio_max"])
        if p.n:
            pairs.append(f"| {norm} − vanilla | {c:g} | {p.format(3)} | {_word(p, +1)} |")
    if pairs:
        lines += [
            "",
            "Does normalization let the weights grow? The largest layer ratio, normalized minus unnormalized, paired by seed "
            "(mean ± 95% t-interval, paired t-test p, sign test); \"holds\": the normalized net's weights grew more.",
            "",
            "| comparison | c | Δ max ‖W_T‖/‖W_0‖ | grows more |",
            "|---|---:|---:|---|",
            *pairs,
        ]
    lines += [
        "",
        "A weight layer followed by BN or LayerNorm is invariant to its weights' scale, so its gradient is orthogonal to W and "
        "plain SGD can only grow ‖W‖ (‖W − ηg‖² = ‖W‖² + η²‖g‖²): where its gradients are large (BN's first layers, "
        "see \"Why\"), the norm grows. Where the claim holds, networks trained from different c keep their weight norms in "
        "the ratio √c of their initializations.",
        "",
    ]
    return lines


def _claim3(runs, s, split: str) -> list[str]:
    by_norm = {norm: {c: [s[r.name]["outcome"] for r in rs] for (n, c), rs in _groups(runs).items() if n == norm} for norm in _norms(runs)}
    lines = [
        "## Claim 3: normalization removes the sensitivity to c",
        "",
        f"Per norm and seed, how much the result depends on c: the spread of the final {split} accuracy over c (max − min; "
        "a diverged run counts as chance accuracy 1/K, what a NaN network's constant prediction scores) and the ratio of "
        "the largest to the smallest final training loss over c (`inf` in a seed where some c diverged); mean ± 95% "
        "t-interval over seeds. Paired by seed with the unnormalized net over the c both have: Δ accuracy spread (mean ± "
        "95% t-interval, paired t-test p, sign test); \"holds\": the interval lies below zero.",
        "",
        f"| norm | n | outcomes over c | every c trained (seeds) | {split}-acc spread over c | max/min final loss over c | Δ acc spread vs vanilla | sensitivity removed |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for norm, per_c in by_norm.items():
        sp = spreads(runs, s, norm, sorted(per_c))
        seeds = sorted(sp)
        every = sum(all(s[r.name]["outcome"] == "trained" for r in runs if r.norm == norm and r.seed == seed) for seed in seeds)
        loss = [sp[x][1] for x in seeds]
        inf = sum(v == math.inf for v in loss)
        loss_cell = _ci(mean_interval(loss)) if inf < len(loss) else "inf (a c diverged)"
        if inf and inf < len(loss):
            loss_cell += f"; inf in {inf}"
        delta = word = "-"
        common = sorted(set(per_c) & set(by_norm.get("vanilla", {})))
        if norm != "vanilla" and len(common) > 1:
            mine, base = spreads(runs, s, norm, common), spreads(runs, s, "vanilla", common)
            both = sorted(set(mine) & set(base))
            p = paired_test([mine[x][0] for x in both], [base[x][0] for x in both])
            delta, word = p.format(3), _word(p, -1)
        outcomes = "; ".join(f"c={c:g}: {_counts(o)}" for c, o in per_c.items())
        lines.append(
            f"| {norm} | {len(seeds)} | {outcomes} | {every}/{len(seeds)} | {_ci(mean_interval([sp[x][0] for x in seeds]))} | {loss_cell} | {delta} | {word} |"
        )
    lines += [
        "",
        "A normalized layer is invariant to its weights' scale, so c no longer scales the signal but the effective step size "
        "of those weights (lr/‖W‖², ∝ lr/c), and the unnormalized output layer still scales the logits by √c: what is left "
        "of the sensitivity is in the spreads above.",
        "",
    ]
    return lines


def _per_run(runs, s, split: str) -> list[str]:
    lines = [
        "## Per run",
        "",
        f"| norm | c | seed | outcome | initial loss | final train loss | {split} acc | diverged at step | min ‖W_T‖/‖W_0‖ | max ‖W_T‖/‖W_0‖ |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        t = s[r.name]
        lines.append(
            f"| {r.norm} | {r.c:g} | {r.seed} | {t['outcome']} | {_fmt(t['initial_loss'])} | "
            f"{_fmt(None if t['diverged_at'] is not None else t['final_loss'], '.4g')} | {_fmt(t['eval_acc'], '.3f')} | {_fmt(t['diverged_at'], 'd')} | "
            f"{_fmt(t['ratio_min'], '.4g')} | {_fmt(t['ratio_max'], '.4g')} |"
        )
    return lines + [""]


def summary_markdown(root) -> str:
    """The lecture's claims and jaxnorm's numbers, from the stored runs under ``root``
    (:func:`load_runs`): the outcomes per (norm, c) counted over seeds with the losses
    and accuracy as mean ± 95% t-interval (:func:`jaxnorm.analysis.stats.mean_interval`),
    the initial per-layer signal against the (c/2)^(D/2) law, the weight-norm ratios
    with paired normalized − unnormalized tests, the spread over c with a paired test
    against the unnormalized net (:func:`jaxnorm.analysis.stats.paired_test`), a verdict
    per claim, and a table per run."""
    runs = load_runs(root)
    setup = study_setup(root)
    th = _thresholds(setup)
    s = {r.name: summarize(r, **th) for r in runs}
    cfg = runs[0].run.config
    kw = cfg.get("model_kwargs") or {}
    d = int(kw.get("depth", 0)) or int(runs[0].arrays.get("weight_norm", np.zeros((0, 0))).shape[-1])
    split = (cfg.get("eval_splits") or ["eval"])[0]
    seeds = sorted({r.seed for r in runs})
    lines = [
        f"# Initialization scale: {setup.get('name', pathlib.Path(root).name)}",
        "",
        f"{d}-layer {kw.get('activation', 'relu')} MLP, width {kw.get('width')}, W_i ~ N(0, c/n) (biases 0), on {cfg.get('dataset')}"
        + (f" (first {cfg['train_subset']} examples)" if cfg.get("train_subset") else "")
        + f"; plain SGD, lr {cfg.get('learning_rate'):g}, batch {cfg.get('batch_size')}, {cfg.get('max_steps')} steps, the same for every run; "
        f"seeds {', '.join(map(str, seeds))} (n = {len(seeds)}; intervals are 95% t-intervals over seeds, comparisons paired by seed). "
        f"Training stops where the loss is non-finite or above {th['explode_factor']:g} x its first step's "
        f"(fit's divergence rule). Outcome: `classify` of the training-loss curve (the probe batch's loss at step 0, then the mean loss "
        f"of every {cfg.get('log_every_steps')} steps): diverged: non-finite or above {th['explode_factor']:g} x max(initial, chance); "
        f"no progress: final loss, the mean of the last 10% of the curve, above {1 - th['progress_fraction']:g} x min(initial, chance); "
        "trained otherwise.",
        "",
    ]
    lines += _claim1(runs, s, split) + _why(runs, s, d, int(kw.get("width") or 1)) + _claim2(runs, s) + _claim3(runs, s, split) + _per_run(runs, s, split)
    return "\n".join(lines)


def verdict(root) -> str:
    """One line: the outcome of every (norm, c) (over seeds) and whether claim 1 holds."""
    runs = load_runs(root)
    th = _thresholds(study_setup(root))
    by: dict[tuple, list[str]] = {}
    for r in runs:
        by.setdefault((r.norm, r.c), []).append(summarize(r, **th)["outcome"])
    parts = []
    for norm in _norms(runs):
        parts.append(f"{norm}: " + ", ".join(f"c={c:g} {'/'.join(dict.fromkeys(o))}" for (n, c), o in by.items() if n == norm))
    vanilla = {c: o for (n, c), o in by.items() if n == "vanilla" and c in LECTURE_OUTCOMES}
    claim = ""
    if vanilla:
        claim = "; claim 1 " + ("holds" if all(x == LECTURE_OUTCOMES[c] for c, o in vanilla.items() for x in o) else "does not hold")
    return "init_scale: " + "; ".join(parts) + claim


def write_report(root) -> str:
    """``root/plots/{loss,layers_init,layers_training,weight_ratio}.png`` and
    ``root/plots/summary.md`` from the stored runs; returns :func:`verdict`.

    Raises:
      ValueError: no stored runs under ``root``.
    """
    root = pathlib.Path(root)
    runs = load_runs(root)
    th = _thresholds(study_setup(root))
    summaries = {r.name: summarize(r, **th) for r in runs}
    plt = pyplot()
    plots = fresh_report_dir(root / "plots")
    norms = _norms(runs)
    colors = _c_colors(plt, [r.c for r in runs])
    _plot_losses(plt, plots / "loss.png", runs, norms, colors, summaries, runs[0].run.config.get("log_every_steps"))
    _plot_layer_profiles(plt, plots / "layers_init.png", runs, norms, colors, with_end=False)
    _plot_layer_profiles(plt, plots / "layers_training.png", runs, norms, colors, with_end=True)
    _plot_weight_ratio(plt, plots / "weight_ratio.png", runs, norms, colors)
    write_summary(plots, summary_markdown(root))
    return verdict(root)
