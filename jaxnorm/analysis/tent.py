"""The test-time BN adaptation study's report (``experiments/tent.py``), from stored files.

Reads, under a study root: ``study.json`` (the setup: corruptions, severities, modes, the
streams and TENT's optimizer), and for every trained seed the run folder (``train/``,
``train_s<seed>/``: ``config.json``, ``status.json``) with its ``adaptation/`` evaluation
(``metrics.jsonl`` records, ``correct.npz`` per-prediction correctness, ``examples.npz``).
Never trains or evaluates.

With several seeds, each error is the mean over the seeds that have it, and the paired
comparisons pool the predictions of every seed (each pair is one test image of one
stream under one trained model, so the pairs stay paired). The paired test
(:func:`paired`): ``better`` = predictions mode a gets right and mode b wrong, ``worse``
the reverse; the difference counts as significant when |better − worse| > 2·√(better +
worse), McNemar's test at about 95% (normal approximation, no continuity correction).

``analyze_tent(root)`` writes ``root/plots/errors.png`` (grouped bars: error per
corruption averaged over severities, one bar per mode, as the slide),
``severity.png`` (error vs severity per corruption), ``examples.png`` (the corruptions
on one test image) and ``summary.md`` (the claim, the setup, mean errors per mode, per
corruption, the paired comparisons); returns a one-line verdict.

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

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot
from jaxnorm.results import read_json, read_jsonl, read_npz, read_status

__all__ = ["MODE_ORDER", "TentRun", "analyze_tent", "clean_error", "error_table", "find_tent_runs", "paired", "summary_markdown"]

#: Mode colours follow this order (the colour cycle), whichever modes were run.
MODE_ORDER = ("running", "batch", "tent")
COMPARISONS = (("batch", "running", "test-batch statistics vs running averages"), ("tent", "batch", "TENT vs test-batch statistics"))


class TentRun:
    """One trained seed: its run folder, training config and status, and its evaluation
    (``records`` from ``adaptation/metrics.jsonl``, ``correct``, ``examples``; empty when
    not evaluated, e.g. after a diverged training)."""

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


def clean_error(records: Sequence[dict], mode: str) -> float:
    """The mean clean-stream error of ``mode`` (NaN if none)."""
    return _mean([r["error"] for r in records if r.get("kind") == "eval" and r["corruption"] == "none" and r["mode"] == mode])


def paired(corrects: Sequence[dict], a: str, b: str, corruptions, severities) -> dict:
    """Over all corrupted streams of every seed's ``correct`` dict: ``better`` (a right, b
    wrong), ``worse`` (a wrong, b right), ``n`` (pairs); ``significant`` (module
    docstring). Streams missing in either mode are skipped."""
    better = worse = n = 0
    for correct in corrects:
        for c in corruptions:
            for s in severities:
                ka, kb = f"{a}/{c}/{s}", f"{b}/{c}/{s}"
                if ka in correct and kb in correct:
                    better += int(np.sum(correct[ka] & ~correct[kb]))
                    worse += int(np.sum(~correct[ka] & correct[kb]))
                    n += correct[ka].size
    return {"better": better, "worse": worse, "n": n, "significant": abs(better - worse) > 2 * math.sqrt(better + worse)}


def _verdict(p: dict) -> str:
    if p["better"] > p["worse"] and p["significant"]:
        return "lower error: holds"
    if p["worse"] > p["better"] and p["significant"]:
        return "higher error: does not hold"
    return "no significant difference: not shown here"


def summary_markdown(setup: dict, runs: Sequence[TentRun]) -> str:
    """The claim, the setup (from the stored files), mean errors per mode and corruption,
    and the paired comparisons."""
    modes, kinds, sevs = list(setup["modes"]), list(setup["corruptions"]), list(setup["severities"])
    records = [r for run in runs for r in run.records]
    table = error_table(records, modes, kinds, sevs)
    tc = runs[0].config
    lines = [
        f"# Test-time BatchNorm adaptation under corruption: {setup['name']}",
        "",
        "Claim (CMU lecture “Normalization and Regularization”; Wang et al. 2021, Fig. 5; Schneider et al. 2020): BN at test time normally "
        "uses the running averages from training; on corrupted (out-of-distribution) inputs, normalizing by the "
        "test batch's own statistics lowers the error, and TENT -- also updating BN's γ/β online to minimize the "
        "mean prediction entropy of each test batch -- lowers it further.",
        "",
        f"Setup: {tc['model']} {dict(sorted(tc['model_kwargs'].items()))}, norm {tc['norm']}, trained on clean {tc['dataset']} "
        f"({tc['epochs']} epochs, SGD lr {tc['learning_rate']:g}, batch {tc['batch_size']}), seeds {[r.seed for r in runs]}. Test streams: "
        + ("CIFAR-10-C from tfds" if setup["source"] == "tfds" else "the test split corrupted by jaxnorm.data.corrupt (CIFAR-10-C parameters)")
        + f", {len(kinds)} corruptions x severities {sevs}, batch {setup['batch_size']}, {setup['passes']} pass(es); TENT: "
        f"{setup['tent_optimizer']} lr {setup['tent_lr']:g}, {setup['tent_steps']} update(s) per batch, reset per stream.",
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
    updates = next((r["updates"] for r in records if r.get("kind") == "eval" and r["mode"] == "tent"), None)
    if updates is not None:
        lines += [f"TENT made {updates} updates per stream.", ""]
    lines += [
        f"| mode | clean error | mean error (corrupted) | mean error, severity {sevs[-1]} | mean entropy (corrupted, nats) |",
        "|---|---:|---:|---:|---:|",
    ]
    mean = {}
    for i, m in enumerate(modes):
        mean[m] = _mean(table[i])
        ents = [r["entropy"] for r in records if r.get("kind") == "eval" and r["mode"] == m and r["corruption"] != "none"]
        ent = f"{np.mean(ents):.3f}" if ents else "-"
        lines.append(f"| {m} | {100 * clean_error(records, m):.2f}% | {100 * mean[m]:.2f}% | {100 * _mean(table[i, :, -1]):.2f}% | {ent} |")
    lines += ["", "Error (%) per corruption, mean over severities:", "", "| corruption | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for j, k in enumerate(kinds):
        lines.append(f"| {k} | " + " | ".join(f"{100 * _mean(table[i, j]):.2f}" for i in range(len(modes))) + " |")
    lines.append("")
    corrects = [run.correct for run in runs if run.correct]
    for a, b, what in COMPARISONS:
        if a in mean and b in mean and corrects:
            p = paired(corrects, a, b, kinds, sevs)
            lines.append(
                f"- {what}: mean error {100 * mean[b]:.2f}% -> {100 * mean[a]:.2f}%; over {p['n']} paired predictions "
                f"{a} is right where {b} is wrong {p['better']} times and wrong where {b} is right {p['worse']} times "
                f"(McNemar, |difference| > 2√(sum) counts as significant): {_verdict(p)}."
            )
    return "\n".join(lines) + "\n"


def _plots(setup: dict, runs: Sequence[TentRun], plots: pathlib.Path) -> None:
    plt = pyplot()
    modes, kinds, sevs = list(setup["modes"]), list(setup["corruptions"]), list(setup["severities"])
    records = [r for run in runs for r in run.records]
    table = error_table(records, modes, kinds, sevs)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = list(MODE_ORDER) + [m for m in modes if m not in MODE_ORDER]
    colors = {m: cycle[order.index(m) % len(cycle)] for m in modes}

    per_kind = np.array([[_mean(row) for row in t] for t in table]).reshape(len(modes), len(kinds))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * (len(kinds) + 1)), 4.2))
    width = 0.8 / len(modes)
    for i, m in enumerate(modes):
        vals = list(per_kind[i]) + [_mean(per_kind[i])]
        ax.bar(np.arange(len(kinds) + 1) + (i - (len(modes) - 1) / 2) * width, 100 * np.asarray(vals), width, color=colors[m], label=m)
    ax.set_xticks(np.arange(len(kinds) + 1))
    ax.set_xticklabels([k.replace("_", "\n") for k in kinds] + ["mean"], fontsize=8)
    ax.set_ylabel(f"error (%), mean over severities {sevs[0]}-{sevs[-1]}")
    ax.set_title(f"{setup['name']}: test error under corruption; BN with running vs test-batch statistics vs TENT", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "errors.png", dpi=110)
    plt.close(fig)

    cols = min(4, len(kinds))
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharex=True)
    for j, k in enumerate(kinds):
        ax = axes[j // cols, j % cols]
        for i, m in enumerate(modes):
            ax.plot([0] + sevs, 100 * np.asarray([clean_error(records, m)] + list(table[i, j])), "o-", ms=3, color=colors[m], label=m)
        ax.set_title(k, fontsize=9)
        ax.set_xticks([0] + sevs)
    for j in range(len(kinds), rows * cols):
        axes[j // cols, j % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("severity (0: clean)")
    for ax in axes[:, 0]:
        ax.set_ylabel("error (%)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "severity.png", dpi=110)
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
        fig.savefig(plots / "examples.png", dpi=110)
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
    (plots / "summary.md").write_text(summary_markdown(setup, runs))
    records = [r for run in runs for r in run.records]
    modes, kinds, sevs = list(setup["modes"]), list(setup["corruptions"]), list(setup["severities"])
    table = error_table(records, modes, kinds, sevs)
    head = "mean corrupted error " + ", ".join(f"{m} {100 * _mean(table[i]):.2f}%" for i, m in enumerate(modes))
    corrects = [run.correct for run in runs if run.correct]
    tails = [f"{what}: {_verdict(p)} ({p['better']} vs {p['worse']})" for a, b, what in COMPARISONS
             if a in modes and b in modes and corrects for p in [paired(corrects, a, b, kinds, sevs)]]  # fmt: skip
    return "; ".join([head] + tails)
