"""The smoothness study's analysis (``experiments/smoothness.py``; Santurkar et al. 2018,
"How does batch normalization help optimization?"): summaries, plots and the verdict,
from the stored files only.

Reads ``<root>/study.json`` (the setup that was trained, and its seeds) and every run
folder below ``root`` (fit's ``config.json`` -- its ``tag`` is the study's variant --,
``metrics.jsonl`` with the ``smoothness`` observer's lines, ``status.json``, and
``recalibrated_eval.json`` where the study wrote one). Writes ``root/plots/``:

* ``landscape.png`` / ``predictiveness.png``: per run the band (min to max over η) of
  the loss L(w − ηg) and of the gradient change ‖∇L(w − ηg) − ∇L(w)‖ over training
  (the paper's Fig. 4a/b);
* ``beta_smoothness.png``: max_η ‖∇L(w − ηg) − g‖ / ‖ηg‖ over training (Fig. 4c);
* ``ics.png``: training loss and accuracy of the variants (Fig. 2);
* ``summary.md``: the claims, a table per variant (means over seeds of per-run medians
  over training; ± the standard deviation over seeds when there are several) and the
  vanilla / BN ratios.
"""

from __future__ import annotations

import math
import pathlib
from typing import Mapping, Optional

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot
from jaxnorm.analysis.runs import Run, find_runs
from jaxnorm.results import read_json

__all__ = ["summarize", "load_study", "summary_markdown", "write_report", "ORDER", "RECALIBRATED"]

ORDER = ("vanilla", "bn", "noisy_bn")  # plotting/table order; other tags follow, sorted
RECALIBRATED = "recalibrated_eval.json"
_NUMBERS = ("loss_range", "grad_change", "beta_smoothness", "max_beta_smoothness", "train_loss", "train_acc", "eval_acc")


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


def _variant_summary(runs: list[Run], window: Optional[int]) -> dict:
    """Means (and standard deviations, ddof 1) over the runs of a variant."""
    each = [summarize(r.metrics, _recalibrated(r), r.status, window) for r in runs]
    out = {"n": len(each), "status": ", ".join(sorted({s["status"] for s in each})), "recalibrated": any(_recalibrated(r) for r in runs)}
    for k in _NUMBERS + ("eval_running_acc",):
        vals = np.array([s[k] for s in each], np.float64)
        out[k] = float(np.mean(vals))
        out[k + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    return out


def _cell(s: dict, k: str, digits: int = 4) -> str:
    v, sd = s[k], s[k + "_std"]
    return f"{v:.{digits}g}" + (f" ± {sd:.2g}" if math.isfinite(sd) else "")


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
        f"Means over seeds of the medians over training; final training loss/accuracy: means over the last {s.get('every')} steps."
    )


def _ratios(s: dict) -> Optional[dict]:
    if "vanilla" not in s or "bn" not in s:
        return None
    return {k: s["vanilla"][k] / s["bn"][k] for k in ("loss_range", "grad_change", "beta_smoothness")}


def summary_markdown(study: dict, runs: Mapping[str, list[Run]], name: str = "") -> str:
    """The claims, a table per variant, and the vanilla / BN ratios."""
    s = {v: _variant_summary(rs, _window(study)) for v, rs in runs.items()}
    split = study.get("setup", {}).get("eval_split", "eval")
    lines = [
        f"# Loss-landscape smoothness and BatchNorm{': ' + name if name else ''}",
        "",
        _setup_line(study),
        "",
        "Claims (Santurkar et al. 2018): (1) with BN the loss changes less along the gradient, the gradient is more "
        "predictive and the effective β-smoothness is lower (Fig. 4); (2) BN followed by non-stationary noise "
        "(more internal covariate shift) trains about as well as BN, both better than no BN (Fig. 2).",
        "",
        f"| variant | runs | median loss range | median max grad change | median β | max β | final train loss | final train acc | {split} acc | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v, t in s.items():
        acc = _cell(t, "eval_acc", 3) + (" ¹" if t["recalibrated"] else "")
        lines.append(
            f"| {v} | {t['n']} | {_cell(t, 'loss_range')} | {_cell(t, 'grad_change')} | {_cell(t, 'beta_smoothness')} | "
            f"{_cell(t, 'max_beta_smoothness')} | {_cell(t, 'train_loss')} | {_cell(t, 'train_acc', 3)} | {acc} | {t['status']} |"
        )
    lines.append("")
    if any(t["recalibrated"] for t in s.values()):
        noted = ", ".join(f"{v} {t['eval_running_acc']:.3f}" for v, t in s.items() if t["recalibrated"])
        lines += [
            "¹ noise-free network with population BN statistics over the training set (the running averages saw noisy "
            f"activations); with the running averages: {noted}.",
            "",
        ]
    ratio = _ratios(s)
    if ratio:
        smoother = all(r > 1 for r in ratio.values())
        lines += [
            f"Smoothness, vanilla / BN: loss range {ratio['loss_range']:.3g}x, gradient change {ratio['grad_change']:.3g}x, "
            f"β-smoothness {ratio['beta_smoothness']:.3g}x: claim (1) {'holds' if smoother else 'does not hold on every measure'} here.",
            "",
        ]
    if {"vanilla", "bn", "noisy_bn"} <= set(s):
        losses = {v: s[v]["train_loss"] for v in ("vanilla", "bn", "noisy_bn")}
        lines.append(
            "Final training loss: " + ", ".join(f"{v} {l:.4g}" for v, l in losses.items())
            + f"; noisy_bn / bn {losses['noisy_bn'] / losses['bn']:.3g}, vanilla / bn {losses['vanilla'] / losses['bn']:.3g}."
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def _probes(run: Run) -> list[dict]:
    return [m for m in run.metrics if m.get("kind") == "smoothness"]


def _band_plot(plt, path, runs, colors, low: str, high: str, title: str, ylabel: str) -> None:
    """One shaded min–max band over training per run (the paper's Fig. 4a/b)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, rs in runs.items():
        for i, r in enumerate(rs):
            p = _probes(r)
            ax.fill_between([m["step"] for m in p], [m[low] for m in p], [m[high] for m in p], color=colors[variant], alpha=0.35 / len(rs) ** 0.5, lw=0, label=variant if i == 0 else None)
    ax.set_yscale("log")
    ax.set(xlabel="SGD step", ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    _band_plot(plt, plots / "landscape.png", runs, colors, "loss_min", "loss_max", f"loss landscape: L(w − ηg), {grid}", "training loss along the gradient")
    _band_plot(plt, plots / "predictiveness.png", runs, colors, "grad_change_min", "grad_change_max", f"gradient predictiveness: ‖∇L(w − ηg) − ∇L(w)‖, {grid}", "ℓ2 change of the gradient")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, rs in runs.items():
        for i, r in enumerate(rs):
            p = _probes(r)
            ax.plot([m["step"] for m in p], [m["beta_smoothness"] for m in p], color=colors[variant], label=variant if i == 0 else None)
    ax.set_yscale("log")
    ax.set(xlabel="SGD step", ylabel="max_η ‖∇L(w − ηg) − g‖ / ‖ηg‖")
    ax.set_title(f"effective β-smoothness, {grid}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "beta_smoothness.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, rs in runs.items():
        for i, r in enumerate(rs):
            train = [m for m in r.metrics if m.get("kind") == "train"]
            steps = [m["step"] for m in train]
            label = (f"{variant} ({labels[variant]})" if variant in labels else variant) if i == 0 else None
            axes[0].plot(steps, [m["loss"] for m in train], color=colors[variant], label=label)
            axes[1].plot(steps, [m["acc"] for m in train], color=colors[variant], label=variant if i == 0 else None)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="SGD step", ylabel=f"training loss (mean over {s.get('every', '?')} steps)")
    axes[1].set(xlabel="SGD step", ylabel="training accuracy")
    if s:
        axes[0].set_title(f"noisy_bn: per-step shift U(±{s['noise_mean']:g}), variance U(1, {1 + s['noise_var']:g}) after each BN", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "ics.png", dpi=110)
    plt.close(fig)
    (plots / "summary.md").write_text(summary_markdown(study, runs, name=root.name))
    return _verdict(study, runs)


def _window(study: dict) -> Optional[int]:
    """The final training loss's window: the study's probe interval."""
    return study.get("setup", {}).get("every")


def _verdict(study: dict, runs: Mapping[str, list[Run]]) -> str:
    s = {v: _variant_summary(rs, _window(study)) for v, rs in runs.items()}
    parts = []
    ratio = _ratios(s)
    if ratio:
        holds = "holds" if all(r > 1 for r in ratio.values()) else "does not hold on every measure"
        parts.append(
            f"vanilla / BN: loss range {ratio['loss_range']:.3g}x, gradient change {ratio['grad_change']:.3g}x, "
            f"β-smoothness {ratio['beta_smoothness']:.3g}x (claim 1 {holds})"
        )
    parts.append("final training loss " + ", ".join(f"{v} {t['train_loss']:.3g}" for v, t in s.items()))
    return "smoothness: " + "; ".join(parts)
