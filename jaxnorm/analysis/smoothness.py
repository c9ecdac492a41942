"""The smoothness study's analysis (``experiments/smoothness.py``; Santurkar, Tsipras, Ilyas
& Madry 2018, "How does batch normalization help optimization?"): summaries, paired
comparisons, plots and the verdict, from the stored files only.

Reads ``<root>/study.json`` (the setup that was trained, and its seeds) and every run
folder below ``root`` (fit's ``config.json`` -- its ``tag`` is the study's variant --,
``metrics.jsonl`` with the ``smoothness`` observer's lines, ``status.json``, and
``recalibrated_eval.json`` where the study wrote one). Writes ``root/plots/``:

* ``landscape.png`` / ``predictiveness.png``: per variant the band (min to max over η)
  of the loss L(w − ηg) and of the gradient change ‖∇L(w − ηg) − ∇L(w)‖ over training
  (the paper's Fig. 4a/b), each edge the geometric mean over the seeds;
* ``beta_smoothness.png``: max_η ‖∇L(w − ηg) − g‖ / ‖ηg‖ over training (Fig. 4c): the
  geometric mean over seeds with the 95% t-interval of its log as a band;
* ``ics.png``: training loss (geometric mean, band of the log) and accuracy (mean, band)
  of the variants (Fig. 2);
* ``summary.md``: the claims; a table per variant, every number the mean over seeds
  with its 95% t-interval (:func:`jaxnorm.analysis.stats.mean_interval`; per run:
  medians over training of the probes, the training loss/accuracy of the last ``every``
  steps, the held-out accuracy); the comparisons (:data:`COMPARISONS`), paired by seed
  (:func:`jaxnorm.analysis.stats.paired_test`), each with its verdict.

Smoothness measures and losses are compared on a log scale (the paired differences of
log values): the claim is "smoother by a factor", seeds differ by factors (vanilla's
loss range varied ~4x between two seeds), and the exponentiated mean and interval are
the geometric-mean ratio and its 95% interval. Accuracies are compared as differences.
A diverged run's numbers describe a broken net: it is left out of the means and tests
and counted (``excluded``).
"""

from __future__ import annotations

import math
import pathlib
from typing import Mapping, Optional

import numpy as np

from jaxnorm.analysis.curves import mean_band
from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import Run, find_runs
from jaxnorm.analysis.stats import CONFIDENCE, Interval, Paired, mean_interval, paired_test
from jaxnorm.results import read_json

__all__ = ["COMPARISONS", "ORDER", "RECALIBRATED", "compare", "load_study", "per_seed", "summarize", "summary_markdown", "write_report"]

ORDER = ("vanilla", "bn", "noisy_bn")  # plotting/table order; other tags follow, sorted
RECALIBRATED = "recalibrated_eval.json"
_NUMBERS = ("loss_range", "grad_change", "beta_smoothness", "max_beta_smoothness", "train_loss", "train_acc", "eval_acc")

#: The paired comparisons of the summary: ``(a, b, number, log, favourable sign of
#: a − b, claim, what)``. Favourable sign +1: the claim says a's number is larger; 0:
#: the claim says they are about the same (a significant difference either way is
#: "does not hold"; no significant difference is reported as such, which with a few
#: seeds is weak evidence of sameness, not a proof).
COMPARISONS = (
    ("vanilla", "bn", "loss_range", True, +1, 1, "loss range along the gradient (loss Lipschitzness, Fig. 4a)"),
    ("vanilla", "bn", "grad_change", True, +1, 1, "largest gradient change (gradient predictiveness, Fig. 4b)"),
    ("vanilla", "bn", "beta_smoothness", True, +1, 1, "effective β-smoothness (Fig. 4c)"),
    ("vanilla", "bn", "train_loss", True, +1, 2, "final training loss: BN below no BN"),
    ("vanilla", "noisy_bn", "train_loss", True, +1, 2, "final training loss: noisy BN below no BN"),
    ("noisy_bn", "bn", "train_loss", True, 0, 2, "final training loss: noisy BN about BN's"),
    ("noisy_bn", "bn", "eval_acc", False, 0, 2, "held-out accuracy: noisy BN about BN's"),
)


def _median(xs) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def _final_train(train: list[dict], window: Optional[int]) -> tuple[float, float]:
    """Training loss and accuracy over the last ``window`` steps: the step-weighted mean
    of the train lines after ``last step − window`` (fit writes a line every
    ``log_every_steps`` steps and at each epoch's end, each the mean over its ``steps``);
    ``window`` None: the last line alone."""
    if not train:
        return float("nan"), float("nan")
    last = train[-1]["step"]
    tail = [m for m in train if m["step"] > last - window] if window else train[-1:]
    w = np.array([m.get("steps", 1) for m in tail], np.float64)
    mean = lambda k: float(np.sum(w * [m[k] for m in tail]) / np.sum(w))
    return mean("loss"), mean("acc")


def summarize(metrics: list[dict], recalibrated: Optional[dict] = None, status: Optional[dict] = None, window: Optional[int] = None) -> dict:
    """One run's numbers: medians over training of the loss range (``loss_max −
    loss_min``), the largest gradient change and the β-smoothness, the largest β; the
    training loss/accuracy over the last ``window`` steps (None: fit's last train line);
    the held-out accuracy (``recalibrated``'s if given, else the last eval line's) and
    the status. NaN where there are no such records."""
    probes = [m for m in metrics if m.get("kind") == "smoothness"]
    train = [m for m in metrics if m.get("kind") == "train"]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    beta = [m["beta_smoothness"] for m in probes]
    diverged = any(m.get("kind") == "divergence" for m in metrics) or (status or {}).get("status") == "diverged"
    held_out = recalibrated if recalibrated is not None else (evals[-1] if evals else None)
    train_loss, train_acc = _final_train(train, window)
    return {
        "loss_range": _median([m["loss_max"] - m["loss_min"] for m in probes]),
        "grad_change": _median([m["grad_change_max"] for m in probes]),
        "beta_smoothness": _median(beta),
        "max_beta_smoothness": float(max(beta)) if beta else float("nan"),
        "train_loss": train_loss,
        "train_acc": train_acc,
        "eval_acc": held_out["acc"] if held_out else float("nan"),
        "eval_running_acc": evals[-1]["acc"] if evals else float("nan"),
        "status": "diverged" if diverged else "finished",
    }


def load_study(root) -> tuple[dict, dict[str, list[Run]]]:
    """``(study.json, {variant: [runs sorted by seed]})`` under ``root``.

    Raises:
      ValueError: no stored runs under ``root``.
    """
    root = pathlib.Path(root)
    runs = find_runs(root) if root.exists() else []
    if not runs:
        raise ValueError(f"no stored runs under {root}")
    study = read_json(root / "study.json") if (root / "study.json").is_file() else {}
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.tag or r.variant, []).append(r)
    order = [v for v in ORDER if v in by] + sorted(set(by) - set(ORDER))
    return study, {v: sorted(by[v], key=lambda r: (r.seed is None, r.seed)) for v in order}


def _recalibrated(run: Run) -> Optional[dict]:
    path = run.path / RECALIBRATED
    return read_json(path) if path.is_file() else None


def per_seed(runs: list[Run], window: Optional[int]) -> dict:
    """``{seed: summarize(...)}`` of a variant's runs; a diverged run's numbers are NaN
    (module docstring) and its ``status`` says so."""
    out = {}
    for r in runs:
        s = summarize(r.metrics, _recalibrated(r), r.status, window)
        if s["status"] == "diverged" or r.diverged:
            s = {**{k: math.nan for k in _NUMBERS + ("eval_running_acc",)}, "status": "diverged"}
        out[r.seed] = s
    return out


def _variant_summary(runs: list[Run], window: Optional[int]) -> dict:
    """Each number's :class:`~jaxnorm.analysis.stats.Interval` over the variant's seeds."""
    each = list(per_seed(runs, window).values())
    out = {"n": len(each), "status": ", ".join(sorted({s["status"] for s in each})), "recalibrated": any(_recalibrated(r) for r in runs)}
    for k in _NUMBERS + ("eval_running_acc",):
        out[k] = mean_interval([s[k] for s in each])
    return out


def compare(a: Mapping, b: Mapping, number: str, log: bool) -> Paired:
    """``a − b`` of ``number`` paired by seed (seeds in both; :func:`per_seed` dicts), of
    the natural logs when ``log`` (a non-positive value counts as missing)."""
    seeds = [s for s in a if s in b]
    f = (lambda v: math.log(v) if v > 0 else math.nan) if log else float
    return paired_test([f(a[s][number]) for s in seeds], [f(b[s][number]) for s in seeds])


def _word(p: Paired, favourable: int) -> str:
    """holds / does not hold here / not significant (n = …), for a claim on ``a − b``."""
    if p.n < 2:
        return f"no test (n = {p.n})"
    side = p.excludes_zero()
    if favourable == 0:
        return f"no significant difference (n = {p.n})" if side == 0 else f"does not hold here ({'higher' if side > 0 else 'lower'})"
    return "holds" if side == favourable else "does not hold here" if side == -favourable else f"not significant (n = {p.n})"


def _fmt_p(p: float) -> str:
    return "—" if not math.isfinite(p) else f"{p:.2g}" if p >= 1e-3 else "< 0.001"


def _fmt_paired(p: Paired, log: bool) -> str:
    """A log comparison as the geometric-mean ratio ``a/b`` with its interval; else the
    difference; the paired t-test's p and the sign test."""
    if p.n == 0:
        return "—"
    tail = f"p {_fmt_p(p.p_t)}; sign {p.positive}+/{p.negative}−, p {_fmt_p(p.p_sign)}" + (f", {p.diff.excluded} excluded" if p.diff.excluded else "")
    if not log:
        return p.format(4).split(" (p")[0] + f" ({tail})"
    d = p.diff
    ratio = f"{math.exp(d.mean):.3g}×"
    if d.n >= 2 and math.isfinite(d.half_width):
        ratio += f" [{math.exp(d.low):.3g}×, {math.exp(d.high):.3g}×]"
    return f"{ratio} ({tail})"


def _cell(ci: Interval) -> str:
    """``mean ± half-width`` to 3 significant digits (the numbers span orders of magnitude)."""
    if ci.n == 0 or not math.isfinite(ci.mean):
        return "—"
    text = f"{ci.mean:.3g}" + (f" ± {ci.half_width:.2g}" if ci.n >= 2 else "")
    return text + (f" (n = {ci.n})" if ci.excluded else "")


def _setup_line(study: dict) -> str:
    s = study.get("setup", {})
    if not s:
        return "(no study.json: setup unknown)"
    etas = [f * s["learning_rate"] for f in s.get("eta_factors", ())]
    subset = f" (first {s['subset']} examples)" if s.get("subset") else ""
    return (
        f"{s.get('model')} {s.get('model_kwargs')} on {s.get('dataset')}{subset}, SGD lr {s.get('learning_rate'):g}, "
        f"batch {s.get('batch_size')}, {s.get('steps')} steps, seeds {study.get('seeds')}; probes every {s.get('every')} "
        f"steps on the first {s.get('probe_examples')} training examples (fixed) at η = {', '.join(f'{e:.3g}' for e in etas)}; "
        f"noisy_bn: per-step shift U(±{s.get('noise_mean'):g}), variance U(1, {1 + s.get('noise_var'):g}) after each BN. "
        f"Per run: medians over training of the probes; final training loss/accuracy: means over the last {s.get('every')} steps."
    )


def comparisons(seeds: Mapping[str, Mapping]) -> list[dict]:
    """The :data:`COMPARISONS` whose two variants were trained: ``{a, b, number, log,
    claim, what, test, verdict}``."""
    out = []
    for a, b, number, log, fav, claim, what in COMPARISONS:
        if a in seeds and b in seeds:
            p = compare(seeds[a], seeds[b], number, log)
            out.append({"a": a, "b": b, "number": number, "log": log, "claim": claim, "what": what, "test": p, "verdict": _word(p, fav)})
    return out


def summary_markdown(study: dict, runs: Mapping[str, list[Run]], name: str = "") -> str:
    """The claims, a table per variant (mean ± 95% interval over seeds), and the paired
    comparisons with their verdicts."""
    window = _window(study)
    s = {v: _variant_summary(rs, window) for v, rs in runs.items()}
    split = study.get("setup", {}).get("eval_split", "eval")
    lines = [
        f"# Loss-landscape smoothness and BatchNorm{': ' + name if name else ''}",
        "",
        _setup_line(study),
        "",
        "Claims (Santurkar et al. 2018, \"How does batch normalization help optimization?\"): (1) with BN the loss "
        "changes less along the gradient, the gradient is more predictive and the effective β-smoothness is lower "
        "(Fig. 4); (2) BN followed by non-stationary noise (more internal covariate shift) trains about as well as BN, "
        "both better than no BN (Fig. 2).",
        "",
        f"Mean ± the half-width of the {CONFIDENCE:.0%} t-interval over the seeds (n = runs; a diverged run is left out "
        "and counted: (n = …) beside a number).",
        "",
        f"| variant | runs | median loss range | median max grad change | median β | max β | final train loss | final train acc | {split} acc | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v, t in s.items():
        acc = _cell(t["eval_acc"]) + (" ¹" if t["recalibrated"] else "")
        lines.append(
            f"| {v} | {t['n']} | {_cell(t['loss_range'])} | {_cell(t['grad_change'])} | {_cell(t['beta_smoothness'])} | "
            f"{_cell(t['max_beta_smoothness'])} | {_cell(t['train_loss'])} | {_cell(t['train_acc'])} | {acc} | {t['status']} |"
        )
    lines.append("")
    if any(t["recalibrated"] for t in s.values()):
        noted = ", ".join(f"{v} {_cell(t['eval_running_acc'])}" for v, t in s.items() if t["recalibrated"])
        lines += [
            "¹ noise-free network with population BN statistics over the training set (the running averages saw noisy "
            f"activations); with the running averages: {noted}.",
            "",
        ]
    rows = comparisons({v: per_seed(rs, window) for v, rs in runs.items()})
    if rows:
        lines += [
            f"Paired by seed: a/b is the geometric-mean ratio over seeds [its {CONFIDENCE:.0%} interval] (paired t-test on "
            "the logs), a − b the mean difference ± its half-width; p: two-sided paired t-test; sign: the signs of the "
            "per-seed differences (with 3 seeds the sign test cannot go below p = 0.25, so the verdict uses the t-test).",
            "",
            "| claim | measure | a vs b | a/b or a − b | verdict |",
            "|---:|---|---|---|---|",
        ]
        for r in rows:
            lines.append(f"| {r['claim']} | {r['what']} | {r['a']} vs {r['b']} | {_fmt_paired(r['test'], r['log'])} | {r['verdict']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _probes(run: Run) -> list[dict]:
    return [m for m in run.metrics if m.get("kind") == "smoothness"]


def _stack(runs: list[Run], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values (runs, steps))`` of ``key`` in the ``kind`` lines, NaN where a run
    has none (e.g. after it diverged)."""
    series = [{m["step"]: m[key] for m in r.metrics if m.get("kind") == kind and key in m} for r in runs]
    steps = np.array(sorted({s for d in series for s in d}), np.int64)
    vals = np.array([[d.get(s, np.nan) for s in steps] for d in series], np.float64).reshape(len(runs), len(steps))
    return steps, vals


def _log(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(v > 0, v, np.nan))


def _geo_band(ax, steps, vals, color, label) -> None:
    """Geometric mean over the runs (rows) with the 95% t-interval of the log as a band."""
    mean, half, _ = mean_band(_log(vals))
    ax.plot(steps, np.exp(mean), color=color, label=label)
    ok = np.isfinite(half)
    if ok.sum() > 1:
        ax.fill_between(steps[ok], np.exp(mean - half)[ok], np.exp(mean + half)[ok], color=color, alpha=0.2, lw=0)


def _band_plot(plt, path, runs, colors, low: str, high: str, title: str, ylabel: str) -> None:
    """Per variant the band min–max over η (the paper's Fig. 4a/b), each edge the
    geometric mean over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, rs in runs.items():
        steps, lo = _stack(rs, "smoothness", low)
        _, hi = _stack(rs, "smoothness", high)
        with np.errstate(invalid="ignore"):
            glo, ghi = np.exp(np.nanmean(_log(lo), axis=0)), np.exp(np.nanmean(_log(hi), axis=0))
        ax.fill_between(steps, glo, ghi, color=colors[variant], alpha=0.35, lw=0, label=f"{variant} (n = {len(rs)})")
    ax.set_yscale("log")
    ax.set(xlabel="SGD step", ylabel=ylabel)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(root, labels: Optional[Mapping[str, str]] = None) -> str:
    """The four plots and ``plots/summary.md`` under ``root``; returns the one-line
    verdict. ``labels``: optional legend text per variant.

    Raises:
      ValueError: no stored runs under ``root``.
    """
    root = pathlib.Path(root)
    study, runs = load_study(root)
    labels = dict(labels or {})
    plt = pyplot()
    plots = fresh_report_dir(root / "plots")
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {v: cycle[i % len(cycle)] for i, v in enumerate(runs)}
    s = study.get("setup", {})
    etas = [f * s["learning_rate"] for f in s.get("eta_factors", ())] if s else []
    grid = f"η ∈ [{min(etas):.3g}, {max(etas):.3g}] ({len(etas)} values)" if etas else "η grid unknown"
    seeds = "band edges: geometric means over seeds"
    _band_plot(plt, plots / "landscape.png", runs, colors, "loss_min", "loss_max", f"loss landscape: L(w − ηg), {grid}; {seeds}", "training loss along the gradient")
    _band_plot(plt, plots / "predictiveness.png", runs, colors, "grad_change_min", "grad_change_max", f"gradient predictiveness: ‖∇L(w − ηg) − ∇L(w)‖, {grid}; {seeds}", "ℓ2 change of the gradient")
    band = f"geometric mean over seeds, band: {CONFIDENCE:.0%} t-interval"

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, rs in runs.items():
        steps, vals = _stack(rs, "smoothness", "beta_smoothness")
        _geo_band(ax, steps, vals, colors[variant], f"{variant} (n = {len(rs)})")
    ax.set_yscale("log")
    ax.set(xlabel="SGD step", ylabel="max_η ‖∇L(w − ηg) − g‖ / ‖ηg‖")
    ax.set_title(f"effective β-smoothness, {grid}; {band}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "beta_smoothness.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, rs in runs.items():
        label = f"{variant} ({labels[variant]})" if variant in labels else variant
        steps, loss = _stack(rs, "train", "loss")
        _geo_band(axes[0], steps, loss, colors[variant], f"{label}, n = {len(rs)}")
        steps, acc = _stack(rs, "train", "acc")
        mean, half, _ = mean_band(acc)
        axes[1].plot(steps, mean, color=colors[variant], label=variant)
        ok = np.isfinite(half)
        if ok.sum() > 1:
            axes[1].fill_between(steps[ok], np.clip(mean - half, 0, 1)[ok], np.clip(mean + half, 0, 1)[ok], color=colors[variant], alpha=0.2, lw=0)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="SGD step", ylabel=f"training loss (mean over {s.get('every', '?')} steps)")
    axes[1].set(xlabel="SGD step", ylabel="training accuracy")
    axes[1].set_title(f"mean over seeds, band: {CONFIDENCE:.0%} t-interval", fontsize=9)
    if s:
        axes[0].set_title(f"noisy_bn: per-step shift U(±{s['noise_mean']:g}), variance U(1, {1 + s['noise_var']:g}) after each BN; {band}", fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "ics.png", dpi=100)
    plt.close(fig)
    write_summary(plots, summary_markdown(study, runs, name=root.name))
    return _verdict(study, runs)


def _window(study: dict) -> Optional[int]:
    """The final training loss's window: the study's probe interval."""
    return study.get("setup", {}).get("every")


def _verdict(study: dict, runs: Mapping[str, list[Run]]) -> str:
    rows = comparisons({v: per_seed(rs, _window(study)) for v, rs in runs.items()})
    n = max(len(rs) for rs in runs.values())
    parts = [f"{r['a']} vs {r['b']} {r['number']}: {_fmt_paired(r['test'], r['log'])}, {r['verdict']}" for r in rows]
    if not parts:
        s = {v: _variant_summary(rs, _window(study)) for v, rs in runs.items()}
        parts = ["final training loss " + ", ".join(f"{v} {_cell(t['train_loss'])}" for v, t in s.items())]
    return f"smoothness (up to {n} seeds per variant): " + "; ".join(parts)
