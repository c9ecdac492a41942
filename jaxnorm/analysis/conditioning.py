"""Plots and tables of the gradient-conditioning study (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022), from stored files.

Reads only what the runs wrote (``experiments/conditioning.py``; never trains):

* ``metrics.jsonl`` lines of kind ``conditioning`` (the
  :class:`~jaxnorm.observers.GradientConditioning` metrics), ``step_conditioning``
  (``kappa_sgd``, ``cosine_sgd``: the in-training κ_W estimate) and ``train`` (the mean
  training loss over each ``log_every_steps`` window);
* ``config.json`` (architecture = the run's ``tag``, ``norm``, depth =
  ``model_kwargs['depth']``) and ``status.json``;
* ``costs.json`` of each run: ``{"params": n, "seconds": {metric: s}, ...}``.

Key points of a run (thesis Figs. 2.6, 3.4, 3.17, ...): the training loss smoothed by a
moving average over ``window`` consecutive ``train`` records (default 20, the thesis's
"moving average over 20 samples"; fewer when a run has fewer records, down to 2).
The moving average's consecutive differences are the mean loss decrease per step over
the window, ``(L[i] - L[i+w]) / (step[i+w] - step[i])``. The **point of lowest smoothed
loss** is where the moving average is smallest (window j, records ``j .. j+w-1``). The
**point of steepest descent** is where that rate is largest *during the descent that
leads there*: among the rates whose records ``i .. i+w`` all come before the lowest
window (``i + w < j``), so the two points never share a training record. (Without that
rule a run still falling at its end -- the thesis's Figs. 2.6 and 3.4 show many -- had
both points on its last window.) A run has no descent phase, and no point of steepest
descent (``steepest_step`` None, noted in the summary), when its lowest window starts
within the first ``w`` records or no earlier rate is positive: its smoothed loss never
fell below where it started, so "the metric where learning was fastest" does not exist.
Each point lies at the mean step of its window(s); a metric "at" a point is its sample
nearest in step (metrics are sampled about twice per epoch).

``analyze_conditioning(root)`` (the study's analysis) writes ``root/costs.json`` (metric ->
``[{run, params, seconds, ...}]``, :func:`collect_costs`), then the report, and returns a
one-line verdict. ``write_conditioning_report(root)`` writes into ``root/plots``:

* ``curves_<metric>.png`` -- the metric throughout training, one line per run, a panel
  per norm, coloured by architecture, each line labelled with its depth;
* ``scatter_<metric>.png`` -- the metric at the point of steepest descent against that
  rate, and at the lowest smoothed loss against that loss, one point per run (colour:
  architecture, marker: norm, label: depth);
* ``sweep_kappa_w.png``, ``sweep_kappa_x.png`` -- κ against η at the initialization and
  at both key points (:func:`~jaxnorm.analysis.conditioning_stats.plot_sweeps`);
* ``costs.png`` -- seconds per call of each metric against the number of learnable
  parameters, log-log (thesis Fig. 4.10);
* ``summary.md`` -- the runs, their key points, every metric at both points, the costs,
  the over-seeds tables (:func:`~jaxnorm.analysis.conditioning_stats.seed_summary_md`:
  intervals, BN vs no BN paired by seed, the η sweep, the thesis's correlation claims)
  and notes on runs left out (diverged before any record, too few records).
"""

from __future__ import annotations

import math
import pathlib
from typing import Iterable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from jaxnorm.analysis.runs import Run, find_runs  # noqa: E402
from jaxnorm.analysis.plotting import fresh_report_dir, write_summary
from jaxnorm.results import read_json, write_json  # noqa: E402

__all__ = [
    "ARCHITECTURE_STYLE",
    "analyze_conditioning",
    "CONDITIONING_METRICS",
    "CondRun",
    "MODEL_FAMILY",
    "KeyPoints",
    "collect_costs",
    "conditioning_summary_md",
    "find_conditioning_runs",
    "key_points",
    "metric_at",
    "metric_at_key_points",
    "metric_series",
    "plot_conditioning_curves",
    "plot_conditioning_scatter",
    "plot_costs",
    "smoothed_loss",
    "write_conditioning_report",
]

#: Metric -> (axis label, log scale when every value is positive and they span more
#: than a factor of 20). Plot and table order.
CONDITIONING_METRICS: dict[str, tuple[str, bool]] = {
    "kappa_w": ("κ_W, weight-space condition number (Def. 2.5)", True),
    "kappa_w_hessian": ("κ, Hessian form ‖H‖·‖w‖/‖∇L‖ (Def. 2.4)", True),
    "kappa_w_directional": ("κ_W's η→0 limit ‖Hĝ‖·‖w‖/‖∇L‖", True),
    "kappa_w_plateau": ("κ_W on its η-plateau (η sweep)", True),
    "kappa_sgd": ("κ_W from the SGD step (in training, §2.2)", True),
    "kappa_same_batch": ("κ_W of the SGD step, both gradients on one batch", True),
    "cosine_sgd": ("cos(g_t, g_t−1), consecutive training gradients", False),
    "cosine_same_batch": ("cos of the gradients before/after a step, one batch", False),
    "min_cosine": ("min cosine similarity after ω (Def. 4.1)", False),
    "weight_gradient_diversity": ("weight-gradient diversity (eq. 4.2)", False),
    "weight_gradient_coherence": ("weight-gradient coherence (eq. 4.3)", False),
    "kappa_x": ("κ_X, input-space condition number (eq. 3.16)", True),
    "kappa_x_plateau": ("κ_X on its η-plateau (η sweep)", True),
    "weight_rank": ("relative rank of weight gradients (Def. 3.7)", False),
    "input_rank": ("relative rank of input gradients (Def. 3.7)", False),
    "confusion": ("gradient confusion (Def. 3.11)", False),
    "diversity": ("gradient diversity, batches (Def. 3.12)", True),
    "per_example_diversity": ("gradient diversity, per example (Yin et al.)", True),
    "coherence": ("gradient coherence (Def. 3.13)", False),
}
_RECORD_KINDS = ("conditioning", "step_conditioning", "conditioning_sweep")
_NOT_METRICS = {"kind", "step", "n_batches", "batch_size", "grad_norm", "etas", "rtol", "min_plateau", "kappa_w_limit",
                "kappa_w_contains_limit", "kappa_w_plateau_start", "kappa_w_plateau_stop", "kappa_x_plateau_start",
                "kappa_x_plateau_stop"}

#: Architecture key (the run's ``tag``) -> (label, colour).
ARCHITECTURE_STYLE: dict[str, tuple[str, str]] = {
    "ortho_relu": ("FC orthogonal ReLU", "tab:blue"),
    "ortho_crelu": ("FC orthogonal CReLU", "tab:orange"),
    "looks_linear": ("FC looks-linear CReLU", "tab:green"),
    "convnet": ("ConvNet", "tab:red"),
    "resnet": ("ResNet (ConvNet + skips)", "tab:purple"),
}
_EXTRA_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
NORM_STYLE: dict[str, tuple[str, str]] = {  # norm -> (label, scatter marker)
    "vanilla": ("no BN", "o"),
    "bn_gamma_beta": ("BN", "^"),
}
COST_REFERENCE = "batch_gradient"


class CondRun:
    """A run of the study: a :class:`~jaxnorm.analysis.runs.Run` plus its architecture,
    norm, depth and ``costs.json``."""

    def __init__(self, run: Run):
        self.run = run
        cfg = run.config
        name = run.path.name
        parts = name.split("-")
        self.arch = str(cfg.get("tag") or (parts[0] if len(parts) >= 3 else cfg.get("model", "?")))
        self.norm = str(cfg.get("norm", "?"))
        depth = (cfg.get("model_kwargs") or {}).get("depth")
        if depth is None and parts[-1].startswith("d") and parts[-1][1:].isdigit():
            depth = int(parts[-1][1:])
        self.depth: Optional[int] = None if depth is None else int(depth)
        cost_file = run.path / "costs.json"
        self.costs: dict = read_json(cost_file) if cost_file.is_file() else {}

    name = property(lambda self: self.run.path.name)
    diverged = property(lambda self: self.run.diverged)
    params = property(lambda self: self.costs.get("params"))

    @property
    def status(self) -> str:
        return self.run.state  # read_status's: a dead writer's "running" reads "interrupted"

    def train_loss(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, losses)`` of the ``train`` records with a finite loss, by step."""
        rows = sorted((int(m["step"]), float(m["loss"])) for m in self.run.metrics if m.get("kind") == "train" and "loss" in m)
        rows = [(s, v) for s, v in rows if math.isfinite(v)]
        return np.array([s for s, _ in rows], np.float64), np.array([v for _, v in rows], np.float64)

    def final(self, kind: str, key: str, split: Optional[str] = None) -> Optional[float]:
        """The last finite ``key`` of the records of ``kind`` (and ``split``), or None."""
        for m in reversed(self.run.metrics):
            if m.get("kind") == kind and (split is None or m.get("split") == split) and key in m:
                v = float(m[key])
                if math.isfinite(v):
                    return v
        return None


def find_conditioning_runs(root) -> list[CondRun]:
    """Every run below ``root`` (see :func:`~jaxnorm.analysis.runs.find_runs`), sorted by
    architecture (in :data:`ARCHITECTURE_STYLE` order), norm and depth."""
    runs = [CondRun(r) for r in find_runs(root)]
    order = {a: i for i, a in enumerate(ARCHITECTURE_STYLE)}
    norm_order = {n: i for i, n in enumerate(NORM_STYLE)}
    return sorted(runs, key=lambda r: (order.get(r.arch, len(order)), r.arch, norm_order.get(r.norm, 9), r.norm, r.depth or 0, r.name))


def metric_series(run: CondRun, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``metric`` from the ``conditioning``/``step_conditioning``
    records, finite values only, sorted by step (a repeated step keeps its last value)."""
    by_step: dict[int, float] = {}
    for m in run.run.metrics:
        if m.get("kind") in _RECORD_KINDS and metric in m:
            by_step[int(m["step"])] = float(m[metric])
    steps = np.array(sorted(s for s, v in by_step.items() if math.isfinite(v)), np.float64)
    return steps, np.array([by_step[int(s)] for s in steps], np.float64)


def available_metrics(runs: Iterable[CondRun]) -> list[str]:
    """Metrics recorded by any run, known ones in :data:`CONDITIONING_METRICS` order."""
    found = set()
    for r in runs:
        for m in r.run.metrics:
            if m.get("kind") in _RECORD_KINDS:
                found |= {k for k in m if k not in _NOT_METRICS and "@" not in k}  # "@": one η of a sweep
    return [m for m in CONDITIONING_METRICS if m in found] + sorted(found - set(CONDITIONING_METRICS))


def smoothed_loss(steps: np.ndarray, losses: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Moving average of ``losses`` over ``window`` consecutive records, placed at the mean
    step of each window (``len - window + 1`` points)."""
    kernel = np.ones(window) / window
    return np.convolve(steps, kernel, mode="valid"), np.convolve(losses, kernel, mode="valid")


class KeyPoints(dict):
    """``{'window', 'steepest_step', 'rate', 'lowest_step', 'lowest_loss'}`` (a dict);
    ``steepest_step`` and ``rate`` are None for a run without a descent phase."""


def key_points(run: CondRun, window: int = 20, min_window: int = 2) -> tuple[Optional[KeyPoints], str]:
    """The points of steepest descent and of lowest smoothed loss of ``run`` (see the module
    docstring), and a note (empty, or why the window shrank, why there is no point of
    steepest descent, or why the run has no key points).

    The window is ``min(window, records - 1)`` so there are at least two smoothed points;
    with fewer than ``min_window + 1`` finite training-loss records there are none (None)."""
    steps, losses = run.train_loss()
    n = len(losses)
    if n < min_window + 1:
        why = "diverged" if run.diverged else "stopped"
        return None, f"only {n} finite training-loss record(s) ({why}); need {min_window + 1}"
    w = min(window, n - 1)
    centers, smooth = smoothed_loss(steps, losses, w)
    rates = -np.diff(smooth) / np.diff(centers)
    j = int(np.argmin(smooth))
    before = rates[: max(0, j - w)]  # rate i uses records i .. i+w: disjoint from the lowest window iff i + w < j
    note = f"window {w} (of {window}: {n} training-loss records)" if w < window else ""
    kp = KeyPoints(window=w, steepest_step=None, rate=None, lowest_step=float(centers[j]), lowest_loss=float(smooth[j]))
    if before.size and before.max() > 0:
        i = int(np.argmax(before))
        kp.update(steepest_step=float((centers[i] + centers[i + 1]) / 2), rate=float(rates[i]))
    else:
        why = "no descent phase: the lowest smoothed loss lies within the first window" if not before.size else \
            "no descent phase: the smoothed loss never fell before its lowest window"
        note = "; ".join(x for x in (note, f"{why}, so no point of steepest descent") if x)
    return kp, note


def metric_at(run: CondRun, metric: str, step: float) -> Optional[float]:
    """The finite sample of ``metric`` nearest to ``step`` (the earlier one on a tie), or None."""
    steps, values = metric_series(run, metric)
    if not steps.size:
        return None
    return float(values[int(np.argmin(np.abs(steps - step)))])


# --------------------------------------------------------------------------- plotting


def _arch_style(arch: str, seen: dict) -> tuple[str, str]:
    if arch in ARCHITECTURE_STYLE:
        return ARCHITECTURE_STYLE[arch]
    if arch not in seen:
        seen[arch] = (arch, _EXTRA_COLORS[len(seen) % len(_EXTRA_COLORS)])
    return seen[arch]


def _norm_style(norm: str) -> tuple[str, str]:
    return NORM_STYLE.get(norm, (norm, "s"))


def _metric_label(metric: str) -> tuple[str, bool]:
    return CONDITIONING_METRICS.get(metric, (metric, False))


def _set_scale(ax, axis: str, values: Sequence[float], log: bool) -> None:
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)])
    if log and vals.size and np.all(vals > 0) and vals.max() / vals.min() > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)  # small PNGs: the README embeds three
    plt.close(fig)
    return path


def _arch_legend(ax, archs: Sequence[str], seen: dict, norms: Sequence[str] = (), markers: bool = False, diverged: bool = False):
    handles = [Line2D([], [], color=_arch_style(a, seen)[1], lw=2, label=_arch_style(a, seen)[0]) for a in archs]
    if markers:  # scatter: marker = norm, hollow = diverged
        handles += [Line2D([], [], color="0.3", marker=_norm_style(n)[1], ls="none", label=_norm_style(n)[0]) for n in norms]
        if diverged:
            handles.append(Line2D([], [], color="0.3", marker="o", mfc="none", ls="none", label="diverged"))
    elif diverged:  # curves: a diverged run ends in an x
        handles.append(Line2D([], [], color="0.3", marker="x", ls="none", mew=2, label="diverged"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def plot_conditioning_curves(runs: Sequence[CondRun], metric: str, path, title: str = "") -> Optional[pathlib.Path]:
    """``metric`` against the training step, one line per run, one panel per norm; colour =
    architecture, deeper = thicker, depth written at each line's end; a diverged run ends
    in an ``x``. None (nothing written) if no run recorded the metric."""
    series = {r.name: metric_series(r, metric) for r in runs}
    runs = [r for r in runs if series[r.name][0].size]
    if not runs:
        return None
    norms = list(dict.fromkeys(r.norm for r in runs))
    depths = sorted({r.depth or 0 for r in runs})
    seen: dict = {}
    label, log = _metric_label(metric)
    fig, axes = plt.subplots(1, len(norms), figsize=(6.2 * len(norms), 4.4), sharey=True, squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for r in (r for r in runs if r.norm == norm):
            steps, values = series[r.name]
            color = _arch_style(r.arch, seen)[1]
            lw = 0.8 + 1.6 * depths.index(r.depth or 0) / max(len(depths) - 1, 1)
            ax.plot(steps, values, color=color, lw=lw, alpha=0.85, marker="." if steps.size < 30 else None, ms=3)
            ax.annotate(str(r.depth), (steps[-1], values[-1]), xytext=(3, 0), textcoords="offset points",
                        fontsize=7, color=color, va="center")
            if r.diverged:
                ax.plot(steps[-1], values[-1], marker="x", ms=8, mew=2, color=color, ls="none")
        ax.set_title(_norm_style(norm)[0], fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        _arch_legend(ax, list(dict.fromkeys(r.arch for r in runs if r.norm == norm)), seen,
                     diverged=any(r.diverged for r in runs if r.norm == norm))
    axes[0][0].set_ylabel(label)
    _set_scale(axes[0][0], "y", [v for r in runs for v in series[r.name][1]], log)
    fig.suptitle(title or f"{label} throughout training (labels: depth)", fontsize=11)
    return _save(fig, path)


def metric_at_key_points(runs: Sequence[CondRun], metric: str, window: int = 20) -> list[dict]:
    """One dict per run that has key points and samples of ``metric``: ``run`` (the
    :class:`CondRun`), the :class:`KeyPoints` entries, and ``at_steepest`` /
    ``at_lowest``, the metric at each point (what the scatter plots draw; ``at_steepest``
    None for a run without a descent phase)."""
    out = []
    for r in runs:
        kp, _ = key_points(r, window)
        if kp is None:
            continue
        at_lowest = metric_at(r, metric, kp["lowest_step"])
        at_steepest = None if kp["steepest_step"] is None else metric_at(r, metric, kp["steepest_step"])
        if at_lowest is not None:
            out.append({"run": r, **kp, "at_steepest": at_steepest, "at_lowest": at_lowest})
    return out


def plot_conditioning_scatter(runs: Sequence[CondRun], metric: str, path, window: int = 20, title: str = "") -> Optional[pathlib.Path]:
    """Two panels: ``metric`` at the point of steepest descent against the rate there, and
    at the lowest smoothed loss against that loss; one point per run of
    :func:`metric_at_key_points` (colour: architecture, marker: norm, hollow if the run
    diverged, label: depth). None (nothing written) if there is no such run."""
    label, log = _metric_label(metric)
    points = metric_at_key_points(runs, metric, window)
    if not points:
        return None
    seen: dict = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    panels = (("rate", "at_steepest", "steepest descent: loss decrease per step (moving average)", "at the point of steepest descent"),
              ("lowest_loss", "at_lowest", "lowest smoothed training loss", "at the lowest smoothed loss"))
    for ax, (xkey, ykey, xlabel, where) in zip(axes, panels):
        for p in (p for p in points if p[ykey] is not None):
            r = p["run"]
            color = _arch_style(r.arch, seen)[1]
            ax.scatter([p[xkey]], [p[ykey]], s=42, marker=_norm_style(r.norm)[1], facecolors="none" if r.diverged else color,
                       edgecolors=color, linewidths=1.4)
            ax.annotate(str(r.depth), (p[xkey], p[ykey]), xytext=(4, 3), textcoords="offset points", fontsize=7, color=color)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{metric} {where}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    _set_scale(axes[0], "y", [p["at_steepest"] for p in points if p["at_steepest"] is not None] + [p["at_lowest"] for p in points], log)
    _set_scale(axes[1], "x", [p["lowest_loss"] for p in points], True)
    archs = list(dict.fromkeys(p["run"].arch for p in points))
    _arch_legend(axes[0], archs, seen, list(dict.fromkeys(p["run"].norm for p in points)), markers=True,
                 diverged=any(p["run"].diverged for p in points))
    fig.suptitle(title or f"{label}: key points of each run (labels: depth)", fontsize=11)
    return _save(fig, path)


def collect_costs(runs: Sequence[CondRun]) -> dict[str, list[dict]]:
    """``{metric: [{'run', 'params', 'seconds', 'model', 'arch', 'norm', 'depth'}, ...]}``
    from the runs' ``costs.json``, each list sorted by parameter count (runs without a
    parameter count are left out)."""
    out: dict[str, list[dict]] = {}
    for r in runs:
        if r.params is None:
            continue
        for metric, s in (r.costs.get("seconds") or {}).items():
            if s is not None and np.isfinite(s):
                out.setdefault(metric, []).append({"run": r.name, "params": int(r.params), "seconds": float(s),
                                                   "model": str(r.run.config.get("model", "?")), "arch": r.arch,
                                                   "norm": r.norm, "depth": r.depth})
    order = list(CONDITIONING_METRICS) + [COST_REFERENCE]
    rank = lambda m: (order.index(m) if m in order else len(order), m)
    return {m: sorted(out[m], key=lambda e: (e["params"], e["run"])) for m in sorted(out, key=rank)}


MODEL_FAMILY = {"deep_fc": "fully connected", "mlp": "fully connected", "convnet": "convolutional"}


def plot_costs(costs: dict[str, list[dict]], path, title: str = "") -> Optional[pathlib.Path]:
    """Seconds per call of each metric against the number of learnable parameters, log-log,
    a panel per model family (fully connected, convolutional); per metric one line through
    its no-BN runs sorted by parameter count (through all runs if none is without BN),
    no-BN runs filled, BN runs hollow (thesis Fig. 4.10). The batch gradient, if timed, is the dashed black reference. None if ``costs``
    is empty."""
    if not costs:
        return None
    families = list(dict.fromkeys(MODEL_FAMILY.get(e.get("model"), e.get("model", "?")) for es in costs.values() for e in es))
    fig, axes = plt.subplots(1, len(families), figsize=(6.4 * len(families), 5.0), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, family in zip(axes[0], families):
        for i, (metric, entries) in enumerate(costs.items()):
            es = [e for e in entries if MODEL_FAMILY.get(e.get("model"), e.get("model", "?")) == family]
            if not es:
                continue
            ref = metric == COST_REFERENCE
            color = "black" if ref else cmap(i % 20)
            line = [e for e in es if e.get("norm", "vanilla") == "vanilla"] or es
            ax.plot([e["params"] for e in line], [e["seconds"] for e in line], ls="--" if ref else "-", lw=1.3 if ref else 0.9,
                    color=color, label="one batch gradient (reference)" if ref else metric)
            for e in es:
                bn = e.get("norm", "vanilla") != "vanilla"
                ax.plot(e["params"], e["seconds"], marker="s" if ref else "o", ms=3.5, ls="none", color=color,
                        mfc="none" if bn else color)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learnable parameters")
        ax.set_title(family, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("seconds per call (median)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="filled: no BN, hollow: BN", title_fontsize=7)
    fig.suptitle(title or "Metric cost by number of learnable parameters (cf. thesis Fig. 4.10)", fontsize=11)
    return _save(fig, path)


# --------------------------------------------------------------------------- tables


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def conditioning_summary_md(runs: Sequence[CondRun], window: int = 20, title: str = "") -> str:
    """The study's ``summary.md``: runs and key points, every metric at both points, the
    costs, and notes on runs without key points or metric samples."""
    metrics = available_metrics(runs)
    keys = {r.name: key_points(r, window) for r in runs}
    n_div = sum(r.diverged for r in runs)
    out = [f"# {title or 'Gradient-conditioning study'}\n",
           f"{len(runs)} runs ({n_div} diverged). Training loss smoothed by a moving average over {window} "
           "`train` records (each the mean loss of `log_every_steps` steps); the point of steepest descent is "
           "where the smoothed loss falls fastest per step, the lowest point where it is smallest. A metric "
           "at a point is its sample nearest in step.\n"]
    rows = []
    for r in runs:
        kp, _ = keys[r.name]
        rows.append([r.name, _arch_style(r.arch, {})[0], _norm_style(r.norm)[0], _fmt(r.depth), _fmt(r.params), r.status,
                     _fmt(r.run.status.get("step")), _fmt(r.final("train", "loss")), _fmt(r.final("eval", "acc", "test")),
                     "–" if kp is None or kp["rate"] is None else f"{_fmt(kp['rate'])} @ {kp['steepest_step']:.0f}",
                     "–" if kp is None else f"{_fmt(kp['lowest_loss'])} @ {kp['lowest_step']:.0f}"])
    out.append("## Runs\n")
    out.append(_table(["run", "architecture", "norm", "depth", "params", "status", "steps", "final train loss",
                       "test acc", "steepest descent: rate @ step", "lowest smoothed loss @ step"], rows))
    for point, where in (("steepest_step", "the point of steepest descent"), ("lowest_step", "the lowest smoothed loss")):
        rows = []
        for r in runs:
            kp, _ = keys[r.name]
            if kp is not None and kp[point] is not None:
                rows.append([r.name] + [_fmt(metric_at(r, m, kp[point])) for m in metrics])
        out.append(f"\n## Metrics at {where}\n")
        out.append(_table(["run", *metrics], rows) if rows and metrics else "No run has both key points and metric samples.\n")
    costs = [r for r in runs if r.costs.get("seconds")]
    if costs:
        timed = list(dict.fromkeys(m for m in list(CONDITIONING_METRICS) + [COST_REFERENCE]
                                   if any(m in r.costs["seconds"] for r in costs)))
        timed += sorted({m for r in costs for m in r.costs["seconds"]} - set(timed))
        ms = lambda r, m: None if r.costs["seconds"].get(m) is None else 1e3 * r.costs["seconds"][m]
        rows = [[r.name, _fmt(r.params)] + [_fmt(ms(r, m), 3) for m in timed] for r in costs]
        first = costs[0].costs
        out.append(f"\n## Metric cost (ms per call, median of {first.get('repeats', '?')} after a compile call; "
                   f"backend {first.get('backend', '?')})\n")
        out.append(_table(["run", "params", *timed], rows))
    notes = [f"- `{r.name}`: no key points: {note}." for r in runs for kp, note in [keys[r.name]] if kp is None]
    notes += [f"- `{r.name}`: {note}." for r in runs for kp, note in [keys[r.name]] if kp is not None and note]
    notes += [f"- `{r.name}`: diverged at step {(r.run.divergence or {}).get('step', '?')} "
              f"({(r.run.divergence or {}).get('reason', '')}); its records stop there." for r in runs if r.diverged]
    missing = [f"- `{r.name}`: no samples of {', '.join(m for m in metrics if not metric_series(r, m)[0].size)}."
               for r in runs if any(not metric_series(r, m)[0].size for m in metrics)]
    from jaxnorm.analysis.conditioning_stats import seed_summary_md  # it builds on this module

    out.append("\n" + seed_summary_md(runs, window))
    if notes or missing:
        out.append("\n## Notes\n")
        out.append("\n".join(notes + missing) + "\n")
    return "\n".join(out)


def write_conditioning_report(root, out_dir=None, window: int = 20) -> dict[str, pathlib.Path]:
    """Writes every plot and ``summary.md`` of the study below ``root`` (see the module
    docstring) into ``out_dir`` (default ``root/plots``); returns ``{file stem: path}``."""
    root = pathlib.Path(root)
    out = fresh_report_dir(pathlib.Path(out_dir) if out_dir is not None else root / "plots", owned=out_dir is None)
    runs = find_conditioning_runs(root)
    written: dict[str, pathlib.Path] = {}
    for metric in available_metrics(runs):
        for stem, fn in ((f"curves_{metric}", lambda p: plot_conditioning_curves(runs, metric, p)),
                         (f"scatter_{metric}", lambda p: plot_conditioning_scatter(runs, metric, p, window))):
            path = fn(out / f"{stem}.png")
            if path is not None:
                written[stem] = path
    from jaxnorm.analysis.conditioning_stats import plot_sweeps

    for quantity in ("kappa_w", "kappa_x"):
        path = plot_sweeps(runs, quantity, out / f"sweep_{quantity}.png", window)
        if path is not None:
            written[f"sweep_{quantity}"] = path
    path = plot_costs(collect_costs(runs), out / "costs.png")
    if path is not None:
        written["costs"] = path
    written["summary"] = write_summary(out, conditioning_summary_md(runs, window, title=f"Gradient-conditioning study: {root.name}")
                                       if runs else f"# Gradient-conditioning study: {root.name}\n\nNo runs found.\n")
    return written


def analyze_conditioning(root, window: int = 20) -> str:
    """The study's analysis of the stored runs below ``root``: ``root/costs.json``, every
    plot and ``summary.md`` (:func:`write_conditioning_report`); returns a one-line verdict
    (runs, divergences, the median final training loss without and with BN per depth).
    ValueError when ``root`` holds no runs."""
    root = pathlib.Path(root)
    runs = find_conditioning_runs(root) if root.is_dir() else []
    if not runs:
        raise ValueError(f"no stored conditioning runs under {root}.")
    write_json(root / "costs.json", collect_costs(runs))
    write_conditioning_report(root, window=window)
    parts = []
    for depth in sorted({r.depth for r in runs if r.depth is not None}):
        losses = {}
        for r in runs:
            loss = r.final("train", "loss")
            if r.depth == depth and loss is not None and not r.diverged:
                losses.setdefault(_norm_style(r.norm)[0], []).append(loss)
        if losses:
            parts.append(f"depth {depth}: " + ", ".join(f"{n} {np.median(v):.3g}" for n, v in losses.items()))
    n_div = sum(r.diverged for r in runs)
    return (f"{len(runs)} runs ({n_div} diverged); median final training loss by depth: " + "; ".join(parts)) if parts else f"{len(runs)} runs ({n_div} diverged)"
