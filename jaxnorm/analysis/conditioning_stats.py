"""The gradient-conditioning study over seeds: intervals, BN-vs-no-BN comparisons paired by
seed, the η sweeps, and the thesis's correlation claims -- from stored files only.

Source: "Gradient Conditioning in Deep Neural Networks" (master thesis, Brigham Young
University, 2022). Runs are grouped by configuration ``(architecture, norm, depth)``;
the seeds of a configuration are measured on the same examples (the study's metric
batches do not depend on the seed), so the no-BN and BN runs of one seed pair.

Quantities at a point (``init`` = step 0, ``steepest``, ``lowest``: the key points of
:func:`~jaxnorm.analysis.conditioning.key_points`): a metric's sample nearest in step;
for the η-sweep quantities (``*_plateau``, from the ``conditioning_sweep`` lines of
:class:`~jaxnorm.observers.conditioning_sweep.ConditioningSweep`) the sweep nearest in
step, NaN when that sweep has no plateau (a plateau is never borrowed from another step).
In-training quantities (``kappa_sgd``, ``kappa_same_batch``, their cosines) are each
run's median over training.

Statistics (:mod:`jaxnorm.analysis.stats`): mean ± 95% t-interval over seeds; condition
numbers, which span decades, are compared as ``log10`` ratios (BN / no BN, paired by
seed), reported as the ratio ``10^mean`` with the interval's ends mapped the same way.
Correlation claims use Spearman's rank correlation over every run (configurations ×
seeds) with its two-sided p-value (:func:`scipy.stats.spearmanr`); runs of one
configuration are not independent, so the p-value is optimistic and the verdict is
stated with that caveat.
"""

from __future__ import annotations

import math
import pathlib
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as _sp  # noqa: E402

from jaxnorm.analysis.conditioning import ARCHITECTURE_STYLE, NORM_STYLE, CondRun, key_points, metric_at, metric_series  # noqa: E402
from jaxnorm.analysis.stats import mean_interval, paired_test  # noqa: E402

__all__ = ["POINTS", "point_steps", "sweep_records", "quantity_at", "in_training", "by_config", "seed_summary_md",
           "plot_sweeps", "SWEEP_KIND"]  # fmt: skip

SWEEP_KIND = "conditioning_sweep"
POINTS = ("init", "steepest", "lowest")
#: Quantity at the key points -> label (table order).
AT_POINTS = {
    "kappa_w_hessian": "κ Def. 2.4 ‖H‖‖w‖/‖g‖",
    "kappa_w_directional": "‖Hĝ‖‖w‖/‖g‖",
    "kappa_w_plateau": "κ_W η-plateau",
    "kappa_w": "κ_W at η = 1e-3",
    "kappa_x_plateau": "κ_X η-plateau",
    "kappa_x": "κ_X at η = 1e-3",
    "confusion": "confusion",
    "diversity": "diversity",
}
IN_TRAINING = {
    "kappa_sgd": "κ_SGD, consecutive batches",
    "kappa_same_batch": "κ_SGD, same batch",
    "cosine_sgd": "cos, consecutive batches",
    "cosine_same_batch": "cos, same batch",
}
#: Correlation claims of the thesis: (metric, point, against, expected sign of Spearman's ρ, claim).
CLAIMS = (
    ("kappa_w_hessian", "steepest", "rate", -1, "§2 (p. 49): poorer κ_W, slower descent (weak)"),
    ("kappa_w_plateau", "steepest", "rate", -1, "§2: the same with the η-plateau κ_W"),
    ("kappa_w_hessian", "lowest", "lowest_loss", +1, "§2: exceptionally poor κ_W, no convergence"),
    ("kappa_x_plateau", "lowest", "lowest_loss", 0, "§3.1 (Fig. 3.3/3.4): κ_X shows no correlation"),
    ("confusion", "steepest", "rate", -1, "§3.3 (Fig. 3.13): low confusion, fast descent"),
    ("confusion", "lowest", "lowest_loss", +1, "§3.3 (Fig. 3.13): low confusion, low final loss"),
    ("diversity", "lowest", "lowest_loss", +1, "§3.4 (Fig. 3.17): low diversity, low final loss"),
)


def point_steps(run: CondRun, window: int = 20) -> dict[str, Optional[float]]:
    """``{'init': 0.0, 'steepest': step or None, 'lowest': step or None}``."""
    kp, _ = key_points(run, window)
    return {"init": 0.0, "steepest": None if kp is None else kp["steepest_step"], "lowest": None if kp is None else kp["lowest_step"]}


def sweep_records(run: CondRun) -> list[dict]:
    """The run's ``conditioning_sweep`` lines, by step."""
    return sorted((m for m in run.run.metrics if m.get("kind") == SWEEP_KIND), key=lambda m: m["step"])


def _nearest_sweep(run: CondRun, step: float) -> Optional[dict]:
    recs = sweep_records(run)
    return min(recs, key=lambda m: (abs(m["step"] - step), m["step"])) if recs else None


def quantity_at(run: CondRun, quantity: str, step: Optional[float]) -> float:
    """``quantity`` at ``step`` (module docstring); NaN when not recorded or no step."""
    if step is None:
        return math.nan
    if quantity.endswith("_plateau") or "@" in quantity or quantity == "kappa_w_limit":
        rec = _nearest_sweep(run, step)
        return math.nan if rec is None or quantity not in rec else float(rec[quantity])
    v = metric_at(run, quantity, step)
    return math.nan if v is None else v


def in_training(run: CondRun, quantity: str) -> float:
    """The median of ``quantity``'s finite samples over training (NaN if none)."""
    _, values = metric_series(run, quantity)
    return float(np.median(values)) if values.size else math.nan


def by_config(runs: Sequence[CondRun]) -> dict[tuple, list[CondRun]]:
    """``{(arch, norm, depth): runs sorted by seed}`` in the runs' order."""
    out: dict[tuple, list[CondRun]] = {}
    for r in runs:
        out.setdefault((r.arch, r.norm, r.depth), []).append(r)
    return {k: sorted(v, key=lambda r: int(r.run.config.get("seed", 0))) for k, v in out.items()}


def _name(key) -> str:
    arch, norm, depth = key
    return f"{ARCHITECTURE_STYLE.get(arch, (arch,))[0]}, {NORM_STYLE.get(norm, (norm,))[0]}, d{depth}"


def _g(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3g}"


def _interval(values, log: bool = False) -> str:
    """``mean ± hw`` (3 significant digits); geometric for ``log`` (``10^mean(log10)`` ×/÷)."""
    vals = [v for v in values if math.isfinite(v) and (not log or v > 0)]
    if not vals:
        return "–"
    if log:
        iv = mean_interval(np.log10(vals))
        if iv.n < 2:
            return f"{10 ** iv.mean:.3g} (n = 1)"
        return f"{10 ** iv.mean:.3g} [{10 ** iv.low:.3g}, {10 ** iv.high:.3g}]"
    iv = mean_interval(vals)
    return f"{iv.mean:.3g}" + (" (n = 1)" if iv.n < 2 else f" ± {iv.half_width:.2g}")


def _seed_values(group: Sequence[CondRun], fn) -> list[float]:
    return [fn(r) for r in group]


def _paired(a: Sequence[float], b: Sequence[float], log: bool) -> tuple[str, int, int]:
    """``(text, sign of the interval (+1 above 0, −1 below, 0 neither), pairs)`` of a − b
    (log10 a − log10 b for ``log``)."""
    if log:
        a = [math.log10(v) if v > 0 else math.nan for v in a]
        b = [math.log10(v) if v > 0 else math.nan for v in b]
    t = paired_test(a, b)
    if t.n == 0:
        return "–", 0, 0
    if t.n < 2:
        return (f"×{10 ** t.diff.mean:.3g} (n = 1)" if log else f"{t.diff.mean:+.3g} (n = 1)"), 0, 1
    p = "< 0.001" if t.p_t < 1e-3 else f"{t.p_t:.2g}"
    if log:
        text = f"×{10 ** t.diff.mean:.3g} [{10 ** t.diff.low:.3g}, {10 ** t.diff.high:.3g}], p = {p}"
    else:
        text = f"{t.diff.mean:+.3g} ± {t.diff.half_width:.2g}, p = {p}"
    return text, t.excludes_zero(), t.n


def _verdict(sign: int, n: int, favourable: int) -> str:
    if n < 2:
        return f"no test (n = {n})"
    return "holds" if sign == favourable else "does not hold here" if sign == -favourable else f"not significant (n = {n})"


def _table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def seed_summary_md(runs: Sequence[CondRun], window: int = 20) -> str:
    """The over-seeds sections of ``summary.md`` (module docstring): training per
    configuration, conditioning at the key points, in-training κ, the η sweep's
    convergence, BN vs no BN paired by seed, and the thesis's correlation claims."""
    groups = by_config(runs)
    steps = {r.name: point_steps(r, window) for r in runs}
    kps = {r.name: key_points(r, window)[0] for r in runs}
    ns = sorted({len(g) for g in groups.values()})
    out = [f"## Over seeds (n = {', '.join(map(str, ns))} per configuration; mean ± 95% t-interval, condition numbers "
           "as geometric mean [95% interval])\n"]
    rows = []
    for key, g in groups.items():
        lowest = [kps[r.name]["lowest_loss"] if kps[r.name] else math.nan for r in g]
        steep = [kps[r.name]["steepest_step"] if kps[r.name] and kps[r.name]["steepest_step"] is not None else math.nan for r in g]
        rows.append([_name(key), len(g), _interval([r.final("train", "loss") or math.nan for r in g]), _interval(lowest),
                     _interval([r.final("eval", "acc", "test") or math.nan for r in g]),
                     f"{_interval(steep)} ({sum(math.isfinite(s) for s in steep)}/{len(g)})"])  # fmt: skip
    out.append("### Training\n")
    out.append(_table(["configuration", "n", "final train loss", "lowest smoothed loss", "test acc",
                       "steepest-descent step (runs with a descent phase)"], rows))  # fmt: skip
    present = [q for q in AT_POINTS if any(np.isfinite(quantity_at(r, q, 0.0)) for r in runs)]
    for point in POINTS:
        rows = [[_name(k)] + [_interval([quantity_at(r, q, steps[r.name][point]) for r in g], log=q != "confusion")
                              for q in present] for k, g in groups.items()]  # fmt: skip
        out.append(f"\n### At the {'initialization' if point == 'init' else 'point of ' + point + (' descent' if point == 'steepest' else ' smoothed loss')}\n")
        out.append(_table(["configuration", *(AT_POINTS[q] for q in present)], rows))
    sweeps = [r for r in runs if sweep_records(r)]
    if sweeps:
        rows = []
        for key, g in groups.items():
            recs = [m for r in g for m in sweep_records(r)]
            if recs:
                conv = sum(m.get("kappa_w_contains_limit", 0.0) == 1.0 for m in recs)
                pw = sum(math.isfinite(m.get("kappa_w_plateau", math.nan)) for m in recs)
                px = sum(math.isfinite(m.get("kappa_x_plateau", math.nan)) for m in recs)
                at = [m.get("kappa_w@0.001", math.nan) / m["kappa_w_limit"] for m in recs if m.get("kappa_w_limit", 0) > 0]
                rows.append([_name(key), len(recs), f"{pw}/{len(recs)}", f"{conv}/{len(recs)}", f"{px}/{len(recs)}", _interval(at, log=True)])
        out.append("\n### The η sweep (every sweep of every seed)\n")
        out.append("A plateau: at least 3 consecutive η of the grid agreeing within 5%; converged: the κ_W plateau agrees "
                   "with its η → 0 limit ‖Hĝ‖‖w‖/‖g‖ within 5%.\n\n")
        out.append(_table(["configuration", "sweeps", "κ_W plateau", "κ_W converged to ‖Hĝ‖-form", "κ_X plateau",
                           "κ_W(1e-3) / ‖Hĝ‖-form"], rows))  # fmt: skip
    present = [q for q in IN_TRAINING if any(np.isfinite(in_training(r, q)) for r in runs)]
    if present:
        rows = [[_name(k)] + [_interval([in_training(r, q) for r in g], log=q.startswith("kappa")) for q in present] for k, g in groups.items()]
        out.append("\n### In training (each run's median over training)\n")
        out.append(_table(["configuration", *(IN_TRAINING[q] for q in present)], rows))
    out.append(_bn_md(groups, steps, kps))
    out.append(_claims_md(runs, steps, kps))
    return "\n".join(out)


def _bn_md(groups, steps, kps) -> str:
    """BN vs no BN per (architecture, depth), paired by seed."""
    tests = [("final train loss", lambda r: r.final("train", "loss") or math.nan, False, -1)]
    tests += [(f"{AT_POINTS[q]} at {p}", (lambda q, p: lambda r: quantity_at(r, q, steps[r.name][p]))(q, p), True, -1)
              for q in ("kappa_w_hessian", "kappa_w_directional", "kappa_w_plateau", "kappa_x_plateau", "kappa_x") for p in ("init", "lowest")]  # fmt: skip
    tests += [(IN_TRAINING[q], (lambda q: lambda r: in_training(r, q))(q), True, -1) for q in ("kappa_sgd", "kappa_same_batch")]
    rows = []
    for (arch, norm, depth), g in groups.items():
        if norm != "vanilla" or (arch, "bn_gamma_beta", depth) not in groups:
            continue
        bn = {int(r.run.config.get("seed", 0)): r for r in groups[(arch, "bn_gamma_beta", depth)]}
        pairs = [(bn[int(r.run.config.get("seed", 0))], r) for r in g if int(r.run.config.get("seed", 0)) in bn]
        for label, fn, log, fav in tests:
            a, b = [fn(x) for x, _ in pairs], [fn(y) for _, y in pairs]
            if not any(map(math.isfinite, a + b)):
                continue
            text, sign, n = _paired(a, b, log)
            rows.append([f"{ARCHITECTURE_STYLE.get(arch, (arch,))[0]}, d{depth}", label, text, _verdict(sign, n, fav)])
    if not rows:
        return ""
    return ("\n### BN vs no BN, paired by seed (BN − no BN; condition numbers as the ratio BN / no BN; "
            "verdict for 'BN lowers it')\n\n" + _table(["architecture", "quantity", "BN vs no BN", "verdict"], rows))


def _claims_md(runs, steps, kps) -> str:
    rows = []
    for q, point, against, sign, claim in CLAIMS:
        xs, ys = [], []
        for r in runs:
            kp = kps[r.name]
            if kp is None or kp.get(against) is None:
                continue
            v = quantity_at(r, q, steps[r.name][point])
            if math.isfinite(v) and v > 0 or (q == "confusion" and math.isfinite(v)):
                xs.append(math.log10(v) if v > 0 else v)
                ys.append(kp[against])
        if len(xs) < 4:
            rows.append([claim, f"{q} at {point} vs {against}", f"n = {len(xs)}", "not measurable here (fewer than 4 runs)"])
            continue
        if len(set(xs)) < 2 or len(set(ys)) < 2:  # a rank correlation needs two distinct values on each side
            rows.append([claim, f"{q} at {point} vs {against}", f"n = {len(xs)}", "not measurable here (a constant side)"])
            continue
        rho, p = _sp.spearmanr(xs, ys)
        sig = p < 0.05
        if sign == 0:
            v = "holds (no significant correlation)" if not sig else "does not hold here"
        else:
            v = "holds" if sig and np.sign(rho) == sign else "does not hold here" if sig else f"not significant (n = {len(xs)})"
        rows.append([claim, f"{q} at {point} vs {against}", f"ρ = {rho:+.2f}, p = {p:.2g}, n = {len(xs)}", v])
    return ("\n### The thesis's correlation claims (Spearman over every run; seeds of one configuration are not "
            "independent, so p is optimistic)\n\n" + _table(["claim", "measured", "Spearman", "verdict"], rows))


def plot_sweeps(runs: Sequence[CondRun], quantity: str, path, window: int = 20) -> Optional[pathlib.Path]:
    """κ (``'kappa_w'`` or ``'kappa_x'``) against η at the initialization and at both key
    points (rows), a panel per norm (columns); one line per run (colour: architecture,
    solid: the shallowest depth, dashed: deeper), and for κ_W each sweep's η → 0 limit
    ‖Hĝ‖‖w‖/‖g‖ as a marker left of the grid. None when no run has sweeps."""
    runs = [r for r in runs if sweep_records(r)]
    if not runs:
        return None
    norms = list(dict.fromkeys(r.norm for r in runs))
    depths = sorted({r.depth or 0 for r in runs})
    fig, axes = plt.subplots(len(POINTS), len(norms), figsize=(5.2 * len(norms), 3.0 * len(POINTS)), sharex=True, sharey=True, squeeze=False)
    for col, norm in enumerate(norms):
        for r in (r for r in runs if r.norm == norm):
            color = ARCHITECTURE_STYLE.get(r.arch, (r.arch, "tab:gray"))[1]
            ls = "-" if (r.depth or 0) == depths[0] else "--"
            for row, point in enumerate(POINTS):
                step = point_steps(r, window)[point]
                rec = None if step is None else _nearest_sweep(r, step)
                if rec is None:
                    continue
                etas = np.asarray(rec["etas"], np.float64)
                vals = np.asarray([rec.get(f"{quantity}@{e:.3g}", np.nan) for e in etas], np.float64)
                ax = axes[row][col]
                ax.plot(etas, vals, color=color, ls=ls, lw=0.9, alpha=0.75)
                if quantity == "kappa_w" and np.isfinite(rec.get("kappa_w_limit", np.nan)):
                    ax.plot([etas[0] / 3], [rec["kappa_w_limit"]], marker="<", color=color, ms=4, ls="none")
                ax.set_title(f"{NORM_STYLE.get(norm, (norm,))[0]}, {point} (sweep at step ~{rec['step']})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[-1]:
        ax.set_xlabel("η")
    label = "κ_W (Def. 2.5)" if quantity == "kappa_w" else "κ_X (eq. 3.16)"
    for row in axes:
        row[0].set_ylabel(label)
    archs = list(dict.fromkeys(r.arch for r in runs))
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=ARCHITECTURE_STYLE.get(a, (a, "tab:gray"))[1], label=ARCHITECTURE_STYLE.get(a, (a,))[0]) for a in archs]
    handles += [Line2D([], [], color="0.3", ls="-", label=f"depth {depths[0]}")] + ([Line2D([], [], color="0.3", ls="--", label="deeper")] if len(depths) > 1 else [])
    if quantity == "kappa_w":
        handles.append(Line2D([], [], color="0.3", marker="<", ls="none", label="η→0 limit ‖Hĝ‖‖w‖/‖g‖"))
    axes[0][-1].legend(handles=handles, fontsize=6, loc="best")
    fig.suptitle(f"{label} against the step size η (“Gradient Conditioning in Deep Neural Networks”, BYU 2022)", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
