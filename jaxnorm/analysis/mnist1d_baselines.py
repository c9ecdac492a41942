"""The MNIST-1D baseline table (``experiments/mnist1d_baselines.py``): test accuracy of
logistic regression, MLP, CNN and GRU on MNIST-1D and its spatially shuffled variant,
beside the published numbers, from the stored runs.

The published table ("Scaling Down Deep Learning with MNIST-1D", Greydanus & Kobak, ICML
2024, Table 1; also the mnist1d repository's README): :data:`PUBLISHED`, test accuracy
without an interval (the paper gives single numbers).

Reads only the run folders under a study root (``config.json``: ``model``, ``dataset``,
``seed``; ``metrics.jsonl``: the ``eval`` lines of split ``test``; ``status.json``).
Per (model, dataset): the final test accuracy of every finished seed, its mean and 95%
t-interval (:func:`jaxnorm.analysis.stats.mean_interval`), the best test accuracy over
the evaluations as a second column, and a verdict against the published number
(:func:`published_verdict`: inside the mean's interval, inside the spread of a single run,
or how many points above or below; with one seed there is no interval, only the
difference). Two of the paper's claims are tested
over seeds, paired by seed (:func:`jaxnorm.analysis.stats.paired_test`): the CNN beats
the MLP on MNIST-1D (spatial inductive bias), and shuffling the positions costs the CNN
and the GRU accuracy while leaving logistic regression and the MLP (which are
permutation-equivariant up to initialization) where they were.
"""

from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

from jaxnorm.analysis.plotting import fresh_report_dir, pyplot, write_summary
from jaxnorm.analysis.runs import Run, find_runs
from jaxnorm.analysis.stats import CONFIDENCE, Interval, mean_interval, paired_test
from jaxnorm.analysis.stats import verdict as stats_verdict

#: The four baselines in the table's order: registered model name -> the paper's label.
MODELS = {"mnist1d_linear": "logistic regression", "mnist1d_mlp": "MLP", "mnist1d_cnn": "CNN", "mnist1d_gru": "GRU"}
#: The two datasets: registered name -> the paper's label.
DATASETS = {"mnist1d": "MNIST-1D", "mnist1d_shuffle": "MNIST-1D (shuffle)"}
#: Published test accuracy (the paper's Table 1), by (model, dataset).
PUBLISHED: Mapping[tuple[str, str], float] = {
    ("mnist1d_linear", "mnist1d"): 0.32, ("mnist1d_mlp", "mnist1d"): 0.68,
    ("mnist1d_cnn", "mnist1d"): 0.94, ("mnist1d_gru", "mnist1d"): 0.91,
    ("mnist1d_linear", "mnist1d_shuffle"): 0.32, ("mnist1d_mlp", "mnist1d_shuffle"): 0.68,
    ("mnist1d_cnn", "mnist1d_shuffle"): 0.56, ("mnist1d_gru", "mnist1d_shuffle"): 0.57,
}  # fmt: skip
DPI = 100


def _final(run: Run, how: str = "final") -> float:
    _, v = run.eval_series("test", "acc")
    if not v.size:
        return math.nan
    return float(v[-1]) if how == "final" else float(np.nanmax(v))


def collect(root) -> dict[tuple[str, str], list[Run]]:
    """The finished runs under ``root`` by (model, dataset), each list sorted by seed.

    Raises:
      ValueError: no finished run of a baseline model under ``root``.
    """
    out: dict[tuple[str, str], list[Run]] = {}
    for run in find_runs(root):
        key = (run.config.get("model"), run.config.get("dataset"))
        if key[0] in MODELS and run.finished:
            out.setdefault(key, []).append(run)
    if not out:
        raise ValueError(f"no finished MNIST-1D baseline run under {str(root)!r}.")
    return {k: sorted(v, key=lambda r: r.seed) for k, v in out.items()}


def published_verdict(ci: Interval, published: float) -> str:
    """The published number (one run of the paper) against our seeds' final accuracies:

    * ``agrees``: inside the 95% t-interval of the mean;
    * ``within single-run spread``: outside it but inside the 95% prediction interval of
      one more run, ``mean ± t·s·√(1 + 1/n)`` (= the half-width × √(n + 1)) -- the fair
      test for a single published run, whose own seed moved it as much as ours do;
    * ``above by x.x pts`` / ``below by x.x pts``: outside both (the mean's distance);
    * one seed: the difference with ``(n = 1)``; none: ``—``."""
    if ci.n == 0 or not math.isfinite(ci.mean):
        return "—"
    diff = 100 * (ci.mean - published)
    if ci.n < 2:
        return f"{diff:+.1f} pts (n = 1)"
    if ci.low <= published <= ci.high:
        return "agrees"
    if abs(ci.mean - published) <= ci.half_width * math.sqrt(ci.n + 1):
        return "within single-run spread"
    return f"{'above' if diff > 0 else 'below'} by {abs(diff):.1f} pts"


def _by_seed(runs: Sequence[Run]) -> dict:
    return {r.seed: _final(r) for r in runs}


def _paired(groups, a, b):
    """paired_test of the final test accuracies of groups a − b over their common seeds."""
    x, y = _by_seed(groups.get(a, [])), _by_seed(groups.get(b, []))
    seeds = sorted(set(x) & set(y))
    return paired_test([x[s] for s in seeds], [y[s] for s in seeds])


#: :func:`jaxnorm.analysis.stats.verdict`'s words, as the README states a source's claim.
_CLAIM_WORDS = {"yes": "holds", "no": "does not hold here", "not significant": "not significant", "no test": "not tested (n < 2)"}


def claims(groups) -> list[tuple[str, str, str]]:
    """``(claim, measured difference in points, verdict)`` rows of the paper's two
    qualitative claims."""
    rows = []
    t = _paired(groups, ("mnist1d_cnn", "mnist1d"), ("mnist1d_mlp", "mnist1d"))
    rows.append(("CNN beats the MLP on MNIST-1D (spatial inductive bias)", t.format(1, 100), _CLAIM_WORDS[stats_verdict((t, +1))]))
    for model in MODELS:
        t = _paired(groups, (model, "mnist1d_shuffle"), (model, "mnist1d"))
        expect = -1 if model in ("mnist1d_cnn", "mnist1d_gru") else 0
        if expect:
            claim = f"shuffling the positions costs the {MODELS[model]} accuracy"
            rows.append((claim, t.format(1, 100), _CLAIM_WORDS[stats_verdict((t, expect))]))
        else:
            claim = f"shuffling leaves the {MODELS[model]} unchanged (it sees no order)"
            side = t.excludes_zero()
            verdict = "holds (no significant change)" if side == 0 and t.n >= 2 else ("does not hold here" if side else "not tested (n < 2)")
            rows.append((claim, t.format(1, 100), verdict))
    return rows


def table_rows(groups) -> list[dict]:
    rows = []
    for model, label in MODELS.items():
        for dataset, dlabel in DATASETS.items():
            runs = groups.get((model, dataset), [])
            final = mean_interval([_final(r) for r in runs])
            best = mean_interval([_final(r, "best") for r in runs])
            pub = PUBLISHED[(model, dataset)]
            rows.append({"model": label, "dataset": dlabel, "final": final, "best": best, "published": pub, "verdict": published_verdict(final, pub), "seeds": [r.seed for r in runs]})
    return rows


def summary_markdown(root) -> str:
    groups = collect(root)
    rows = table_rows(groups)
    any_run = next(iter(groups.values()))[0].config
    steps, bs, lr, opt = any_run.get("max_steps"), any_run.get("batch_size"), any_run.get("learning_rate"), any_run.get("optimizer")
    L = ["# MNIST-1D baselines", ""]
    L.append(
        f"Test accuracy (%) at the end of training ({steps} steps of {opt}, learning rate {lr}, batch {bs}), "
        f"mean ± {CONFIDENCE:.0%} t-interval over seeds, beside the published number (\"Scaling Down Deep Learning "
        f"with MNIST-1D\", Greydanus & Kobak, ICML 2024, Table 1). \"best\": the highest test accuracy of the "
        f"evaluations during training (not a fair estimate: it selects on the test set; shown because the "
        f"published figures may be either)."
    )
    L += ["", "![test accuracy](accuracy.png)", ""]
    L.append("| model | dataset | n | jaxnorm final | jaxnorm best | published | verdict |")
    L.append("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        L.append(f"| {r['model']} | {r['dataset']} | {r['final'].n} | {r['final'].format(1, 100, say_single=False)} "
                 f"| {r['best'].format(1, 100, say_single=False)} | {100 * r['published']:.0f} | {r['verdict']} |")
    L += ["", "## The paper's claims", "", "| claim | measured difference, points (paired by seed) | verdict |", "|---|---|---|"]
    for claim, measured, verdict in claims(groups):
        L.append(f"| {claim} | {measured} | {verdict} |")
    return "\n".join(L) + "\n"


def _plot(path: pathlib.Path, rows: list[dict]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, dlabel in zip(axes, DATASETS.values()):
        sub = [r for r in rows if r["dataset"] == dlabel]
        x = np.arange(len(sub))
        means = [100 * r["final"].mean if r["final"].n else np.nan for r in sub]
        errs = [100 * r["final"].half_width if r["final"].n >= 2 and math.isfinite(r["final"].half_width) else 0.0 for r in sub]
        ax.bar(x, means, yerr=errs, color="tab:blue", alpha=0.8, capsize=4, label="jaxnorm (95% CI)")
        ax.scatter(x, [100 * r["published"] for r in sub], color="black", marker="_", s=400, zorder=3, label="published")
        ax.set_xticks(x, [r["model"].replace("logistic regression", "logistic") for r in sub])
        ax.set_title(dlabel)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def write_report(root) -> str:
    """``root/plots/accuracy.png`` and ``root/plots/summary.md``; returns a one-line verdict.

    Raises:
      ValueError: no finished baseline run under ``root``.
    """
    root = pathlib.Path(root)
    groups = collect(root)
    rows = table_rows(groups)
    plots = fresh_report_dir(root / "plots")
    _plot(plots / "accuracy.png", rows)
    write_summary(plots, summary_markdown(root))
    agree = sum(r["verdict"] == "agrees" for r in rows)
    spread = sum(r["verdict"] == "within single-run spread" for r in rows)
    measured = sum(r["final"].n > 0 for r in rows)
    return (f"MNIST-1D baselines: of {measured} measured cells, {agree} agree with the published table (95% interval of the "
            f"mean) and {spread} more lie within the spread of a single run.")
