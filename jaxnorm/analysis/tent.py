"""The test-time BN adaptation study's report (``experiments/tent.py``), from stored files.

Reads, under a study root: ``study.json`` (the setup: corruptions, severities, modes, the
streams and TENT's optimizer), and for every trained seed the run folder (``train/``,
``train_s<seed>/``: ``config.json``, ``status.json``) with its ``adaptation/`` evaluation.
Never trains or evaluates. The files of ``adaptation/``:

* ``metrics.jsonl``: per test stream and mode ``{"kind": "eval", "corruption": <kind> |
  "none", "severity": 1..5 | 0, "mode", "error", "entropy" (mean prediction entropy,
  nats), "n", "updates" (TENT updates made), "psnr" (dB; null for clean)}``, ``tent``
  lines also ``"tent_lr"``; per held-out stream ``{"kind": "select", "corruption",
  "severity", "mode": "batch" | "tent", "tent_lr" (tent), "error", "entropy", "n",
  "updates"}`` for ``batch`` and TENT at every lr of the grid; ``{"kind": "divergence",
  "stage": "eval" | "select", ...}`` where a stream's logits became non-finite;
* ``selection.json``: the held-out stream (``split``, ``start``, ``n`` images,
  ``noise_seed``, ``corruptions``, ``severities``), the grid ``lrs``, ``mean_error`` (the
  mean held-out TENT error per lr, null where it diverged), ``batch_mean_error`` and the
  ``chosen`` lr (:func:`choose_lr`); absent when ``tent`` was not a mode;
* ``correct.npz``: per test stream and mode the bool vector of correct predictions (key
  ``<mode>/<corruption>/<severity>``); ``examples.npz``: the first image of each stream.

Statistics (:mod:`jaxnorm.analysis.stats`): the unit is the trained seed. Each seed's
error of a mode is the mean over its corrupted streams (or the clean one, or the
highest severity's); tables give the mean ± 95% t-interval over seeds (n seeds). A mode
comparison ``a`` vs ``b`` is the paired t-test over seeds of those per-seed errors (a −
b; the seeds' models are evaluated on the same streams) and its verdict
(:func:`jaxnorm.analysis.stats.verdict`, lower is better): "holds" when the interval lies
below zero, "does not hold here" when above, else "not significant (n = …)". Beside it
the per-prediction paired counts pooled over seeds and streams (:func:`paired`:
``better`` = predictions ``a`` gets right and ``b`` wrong, ``worse`` the reverse) with
the exact McNemar p-value (the sign test of :func:`jaxnorm.analysis.stats.paired_test`
on the per-prediction correctness: predictions both modes get right or wrong are ties).
The pooled predictions are not independent (one model, one stream), so the verdict is
the seeds'.

``analyze_tent(root)`` writes ``root/plots/errors.png`` (error per corruption, mean over
severities, a bar per mode with the 95% interval over seeds), ``severity.png`` (error vs
severity per corruption, bands), ``selection.png`` (held-out TENT error per lr and seed,
the chosen lrs, ``batch`` for reference), ``examples.png`` (the corruptions on one test
image) and ``summary.md``; returns a one-line verdict.

References:
  D. Wang, E. Shelhamer, S. Liu, B. Olshausen, T. Darrell. Tent: fully test-time adaptation
  by entropy minimization. ICLR 2021.
  S. Schneider et al. Improving robustness against common corruptions by covariate shift
  adaptation. NeurIPS 2020.
"""

from __future__ import annotations

import math
import pathlib
from typing import Sequence

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.stats import CONFIDENCE, Interval, Paired, mean_interval, paired_test, verdict
from jaxnorm.results import read_json, read_jsonl, read_npz, read_status

__all__ = ["MODE_ORDER", "TentRun", "analyze_tent", "choose_lr", "clean_error", "compare", "error_table", "find_tent_runs",
           "paired", "seed_errors", "selection_of", "summary_markdown"]  # fmt: skip

#: Mode colours follow this order (the colour cycle), whichever modes were run.
MODE_ORDER = ("running", "batch", "tent")
COMPARISONS = (("batch", "running", "test-batch statistics vs running averages"), ("tent", "batch", "TENT vs test-batch statistics"))


class TentRun:
    """One trained seed: its run folder, training config and status, and its evaluation
    (``records`` from ``adaptation/metrics.jsonl``, ``correct``, ``examples``,
    ``selection``; empty when not evaluated, e.g. after a diverged training)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.config = read_json(path / "config.json")
        self.status = read_status(path)
        ad = path / "adaptation"
        done = (ad / "settings.json").is_file()
        self.settings = read_json(ad / "settings.json") if done else {}
        self.records = read_jsonl(ad / "metrics.jsonl") if done else []
        self.correct = read_npz(ad / "correct.npz") if done else {}
        self.examples = read_npz(ad / "examples.npz") if done else {}
        self.selection = read_json(ad / "selection.json") if done and (ad / "selection.json").is_file() else {}

    seed = property(lambda self: self.config.get("seed", 0))


def find_tent_runs(root) -> list[TentRun]:
    """The trained seeds under ``root`` (folders ``train``/``train_s<seed>`` with a
    ``config.json``), by seed."""
    root = pathlib.Path(root)
    paths = [p for p in sorted(root.glob("train*")) if (p / "config.json").is_file()] if root.is_dir() else []
    return sorted((TentRun(p) for p in paths), key=lambda r: r.seed)


def _mean(a) -> float:
    """Mean of the finite entries (NaN, without a warning, if none)."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def error_table(records: Sequence[dict], modes, corruptions, severities) -> np.ndarray:
    """``(modes, corruptions, severities)`` errors from ``eval`` records, the mean where
    several records (seeds) have the same cell, NaN where none has."""
    cells: dict[tuple, list] = {}
    for r in records:
        if r.get("kind") == "eval" and r["mode"] in modes and r["corruption"] in corruptions and r["severity"] in severities:
            cells.setdefault((modes.index(r["mode"]), corruptions.index(r["corruption"]), severities.index(r["severity"])), []).append(r["error"])
    out = np.full((len(modes), len(corruptions), len(severities)), np.nan)
    for idx, errs in cells.items():
        out[idx] = float(np.mean(errs))
    return out


def seed_errors(runs: Sequence[TentRun], modes, corruptions, severities) -> np.ndarray:
    """``(seeds, modes, corruptions, severities)``: each evaluated run's error table
    (:func:`error_table` of its records; NaN where a stream diverged)."""
    done = [r for r in runs if r.records]
    return np.stack([error_table(r.records, modes, corruptions, severities) for r in done]) if done else np.full((0, len(modes), len(corruptions), len(severities)), np.nan)


def clean_error(records: Sequence[dict], mode: str) -> float:
    """The mean clean-stream error of ``mode`` (NaN if none)."""
    return _mean([r["error"] for r in records if r.get("kind") == "eval" and r["corruption"] == "none" and r["mode"] == mode])


def paired(corrects: Sequence[dict], a: str, b: str, corruptions, severities) -> dict:
    """Over all corrupted streams of every seed's ``correct`` dict: ``better`` (a right, b
    wrong), ``worse`` (a wrong, b right), ``n`` (pairs), ``p`` (the exact two-sided
    McNemar p-value; NaN without pairs) and ``significant`` (p < 1 − the confidence).
    Streams missing in either mode are skipped."""
    xs, ys = [], []
    for correct in corrects:
        for c in corruptions:
            for s in severities:
                ka, kb = f"{a}/{c}/{s}", f"{b}/{c}/{s}"
                if ka in correct and kb in correct:
                    xs.append(np.asarray(correct[ka], np.float64))
                    ys.append(np.asarray(correct[kb], np.float64))
    t = paired_test(np.concatenate(xs), np.concatenate(ys)) if xs else None
    p = t.p_sign if t is not None else math.nan
    return {"better": t.positive if t else 0, "worse": t.negative if t else 0, "n": t.n if t else 0, "p": p,
            "significant": bool(p < 1 - CONFIDENCE)}  # fmt: skip


def compare(runs: Sequence[TentRun], a: str, b: str, corruptions, severities) -> Paired:
    """Mode ``a`` minus mode ``b``, paired by seed: each seed's mean error over the
    corrupted streams (module docstring)."""
    done = [r for r in runs if r.records]
    table = seed_errors(done, [a, b], list(corruptions), list(severities))
    return paired_test([_mean(t[0]) for t in table], [_mean(t[1]) for t in table])


def verdict_word(test: Paired) -> str:
    """``holds`` / ``does not hold here`` / ``not significant (n = …)`` for "``a`` has the
    lower error" (:func:`jaxnorm.analysis.stats.verdict`, lower is better)."""
    word = verdict((test, -1))
    return {"yes": "holds", "no": "does not hold here"}.get(word, f"{word} (n = {test.n})")


def choose_lr(records: Sequence[dict], lrs: Sequence[float]) -> tuple[float, dict]:
    """The lr of ``lrs`` with the lowest mean TENT error over the held-out ``select``
    records (ties: the smaller lr; an lr with a held-out divergence is not chosen; if every
    lr diverged, the smallest). Returns ``(lr, {lr: mean error, None where diverged})``."""
    bad = {r.get("tent_lr") for r in records if r.get("kind") == "divergence" and r.get("stage") == "select" and r.get("mode") == "tent"}
    errs = {lr: [r["error"] for r in records if r.get("kind") == "select" and r["mode"] == "tent" and r["tent_lr"] == lr] for lr in lrs}
    mean = {lr: (float(np.mean(e)) if e and lr not in bad else None) for lr, e in errs.items()}
    ok = sorted(lr for lr, m in mean.items() if m is not None)
    return (min(ok, key=lambda lr: mean[lr]) if ok else min(lrs)), mean


def selection_of(records: Sequence[dict], lrs: Sequence[float]) -> dict:
    """The choice part of ``selection.json`` from a seed's held-out ``select`` records:
    ``lrs``, ``mean_error`` (per lr, None where it diverged), ``chosen``
    (:func:`choose_lr`) and ``batch_mean_error`` (None without ``batch`` records)."""
    chosen, mean = choose_lr(records, lrs)
    batch = [r["error"] for r in records if r.get("kind") == "select" and r["mode"] == "batch"]
    return {"lrs": list(lrs), "mean_error": [mean[v] for v in lrs], "chosen": chosen, "batch_mean_error": float(np.mean(batch)) if batch else None}


def _pct(ci: Interval) -> str:
    return ci.format(2, 100.0, say_single=False) + ("%" if ci.n else "")


def summary_markdown(setup: dict, runs: Sequence[TentRun]) -> str:
    """The claim, the setup (from the stored files), the held-out choice of TENT's lr,
    errors per mode and corruption (mean ± 95% interval over seeds) and the paired
    comparisons."""
    modes, kinds, sevs = list(setup["modes"]), list(setup["corruptions"]), list(setup["severities"])
    done = [r for r in runs if r.records]
    records = [r for run in done for r in run.records]
    table = seed_errors(done, modes, kinds, sevs)  # seeds x modes x kinds x sevs
    tc = runs[0].config
    n = len(done)
    lines = [
        f"# Test-time BatchNorm adaptation under corruption: {setup['name']}",
        "",
        "Claim (CMU lecture “Normalization and Regularization”; Wang et al. 2021, \"Tent: fully test-time adaptation by "
        "entropy minimization\", Fig. 5; Schneider et al. 2020): BN at test time normally uses the running averages from "
        "training; on corrupted (out-of-distribution) inputs, normalizing by the test batch's own statistics lowers the "
        "error, and TENT -- also updating BN's γ/β online to minimize the mean prediction entropy of each test batch -- "
        "lowers it further.",
        "",
        f"Setup: {tc['model']} {dict(sorted(tc['model_kwargs'].items()))}, norm {tc['norm']}, trained on clean {tc['dataset']} "
        f"(the first {tc.get('train_subset') or 'all'} training images, {tc['epochs']} epochs, SGD lr {tc['learning_rate']:g}, "
        f"batch {tc['batch_size']}), seeds {[r.seed for r in runs]}. Test streams: "
        + ("CIFAR-10-C from tfds" if setup["source"] == "tfds" else "the test split corrupted by jaxnorm.data.corrupt (CIFAR-10-C parameters)")
        + f", {len(kinds)} corruptions x severities {sevs}, batch {setup['batch_size']}, {setup['passes']} pass(es); TENT: "
        f"{setup['tent_optimizer']}, {setup['tent_steps']} update(s) per batch, reset per stream.",
        "",
    ]
    for run in runs:
        if run.status.get("status") == "diverged":
            d = run.status.get("divergence") or {}
            lines.append(f"**Divergence** (train, seed {run.seed}): " + ", ".join(f"{k} {v}" for k, v in d.items()))
        elif not run.settings:
            lines.append(f"Seed {run.seed}: not evaluated (training status {run.status.get('status', '?')}).")
    for r in records:
        if r.get("kind") == "divergence":
            lines.append(f"**Divergence** ({r['stage']}): " + ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("kind", "stage")))
    lines += _selection_lines(done)
    updates = next((r["updates"] for r in records if r.get("kind") == "eval" and r["mode"] == "tent"), None)
    if updates is not None:
        lines += [f"TENT made {updates} updates per stream.", ""]
    pct = f"{CONFIDENCE:.0%}"
    lines += [
        f"Errors: mean ± {pct} t-interval over the n = {n} seeds (each seed: the mean over its streams).",
        "",
        f"| mode | clean error | mean error (corrupted) | mean error, severity {sevs[-1]} | mean entropy (corrupted, nats) |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, m in enumerate(modes):
        ents = [_mean([r["entropy"] for r in run.records if r.get("kind") == "eval" and r["mode"] == m and r["corruption"] != "none"]) for run in done]
        cells = [mean_interval([clean_error(run.records, m) for run in done]), mean_interval([_mean(t[i]) for t in table]),
                 mean_interval([_mean(t[i, :, -1]) for t in table])]  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(map(_pct, cells)) + f" | {mean_interval(ents).format(3, say_single=False)} |")
    lines += ["", f"Error (%) per corruption, mean over severities; mean ± {pct} interval over seeds:", "",
              "| corruption | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]  # fmt: skip
    for j, k in enumerate(kinds):
        lines.append(f"| {k} | " + " | ".join(mean_interval([_mean(t[i, j]) for t in table]).format(2, 100.0, say_single=False) for i in range(len(modes))) + " |")
    lines += ["", f"Mode comparisons, paired by seed (Δ: the first mode's mean corrupted error minus the second's, percentage points, "
              f"mean ± {pct} interval, paired t-test p, sign test), the verdict from it; beside it the per-prediction paired counts "
              "pooled over seeds and streams with the exact McNemar p.", ""]  # fmt: skip
    for a, b, what in COMPARISONS:
        if a in modes and b in modes and done:
            t, p = compare(done, a, b, kinds, sevs), paired([run.correct for run in done], a, b, kinds, sevs)
            lines.append(
                f"- {what}: Δ error (pp) {t.format(2, 100.0)}: **{verdict_word(t)}**. Per prediction ({p['n']} pairs): {a} right where "
                f"{b} is wrong {p['better']} times, wrong where {b} is right {p['worse']} times (McNemar p {_p(p['p'])})."
            )
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else f"{p:.2g}" if p >= 1e-3 else "< 0.001"


def _selection_lines(runs: Sequence[TentRun]) -> list[str]:
    """The held-out choice of TENT's lr: where the held-out stream comes from, the mean
    held-out error per lr (mean ± interval over seeds), each seed's choice."""
    sel = [r.selection for r in runs if r.selection]
    if not sel:
        return ["No held-out selection of TENT's lr is stored (tent was not a mode).", ""]
    s0, pct = sel[0], f"{CONFIDENCE:.0%}"
    lines = [
        "## TENT's learning rate, chosen on held-out streams",
        "",
        f"Held-out streams: {s0['n']} images of the {s0['split']!r} split from index {s0['start']} (not trained on, not test "
        f"images), corrupted by {', '.join(s0['corruptions'])} at severities {s0['severities']} with noise seed "
        f"{s0['noise_seed']}. Each seed's lr: the grid value with the lowest mean held-out TENT error (ties: the smaller); "
        f"the test streams were not used. Mean held-out error (%) ± {pct} interval over the {len(sel)} seed(s):",
        "",
        "| TENT lr | held-out error | chosen by |",
        "|---:|---:|---:|",
    ]
    for i, lr in enumerate(s0["lrs"]):
        errs = [s["mean_error"][i] for s in sel]
        lines.append(f"| {lr:g} | {_pct(mean_interval(errs))} | {sum(s['chosen'] == lr for s in sel)}/{len(sel)} |")
    lines.append(f"| (batch, no update) | {_pct(mean_interval([s.get('batch_mean_error') for s in sel]))} | |")
    chosen = ", ".join(f"seed {r.seed}: {r.selection['chosen']:g}" for r in runs if r.selection)
    return lines + ["", f"Chosen: {chosen}.", ""]


def _plots(setup: dict, runs: Sequence[TentRun], plots: pathlib.Path) -> None:
    plt = pyplot()
    modes, kinds, sevs = list(setup["modes"]), list(setup["corruptions"]), list(setup["severities"])
    done = [r for r in runs if r.records]
    table = seed_errors(done, modes, kinds, sevs)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = list(MODE_ORDER) + [m for m in modes if m not in MODE_ORDER]
    colors = {m: cycle[order.index(m) % len(cycle)] for m in modes}
    band = f"{len(done)} seed(s): mean, {CONFIDENCE:.0%} t-interval over seeds"

    fig, ax = plt.subplots(figsize=(max(7, 1.1 * (len(kinds) + 1)), 4.2))
    width = 0.8 / len(modes)
    for i, m in enumerate(modes):
        per_seed = [[_mean(t[i, j]) for j in range(len(kinds))] + [_mean(t[i])] for t in table]
        cis = [mean_interval([row[j] for row in per_seed]) for j in range(len(kinds) + 1)]
        yerr = [100 * (c.half_width if math.isfinite(c.half_width) else 0.0) for c in cis]
        ax.bar(np.arange(len(kinds) + 1) + (i - (len(modes) - 1) / 2) * width, [100 * c.mean for c in cis], width, yerr=yerr,
               capsize=2, color=colors[m], label=m)  # fmt: skip
    ax.set_xticks(np.arange(len(kinds) + 1))
    ax.set_xticklabels([k.replace("_", "\n") for k in kinds] + ["mean"], fontsize=8)
    ax.set_ylabel(f"error (%), mean over severities {sevs[0]}-{sevs[-1]}")
    ax.set_title(f"{setup['name']}: test error under corruption, BN running vs test-batch statistics vs TENT ({band})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "errors.png", dpi=100)
    plt.close(fig)

    cols = min(4, len(kinds))
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharex=True)
    for j, k in enumerate(kinds):
        ax = axes[j // cols, j % cols]
        for i, m in enumerate(modes):
            cis = [mean_interval([clean_error(r.records, m) for r in done])] + [mean_interval(table[:, i, j, s]) for s in range(len(sevs))]
            x, y = np.array([0] + sevs), 100 * np.array([c.mean for c in cis])
            h = 100 * np.array([c.half_width for c in cis])
            ax.plot(x, y, "o-", ms=3, color=colors[m], label=m)
            if np.isfinite(h).any():
                ax.fill_between(x, y - h, y + h, color=colors[m], alpha=0.2, lw=0)
        ax.set_title(k, fontsize=9)
        ax.set_xticks([0] + sevs)
    for j in range(len(kinds), rows * cols):
        axes[j // cols, j % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("severity (0: clean)")
    for ax in axes[:, 0]:
        ax.set_ylabel("error (%)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(band, fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "severity.png", dpi=100)
    plt.close(fig)

    sel = [r for r in done if r.selection]
    if sel:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        lrs = sel[0].selection["lrs"]
        for r in sel:
            errs = [math.nan if e is None else 100 * e for e in r.selection["mean_error"]]
            ax.plot(lrs, errs, "o-", color=colors.get("tent", "k"), alpha=0.5, lw=1)
            ax.plot([r.selection["chosen"]], [errs[lrs.index(r.selection["chosen"])]], "*", ms=12, color=colors.get("tent", "k"))
            if r.selection.get("batch_mean_error") is not None:
                ax.axhline(100 * r.selection["batch_mean_error"], color=colors.get("batch", "k"), ls="--", lw=0.8)
        ax.set(xscale="log", xlabel="TENT learning rate", ylabel="held-out error (%), mean over streams")
        ax.set_title("TENT lr on held-out streams, one line per seed (star: chosen); dashed: batch", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / "selection.png", dpi=100)
        plt.close(fig)

    examples = next((run.examples for run in runs if run.examples), {})
    if examples:
        fig, axes = plt.subplots(len(kinds), len(sevs) + 1, figsize=(1.3 * (len(sevs) + 1), 1.3 * len(kinds)), squeeze=False)
        for j, k in enumerate(kinds):
            for i, key in enumerate(["none/0"] + [f"{k}/{s}" for s in sevs]):
                ax = axes[j, i]
                if key in examples:
                    img = np.clip(examples[key], 0, 1)
                    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_title("clean" if i == 0 else f"severity {sevs[i - 1]}", fontsize=7)
            axes[j, 0].set_ylabel(k, fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / "examples.png", dpi=100)
        plt.close(fig)


def analyze_tent(root) -> str:
    """Writes the plots and ``summary.md`` of the study under ``root`` (module docstring);
    returns a one-line verdict. ValueError when ``root`` has no stored study or no
    trained run."""
    root = pathlib.Path(root)
    runs = find_tent_runs(root)
    if not (root / "study.json").is_file() or not runs:
        raise ValueError(f"no stored TENT study under {root}.")
    # What was evaluated is in the runs' settings.json (study.json holds the setup the root was trained with).
    setup = {**read_json(root / "study.json")["setup"], **next((r.settings for r in runs if r.settings), {})}
    plots = fresh_report_dir(root / "plots")
    _plots(setup, runs, plots)
    write_summary(plots, summary_markdown(setup, runs))
    done = [r for r in runs if r.records]
    modes, kinds, sevs = list(setup["modes"]), list(setup["corruptions"]), list(setup["severities"])
    table = seed_errors(done, modes, kinds, sevs)
    head = f"mean corrupted error (n = {len(done)}) " + ", ".join(f"{m} {_pct(mean_interval([_mean(t[i]) for t in table]))}" for i, m in enumerate(modes))
    tails = [f"{what}: {verdict_word(t)} (Δ {t.format(2, 100.0)} pp)" for a, b, what in COMPARISONS
             if a in modes and b in modes and done for t in [compare(done, a, b, kinds, sevs)]]  # fmt: skip
    chosen = [r.selection["chosen"] for r in done if r.selection]
    if chosen:
        tails.append("TENT lr chosen on held-out streams: " + ", ".join(f"{v:g}" for v in chosen))
    return "; ".join([head] + tails)
