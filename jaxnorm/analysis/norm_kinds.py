"""The normalization-kinds study's analysis (``experiments/norm_kinds.py``), from the
stored files only: ``study.json`` (the setup and seeds that were trained) and each run's
folder (``config.json``, ``metrics.jsonl``, ``trajectories.npz``, ``status.json``).

* :func:`run_name` -- the run folders' names (the study builds its configs with it);
* :func:`load_study` -- the stored runs, by part, net, variant (and batch size), a list
  over seeds each;
* :func:`run_summary` -- one run's numbers; :func:`rows_columns` -- the lecture's
  rows-vs-columns check on a stored matrix Z;
* :func:`analyze` -- ``plots/curves.png``, ``batch_size.png``, ``eval_stats.png`` and
  ``summary.md``, and a one-line verdict.

Over seeds every table cell is the mean ± the half-width of its 95% t-interval
(:func:`jaxnorm.analysis.stats.mean_interval`; the table's n column says how many seeds);
comparisons between two variants, or two batch sizes, or two evaluation statistics, are
paired by seed (the same seed is the same initialization key and data order) and carry
the paired t-test and the sign test (:func:`jaxnorm.analysis.stats.paired_test`) and a
verdict (holds / does not hold / not significant, :func:`jaxnorm.analysis.stats.verdict`).
Curves are the mean over seeds with the 95% band (:func:`jaxnorm.analysis.curves.mean_band`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from jaxnorm.analysis.curves import mean_band
from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import Run, load_run
from jaxnorm.analysis.stats import CONFIDENCE, Interval, Paired, mean_interval, paired_test
from jaxnorm.analysis.stats import verdict as stats_verdict
from jaxnorm.results import read_json

#: The BatchNorm evaluation methods, in plotting order (``bn_eval`` lines).
EVAL_METHODS = ("running", "population", "batch")

#: Resolution of the plots (small PNGs for the README).
DPI = 100

#: Epsilon of the rows-vs-columns normalizations (the library's default).
EPSILON = 1e-5


def run_name(part: str, net: str, variant: str, seed: int, batch_size: Optional[int] = None) -> str:
    """``curves-<net>-<variant>-s<seed>`` (part 1) or ``bs-<net>-<variant>-b<B>-s<seed>`` (part 2)."""
    if part == "curves":
        return f"curves-{net}-{variant}-s{seed}"
    if part == "bs" and batch_size is not None:
        return f"bs-{net}-{variant}-b{batch_size}-s{seed}"
    raise ValueError(f"run_name: part must be 'curves', or 'bs' with a batch size; got {part!r}, {batch_size!r}.")


@dataclasses.dataclass
class Stored:
    """What :func:`load_study` found: the stored setup (a dict, as ``study.json`` holds
    it), the seeds, ``curves[(net, variant)]`` and ``sweep[(net, variant, batch)]``
    (lists of :class:`~jaxnorm.analysis.runs.Run`, one per stored seed)."""

    setup: dict
    seeds: list
    curves: dict
    sweep: dict


def load_study(root) -> Stored:
    """The runs ``study.json`` describes that exist under ``root``.

    Raises:
      ValueError: no ``study.json`` or no stored run.
    """
    root = pathlib.Path(root)
    if not (root / "study.json").is_file():
        raise ValueError(f"no stored runs under {root} (no study.json).")
    study = read_json(root / "study.json")
    setup, seeds = study["setup"], list(study["seeds"])

    def runs(part, net, variant, b=None):
        found = [load_run(root / run_name(part, net, variant, s, b)) for s in seeds]
        return [r for r in found if r is not None]

    curves = {(n, v): runs("curves", n, v) for n in setup["nets"] for v in setup["variants"]}
    sweep = {(n, v, b): runs("bs", n, v, b) for n in setup["bs_nets"] for v in setup["bs_variants"] for b in setup["batch_sizes"]}
    curves, sweep = {k: r for k, r in curves.items() if r}, {k: r for k, r in sweep.items() if r}
    if not curves and not sweep:
        raise ValueError(f"no stored runs under {root}.")
    return Stored(setup, seeds, curves, sweep)


def _lines(run: Run, kind: str, split: Optional[str] = None) -> list[dict]:
    out = [m for m in run.metrics if m.get("kind") == kind and (split is None or m.get("split") == split)]
    return sorted(out, key=lambda m: m["step"])


def run_summary(run: Run, eval_split: str = "test", loss_target: float = 0.05) -> dict:
    """One run's numbers: ``first_loss`` (training-mode mean loss of epoch 1),
    ``train_loss``/``train_acc`` (training mode, last epoch), ``train_eval_loss`` (eval
    mode on ``train_eval``, last epoch), ``epochs_to_target`` (the first epoch, 1-based,
    whose eval-mode training loss is <= ``loss_target``; None if none), ``test_acc``
    (last) and ``best_test_acc`` on ``eval_split``, ``status``, and from the last
    ``bn_eval`` line after training (BN runs) ``running``, ``population`` and
    ``batch@<b>`` test accuracies. NaN where a run has no such line."""
    nan = float("nan")
    train, train_eval, test = _lines(run, "train"), _lines(run, "eval", "train_eval"), _lines(run, "eval", eval_split)
    reached = [m["epoch"] + 1 for m in train_eval if m["loss"] <= loss_target]
    out = {
        "first_loss": train[0]["loss"] if train else nan,
        "train_loss": train[-1]["loss"] if train else nan,
        "train_acc": train[-1]["acc"] if train else nan,
        "train_eval_loss": train_eval[-1]["loss"] if train_eval else nan,
        "epochs_to_target": reached[0] if reached else None,
        "test_acc": test[-1]["acc"] if test else nan,
        "best_test_acc": max(m["acc"] for m in test) if test else nan,
        # A run killed or still training says where it stopped ("interrupted at step 120 of 600").
        "status": run.state if run.state in ("finished", "diverged") else run.state_note,
    }
    bn = [m for m in _lines(run, "bn_eval") if m["step"] > 0]
    if bn and not run.diverged:
        last = bn[-1]
        out["running"], out["population"] = last["running_acc"], last["population_acc"]
        for k, v in last.items():
            if k.startswith("batch") and k.endswith("_acc"):
                out[f"batch@{int(k[len('batch'):-len('_acc')])}"] = v
    return out


def rows_columns(z: np.ndarray, epsilon: float = EPSILON) -> list[dict]:
    """The lecture's picture, measured on a matrix Z (batch × features): Z standardized
    per row (LayerNorm without γ/β: each example over its features) and per column
    (BatchNorm in training mode without γ/β: each feature over the batch), both with
    the biased variance and ``epsilon``. Returns one record per normalization: the
    largest |mean| and |std − 1| over the rows and over the columns.

    Raises:
      ValueError: Z is not a matrix with at least two rows and two columns.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or min(z.shape) < 2:
        raise ValueError(f"rows_columns needs a matrix (batch, features) of at least 2 x 2, got shape {z.shape}.")
    standardized = {
        "layer": (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + epsilon),
        "batch": (z - z.mean(0, keepdims=True)) / np.sqrt(z.var(0, keepdims=True) + epsilon),
    }
    return [
        {
            "norm": name,
            "rows_mean": float(np.abs(h.mean(1)).max()), "rows_std": float(np.abs(h.std(1) - 1).max()),
            "cols_mean": float(np.abs(h.mean(0)).max()), "cols_std": float(np.abs(h.std(0) - 1).max()),
        }
        for name, h in standardized.items()
    ]  # fmt: skip


# --------------------------------------------------------------------------- numbers over seeds


def _summaries(runs: Sequence[Run], setup: dict) -> list[dict]:
    return [run_summary(r, setup["eval_split"], setup["loss_target"]) for r in runs]


def _col(sums: list[dict], key: str) -> list:
    return [s.get(key, math.nan) for s in sums]


def _iv(values) -> Interval:
    """Mean and 95% t-interval over seeds (None counts as missing)."""
    return mean_interval([math.nan if v is None else v for v in values])


def _cell(values, digits: int = 3) -> str:
    """``mean ± 95% half-width`` over the seeds (the table's n column says how many);
    ``(k of n)`` when some seed had no value; ``-`` for none."""
    iv = _iv(values)
    if iv.n == 0 or not math.isfinite(iv.mean):
        return "-"
    return iv.format(digits, say_single=False) + (f" ({iv.n} of {iv.n + iv.excluded})" if iv.excluded else "")


def _epochs_cell(values, epochs: int) -> str:
    """Epochs to the loss target over seeds: mean ± interval over the seeds that reached it,
    and how many never did within ``epochs``."""
    got = [v for v in values if v is not None]
    never = len(values) - len(got)
    if not got:
        return f"never (0 of {len(values)} in {epochs})"
    return _iv(got).format(1, say_single=False) + (f"; never: {never} of {len(values)}" if never else "")


def _status(sums: list[dict]) -> str:
    st = [s["status"] for s in sums]
    return st[0] if len(set(st)) == 1 else ", ".join(st)


def _by_seed(runs: Sequence[Run], setup: dict, key: str, censor: Optional[float] = None) -> dict:
    """``{seed: value of key}``; a None (a target never reached) becomes ``censor``."""
    out = {}
    for r in runs:
        v = run_summary(r, setup["eval_split"], setup["loss_target"]).get(key, math.nan)
        out[r.seed] = censor if v is None else v
    return out


def paired(a: dict, b: dict) -> Paired:
    """``a[seed] − b[seed]`` over the seeds both have (:func:`jaxnorm.analysis.stats.paired_test`)."""
    seeds = sorted(set(a) & set(b))
    return paired_test([a[s] for s in seeds], [b[s] for s in seeds])


def _word(test: Paired, favourable: int) -> str:
    """holds / does not hold / not significant (n = …) / no test (n = …) for the claim that
    the paired difference has the sign ``favourable`` (:func:`jaxnorm.analysis.stats.verdict`)."""
    v = stats_verdict((test, favourable))
    return {"yes": "holds", "no": "does not hold"}.get(v, f"{v} (n = {test.n})")


def _differ(test: Paired, a: str, b: str) -> str:
    """``a higher`` / ``b higher`` when the paired interval excludes zero, else not significant / no test."""
    side = test.excludes_zero()
    if side:
        return f"{a if side > 0 else b} higher"
    return f"{'no test' if test.n < 2 else 'not significant'} (n = {test.n})"


# --------------------------------------------------------------------------- plots


def _variant_colors(plt, names) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(names)}


def _epoch_series(runs: Sequence[Run], kind: str, split: Optional[str], key: str, log: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs 1-based, mean, low, high) over the seeds at each epoch some seed has: the
    mean and its 95% t-interval (:func:`jaxnorm.analysis.curves.mean_band`; NaN edges
    where one seed is). ``log``: of log(value), drawn back as exp (the geometric mean; a
    band a log axis can draw)."""
    per_seed = [{m["epoch"] + 1: m[key] for m in _lines(r, kind, split)} for r in runs]
    epochs = sorted(set().union(*per_seed)) if per_seed else []
    vals = np.array([[p.get(e, math.nan) for e in epochs] for p in per_seed], np.float64).reshape(len(per_seed), len(epochs))
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = np.log(np.where(vals > 0, vals, np.nan))
    mean, half, _ = mean_band(vals)
    lo, hi = mean - half, mean + half
    if log:
        mean, lo, hi = np.exp(mean), np.exp(lo), np.exp(hi)
    return np.array(epochs), mean, lo, hi


# (record kind, split key, value, y label, log scale)
_CURVE_ROWS = (
    ("train", None, "loss", "training loss (training mode, epoch mean)", True),
    ("eval", "train_eval", "loss", "training-set loss (eval mode)", True),
    ("train", None, "acc", "training accuracy (training mode)", False),
    ("eval", "test", "acc", "test accuracy (eval mode)", False),
)


def _seeds_note(stored: Stored) -> str:
    n = len(stored.seeds)
    return f"seeds {stored.seeds}: mean (log axes: geometric mean), band: its {CONFIDENCE:.0%} t-interval" if n > 1 else f"seed {stored.seeds[0]}"


def plot_curves(stored: Stored, path) -> None:
    plt, s = pyplot(), stored.setup
    nets = [n for n in s["nets"] if any(k[0] == n for k in stored.curves)]
    colors = _variant_colors(plt, s["variants"])
    fig, axes = plt.subplots(len(_CURVE_ROWS), max(len(nets), 1), figsize=(5.5 * max(len(nets), 1), 12), squeeze=False, sharex="col")
    for j, net in enumerate(nets):
        for v in s["variants"]:
            runs = stored.curves.get((net, v))
            if not runs:
                continue
            for i, (kind, split, key, _, log) in enumerate(_CURVE_ROWS):
                split = s["eval_split"] if split == "test" else split
                e, m, lo, hi = _epoch_series(runs, kind, split, key, log)
                ok = np.isfinite(m)
                axes[i, j].plot(e, m, color=colors[v], label=v, marker="o" if ok.sum() == 1 else None)
                band = ok & np.isfinite(lo) & np.isfinite(hi)
                if band.any():
                    axes[i, j].fill_between(e[band], lo[band], hi[band], color=colors[v], alpha=0.2, lw=0)
        for i, (_, split, _, label, log) in enumerate(_CURVE_ROWS):
            axes[i, j].set_ylabel(label.replace("test", s["eval_split"]) if split == "test" else label)
            if log:
                axes[i, j].set_yscale("log")
        axes[1, j].axhline(s["loss_target"], color="gray", ls=":", lw=1)
        axes[0, j].set_title(f"{net}: {s['nets'][net]['model']} {s['nets'][net]['kwargs']}", fontsize=8)
        axes[-1, j].set_xlabel("epoch")
        axes[0, j].legend(fontsize=7)
    fig.suptitle(f"{s['dataset']}: SGD lr {s['learning_rate']:g}, momentum {s['momentum']:g}, batch {s['batch_size']}; {_seeds_note(stored)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _errorbar(ax, x, intervals, **style):
    """Means with their 95% half-widths as error bars (none where one seed is)."""
    m = np.array([iv.mean for iv in intervals])
    h = np.array([iv.half_width if math.isfinite(iv.half_width) else 0.0 for iv in intervals])
    ax.errorbar(x, m, yerr=h, capsize=2, **style)


def plot_batch_size(stored: Stored, path) -> None:
    plt, s = pyplot(), stored.setup
    colors = _variant_colors(plt, s["variants"] + [v for v in s["bs_variants"] if v not in s["variants"]])
    fig, axes = plt.subplots(1, max(len(s["bs_nets"]), 1), figsize=(6.5 * max(len(s["bs_nets"]), 1), 4.2), squeeze=False)
    for ax, net in zip(axes[0], s["bs_nets"]):
        for v in s["bs_variants"]:
            sizes = [b for b in s["batch_sizes"] if stored.sweep.get((net, v, b))]
            if sizes:
                ivs = [_iv(_col(_summaries(stored.sweep[(net, v, b)], s), "test_acc")) for b in sizes]
                _errorbar(ax, sizes, ivs, fmt="o-", color=colors[v], label=v)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size", ylabel=f"final {s['eval_split']} accuracy (eval mode)")
        ax.set_title(f"{net}: {s['bs_epochs']} epochs at every batch size, lr {s['lr_scaling']} in it ({s['learning_rate']:g} at {s['batch_size']}); "
                     f"{_seeds_note(stored).replace(' (log axes: geometric mean)', '').replace('band', 'bars')}", fontsize=7)  # fmt: skip
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


_METHOD_STYLE = {"running": ("C0", "-", "running averages"), "population": ("C2", "--", "population statistics"), "batch": ("C3", "-", "test-batch statistics")}


def _bn_variants(stored: Stored, keys) -> list:
    """(net, variant) pairs of ``keys`` whose runs have ``bn_eval`` results."""
    out = []
    for k in keys:
        runs = stored.curves.get(k) or []
        if any("running" in run_summary(r) for r in runs):
            out.append(k)
    return out


def _test_batch_sizes(sums: list[dict]) -> list[int]:
    return sorted({int(k.split("@")[1]) for s in sums for k in s if k.startswith("batch@")})


def plot_eval_stats(stored: Stored, path) -> None:
    plt, s = pyplot(), stored.setup
    panels = [("curves", k) for k in _bn_variants(stored, stored.curves)]
    panels += [("sweep", (n, v)) for n in s["bs_nets"] for v in s["bs_variants"] if any((n, v, b) in stored.sweep for b in s["batch_sizes"])
               and any("running" in run_summary(r) for b in s["batch_sizes"] for r in stored.sweep.get((n, v, b), []))]  # fmt: skip
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4.2), squeeze=False)
    for ax, (part, (net, v)) in zip(axes[0], panels):
        if part == "curves":
            sums = _summaries(stored.curves[(net, v)], s)
            sizes = _test_batch_sizes(sums)
            for m in ("running", "population"):
                color, ls, label = _METHOD_STYLE[m]
                iv = _iv(_col(sums, m))
                ax.axhline(iv.mean, color=color, ls=ls, label=label)
                if math.isfinite(iv.half_width) and sizes:
                    ax.axhspan(iv.low, iv.high, color=color, alpha=0.15, lw=0)
            color, _, label = _METHOD_STYLE["batch"]
            _errorbar(ax, sizes, [_iv(_col(sums, f"batch@{b}")) for b in sizes], fmt="o-", color=color, label=label)
            ax.set(xlabel="test batch size", title=f"{net} {v}: trained at batch {s['batch_size']}")
        else:
            for m in EVAL_METHODS:
                color, ls, label = _METHOD_STYLE[m]
                sizes = [b for b in s["batch_sizes"] if stored.sweep.get((net, v, b))]
                ivs = [_iv(_col(_summaries(stored.sweep[(net, v, b)], s), m if m != "batch" else f"batch@{b}")) for b in sizes]
                _errorbar(ax, sizes, ivs, fmt="o" + ls, color=color, label=label + (" (test batch = training batch)" if m == "batch" else ""))
            ax.set(xlabel="training batch size", title=f"{net} {v}: the batch-size sweep")
        ax.set_xscale("log", base=2)
        ax.set_ylabel(f"{s['eval_split']} accuracy")
        ax.legend(fontsize=7)
    fig.suptitle(_seeds_note(stored).replace(" (log axes: geometric mean)", "").replace("band", "bars and bands"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# --------------------------------------------------------------------------- summary.md


def _f(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _variant_line(stored: Stored) -> str:
    """Each variant's norm and weight reparametrization, from a stored config.json."""
    seen = {}
    for (_, v), runs in list(stored.curves.items()) + [((k[0], k[1]), r) for k, r in stored.sweep.items()]:
        if v not in seen:
            c = runs[0].config
            reparam = (c.get("model_kwargs") or {}).get("weight_reparam", "none")
            seen[v] = f"`{v}` = norm `{c.get('norm')}`" + (f" with `{reparam}`" if reparam != "none" else "")
    return "; ".join(seen.values())


_PAIRED_HEAD = ["| net | measure | a − b | a | b | a − b, paired by seed (mean ± 95% CI; t-test p; sign test) | verdict |", "|---|---|---|---:|---:|---:|---|"]


def _curves_section(stored: Stored) -> list[str]:
    s = stored.setup
    target, split = s["loss_target"], s["eval_split"]
    sums = {k: _summaries(r, s) for k, r in stored.curves.items()}
    lines = [
        "## 1. Training curves (`curves.png`)",
        "",
        "Claim (lecture, \"LayerNorm illustration\"): for a standard fully connected net, LayerNorm makes the network "
        "harder to train to low loss (the relative norms of the examples, which it removes, are a useful discriminative "
        "feature). Every cell: mean ± 95% t-interval over the n seeds; epochs to the target: over the seeds that reached it.",
        "",
        f"| net | variant | n | epoch-1 loss | final loss (training mode) | final training-set loss (eval mode) | epochs to ≤ {target:g} "
        f"| final train acc | final {split} acc | best {split} acc | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (net, v), t in sums.items():
        lines.append(
            f"| {net} | {v} | {len(t)} | {_cell(_col(t, 'first_loss'))} | {_cell(_col(t, 'train_loss'), 4)} | {_cell(_col(t, 'train_eval_loss'), 4)} | "
            f"{_epochs_cell(_col(t, 'epochs_to_target'), s['epochs'])} | {_cell(_col(t, 'train_acc'))} | {_cell(_col(t, 'test_acc'))} | {_cell(_col(t, 'best_test_acc'))} | {_status(t)} |"
        )
    lines.append("")
    # Epochs to the target: a seed that never reaches it counts as epochs + 1 (censored), so
    # a difference involving it is a bound, not a value.
    measures = (("epoch-1 loss", "first_loss", None, 3), ("epochs to ≤ " + f"{target:g}", "epochs_to_target", s["epochs"] + 1, 1),
                ("final eval-mode training loss", "train_eval_loss", None, 4))  # fmt: skip
    rows, summary, verdicts = [], [], []
    for net in s["nets"]:
        for other in ("batch", "none"):
            a, b = stored.curves.get((net, "layer")), stored.curves.get((net, other))
            if not a or not b:
                continue
            for what, key, censor, digits in measures:
                va, vb = _by_seed(a, s, key, censor), _by_seed(b, s, key, censor)
                p = paired(va, vb)
                verdicts.append((net, other, _word(p, +1)))
                rows.append(f"| {net} | {what} | layer − {other} | {_cell(list(va.values()), digits)} | {_cell(list(vb.values()), digits)} | {p.format(digits)} | {_word(p, +1)} |")
    if rows:
        for net in s["nets"]:
            words = [w for n, other, w in verdicts if n == net and other == "batch"]
            if words:
                rest = [w for w in words if w != "holds"]
                summary.append(f"- {net}: LayerNorm behind BatchNorm (paired interval above zero) on {words.count('holds')} of {len(words)} "
                               "measures" + (f"; the others: {', '.join(rest)}." if rest else "."))
        lines += [
            "LayerNorm against BatchNorm (and no normalization), paired by seed; \"holds\": LayerNorm's value is higher (a "
            f"higher loss, more epochs to ≤ {target:g}) with the 95% interval above zero. For epochs to the target a seed that "
            f"never reaches it counts as {s['epochs'] + 1} (censored: the difference is then a bound).",
            "",
            *_PAIRED_HEAD,
            *rows,
            "",
            *summary,
            "",
            "The lecture's LayerNorm follows the activation and has no γ/β; here every norm sits before the ReLU with learned "
            "γ/β (the library's convention).",
        ]
    for net in s["nets"]:
        ranked = sorted(((_iv(_col(t, "test_acc")), v) for (n, v), t in sums.items() if n == net and _status(t) == "finished"), key=lambda r: -r[0].mean)
        if ranked:
            lines.append(f"- {net}, final {split} accuracy from the highest: " + ", ".join(f"{v} {iv.format(3, say_single=False)}" for iv, v in ranked) + ".")
    lines.append("")
    rc = []
    for (net, v), runs in stored.curves.items():
        z = runs[0].trajectories.get("norm_inputs/norm1")
        if z is not None and z.ndim == 3:
            rc += [(net, v, runs[0].seed, r) for r in rows_columns(z[-1])]
    if rc:
        lines += [
            f"Rows vs columns: the first norm layer's input Z (batch × features) of the trained BN net on {s['rows_columns_batch']} "
            f"{split} examples (`norm_inputs/norm1`, last step, first seed), standardized per row (LayerNorm) and per column "
            "(BatchNorm), without γ/β; largest |mean| and |std − 1|. An identity of the two normalizations, not a statistic: "
            "one seed shows it.",
            "",
            "| net | run | normalized by | rows: max abs mean | rows: max abs(std − 1) | columns: max abs mean | columns: max abs(std − 1) |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for net, v, seed, r in rc:
            lines.append(f"| {net} | {v}, seed {seed} | {r['norm']} | {r['rows_mean']:.2g} | {r['rows_std']:.2g} | {r['cols_mean']:.2g} | {r['cols_std']:.2g} |")
        lines += ["", "LayerNorm standardizes each row (example), BatchNorm each column (feature over the batch); neither touches the other direction."]
    return lines + [""]


def _batch_size_section(stored: Stored) -> list[str]:
    s = stored.setup
    sizes = list(s["batch_sizes"])
    lo, hi = min(sizes), max(sizes)
    lines = [
        "## 2. Batch size (`batch_size.png`)",
        "",
        "Claim: BatchNorm depends on the batch size and degrades at small batches; the batch-independent norms do not. "
        f"{s['bs_epochs']} epochs at every batch size (the same examples seen), lr {s['lr_scaling']} in the batch size "
        f"({s['learning_rate']:g} at batch {s['batch_size']}). Final {s['eval_split']} accuracy (eval mode), mean ± 95% "
        f"t-interval over the n seeds; the last column: batch {lo} − batch {hi}, paired by seed.",
        "",
        "| net | variant | n | " + " | ".join(f"b{b}" for b in sizes) + f" | b{lo} − b{hi} (paired; t-test p; sign test) |",
        "|---|---|---:|" + "---:|" * (len(sizes) + 1),
    ]
    drop = {}
    for net in s["bs_nets"]:
        for v in s["bs_variants"]:
            runs = {b: stored.sweep.get((net, v, b), []) for b in sizes}
            if not any(runs.values()):
                continue
            cols = {b: _col(_summaries(r, s), "test_acc") for b, r in runs.items()}
            a, b_ = _by_seed(runs[lo], s, "test_acc"), _by_seed(runs[hi], s, "test_acc")
            drop[(net, v)] = {k: a[k] - b_[k] for k in sorted(set(a) & set(b_))}
            n = max(len(r) for r in runs.values())
            lines.append(f"| {net} | {v} | {n} | " + " | ".join(_cell(cols[b]) for b in sizes) + f" | {paired(a, b_).format(3)} |")
    lines.append("")
    rows = []
    for net in s["bs_nets"]:
        if (net, "batch") not in drop or lo == hi:
            continue
        for (n, v), d in drop.items():
            if n == net and v != "batch":
                p = paired(drop[(net, "batch")], d)
                rows.append(f"| {net} | b{lo} − b{hi} accuracy | batch − {v} | {_cell(list(drop[(net, 'batch')].values()))} | {_cell(list(d.values()))} | {p.format(3)} | {_word(p, -1)} |")
    if rows:
        lines += [
            f"Does BatchNorm degrade more? Its accuracy change from batch {hi} to {lo} minus another norm's, paired by seed; "
            "\"holds\": BatchNorm's drop is larger (the interval below zero).",
            "",
            *_PAIRED_HEAD,
            *rows,
            "",
        ]
    for net in s["bs_nets"]:
        runs = stored.sweep.get((net, "batch", lo), [])
        t = _summaries(runs, s)
        if not any("running" in x for x in t):
            continue
        p = paired(_by_seed(runs, s, "population"), _by_seed(runs, s, "running"))
        cause = (
            "the running averages account for part of it" if p.excludes_zero() > 0 and p.diff.mean > 0.05
            else "the damage is done in training (a network trained on batches of that size), not by the running averages"
        )  # fmt: skip
        lines.append(
            f"- {net}, BN at batch {lo}: final training-mode loss {_cell(_col(t, 'train_loss'))}; {s['eval_split']} accuracy "
            f"{_cell(_col(t, 'running'))} with the running averages, {_cell(_col(t, 'population'))} with exact population "
            f"statistics (population − running {p.format(3)}): {cause}."
        )
    return lines + [""]


def _eval_stats_section(stored: Stored) -> list[str]:
    s = stored.setup
    lines = [
        "## 3. BatchNorm's evaluation statistics (`eval_stats.png`)",
        "",
        "Claim: at test time BatchNorm normalizes with running averages of the training statistics, so that a prediction "
        "does not depend on the rest of the test batch. Compared on the trained weights (`bn_eval` lines): the running "
        "averages (momentum 0.9), exact population statistics (Ioffe & Szegedy's Alg. 2 over the training set in batches "
        f"of the training batch size) and each test batch's own statistics ({s['eval_split']} split in a fixed random order). "
        f"{s['eval_split']} accuracy, mean ± 95% t-interval over the n seeds.",
        "",
    ]
    keys = _bn_variants(stored, stored.curves)
    sums = {k: _summaries(stored.curves[k], s) for k in keys}
    sizes = sorted({b for t in sums.values() for b in _test_batch_sizes(t)})
    if keys:
        lines += ["| BN net | n | running | population | " + " | ".join(f"test batch {b}" for b in sizes) + " |", "|---|---:|---:|---:|" + "---:|" * len(sizes)]
        for (net, v), t in sums.items():
            lines.append(f"| {net} {v} (trained at b{s['batch_size']}) | {len(t)} | {_cell(_col(t, 'running'))} | {_cell(_col(t, 'population'))} | " + " | ".join(_cell(_col(t, f"batch@{b}")) for b in sizes) + " |")
        lines.append("")
    rows = []
    for net in s["bs_nets"]:
        for v in s["bs_variants"]:
            for b in s["batch_sizes"]:
                t = _summaries(stored.sweep.get((net, v, b), []), s)
                if any("running" in x for x in t):
                    rows.append(f"| {net} {v} | {b} | {len(t)} | {_cell(_col(t, 'running'))} | {_cell(_col(t, 'population'))} | {_cell(_col(t, f'batch@{b}'))} |")
    if rows:
        lines += [
            "BN nets of the batch-size sweep, each evaluated the three ways (test-batch statistics at the training batch size):",
            "",
            "| net | training batch | n | running | population | test-batch statistics |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    paired_rows = []
    for (net, v) in keys:
        runs = stored.curves[(net, v)]
        running = _by_seed(runs, s, "running")
        p = paired(_by_seed(runs, s, "population"), running)
        paired_rows.append(f"| {net} {v} | accuracy | population − running | {_cell(_col(sums[(net, v)], 'population'))} | {_cell(list(running.values()))} | {p.format(3)} | {_differ(p, 'population', 'running')} |")
        for b in sizes:
            q = paired(_by_seed(runs, s, f"batch@{b}"), running)
            paired_rows.append(f"| {net} {v} | accuracy | test batch {b} − running | {_cell(_col(sums[(net, v)], f'batch@{b}'))} | {_cell(list(running.values()))} | {q.format(3)} | {_word(q, -1)} |")
    if paired_rows:
        lines += [
            "Paired by seed against the running averages; \"holds\" for a test batch: its own statistics cost accuracy (the "
            "interval below zero); population vs running: whether the two estimates of the same statistics differ.",
            "",
            *_PAIRED_HEAD,
            *paired_rows,
            "",
        ]
    return lines


def summary_markdown(stored: Stored) -> str:
    """The lecture's claims, a table per part (mean ± 95% t-interval over seeds,
    :func:`jaxnorm.analysis.stats.mean_interval`), paired comparisons by seed with their
    tests (:func:`jaxnorm.analysis.stats.paired_test`) and a verdict per comparison."""
    s = stored.setup
    head = [
        f"# LayerNorm vs BatchNorm and the other normalizations: {s['name']}",
        "",
        f"{s['dataset']}" + (f" (first {s['subset']} training examples)" if s.get("subset") else "")
        + f"; SGD with momentum {s['momentum']:g}; curves: batch {s['batch_size']}, lr {s['learning_rate']:g}, {s['epochs']} epochs; "
        f"seeds {stored.seeds} (n = {len(stored.seeds)}). Variants: {_variant_line(stored)}. Norm layers sit between each hidden "
        "weight layer and its ReLU (γ and β learned). Training-mode numbers are means over an epoch (BN on batch statistics); "
        "eval mode uses BN's running averages. Every number: mean ± 95% t-interval over seeds; every comparison: paired by "
        "seed (the same seed is the same initialization key and data order), with the paired t-test's p and the sign test's "
        "(with 3 seeds the sign test cannot go below p = 0.25).",
        "",
    ]
    return "\n".join(head + _curves_section(stored) + _batch_size_section(stored) + _eval_stats_section(stored)) + "\n"


def verdict(stored: Stored) -> str:
    """One line: BN's batch-size collapse vs the others, and the three statistics at the smallest test batch (means over seeds)."""
    s, parts = stored.setup, []
    sizes = list(s["batch_sizes"])
    mean = lambda runs, key: _iv(_col(_summaries(runs, s), key)).mean
    for net in s["bs_nets"]:
        lo, hi = min(sizes), max(sizes)
        accs = {v: (mean(stored.sweep.get((net, v, lo), []), "test_acc"), mean(stored.sweep.get((net, v, hi), []), "test_acc")) for v in s["bs_variants"]}
        parts.append(f"{net} test acc at batch {lo} vs {hi}: " + ", ".join(f"{v} {_f(a)}/{_f(b)}" for v, (a, b) in accs.items()))
    for (net, v) in _bn_variants(stored, stored.curves):
        runs = stored.curves[(net, v)]
        b = min(_test_batch_sizes(_summaries(runs, s)) or [0])
        parts.append(f"{net} {v} running/population/test-batch-{b} {_f(mean(runs, 'running'))}/{_f(mean(runs, 'population'))}/{_f(mean(runs, f'batch@{b}'))}")
    return f"norm_kinds {s['name']}: " + "; ".join(parts)


def analyze(root) -> str:
    """Writes ``root/plots/{curves,batch_size,eval_stats}.png`` and ``summary.md`` from
    the stored runs and returns the one-line verdict.

    Raises:
      ValueError: nothing stored under ``root`` (see :func:`load_study`).
    """
    stored = load_study(root)
    plots = fresh_report_dir(pathlib.Path(root) / "plots")
    plot_curves(stored, plots / "curves.png")
    plot_batch_size(stored, plots / "batch_size.png")
    plot_eval_stats(stored, plots / "eval_stats.png")
    write_summary(plots, summary_markdown(stored))
    return verdict(stored)
