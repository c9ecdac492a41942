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

Over several seeds every table cell is the mean ± the sample standard deviation over
the seeds that finished (n given in the header); comparisons between two variants are
also given per seed (paired: the same seed is the same initialization key and data
order).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot
from jaxnorm.analysis.runs import Run, load_run
from jaxnorm.results import read_json

#: The BatchNorm evaluation methods, in plotting order (``bn_eval`` lines).
EVAL_METHODS = ("running", "population", "batch")

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


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def mean_sd(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of the finite values."""
    v = _finite(values)
    if not v:
        return float("nan"), float("nan"), 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), len(v)


def _cell(values, spec: str = ".3f") -> str:
    m, sd, n = mean_sd(values)
    if n == 0:
        return "-"
    return format(m, spec) + (f" ± {format(sd, spec)}" if n > 1 else "")


def _epochs_cell(values) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    return ", ".join("never" if v is None else str(v) for v in values) if len(values) > 1 else str(got[0])


def _summaries(runs: Sequence[Run], setup: dict) -> list[dict]:
    return [run_summary(r, setup["eval_split"], setup["loss_target"]) for r in runs]


def _col(sums: list[dict], key: str) -> list:
    return [s.get(key, float("nan")) for s in sums]


def _status(sums: list[dict]) -> str:
    st = [s["status"] for s in sums]
    return st[0] if len(set(st)) == 1 else ", ".join(st)


def _paired(a: Sequence[Run], b: Sequence[Run], key: str, setup: dict) -> list[float]:
    """Per-seed differences ``a − b`` of ``key`` over the seeds both have."""
    sa = {r.seed: run_summary(r, setup["eval_split"], setup["loss_target"]).get(key) for r in a}
    sb = {r.seed: run_summary(r, setup["eval_split"], setup["loss_target"]).get(key) for r in b}
    return [sa[s] - sb[s] for s in sorted(set(sa) & set(sb)) if _finite([sa[s], sb[s]]) and len(_finite([sa[s], sb[s]])) == 2]


# --------------------------------------------------------------------------- plots


def _variant_colors(plt, names) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(names)}


def _epoch_series(runs: Sequence[Run], kind: str, split: Optional[str], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs 1-based, mean, sd) over the seeds, epochs every seed has."""
    per_seed = [{m["epoch"] + 1: m[key] for m in _lines(r, kind, split)} for r in runs]
    epochs = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    vals = np.array([[p[e] for e in epochs] for p in per_seed], np.float64).reshape(len(per_seed), len(epochs))
    sd = vals.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(len(epochs))
    return np.array(epochs), vals.mean(0) if len(per_seed) else np.array([]), sd


# (record kind, split key, value, y label, log scale)
_CURVE_ROWS = (
    ("train", None, "loss", "training loss (training mode, epoch mean)", True),
    ("eval", "train_eval", "loss", "training-set loss (eval mode)", True),
    ("train", None, "acc", "training accuracy (training mode)", False),
    ("eval", "test", "acc", "test accuracy (eval mode)", False),
)


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
            for i, (kind, split, key, _, _) in enumerate(_CURVE_ROWS):
                split = s["eval_split"] if split == "test" else split
                e, m, sd = _epoch_series(runs, kind, split, key)
                axes[i, j].plot(e, m, color=colors[v], label=v)
                if len(runs) > 1:
                    axes[i, j].fill_between(e, m - sd, m + sd, color=colors[v], alpha=0.2)
        for i, (_, split, _, label, log) in enumerate(_CURVE_ROWS):
            axes[i, j].set_ylabel(label.replace("test", s["eval_split"]) if split == "test" else label)
            if log:
                axes[i, j].set_yscale("log")
        axes[1, j].axhline(s["loss_target"], color="gray", ls=":", lw=1)
        axes[0, j].set_title(f"{net}: {s['nets'][net]['model']} {s['nets'][net]['kwargs']}", fontsize=8)
        axes[-1, j].set_xlabel("epoch")
        axes[0, j].legend(fontsize=7)
    fig.suptitle(f"{s['dataset']}: SGD lr {s['learning_rate']:g}, momentum {s['momentum']:g}, batch {s['batch_size']}; seeds {stored.seeds}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_batch(stored: Stored, net: str, variant: str, key: str):
    pts = []
    for b in stored.setup["batch_sizes"]:
        runs = stored.sweep.get((net, variant, b))
        if runs:
            m, sd, n = mean_sd(_col(_summaries(runs, stored.setup), key))
            if n:
                pts.append((b, m, 0.0 if n < 2 else sd))
    return [np.array([p[i] for p in pts]) for i in range(3)]


def plot_batch_size(stored: Stored, path) -> None:
    plt, s = pyplot(), stored.setup
    colors = _variant_colors(plt, s["variants"] + [v for v in s["bs_variants"] if v not in s["variants"]])
    fig, axes = plt.subplots(1, max(len(s["bs_nets"]), 1), figsize=(6.5 * max(len(s["bs_nets"]), 1), 4.2), squeeze=False)
    for ax, net in zip(axes[0], s["bs_nets"]):
        for v in s["bs_variants"]:
            b, m, sd = _by_batch(stored, net, v, "test_acc")
            if len(b):
                ax.errorbar(b, m, yerr=sd, fmt="o-", color=colors[v], label=v, capsize=2)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size", ylabel=f"final {s['eval_split']} accuracy (eval mode)")
        ax.set_title(f"{net}: {s['bs_epochs']} epochs at every batch size, lr {s['lr_scaling']} in it ({s['learning_rate']:g} at {s['batch_size']})", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
            for m in ("running", "population"):
                color, ls, label = _METHOD_STYLE[m]
                ax.axhline(mean_sd(_col(sums, m))[0], color=color, ls=ls, label=label)
            sizes = _test_batch_sizes(sums)
            color, _, label = _METHOD_STYLE["batch"]
            ax.plot(sizes, [mean_sd(_col(sums, f"batch@{b}"))[0] for b in sizes], "o-", color=color, label=label)
            ax.set(xlabel="test batch size", title=f"{net} {v}: trained at batch {s['batch_size']}")
        else:
            for m in EVAL_METHODS:
                color, ls, label = _METHOD_STYLE[m]
                pts = []
                for b in s["batch_sizes"]:
                    runs = stored.sweep.get((net, v, b), [])
                    val = mean_sd(_col(_summaries(runs, s), m if m != "batch" else f"batch@{b}"))[0] if runs else float("nan")
                    pts.append((b, val))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o" + ls, color=color, label=label + (" (test batch = training batch)" if m == "batch" else ""))
            ax.set(xlabel="training batch size", title=f"{net} {v}: the batch-size sweep")
        ax.set_xscale("log", base=2)
        ax.set_ylabel(f"{s['eval_split']} accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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


def _curves_section(stored: Stored) -> list[str]:
    s = stored.setup
    target, split = s["loss_target"], s["eval_split"]
    sums = {k: _summaries(r, s) for k, r in stored.curves.items()}
    lines = [
        "## 1. Training curves (`curves.png`)",
        "",
        "Claim (lecture, \"LayerNorm illustration\"): for a standard fully connected net, LayerNorm makes the network "
        "harder to train to low loss (the relative norms of the examples, which it removes, are a useful discriminative "
        "feature).",
        "",
        f"| net | variant | seeds | epoch-1 loss | final loss (training mode) | final training-set loss (eval mode) | epochs to ≤ {target:g} "
        f"| final train acc | final {split} acc | best {split} acc | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (net, v), t in sums.items():
        lines.append(
            f"| {net} | {v} | {len(t)} | {_cell(_col(t, 'first_loss'))} | {_cell(_col(t, 'train_loss'), '.3g')} | {_cell(_col(t, 'train_eval_loss'), '.3g')} | "
            f"{_epochs_cell(_col(t, 'epochs_to_target'))} | {_cell(_col(t, 'train_acc'))} | {_cell(_col(t, 'test_acc'))} | {_cell(_col(t, 'best_test_acc'))} | {_status(t)} |"
        )
    lines.append("")
    measures = (("epoch-1 loss", "first_loss", ".3f"), ("final eval-mode training loss", "train_eval_loss", ".3g"), (f"epochs to ≤ {target:g}", "epochs_to_target", "d"))
    inf = lambda x: math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else x
    for net in s["nets"]:
        if (net, "layer") not in sums or (net, "batch") not in sums:
            continue
        ln, bn, none = sums[(net, "layer")], sums[(net, "batch")], sums.get((net, "none"))
        # Means over the seeds (epochs to target: the worst seed, a run that never gets there counts as never).
        agg = lambda t, k: max(inf(x) for x in _col(t, k)) if k == "epochs_to_target" else mean_sd(_col(t, k))[0]
        shown = lambda t, k, spec: (lambda x: "never" if x == math.inf else _f(x, spec))(agg(t, k))
        behind = [what for what, k, _ in measures if inf(agg(ln, k)) > inf(agg(bn, k))]
        behind_none = [what for what, k, _ in measures if none and inf(agg(ln, k)) > inf(agg(none, k))]
        verdict = (f"LayerNorm is behind BatchNorm on {len(behind)} of the 3 ({', '.join(behind)})" if behind else "LayerNorm is not behind BatchNorm on any of them") + (
            f", and behind no normalization on {len(behind_none)} of the 3" if none else ""
        )
        lines.append(
            f"- {net}, LayerNorm vs BatchNorm" + (" (no normalization)" if none else "") + ": "
            + "; ".join(f"{what} {shown(ln, k, spec)} vs {shown(bn, k, spec)}" + (f" ({shown(none, k, spec)})" if none else "") for what, k, spec in measures)
            + f". {verdict}."
        )
        d = _paired(stored.curves[(net, "layer")], stored.curves[(net, "batch")], "train_eval_loss", s)
        if len(d) > 1:
            lines.append(f"  Paired over {len(d)} seeds, LayerNorm − BatchNorm final eval-mode training loss: " + ", ".join(f"{x:+.3g}" for x in d) + f" (LayerNorm higher in {sum(x > 0 for x in d)} of {len(d)}).")
    if any(v == "layer" for _, v in sums):
        lines.append(
            f"- {len(stored.seeds)} seed(s); with one seed a difference of an epoch or a factor below 2 in a loss that small is "
            "within what another seed could change (`--seeds 0 1 2`). The lecture's LayerNorm follows the activation and has "
            "no γ/β; here every norm sits before the ReLU with learned γ/β (the library's convention)."
        )
    for net in s["nets"]:
        ranked = sorted(((mean_sd(_col(t, "test_acc"))[0], v) for (n, v), t in sums.items() if n == net and _status(t) == "finished"), key=lambda r: -r[0])
        if ranked:
            lines.append(f"- {net}, final {split} accuracy from the highest: " + ", ".join(f"{v} {_f(a)}" for a, v in ranked) + ".")
    lines.append("")
    rc = []
    for (net, v), runs in stored.curves.items():
        z = runs[0].trajectories.get("norm_inputs/norm1")
        if z is not None and z.ndim == 3:
            rc += [(net, v, runs[0].seed, r) for r in rows_columns(z[-1])]
    if rc:
        lines += [
            f"Rows vs columns: the first norm layer's input Z (batch × features) of the trained BN net on {s['rows_columns_batch']} "
            f"{split} examples (`norm_inputs/norm1`, last step), standardized per row (LayerNorm) and per column (BatchNorm), "
            "without γ/β; largest |mean| and |std − 1|.",
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
        f"({s['learning_rate']:g} at batch {s['batch_size']}). Final {s['eval_split']} accuracy (eval mode):",
        "",
        "| net | variant | " + " | ".join(f"b{b}" for b in sizes) + f" | b{lo} − b{hi} |",
        "|---|---|" + "---:|" * (len(sizes) + 1),
    ]
    change = {}
    for net in s["bs_nets"]:
        for v in s["bs_variants"]:
            runs = {b: stored.sweep.get((net, v, b), []) for b in sizes}
            if not any(runs.values()):
                continue
            cols = {b: _col(_summaries(r, s), "test_acc") for b, r in runs.items()}
            change[(net, v)] = mean_sd(cols[lo])[0] - mean_sd(cols[hi])[0]
            lines.append(f"| {net} | {v} | " + " | ".join(_cell(cols[b]) for b in sizes) + f" | {_f(change[(net, v)], '+.3f')} |")
    lines.append("")
    for net in s["bs_nets"]:
        others = {v: d for (n, v), d in change.items() if n == net and v != "batch"}
        if (net, "batch") not in change or not others or lo == hi:
            continue
        holds = change[(net, "batch")] < min(others.values())
        lines.append(
            f"- {net}: from batch {hi} to {lo} BatchNorm's accuracy changes by {_f(change[(net, 'batch')], '+.3f')}, the others' by "
            + ", ".join(f"{v} {_f(d, '+.3f')}" for v, d in others.items())
            + (": BatchNorm degrades most, as claimed." if holds else ": BatchNorm is not the one that degrades most here.")
        )
        t = _summaries(stored.sweep.get((net, "batch", lo), []), s)
        run_, pop = mean_sd(_col(t, "running"))[0], mean_sd(_col(t, "population"))[0]
        if not math.isnan(run_):
            cause = (
                "the running averages account for much of it" if pop - run_ > 0.05
                else "the damage is done in training (a network trained on batches of that size), not by the running averages"
            )  # fmt: skip
            lines.append(
                f"- {net}, BN at batch {lo}: final training-mode loss {_cell(_col(t, 'train_loss'), '.3g')}; {s['eval_split']} accuracy "
                f"{_f(run_)} with the running averages, {_f(pop)} with exact population statistics: {cause}."
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
        f"of the training batch size) and each test batch's own statistics ({s['eval_split']} split in a fixed random order).",
        "",
    ]
    keys = _bn_variants(stored, stored.curves)
    sums = {k: _summaries(stored.curves[k], s) for k in keys}
    sizes = sorted({b for t in sums.values() for b in _test_batch_sizes(t)})
    if keys:
        lines += ["| BN net | running | population | " + " | ".join(f"test batch {b}" for b in sizes) + " |", "|---|---:|---:|" + "---:|" * len(sizes)]
        for (net, v), t in sums.items():
            lines.append(f"| {net} {v} (trained at b{s['batch_size']}) | {_cell(_col(t, 'running'))} | {_cell(_col(t, 'population'))} | " + " | ".join(_cell(_col(t, f"batch@{b}")) for b in sizes) + " |")
        lines.append("")
    rows = []
    for net in s["bs_nets"]:
        for v in s["bs_variants"]:
            for b in s["batch_sizes"]:
                t = _summaries(stored.sweep.get((net, v, b), []), s)
                if any("running" in x for x in t):
                    rows.append(f"| {net} {v} | {b} | {_cell(_col(t, 'running'))} | {_cell(_col(t, 'population'))} | {_cell(_col(t, f'batch@{b}'))} |")
    if rows:
        lines += [
            "BN nets of the batch-size sweep, each evaluated the three ways (test-batch statistics at the training batch size):",
            "",
            "| net | training batch | running | population | test-batch statistics |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    for (net, v), t in sums.items():
        r, p = mean_sd(_col(t, "running"))[0], mean_sd(_col(t, "population"))[0]
        worse = [b for b in sizes if mean_sd(_col(t, f"batch@{b}"))[0] < r - 0.01]
        lines.append(
            f"- {net} {v}: running averages {_f(r)} vs population statistics {_f(p)} (difference {_f(p - r, '+.3f')}); "
            "test-batch statistics are more than 0.01 below "
            + (f"the running averages at test batches {', '.join(map(str, worse))} (batch {sizes[0]}: {_cell(_col(t, f'batch@{sizes[0]}'))})" if worse else "them at no test batch size")
            + ": predictions made from the test batch's own statistics depend on the batch, and small test batches hurt."
        )
    return lines + [""]


def summary_markdown(stored: Stored) -> str:
    """The lecture's claims, a table per part, and what the numbers say about each claim."""
    s = stored.setup
    head = [
        f"# LayerNorm vs BatchNorm and the other normalizations: {s['name']}",
        "",
        f"{s['dataset']}" + (f" (first {s['subset']} training examples)" if s.get("subset") else "")
        + f"; SGD with momentum {s['momentum']:g}; curves: batch {s['batch_size']}, lr {s['learning_rate']:g}, {s['epochs']} epochs; "
        f"seeds {stored.seeds}. Variants: {_variant_line(stored)}. Norm layers sit between each hidden weight layer and its ReLU "
        "(γ and β learned). Training-mode numbers are means over an epoch (BN on batch statistics); eval mode uses BN's "
        "running averages. Over several seeds: mean ± sd.",
        "",
    ]
    return "\n".join(head + _curves_section(stored) + _batch_size_section(stored) + _eval_stats_section(stored)) + "\n"


def verdict(stored: Stored) -> str:
    """One line: BN's batch-2 collapse vs the others, and the three statistics at the smallest test batch."""
    s, parts = stored.setup, []
    sizes = list(s["batch_sizes"])
    for net in s["bs_nets"]:
        lo, hi = min(sizes), max(sizes)
        accs = {v: (mean_sd(_col(_summaries(stored.sweep.get((net, v, lo), []), s), "test_acc"))[0], mean_sd(_col(_summaries(stored.sweep.get((net, v, hi), []), s), "test_acc"))[0]) for v in s["bs_variants"]}
        parts.append(f"{net} test acc at batch {lo} vs {hi}: " + ", ".join(f"{v} {_f(a)}/{_f(b)}" for v, (a, b) in accs.items()))
    for (net, v) in _bn_variants(stored, stored.curves):
        t = _summaries(stored.curves[(net, v)], s)
        b = min(_test_batch_sizes(t) or [0])
        parts.append(f"{net} {v} running/population/test-batch-{b} {_f(mean_sd(_col(t, 'running'))[0])}/{_f(mean_sd(_col(t, 'population'))[0])}/{_f(mean_sd(_col(t, f'batch@{b}'))[0])}")
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
    (plots / "summary.md").write_text(summary_markdown(stored))
    return verdict(stored)
