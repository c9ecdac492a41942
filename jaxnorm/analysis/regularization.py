"""The analysis of the regularization study (``experiments/regularization.py``): weight
decay λ and dropout p, with and without BatchNorm (CMU lecture “Normalization and Regularization”; van Laarhoven
2017, "L2 regularization versus batch and weight normalization"; Zhang, Wang, Xu &
Grosse 2019, "Three mechanisms of weight decay regularization").

Reads stored files only: ``root/study.json`` (the seeds and norm order trained, if
present) and every run folder ``root/<run>/`` (``config.json``: ``norm``,
``weight_decay``, ``model_kwargs.dropout_rate`` (absent = 0), ``seed``,
``learning_rate``; ``metrics.jsonl``: the final ``eval`` lines of the splits ``train``
(the training subset) and ``test``, the ``weight_norms`` lines of
:class:`jaxnorm.observers.weight_norms.WeightNorms`, ``divergence`` lines;
``status.json``). A run counts when it finished and was evaluated; diverged runs are
counted as such, and runs that are neither finished nor diverged (killed, failed,
running) are listed as incomplete, never averaged in.

Statistics (:mod:`jaxnorm.analysis.stats`): every number over seeds is the mean with
its 95% t-interval (n = the finished seeds); every change of a setting against the
unregularized one is paired by seed (the runs of one seed share initialization, data
order and dropout masks): the mean paired difference with its 95% interval, the paired
t-test p and the sign test. The lecture's claim "regularization shrinks the gap" is
decided per change by :func:`jaxnorm.analysis.stats.verdict` on the paired gap change
(lower is better): "holds" when its interval lies below zero, "does not hold here"
when above, else "not significant (n = …)".

Writes ``plots/gap.png`` (test accuracy, accuracy gap train − test and loss gap
test − train vs λ at the smallest p and vs p at the smallest λ; mean and 95% band over
seeds), ``plots/grid.png`` (test accuracy and loss gap over the λ × p grid per norm,
mean ± half-width), ``plots/weight_norms.png`` (‖W‖ and the effective learning rate
η/‖W‖² of the pre-BN, scale-invariant layers over training per λ, seed mean with its
band, with pure decay (1 − ηλ)^t ‖W₀‖) and ``plots/summary.md``.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from jaxnorm.analysis.curves import mean_band
from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import Run, load_run, variant_order
from jaxnorm.analysis.stats import CONFIDENCE, Interval, Paired, mean_interval, paired_test, verdict
from jaxnorm.results import read_json

#: The per-run numbers of :func:`run_metrics` that are averaged over seeds.
METRICS = ("train_acc", "test_acc", "acc_gap", "train_loss", "test_loss", "loss_gap")
Key = tuple  # (norm, λ, p, seed)


# --------------------------------------------------------------------------- reading


def run_key(config: dict) -> Key:
    """``(norm, λ, p, seed)`` of a run from its ``config.json``."""
    p = float((config.get("model_kwargs") or {}).get("dropout_rate", 0.0))
    return (str(config["norm"]), float(config.get("weight_decay", 0.0)), p, int(config["seed"]))


def load_results(root) -> tuple[dict, dict[Key, Run]]:
    """``(info, runs)``: ``info`` from ``root/study.json`` (``{}`` if absent) and every run
    folder directly below ``root`` by :func:`run_key`.

    Raises:
      ValueError: no stored runs under ``root``; two folders hold the same (norm, λ, p, seed).
    """
    root = pathlib.Path(root)
    info = read_json(root / "study.json") if (root / "study.json").is_file() else {}
    runs: dict[Key, Run] = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        run = load_run(path)
        if run is None:
            continue
        key = run_key(run.config)
        if key in runs:
            raise ValueError(f"{runs[key].path.name} and {path.name} both hold the run {key}.")
        runs[key] = run
    if not runs:
        raise ValueError(f"no stored runs under {root}")
    return info, runs


def state(run: Run) -> str:
    """``'finished'`` (trained to the end and evaluated), ``'diverged'``, or
    ``'incomplete'`` (killed, failed, still running, or finished without eval lines)."""
    if run.diverged:
        return "diverged"
    evaluated = {m.get("split") for m in run.metrics if m.get("kind") == "eval"} >= {"train", "test"}
    return "finished" if run.status.get("status") == "finished" and evaluated else "incomplete"


# --------------------------------------------------------------------------- per run and over seeds


def run_metrics(run: Run) -> dict:
    """One run's final eval numbers (NaN where absent): train/test ``acc`` and ``loss``,
    ``acc_gap`` = train − test accuracy, ``loss_gap`` = test − train loss, and
    ``finished`` (see :func:`state`)."""
    ev = {}
    for m in run.metrics:  # the last eval line of each split
        if m.get("kind") == "eval":
            ev[m["split"]] = m
    get = lambda split, k: float(ev[split][k]) if split in ev else float("nan")
    out = {f"{split}_{k}": get(split, k) for split in ("train", "test") for k in ("acc", "loss")}
    out["acc_gap"] = out["train_acc"] - out["test_acc"]
    out["loss_gap"] = out["test_loss"] - out["train_loss"]
    out["finished"] = state(run) == "finished"
    return out


def aggregate(runs) -> dict:
    """The :class:`~jaxnorm.analysis.stats.Interval` (mean ± 95% t-interval) over the
    finished runs of each of :data:`METRICS` (n = 0: NaN mean), and ``finished`` (their
    count)."""
    done = [m for m in map(run_metrics, runs) if m["finished"]]
    return {**{k: mean_interval([m[k] for m in done]) for k in METRICS}, "finished": len(done)}


def by_setting(runs: dict[Key, Run]) -> dict:
    """``{(norm, λ, p): aggregate}`` over the seeds of each setting."""
    grouped: dict = {}
    for (norm, wd, p, _), run in runs.items():
        grouped.setdefault((norm, wd, p), []).append(run)
    return {k: aggregate(v) for k, v in grouped.items()}


def paired_change(runs: dict[Key, Run], norm: str, base: tuple, other: tuple, metric: str) -> Paired:
    """:func:`~jaxnorm.analysis.stats.paired_test` of ``metric`` at the setting ``other``
    minus at ``base`` (settings are ``(λ, p)``) over the seeds where both finished: runs
    of one seed share the initialization, the data order and the dropout masks, so the
    difference is paired."""
    other_runs, base_runs = [], []
    for (n, wd, p, seed), run in sorted(runs.items(), key=lambda kv: kv[0][3]):
        partner = runs.get((norm, *other, seed))
        if n == norm and (wd, p) == base and partner is not None:
            a, b = run_metrics(run), run_metrics(partner)
            if a["finished"] and b["finished"]:
                base_runs.append(a[metric])
                other_runs.append(b[metric])
    return paired_test(other_runs, base_runs)


def gap_verdict(change: Paired) -> str:
    """The lecture's "regularization shrinks the gap" for one paired gap change:
    ``holds`` (interval below zero), ``does not hold here`` (above), else ``not
    significant (n = …)`` (``no test (n = …)`` with fewer than 2 pairs)."""
    word = verdict((change, -1))
    return {"yes": "holds", "no": "does not hold here"}.get(word, f"{word} (n = {change.n})")


def weight_norm_series(run: Run) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """``(steps, {layer: ‖W‖_F per record}, scale-invariant layers)`` from a run's
    ``weight_norms`` lines (empty arrays if it has none)."""
    lines = [m for m in run.metrics if m.get("kind") == "weight_norms"]
    if not lines:
        return np.zeros(0), {}, []
    layers = [k for k in lines[0] if k not in ("kind", "step", "scale_invariant")]
    return (
        np.array([m["step"] for m in lines], np.int64),
        {k: np.array([m[k] for m in lines], np.float64) for k in layers},
        list(lines[0].get("scale_invariant", [])),
    )


def effective_lr(runs: dict[Key, Run], norm: str, dropout: float) -> dict:
    """Per λ (at dropout ``dropout``) and scale-invariant layer, over the finished seeds:
    ``init`` and ``end`` ‖W‖_F, ``shrink`` = (1 − ηλ)^T ‖W₀‖ (where pure weight decay, no
    gradient, would take ‖W₀‖ in the T recorded steps), ``lr_init`` and ``lr_end`` =
    η/‖W‖² (η: each run's ``learning_rate``; plain SGD, constant schedule), each an
    :class:`~jaxnorm.analysis.stats.Interval` over seeds, and ``lr_end_by_seed``
    (``{seed: η/‖W_T‖²}``, for ratios paired by seed). ``{}`` for a norm without
    scale-invariant layers. Keys ``(λ, layer)``, λ ascending."""
    out = {}
    for wd in sorted({k[1] for k in runs if k[0] == norm}):
        chosen = [(k[3], r) for k, r in sorted(runs.items()) if k[:3] == (norm, wd, dropout) and state(r) == "finished"]
        series = [(seed, float(r.config["learning_rate"]), *weight_norm_series(r)) for seed, r in chosen]
        series = [s for s in series if s[4] and len(s[2])]
        for layer in series[0][4] if series else []:
            per = lambda f: mean_interval([f(eta, t, w[layer]) for _, eta, t, w, _ in series])
            out[(wd, layer)] = {
                "init": per(lambda eta, t, w: w[0]),
                "end": per(lambda eta, t, w: w[-1]),
                "shrink": per(lambda eta, t, w: (1 - eta * wd) ** (t[-1] - t[0]) * w[0]),
                "lr_init": per(lambda eta, t, w: eta / w[0] ** 2),
                "lr_end": per(lambda eta, t, w: eta / w[-1] ** 2),
                "lr_end_by_seed": {seed: eta / w[layer][-1] ** 2 for seed, eta, t, w, _ in series},
            }
    return out


# --------------------------------------------------------------------------- the grid


class Grid:
    """What was trained, from the stored runs: norms (``study.json``'s order when it has
    one), λ and p values (ascending), seeds, and a description from the first run's
    config."""

    def __init__(self, info: dict, runs: dict[Key, Run]):
        setup = info.get("setup", {})
        present = {k[0] for k in runs}
        order = [n for n in setup.get("norms", []) if n in present]
        self.norms = order + [n for n in variant_order(present) if n not in order]
        self.weight_decays = sorted({k[1] for k in runs})
        self.dropout_rates = sorted({k[2] for k in runs})
        self.seeds = sorted(info.get("seeds") or {k[3] for k in runs})
        self.name = setup.get("name") or "?"
        first = next(iter(runs.values())).config
        self.config = first
        self.learning_rates = sorted({float(r.config["learning_rate"]) for r in runs.values()})

    def sweeps(self) -> list[tuple[str, str, list[tuple[float, float]], list]]:
        """``(name, symbol, settings, values)``: λ at the smallest p, p at the smallest λ."""
        wd0, p0 = self.weight_decays[0], self.dropout_rates[0]
        return [
            ("weight decay", "λ", [(w, p0) for w in self.weight_decays], self.weight_decays),
            ("dropout", "p", [(wd0, p) for p in self.dropout_rates], self.dropout_rates),
        ]

    def describe(self) -> str:
        c = self.config
        kwargs = {k: v for k, v in (c.get("model_kwargs") or {}).items() if k != "dropout_rate"}
        lr = ", ".join(f"{v:g}" for v in self.learning_rates)
        return (
            f"{c['model']} {kwargs} on the first {c.get('train_subset') or 'all'} training examples of {c['dataset']}; "
            f"plain SGD, η = {lr}, batch {c['batch_size']}, {c.get('max_steps')} steps; every (λ, p) of "
            f"λ ∈ {{{', '.join(f'{w:g}' for w in self.weight_decays)}}} × p ∈ {{{', '.join(f'{p:g}' for p in self.dropout_rates)}}}, "
            f"{len(self.seeds)} seed(s) each. Final numbers in eval mode (BN on running statistics, no dropout); "
            "train = the training subset itself; gaps: accuracy train − test, loss test − train."
        )


# --------------------------------------------------------------------------- report


def write_report(root) -> str:
    """``plots/gap.png``, ``plots/grid.png``, ``plots/weight_norms.png`` and
    ``plots/summary.md`` from the stored runs under ``root``; returns a one-line verdict.

    Raises:
      ValueError: no stored runs under ``root`` (see :func:`load_results`).
    """
    root = pathlib.Path(root)
    info, runs = load_results(root)
    grid = Grid(info, runs)
    plt = pyplot()
    plots = fresh_report_dir(root / "plots")
    _plot_gaps(plt, plots / "gap.png", grid, runs)
    _plot_grid(plt, plots / "grid.png", grid, runs)
    _plot_weight_norms(plt, plots / "weight_norms.png", grid, runs)
    write_summary(plots, summary_markdown(info, runs))
    return one_line(grid, runs)


def one_line(grid: Grid, runs: dict[Key, Run]) -> str:
    """The headline: per norm the paired change of the accuracy gap at the largest λ and
    at the largest p with its verdict, and how many runs finished."""
    parts = []
    for norm in grid.norms:
        said = []
        for _, sym, keys, _ in grid.sweeps():
            if len(keys) > 1:
                d = paired_change(runs, norm, keys[0], keys[-1], "acc_gap")
                hi = keys[-1][0] if sym == "λ" else keys[-1][1]
                said.append(f"{sym} = {hi:g}: " + (f"acc gap {d.diff.mean:+.3f} ({gap_verdict(d)})" if d.n else "no finished pair"))
        parts.append(f"{norm}: " + ", ".join(said))
    done = sum(state(r) == "finished" for r in runs.values())
    return f"regularization {grid.name}: {done}/{len(runs)} runs finished; " + "; ".join(parts)


def _plot_gaps(plt, path, grid: Grid, runs) -> None:
    agg = by_setting(runs)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    none = mean_interval([])
    rows = (("test_acc", "test accuracy"), ("acc_gap", "accuracy gap: train − test"), ("loss_gap", "loss gap: test − train"))
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 9), squeeze=False)
    for j, (name, sym, keys, values) in enumerate(grid.sweeps()):
        fixed = f"dropout {keys[0][1]:g}" if sym == "λ" else f"weight decay {keys[0][0]:g}"
        for i, (metric, ylabel) in enumerate(rows):
            ax = axes[i, j]
            for c, norm in enumerate(grid.norms):
                cis = [agg.get((norm, *k), {}).get(metric, none) for k in keys]
                x, mean = np.arange(len(keys)), np.array([ci.mean for ci in cis])
                half = np.array([ci.half_width for ci in cis])
                color = cycle[c % len(cycle)]
                ax.plot(x, mean, color=color, marker="o", label=norm)
                ok = np.isfinite(half)
                if ok.any():
                    ax.fill_between(x[ok], (mean - half)[ok], (mean + half)[ok], color=color, alpha=0.2, lw=0)
            ax.set_xticks(range(len(keys)), [f"{v:g}" for v in values])
            ax.set(xlabel=f"{name} {sym} ({fixed})", ylabel=ylabel)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{grid.config['dataset']}, {len(grid.seeds)} seed(s): mean, band = {CONFIDENCE:.0%} t-interval over seeds; "
                 "eval mode (running BN statistics, no dropout)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_grid(plt, path, grid: Grid, runs) -> None:
    agg = by_setting(runs)
    none = mean_interval([])
    fig, axes = plt.subplots(2, len(grid.norms), figsize=(4.6 * len(grid.norms), 7.4), squeeze=False)
    for j, norm in enumerate(grid.norms):
        for i, (metric, label, cmap) in enumerate((("test_acc", "test accuracy", "viridis"), ("loss_gap", "loss gap: test − train", "magma_r"))):
            cis = [[agg.get((norm, wd, p), {}).get(metric, none) for p in grid.dropout_rates] for wd in grid.weight_decays]
            values = np.array([[ci.mean for ci in row] for row in cis])
            ax = axes[i, j]
            im = ax.imshow(values, cmap=cmap, aspect="auto")
            for (r, c), v in np.ndenumerate(values):
                dark = not math.isnan(v) and (im.norm(v) < 0.5) == (i == 0)  # viridis is dark low, magma_r dark high
                hw = cis[r][c].half_width
                text = "-" if math.isnan(v) else f"{v:.3f}" + (f"\n±{hw:.3f}" if math.isfinite(hw) else "")
                ax.text(c, r, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")
            ax.set_xticks(range(len(grid.dropout_rates)), [f"{p:g}" for p in grid.dropout_rates])
            ax.set_yticks(range(len(grid.weight_decays)), [f"{w:g}" for w in grid.weight_decays])
            ax.set(xlabel="dropout p", ylabel="weight decay λ", title=f"{norm}: {label} (mean ± {CONFIDENCE:.0%} half-width)")
            ax.title.set_fontsize(9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_weight_norms(plt, path, grid: Grid, runs) -> None:
    """Per norm with scale-invariant layers: ‖W‖ over training per λ (smallest p; seed
    mean with its 95% band) with the pure-decay curve (1 − ηλ)^t ‖W₀‖ dotted, and the
    effective learning rate η/‖W‖²; a line style per layer."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    p0 = grid.dropout_rates[0]
    norms = [n for n in grid.norms if any(weight_norm_series(r)[2] for k, r in runs.items() if k[0] == n)]
    fig, axes = plt.subplots(max(len(norms), 1), 2, figsize=(11, 4 * max(len(norms), 1)), squeeze=False)
    styles = ("-", "--", "-.")
    for i, norm in enumerate(norms):
        for c, wd in enumerate(grid.weight_decays):
            chosen = [r for (n, w, p, _), r in runs.items() if (n, w, p) == (norm, wd, p0)]
            series = [(float(r.config["learning_rate"]), *weight_norm_series(r)) for r in chosen]
            series = [s for s in series if len(s[1])]
            if not series:
                continue
            length = min(len(s[1]) for s in series)  # a diverged seed stops early
            steps, eta = series[0][1][:length], float(np.mean([s[0] for s in series]))
            color = cycle[c % len(cycle)]
            for k, layer in enumerate(series[0][3]):
                ls = styles[k % len(styles)]
                for ax, vals in ((axes[i, 0], [s[2][layer][:length] for s in series]), (axes[i, 1], [s[0] / s[2][layer][:length] ** 2 for s in series])):
                    mean, half, _ = mean_band(np.array(vals))
                    ax.plot(steps, mean, color=color, ls=ls, label=f"λ = {wd:g}, {layer}" if ax is axes[i, 0] else None)
                    if np.isfinite(half).any():
                        ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.15, lw=0)
                if k == 0 and wd > 0:
                    w0 = float(np.mean([s[2][layer][0] for s in series]))
                    axes[i, 0].plot(steps, w0 * (1 - eta * wd) ** (steps - steps[0]), color=color, ls=":", lw=1)
        axes[i, 0].set(xlabel="SGD step", ylabel="‖W‖_F", title=f"{norm}: norm of the pre-BN (scale-invariant) kernels; dotted: (1 − ηλ)^t ‖W₀‖")
        lr = ", ".join(f"{v:g}" for v in grid.learning_rates)
        axes[i, 1].set(xlabel="SGD step", ylabel="η / ‖W‖²", yscale="log", title=f"{norm}: effective learning rate η/‖W‖² (η = {lr})")
        if axes[i, 0].get_legend_handles_labels()[0]:
            axes[i, 0].legend(fontsize=7, ncol=2)
        for ax in axes[i]:
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    if not norms:
        axes[0, 0].text(0.5, 0.5, "no run with scale-invariant (pre-BN) layers", ha="center", transform=axes[0, 0].transAxes)
    fig.suptitle(f"{len(grid.seeds)} seed(s): mean, band = {CONFIDENCE:.0%} t-interval over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _g(ci: Interval) -> str:
    """``3.1 ± 0.2`` in 3 significant digits of the mean (weight norms, learning rates)."""
    if ci.n == 0 or not math.isfinite(ci.mean):
        return "—"
    return f"{ci.mean:.3g}" + (f" ± {ci.half_width:.2g}" if math.isfinite(ci.half_width) else "")


def summary_markdown(info: dict, runs: dict[Key, Run]) -> str:
    """The claims, the paired gap changes with their verdicts, the effective learning
    rates of the pre-BN layers, the final accuracies table and the runs that did not
    finish, as markdown (a function of the stored files)."""
    grid = Grid(info, runs)
    agg = by_setting(runs)
    n_seeds, pct = len(grid.seeds), f"{CONFIDENCE:.0%}"
    lines = [
        f"# Weight decay and dropout, with and without BatchNorm: {grid.name}",
        "",
        grid.describe(),
        "",
        "**Claims.** CMU Deep Learning Systems lecture “Normalization and Regularization”: weight decay shrinks the weights "
        "by (1 − ηλ) every step (plain SGD on the L2 penalty λ/2 Σ‖W‖²); dropout zeroes activations with probability p and "
        "scales the kept ones by 1/(1 − p); both regularize: a smaller train − test gap. van Laarhoven 2017 (\"L2 "
        "regularization versus batch and weight normalization\"), Zhang et al. 2019 (\"Three mechanisms of weight decay "
        "regularization\"): weights feeding a BN layer are scale-invariant, so weight decay does not restrict the function "
        "they compute; it shrinks ‖W‖ and so raises their effective learning rate η/‖W‖². The update and dropout formulas "
        "are checked numerically in `tests/experiments/test_regularization.py` (one step of the engine's SGD against the "
        "float64 closed form; dropout's exact 1/(1 − p), its mean over 4,000 keys, the identity at eval).",
        "",
        "## Does regularization shrink the gap?",
        "",
        f"Changes from the unregularized setting, paired by seed (same initialization, data order and dropout masks): the "
        f"mean paired difference ± its {pct} t-interval over the n seeds where both finished (paired t-test p; sign test: "
        "seeds above/below, p). Verdict on the gap change (the lecture's claim: the gap shrinks): holds when the interval "
        "lies below zero, does not hold here when above, else not significant.",
        "",
        "| norm | change | n | Δ test acc | Δ acc gap | Δ loss gap | acc gap smaller? | loss gap smaller? |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    verdicts = []
    for norm in grid.norms:
        for name, sym, keys, _ in grid.sweeps():
            base, said = keys[0], []
            for other in keys[1:]:
                d = {m: paired_change(runs, norm, base, other, m) for m in ("test_acc", "acc_gap", "loss_gap")}
                lo, hi = (base[0], other[0]) if sym == "λ" else (base[1], other[1])
                cells = " | ".join(d[m].format(3) for m in ("test_acc", "acc_gap", "loss_gap"))
                lines.append(f"| {norm} | {sym} {lo:g} → {hi:g} | {d['acc_gap'].n} | {cells} | {gap_verdict(d['acc_gap'])} | {gap_verdict(d['loss_gap'])} |")
                if d["acc_gap"].n:
                    said.append(f"{sym} = {hi:g}: accuracy gap {gap_verdict(d['acc_gap'])}, loss gap {gap_verdict(d['loss_gap'])}")
            if said:
                verdicts.append(f"- {norm}, {name}: " + "; ".join(said) + ".")
    lines += [
        "",
        "Verdicts (\"regularization shrinks the gap\"):",
        "",
        *verdicts,
        "",
        "## Scale-invariant (pre-BN) weights under weight decay",
        "",
    ]
    any_si = False
    p0 = grid.dropout_rates[0]
    for norm in grid.norms:
        eff = effective_lr(runs, norm, p0)
        if not eff:
            continue
        any_si = True
        lines += [
            f"{norm} (dropout {p0:g}), mean ± {pct} t-interval over seeds: ‖W‖_F at initialization and after the last step T, "
            "where pure decay would have taken it ((1 − ηλ)^T ‖W₀‖), and the effective learning rate η/‖W‖²; the last "
            "column is η/‖W_T‖² over that of the smallest λ, paired by seed. (The output layer feeds no BN, so there weight "
            "decay does act on the function.)",
            "",
            "| λ | layer | ‖W‖ init | ‖W‖ end | (1 − ηλ)^T ‖W₀‖ | η/‖W‖² init | η/‖W‖² end | end vs λ = min |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for (wd, layer), e in eff.items():
            ref = eff.get((grid.weight_decays[0], layer))
            ratio = "—"
            if ref:
                by = [e["lr_end_by_seed"][s] / ref["lr_end_by_seed"][s] for s in e["lr_end_by_seed"] if s in ref["lr_end_by_seed"]]
                ratio = _g(mean_interval(by)) + "x" if by else "—"
            cells = " | ".join(_g(e[k]) for k in ("init", "end", "shrink", "lr_init", "lr_end"))
            lines.append(f"| {wd:g} | {layer} | {cells} | {ratio} |")
        lines.append("")
        for layer in sorted({layer for _, layer in eff}):
            got = [(wd, eff[(wd, layer)]) for wd in grid.weight_decays if (wd, layer) in eff]
            ends = [e["end"].mean for _, e in got]
            monotone = all(x > y for x, y in zip(ends, ends[1:]))
            lines.append(
                f"- {layer}: final ‖W‖ (seed mean) {' → '.join(f'{x:.3g}' for x in ends)} over λ = {', '.join(f'{wd:g}' for wd, _ in got)}: "
                + ("falls with every larger λ, so the effective learning rate η/‖W‖² rises with λ" if monotone else "not monotone in λ")
                + f" ({got[-1][1]['lr_end'].mean / got[0][1]['lr_end'].mean:.3g}x from the smallest to the largest λ)."
            )
        lines.append("")
    if not any_si:
        lines += ["No run has scale-invariant (pre-BN) layers.", ""]
    lines += [
        "## Final accuracies and losses",
        "",
        f"Mean ± {pct} t-interval over the finished seeds (the last column: finished / seeds; one seed: its value).",
        "",
        "| norm | λ | p | train acc | test acc | acc gap | train loss | test loss | loss gap | finished |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (norm, wd, p), s in sorted(agg.items(), key=lambda kv: (grid.norms.index(kv[0][0]), kv[0][2], kv[0][1])):
        cells = " | ".join(s[k].format(3 if "acc" in k else 4, say_single=False) for k in METRICS)
        lines.append(f"| {norm} | {wd:g} | {p:g} | {cells} | {s['finished']}/{n_seeds} |")
    diverged = sorted(r.path.name for r in runs.values() if state(r) == "diverged")
    incomplete = sorted(r.path.name for r in runs.values() if state(r) == "incomplete")
    lines.append("")
    if diverged:
        lines.append(f"Diverged (non-finite loss; not averaged): {', '.join(diverged)}.")
    if incomplete:
        lines.append(f"Incomplete (not finished: killed, failed or still running; not averaged; rerun to resume): {', '.join(incomplete)}.")
    return "\n".join(lines) + "\n"
