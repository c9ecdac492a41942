"""The initialization-scale study's analysis (``experiments/init_scale.py``): outcomes,
per-layer profiles, weight-norm ratios, plots and ``summary.md``, from the stored runs.

Reads only what :func:`jaxnorm.train.fit` and the study wrote under a study root:
``study.json`` (the setup and seeds), and per run folder ``config.json`` (norm, c =
``model_kwargs.kernel_init_kwargs.c``, seed, depth, ``num_classes``), ``metrics.jsonl``
(``train``, ``eval``, ``divergence`` lines), ``status.json`` and ``trajectories.npz``
(the ``layer_statistics/...`` arrays of :class:`jaxnorm.observers.layer_statistics.LayerStatistics`).
Nothing here trains.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot
from jaxnorm.analysis.runs import Run, find_runs
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


# --------------------------------------------------------------------------- plots


def _c_colors(plt, scales) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {c: cycle[i % len(cycle)] for i, c in enumerate(sorted(set(scales)))}


def _figure(plt, rows: int, cols: int, size, **kwargs):
    # Constrained layout is done within the one draw savefig makes (tight_layout draws twice).
    return plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained", **kwargs)


def _save(plt, fig, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _positive(a) -> np.ndarray:
    """Values a log axis can show (non-finite and non-positive ones become gaps)."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _label(r: InitScaleRun, seeds: int, text: str = "") -> str:
    return f"c = {r.c:g}" + (f", seed {r.seed}" if seeds > 1 else "") + text


def _plot_losses(plt, path, runs, norms, colors, summaries, every) -> None:
    # Not sharey: a c = 3 vanilla net starts near 1e5 and would flatten the other panels.
    fig, axes = _figure(plt, 1, len(norms), (5 * len(norms), 3.8))
    seeds = len({r.seed for r in runs})
    for ax, norm in zip(axes[0], norms):
        for r in (r for r in runs if r.norm == norm):
            train = [m for m in r.run.metrics if m.get("kind") == "train"]
            steps, losses = [0] + [m["step"] for m in train], [loss_curve(r)[0] if loss_curve(r) else np.nan] + [m["loss"] for m in train]
            ax.plot(steps, _positive(losses), color=colors[r.c], marker="o" if len(steps) == 1 else None, label=_label(r, seeds, f": {summaries[r.name]['outcome']}"))
            if r.run.divergence:  # where the loss left the finite numbers or exploded
                ax.plot([r.run.divergence["step"]], [_positive([losses[-1]])[0]], "x", color=colors[r.c], ms=10, mew=2)
        ax.axhline(runs[0].chance, color="grey", ls=":", lw=1, label="chance (ln K)")
        ax.set_yscale("log")
        ax.set_title(f"{norm}: training loss (x: diverged)", fontsize=10)
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel(f"training loss (mean of <= {every} steps; 0: probe batch)" if every else "training loss")
    _save(plt, fig, path)


def _plot_layer_profiles(plt, path, runs, norms, colors, with_end: bool) -> None:
    """Rows: activation RMS, gradient norm; a panel per norm; per run the per-layer
    profile at initialization -- and, ``with_end``, dashed, with the profile at the last
    probe solid (the end, or the last probe before a divergence)."""
    keys = (("activation_rms", "activation RMS (layer output)"), ("grad_norm", "‖∂L/∂W_i‖_F"))
    fig, axes = _figure(plt, 2, len(norms), (5 * len(norms), 7), sharex=True)
    seeds = len({r.seed for r in runs})
    for j, norm in enumerate(norms):
        for i, (key, label) in enumerate(keys):
            ax = axes[i, j]
            for r in (r for r in runs if r.norm == norm):
                a = r.arrays.get(key)
                if a is None or not len(a):
                    continue
                layers = np.arange(1, a.shape[1] + 1)
                if with_end:
                    ax.plot(layers, _positive(a[0]), color=colors[r.c], ls="--", lw=1)
                    ax.plot(layers, _positive(a[-1]), color=colors[r.c], label=_label(r, seeds, f", step {int(r.arrays['steps'][-1])}"))
                else:
                    ax.plot(layers, _positive(a[0]), color=colors[r.c], marker=".", ms=3, label=_label(r, seeds))
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{norm}: {label}" + (", init (dashed) and end" if with_end else " at initialization"), fontsize=10)
            ax.legend(fontsize=7)
        axes[1, j].set_xlabel("layer i (D = logits)")
    _save(plt, fig, path)


def _plot_weight_ratio(plt, path, runs, norms, colors) -> None:
    fig, axes = _figure(plt, 1, len(norms), (5 * len(norms), 3.8), sharey=True)
    seeds = len({r.seed for r in runs})
    for ax, norm in zip(axes[0], norms):
        for r in (r for r in runs if r.norm == norm):
            ratio = weight_ratio(r)
            if np.isfinite(ratio).any():
                ax.plot(np.arange(1, len(ratio) + 1), ratio, color=colors[r.c], marker=".", ms=3, label=_label(r, seeds))
            else:
                ax.plot([], [], color=colors[r.c], label=_label(r, seeds, ": diverged"))
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set_title(f"{norm}: ‖W_T‖_F / ‖W_0‖_F per layer", fontsize=10)
        ax.set_xlabel("layer i")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("weight-norm ratio after training")
    _save(plt, fig, path)


# --------------------------------------------------------------------------- summary


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else float("nan")


def _norms(runs) -> list[str]:
    return list(dict.fromkeys(r.norm for r in runs))


def summary_markdown(root) -> str:
    """The claims, the outcome table per run, the initial per-layer signal against the
    (c/2)^(D/2) law, the weight-norm ratios, and a verdict per claim, from the stored
    runs under ``root`` (:func:`load_runs`)."""
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
        f"seeds {', '.join(map(str, seeds))}. Training stops where the loss is non-finite or above {th['explode_factor']:g} x its first step's "
        f"(fit's divergence rule). Outcome: `classify` of the training-loss curve (the probe batch's loss at step 0, then the mean loss "
        f"of every {cfg.get('log_every_steps')} steps): diverged: non-finite or above {th['explode_factor']:g} x max(initial, chance); "
        f"no progress: final loss, the mean of the last 10% of the curve, above {1 - th['progress_fraction']:g} x min(initial, chance); "
        "trained otherwise.",
        "",
        "## Claim 1: without normalization, c = 3 gives NaN, c = 2 trains, c = 1 makes no progress",
        "",
        "(Lecture, \"Initialization vs. optimization\": vanilla SGD on MNIST.)",
        "",
        f"| norm | c | seed | outcome | initial loss | final train loss (last 10% of steps) | {split} acc | diverged at step |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        t = s[r.name]
        lines.append(
            f"| {r.norm} | {r.c:g} | {r.seed} | {t['outcome']} | {_fmt(t['initial_loss'])} | "
            f"{_fmt(None if t['diverged_at'] is not None else t['final_loss'], '.4g')} | {_fmt(t['eval_acc'], '.3f')} | {_fmt(t['diverged_at'], 'd')} |"
        )
    lines.append("")
    vanilla: dict[float, list[str]] = {}
    for r in runs:
        if r.norm == "vanilla":
            vanilla.setdefault(r.c, []).append(s[r.name]["outcome"])
    expected = {c: LECTURE_OUTCOMES[c] for c in vanilla if c in LECTURE_OUTCOMES}
    if expected:
        agree = all(o == expected[c] for c in expected for o in vanilla[c])
        counts = lambda c: ", ".join(f"{o} {vanilla[c].count(o)}/{len(vanilla[c])}" for o in OUTCOMES if o in vanilla[c])
        lines += [
            "Measured without normalization: " + "; ".join(f"c = {c:g} {counts(c)}" for c in expected)
            + "; the lecture: " + ", ".join(f"c = {c:g} {o}" for c, o in expected.items())
            + f". Claim 1 {'reproduces' if agree else 'does not reproduce'} here."
            + "".join(f" {r.name} stopped at step {s[r.name]['diverged_at']}: {s[r.name]['divergence']}." for r in runs if r.norm == "vanilla" and s[r.name]["divergence"]),
            "",
        ]
    lines += [
        "## Why: the signal at initialization",
        "",
        "With zero biases, E[mean z_{i+1}²] = (c/2) · mean z_i² for z = relu(W z) (half of a symmetric pre-activation is cut), "
        f"so without normalization the RMS of layer {d - 1}'s output over that of layer 1 should be about (c/2)^(({d} - 2)/2); "
        "the gradients ‖∂L/∂W_i‖ pass back through the same matrices. With BN or LayerNorm every hidden layer's output is "
        "relu of a normalized pre-activation: RMS ≈ √(1/2) ≈ 0.71 whatever c, but the gradients need not be flat (deep BN nets "
        "without skip connections have gradients growing exponentially towards the input at initialization, Yang et al. 2019, "
        "\"A mean field theory of batch normalization\"). Probe batch at initialization:",
        "",
        f"| norm | c | seed | act RMS layer 1 | act RMS layer {d - 1} | measured ratio | (c/2)^(({d}-2)/2) | logits RMS | ‖∂L/∂W_1‖ | ‖∂L/∂W_{d}‖ | ‖∂L/∂W_1‖ / ‖∂L/∂W_{d}‖ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        t = s[r.name]
        law = (r.c / 2) ** ((d - 2) / 2) if r.norm == "vanilla" else None
        lines.append(
            f"| {r.norm} | {r.c:g} | {r.seed} | {_fmt(t['act_first'])} | {_fmt(t['act_last_hidden'])} | {_fmt(_ratio(t['act_last_hidden'], t['act_first']))} | "
            f"{_fmt(law)} | {_fmt(t['act_logits'])} | {_fmt(t['grad_first'])} | {_fmt(t['grad_last'])} | {_fmt(_ratio(t['grad_first'], t['grad_last']))} |"
        )
    off = {r.name: _ratio(_ratio(s[r.name]["act_last_hidden"], s[r.name]["act_first"]), (r.c / 2) ** ((d - 2) / 2)) for r in runs if r.norm == "vanilla"}
    if off:
        width = int(kw.get("width") or 1)
        # One seed: the vanilla kernels of every c are the same draws times √c and relu is
        # positively homogeneous, so measured / law is one number per seed.
        lines += [
            "",
            "Without normalization, measured / law = " + ", ".join(f"{_fmt(v)} ({n})" for n, v in off.items())
            + ": within a seed the kernels of every c are the same draws scaled by √c and a positively homogeneous ReLU gives the "
            "same factor for every c; it is the fluctuation of one finite-width draw (the log of a layer's mean square varies by "
            f"about √(5/n) per layer: over {d - 2} layers of {width}, a factor of about "
            f"{math.exp(0.5 * math.sqrt(5 * max(d - 2, 0) / width)):.2g} in the RMS either way).",
        ]
    lines += [
        "",
        "## Claim 2: the scales set at initialization persist (‖W_T‖/‖W_0‖ ≈ 1 in every layer)",
        "",
        "(Lecture: \"even when trained successfully, the effects/scales present at initialization *persist* throughout training\".) "
        f"Runs that did not diverge; \"persists\": every layer within {PERSIST_TOLERANCE:.0%} of 1.",
        "",
        "| norm | c | seed | outcome | min ‖W_T‖/‖W_0‖ | median | max | persists |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    trained = {}
    for r in runs:
        t = s[r.name]
        if t["outcome"] == "diverged" or not math.isfinite(t["ratio_min"]):
            continue
        ok = t["ratio_min"] >= 1 - PERSIST_TOLERANCE and t["ratio_max"] <= 1 + PERSIST_TOLERANCE
        if t["outcome"] == "trained":
            trained[r.name] = ok
        lines.append(
            f"| {r.norm} | {r.c:g} | {r.seed} | {t['outcome']} | {_fmt(t['ratio_min'], '.4g')} | {_fmt(t['ratio_median'], '.4g')} | "
            f"{_fmt(t['ratio_max'], '.4g')} | {'yes' if ok else 'no'} |"
        )
    lines.append("")
    if trained:
        broke = [n for n, ok in trained.items() if not ok]
        lines += [
            f"Among the runs that trained, the per-layer weight norms stayed within {PERSIST_TOLERANCE:.0%} of their initial "
            f"values in {len(trained) - len(broke)} of {len(trained)}" + (f" (not in: {', '.join(broke)})" if broke else "")
            + f": claim 2 {'holds' if not broke else 'holds only in part'} here. Where it holds, networks trained from "
            "different c keep their weight norms in the ratio √c of their initializations. A weight layer followed by BN is "
            "invariant to its weights' scale, so its gradient is orthogonal to W and plain SGD can only grow ‖W‖ "
            "(‖W − ηg‖² = ‖W‖² + η²‖g‖²): where its gradients are large, the norm grows.",
            "",
        ]
    lines += [
        "## Claim 3: normalization removes the sensitivity to c",
        "",
        f"| norm | outcomes over c | final train loss (min - max over runs) | max / min | {split} acc (min - max over runs) | every c trains |",
        "|---|---|---:|---:|---:|---|",
    ]
    every_c = {}
    for norm in _norms(runs):
        rows = [r for r in runs if r.norm == norm]
        by_c: dict[float, list[str]] = {}
        for r in rows:
            by_c.setdefault(r.c, []).append(s[r.name]["outcome"])
        loss = [s[r.name]["final_loss"] for r in rows if s[r.name]["outcome"] != "diverged"]
        acc = [s[r.name]["eval_acc"] for r in rows if math.isfinite(s[r.name]["eval_acc"])]
        span = lambda v, f: f"{_fmt(min(v), f)} - {_fmt(max(v), f)}" if v else "-"
        spread = max(loss) / min(loss) if loss and min(loss) > 0 else float("nan")
        every_c[norm] = all(o == "trained" for os_ in by_c.values() for o in os_)
        outcomes = ", ".join(f"c={c:g}: " + "/".join(dict.fromkeys(os_)) for c, os_ in by_c.items())
        lines.append(f"| {norm} | {outcomes} | {span(loss, '.4g')} | {_fmt(spread, '.3g')} | {span(acc, '.3f')} | {'yes' if every_c[norm] else 'no'} |")
    normed = [n for n in every_c if n != "vanilla"]
    if normed:
        ok = [n for n in normed if every_c[n]]
        lines += [
            "",
            f"With normalization every c trained in {len(ok)} of {len(normed)} norms ({', '.join(ok) or 'none'}): claim 3 "
            f"{'holds' if len(ok) == len(normed) else 'does not hold for ' + ', '.join(n for n in normed if n not in ok)} "
            "as far as the outcome goes (no NaN, no stall). It does not make c irrelevant: a normalized layer is invariant "
            "to its weights' scale, so c no longer scales the signal but the effective step size of those weights "
            "(lr/‖W‖², ∝ lr/c), and the unnormalized output layer still scales the logits by √c; the spread of the final "
            "losses over c above is what is left of the sensitivity.",
        ]
    return "\n".join(lines) + "\n"


def verdict(root) -> str:
    """One line: the outcome of every (norm, c) (over seeds) and whether claim 1 reproduces."""
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
        claim = "; claim 1 " + ("reproduces" if all(x == LECTURE_OUTCOMES[c] for c, o in vanilla.items() for x in o) else "does not reproduce")
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
    (plots / "summary.md").write_text(summary_markdown(root))
    return verdict(root)
