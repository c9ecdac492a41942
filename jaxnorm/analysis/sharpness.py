"""The edge-of-stability study's analysis (``experiments/sharpness.py``), from stored files.

Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of
Stability" (2021), shown in the lecture "Normalization and Regularization" (CMU Deep
Learning Systems): under full-batch gradient descent with step size η the sharpness
(the training loss's top Hessian eigenvalue) rises until it reaches 2/η and then hovers
there, with and without BatchNorm. Per run this module reads

* ``config.json`` (``norm``, ``learning_rate``, ``seed``), ``status.json``;
* ``metrics.jsonl``: the ``sharpness`` lines of :class:`jaxnorm.observers.Sharpness`
  (``step``, ``sharpness``, ``loss`` at the measured weights), the ``train`` lines, a
  ``stop_rule`` line where the run settled (:func:`settles`) and a ``divergence`` line
  if the run diverged;
* ``trajectories.npz`` (the :class:`jaxnorm.observers.spectrum.SpectralDensity` records
  at initialization and at the cap: ``spectrum/steps``, ``/grid``, ``/density``,
  ``/nodes``) and, for a run that settled before the cap, ``end_spectrum.npz`` (the
  same at its end, with its ``step``);

and the study's ``study.json`` (the setup as trained), and writes ``plots/sharpness.png``
(sharpness / (2/η) vs step, one panel per (norm, η) with the seeds and the edge band; the
loss below), ``plots/density.png`` (the densities at initialization and at the end,
middle η) and ``plots/summary.md``: per run the step the sharpness first reached the
edge, the step it had stayed there for the window, the last window's median ratio; per
(norm, η) the mean ± 95% t-interval of that ratio over the seeds
(:func:`jaxnorm.analysis.stats.mean_interval`) and the verdict of :func:`edge_verdict`.

Never imports the trainer: everything comes from the run folders.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import Run, find_runs, variant_order
from jaxnorm.analysis.stats import CONFIDENCE, Interval, mean_interval
from jaxnorm.results import read_json, read_npz

#: The end-of-training spectral density of a run that ended before the cap (written after training).
END_SPECTRUM = "end_spectrum.npz"

#: The outlier ratio λ_1/λ_k is reported only when the Lanczos order is at least
#: ``k + OUTLIER_MARGIN``. The k-th largest Ritz value θ_k is at most λ_k (Cauchy
#: interlacing) and approaches it only once the order is well above k, the later the
#: denser the top of the spectrum. Measured on the digits study at initialization (MLP
#: 64-64-64, 1000 examples, MSE; one start vector), θ_11 against order 12/16/22/31/40/45/
#: 50/60/120: without BN -4.4/2.9/10.29/10.29/... (converged from order 22 on); with BN
#: (train mode, a flat top) -10.2/-1.3/5.3/11.5/13.9/14.42/14.791/14.794/14.794 -- 2.5%
#: low at order 45, converged at 50 = k + 39. Hence the margin 40; the old quick mode's
#: order 12 gave ratios of -7 and 1170.
OUTLIER_MARGIN = 40


#: The default edge band: a window of records is "at the edge" when the median of
#: sharpness / (2/η) over it lies within 1 ± EDGE_TOLERANCE. Cohen et al. describe the
#: sharpness as hovering at, often just above, 2/η; ±10% holds their oscillation.
EDGE_TOLERANCE = 0.1


def _check_edge_args(learning_rate: float, window: int, tol: float) -> None:
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (steps), got {window!r}.")
    if not 0 < tol < 1:
        raise ValueError(f"the edge tolerance must lie in (0, 1), got {tol}.")


def window_median(steps: np.ndarray, ratios: np.ndarray, window: int) -> float:
    """The median of ``ratios`` over the records of the last ``window`` steps (step >
    last step − window); NaN when the records span fewer than ``window`` steps (no full
    window yet) or there are none."""
    steps, ratios = np.asarray(steps), np.asarray(ratios, np.float64)
    if not steps.size or steps[-1] - steps[0] < window:
        return math.nan
    return float(np.median(ratios[steps > steps[-1] - window]))


def settles(records: Sequence[dict], *, learning_rate: float, window: int, tol: float = EDGE_TOLERANCE) -> bool:
    """The study's stop rule (:class:`jaxnorm.observers.stopping.StopWhen`) on one run's
    ``sharpness`` lines in step order: True when the median of sharpness / (2/η) over the
    records of the last ``window`` steps lies within ``1 ± tol`` (and they span a full
    window): the sharpness has reached 2/η and stayed there for the window.

    Raises:
      ValueError: η not > 0, ``window`` not an int >= 1, ``tol`` outside (0, 1).
    """
    _check_edge_args(learning_rate, window, tol)
    steps = np.array([m["step"] for m in records], np.int64)
    ratios = np.array([m["sharpness"] for m in records], np.float64) * learning_rate / 2.0
    return bool(abs(window_median(steps, ratios, window) - 1.0) <= tol)


def summarize(steps: Sequence[int], sharpness: Sequence[float], learning_rate: float, window: int, tol: float = EDGE_TOLERANCE) -> dict:
    """Edge-of-stability statistics of one run's sharpness series (records in step order).

    Returns ``max_over_edge`` (largest sharpness / (2/η)); ``reached``: the first step
    whose sharpness is at least ``(1 − tol)·2/η`` (Cohen et al.'s "reaches 2/η"; 0 for a
    net that starts above the edge), None if never; ``settled``: the first record step at
    which :func:`settles` holds (the window before it at the edge), None if never;
    ``window_over_edge``: the median of sharpness / (2/η) over the last ``window`` steps
    of the series; ``window_within``: the fraction of those records within ``1 ± tol``.
    NaN / None for an empty series.

    Raises:
      ValueError: as :func:`settles`; steps and sharpness of different lengths.
    """
    _check_edge_args(learning_rate, window, tol)
    t, s = np.asarray(steps, np.int64), np.asarray(sharpness, np.float64)
    if t.shape != s.shape:
        raise ValueError(f"steps and sharpness must have one value per record, got {t.shape} and {s.shape}.")
    if not s.size:
        return {"max_over_edge": math.nan, "reached": None, "settled": None, "window_over_edge": math.nan, "window_within": math.nan}
    r = s * learning_rate / 2.0
    up = np.flatnonzero(r >= 1.0 - tol)
    settled = next((int(t[j]) for j in range(t.size) if abs(window_median(t[: j + 1], r[: j + 1], window) - 1.0) <= tol), None)
    last = r[t > t[-1] - window]
    return {
        "max_over_edge": float(np.nanmax(r)) if np.isfinite(r).any() else math.nan,
        "reached": int(t[up[0]]) if up.size else None,
        "settled": settled,
        "window_over_edge": window_median(t, r, window) if t[-1] - t[0] >= window else float(np.median(last)),
        "window_within": float(np.mean(np.abs(last - 1.0) <= tol)),
    }


def edge_verdict(ci: Interval, tol: float, diverged: int, n: int) -> str:
    """Whether "the sharpness hovers at 2/η" holds for one (norm, η) over its seeds: an
    equivalence test on the last-window ratio sharpness / (2/η) -- ``holds`` when the 95%
    t-interval of its mean lies inside ``1 ± tol`` (two one-sided tests, each at 2.5%),
    ``does not hold here`` when it lies entirely outside (or every seed diverged), ``not
    significant (n = …)`` otherwise; ``no test`` with one finished seed. Diverged seeds
    are named."""
    note = f"; {diverged} of {n} diverged" if diverged else ""
    if ci.n == 0:
        return "does not hold here (diverged)" if diverged else "no records"
    if ci.n < 2 or not math.isfinite(ci.half_width):
        return f"no test (n = {ci.n}){note}"
    if 1 - tol <= ci.low and ci.high <= 1 + tol:
        return "holds" + note
    if ci.high < 1 - tol or ci.low > 1 + tol:
        return "does not hold here" + note
    return f"not significant (n = {ci.n}){note}"


def outlier_ratio(nodes: np.ndarray, k: int, margin: int = OUTLIER_MARGIN) -> Optional[float]:
    """λ_1/λ_k (Ghorbani et al. 2019, "An Investigation into Neural Net Optimization via
    Hessian Eigenvalue Density") from the Ritz values ``nodes (order,)`` of one Lanczos
    run: the largest over the k-th largest. None (n/a) when ``order < k + margin``: the
    k-th Ritz value of a short run does not estimate λ_k (see :data:`OUTLIER_MARGIN`).

    Raises:
      ValueError: ``k`` < 2 or ``nodes`` not one-dimensional.
    """
    nodes = np.asarray(nodes, np.float64)
    if k < 2:
        raise ValueError(f"outlier ratio needs k >= 2, got {k}.")
    if nodes.ndim != 1:
        raise ValueError(f"nodes must be the Ritz values of one Lanczos run (1-d), got shape {nodes.shape}.")
    if nodes.size < k + margin:
        return None
    top = np.sort(nodes)[::-1]
    return float(top[0] / top[k - 1])


def sharpness_series(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, sharpness, loss)`` of the run's ``sharpness`` lines, by step."""
    lines = sorted((m for m in run.metrics if m.get("kind") == "sharpness"), key=lambda m: m["step"])
    return (
        np.array([m["step"] for m in lines], np.int64),
        np.array([m["sharpness"] for m in lines], np.float64),
        np.array([m["loss"] for m in lines], np.float64),
    )


def loss_series(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, loss)`` of the ``train`` lines (full batch: each the mean over its steps)."""
    lines = sorted((m for m in run.metrics if m.get("kind") == "train"), key=lambda m: m["step"])
    return np.array([m["step"] for m in lines], np.int64), np.array([m["loss"] for m in lines], np.float64)


def spectra(run: Run) -> dict[str, dict[str, np.ndarray]]:
    """``{'init': {...}, 'end': {...}}``: the density records at step 0 and at the end --
    the observer's record at the cap, else ``end_spectrum.npz`` (a run that settled
    earlier); no end for a diverged run --, each with ``grid``, ``density``, ``nodes``
    and ``step``."""
    out = {}
    t = run.trajectories
    steps = np.asarray(t.get("spectrum/steps", [])).tolist()
    for when, i in (("init", steps.index(0) if 0 in steps else None), ("end", len(steps) - 1 if steps and steps[-1] > 0 else None)):
        if i is not None:
            out[when] = {"step": int(steps[i]), **{k: np.asarray(t[f"spectrum/{k}"][i]) for k in ("grid", "density", "nodes")}}
    end = read_npz(run.path / END_SPECTRUM)
    if end:
        out["end"] = {"step": int(end["step"]), **{k: np.asarray(end[k][0]) for k in ("grid", "density", "nodes")}}
    return out


def run_row(run: Run, setup: dict) -> dict:
    """Everything the summary says about one run."""
    lr, k = float(run.lr), int(setup["outlier_k"])
    steps, sharp, loss = sharpness_series(run)
    div = run.divergence
    sp = spectra(run)
    _, train_loss = loss_series(run)
    stop = next((m for m in run.metrics if m.get("kind") == "stop_rule"), None)
    return {
        "norm": run.base_variant,
        "lr": lr,
        "seed": run.seed,
        "steps": steps,
        "sharpness": sharp,
        "loss": loss,
        "diverged": run.diverged,
        "divergence_step": div.get("step") if div else None,
        "end_step": int(steps[-1]) if steps.size else 0,
        "stopped": stop["step"] if stop else None,
        "final_loss": float(train_loss[-1]) if train_loss.size else math.nan,
        "ratios": {when: outlier_ratio(s["nodes"][0], k) for when, s in sp.items()},
        "spectra": sp,
        **summarize(steps, sharp, lr, int(setup["window"]), float(setup["edge_tol"])),
    }


def trend(row: dict, window: int) -> float:
    """The change of the window median of sharpness / (2/η) from the window before the
    last to the last one (NaN without two full windows): below zero, a run under the edge
    is moving away from it."""
    t, r = row["steps"], row["sharpness"] * row["lr"] / 2.0
    if not t.size or t[-1] - t[0] < 2 * window:
        return math.nan
    before = t <= t[-1] - window
    return window_median(t, r, window) - window_median(t[before], r[before], window)


def group_rows(rows: list[dict], setup: dict) -> list[dict]:
    """Per (norm, η), in the rows' order: seeds, how many diverged / reached / settled,
    the mean reach and settle steps of those that did, the last-window ratio's
    :class:`~jaxnorm.analysis.stats.Interval` over the seeds that did not diverge, the
    mean trend and the verdict (:func:`edge_verdict`)."""
    out = []
    for key in dict.fromkeys((r["norm"], r["lr"]) for r in rows):
        g = [r for r in rows if (r["norm"], r["lr"]) == key]
        ok = [r for r in g if not r["diverged"]]
        reached = [r["reached"] for r in ok if r["reached"] is not None]
        settled = [r["settled"] for r in ok if r["settled"] is not None]
        ci = mean_interval([r["window_over_edge"] for r in ok])
        trends = [x for x in (trend(r, int(setup["window"])) for r in ok) if math.isfinite(x)]
        out.append({
            "norm": key[0], "lr": key[1], "n": len(g), "diverged": len(g) - len(ok), "reached": reached, "settled": settled,
            "ratio": ci, "trend": float(np.mean(trends)) if trends else math.nan, "end_steps": [r["end_step"] for r in ok],
            "verdict": edge_verdict(ci, float(setup["edge_tol"]), len(g) - len(ok), len(g)),
        })  # fmt: skip
    return out


def load_setup(root: pathlib.Path) -> dict:
    """The setup as trained (``study.json``)."""
    path = pathlib.Path(root) / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"no study.json under {root}: nothing trained there yet (run without --plot-only).")
    return read_json(path)["setup"]


def analyze(root) -> str:
    """Writes ``root/plots/{sharpness,density}.png`` and ``summary.md``; returns the
    verdict line.

    Raises:
      FileNotFoundError: no ``study.json`` under ``root``.
      ValueError: no stored runs under ``root``.
    """
    root = pathlib.Path(root)
    setup = load_setup(root)
    runs = [r for r in find_runs(root) if r.lr is not None]
    if not runs:
        raise ValueError(f"no stored runs under {root}")
    rows = [run_row(r, setup) for r in runs]
    norms = variant_order(r["norm"] for r in rows)
    rows.sort(key=lambda r: (norms.index(r["norm"]), r["lr"], r["seed"]))
    plots = fresh_report_dir(root / "plots")
    plt = pyplot()
    _plot_sharpness(plt, plots / "sharpness.png", rows, norms, runs, setup)
    _plot_densities(plt, plots / "density.png", rows, norms)
    groups = group_rows(rows, setup)
    write_summary(plots, summary_markdown(rows, groups, setup))
    return verdict(groups)


def verdict(groups: list[dict]) -> str:
    parts = []
    for g in groups:
        parts.append(f"{g['norm']} η={g['lr']:g}: {g['ratio'].format(2, say_single=False)} (n = {g['ratio'].n}), {g['verdict']}")
    return "last-window median sharpness / (2/η): " + "; ".join(parts)


def _fmt_ratio(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _fmt_steps(steps: list, n: int) -> str:
    """``2/3 (mean step 120)``; ``0/3``."""
    return f"{len(steps)}/{n}" + (f" (mean step {np.mean(steps):.0f})" if steps else "")


def summary_markdown(rows: list[dict], groups: list[dict], setup: dict) -> str:
    k, margin, w, tol = int(setup["outlier_k"]), OUTLIER_MARGIN, int(setup["window"]), float(setup["edge_tol"])
    lines = [
        f"# Edge of stability: {setup['name']}",
        "",
        f"Full-batch GD (Cohen et al. 2021, \"Gradient Descent on Neural Networks Typically Occurs at the Edge of "
        f"Stability\") on the first {setup['subset']} training examples of {setup['dataset']}, {setup['model']} "
        f"{json.dumps(setup['model_kwargs'])}, {setup['loss']} loss; sharpness every {setup['every']} steps (the largest "
        f"Ritz value of {setup['lanczos_order']} warm-started Lanczos steps, BN on the full batch's statistics, as "
        f"trained). Each (norm, η) trains its seeds as one program until every seed has settled -- the median of "
        f"sharpness / (2/η) over the records of the last {w} steps within 1 ± {tol:g} -- or diverged, at most "
        f"{setup['steps']} steps (the cap). A run has diverged when its loss left {setup['divergence_factor']:g} x its "
        "first step's loss (or became non-finite).",
        "",
        f"Reached: the first step with sharpness ≥ {1 - tol:g} · 2/η (0: the net starts above the edge). Settled: the "
        f"first step whose last {w} steps are at the edge. Last window: the median of sharpness / (2/η) over the last "
        f"{w} steps of the run (which ends when all seeds of its (norm, η) have settled, or at the cap); trend: its "
        "change from the window before (negative: falling).",
        "",
        f"| norm | η | 2/η | seeds | diverged | reached | settled | last-window sharpness / (2/η), mean ± {CONFIDENCE:.0%} "
        "interval | trend | steps run | verdict: hovers at 2/η |",
        "|---|---:|---:|---:|---:|---|---|---|---:|---|---|",
    ]
    for g in groups:
        trend_text = f"{g['trend']:+.3f}" if math.isfinite(g["trend"]) else "—"
        ends = f"{min(g['end_steps'])}–{max(g['end_steps'])}" if g["end_steps"] else "—"
        ends = ends.split("–")[0] if g["end_steps"] and min(g["end_steps"]) == max(g["end_steps"]) else ends
        lines.append(
            f"| {g['norm']} | {g['lr']:g} | {2 / g['lr']:.1f} | {g['n']} | {g['diverged']} | {_fmt_steps(g['reached'], g['n'] - g['diverged'])} | "
            f"{_fmt_steps(g['settled'], g['n'] - g['diverged'])} | {g['ratio'].format(3, say_single=False)} | {trend_text} | {ends} | {g['verdict']} |"
        )
    lines += [
        "",
        f"Verdict: an equivalence test -- holds when the {CONFIDENCE:.0%} t-interval of the mean last-window ratio over "
        f"the seeds that did not diverge lies inside 1 ± {tol:g}, does not hold here when it lies entirely outside (or "
        "every seed diverged), else not significant.",
        "",
        f"λ1/λ{k}: the outlier ratio (Ghorbani et al. 2019) from the Ritz values of the first of "
        f"{setup['density_vectors']} stochastic Lanczos quadrature runs of order {setup['density_order']}, at "
        f"initialization and at the end; n/a when the order is below {k} + {margin}: a short run's Ritz value θ{k} "
        f"lies below λ{k} (Cauchy interlacing) and does not estimate it.",
        "",
        f"| norm | η | seed | 2/η | max sharpness / (2/η) | reached | settled | last-window median / (2/η) | last window within {tol:.0%} | "
        f"final loss | λ1/λ{k} init | λ1/λ{k} end | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        # A diverged run has no last window to speak of.
        late = ("-", "-") if r["diverged"] else (f"{r['window_over_edge']:.3f}", f"{r['window_within']:.0%}")
        ratio = {wh: (_fmt_ratio(r["ratios"][wh]) if wh in r["ratios"] else "-") for wh in ("init", "end")}
        status = f"diverged (step {r['divergence_step']})" if r["diverged"] else f"finished (step {r['end_step']})"
        final = f"{r['final_loss']:.4g}" if math.isfinite(r["final_loss"]) else "-"
        at = {f: "-" if r[f] is None else str(r[f]) for f in ("reached", "settled")}
        lines.append(
            f"| {r['norm']} | {r['lr']:g} | {r['seed']} | {2 / r['lr']:.1f} | {r['max_over_edge']:.3g} | {at['reached']} | {at['settled']} | "
            f"{late[0]} | {late[1]} | {final} | {ratio['init']} | {ratio['end']} | {status} |"
        )
    return "\n".join(lines) + "\n"


def _plot_sharpness(plt, path, rows, norms, runs, setup) -> None:
    """One column per η, a row per norm: sharpness / (2/η) of every seed with the edge
    band 1 ± tol; below each, the training loss."""
    lrs = sorted({r["lr"] for r in rows})
    tol = float(setup["edge_tol"])
    fig, axes = plt.subplots(2 * len(norms), len(lrs), figsize=(4.2 * len(lrs), 3.2 * 2 * len(norms)), sharex="col", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    loss_by_row = {(run.base_variant, float(run.lr), run.seed): loss_series(run) for run in runs}
    seeds = sorted({r["seed"] for r in rows})
    for i, norm in enumerate(norms):
        for j, lr in enumerate(lrs):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            top.axhspan(1 - tol, 1 + tol, color="0.85", lw=0)
            top.axhline(1.0, color="k", ls="--", lw=1)
            for r in (r for r in rows if r["norm"] == norm and r["lr"] == lr):
                c = colors[seeds.index(r["seed"]) % len(colors)]
                # The axis covers the edge; a diverging run's sharpness (up to 1e10) would flatten the rest.
                top.plot(r["steps"], np.minimum(r["sharpness"] * lr / 2.0, 3.0), color=c, lw=1.0, label=f"seed {r['seed']}")
                if r["settled"] is not None:
                    top.axvline(r["settled"], color=c, ls=":", lw=1)
                s, l = loss_by_row[(norm, lr, r["seed"])]
                bottom.plot(s, l, color=c, lw=1.0)
                if r["diverged"]:  # a run that diverged at once has a single record: a line would draw nothing
                    top.plot(r["steps"][-1:], np.minimum(r["sharpness"][-1:] * lr / 2.0, 3.0), "x", ms=8, color=c)
                    if len(l):
                        bottom.plot(s[-1], l[-1], "x", color=c)
            top.set_ylim(0, 3.0)
            top.set_title(f"{norm}, η = {lr:g} (2/η = {2 / lr:g})", fontsize=9)
            if any(np.any(np.asarray(l.get_ydata(), float) > 0) for l in bottom.get_lines()):
                bottom.set_yscale("log")
            else:  # every seed diverged before the first train line
                bottom.text(0.5, 0.5, "diverged before the first record", ha="center", transform=bottom.transAxes, fontsize=9)
            bottom.set_xlabel("full-batch GD step")
            if j == 0:
                top.set_ylabel("sharpness / (2/η)")
                bottom.set_ylabel(f"training loss ({setup['loss']})")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Edge of stability: grey band 1 ± {tol:g}, dotted: settled (window {setup['window']} steps); x: divergence", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_densities(plt, path, rows, norms) -> None:
    """The Hessian's spectral density at initialization and at the end, a panel per norm,
    for the middle step size and the first seed (Ghorbani et al. 2019, Fig. 1 style)."""
    lrs = sorted({r["lr"] for r in rows})
    lr = lrs[len(lrs) // 2]
    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        cands = [r for r in rows if r["norm"] == norm and r["lr"] == lr]
        sp = min(cands, key=lambda r: r["seed"])["spectra"] if cands else {}
        for when, style in (("init", "--"), ("end", "-")):
            if when in sp:
                ax.semilogy(sp[when]["grid"], np.maximum(sp[when]["density"], 1e-8), style, label=f"{when} (step {sp[when]['step']})")
        ax.set_title(f"{norm}, η = {lr:g}: Hessian spectral density (SLQ)", fontsize=10)
        ax.set_xlabel("eigenvalue")
        ax.set_ylim(1e-6, None)
        if sp:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
