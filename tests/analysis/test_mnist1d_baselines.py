"""The MNIST-1D baseline table from synthetic run folders: intervals, verdicts against the
published numbers, the paired claims, and the report files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from jaxnorm.analysis import mnist1d_baselines as mb
from jaxnorm.analysis.stats import mean_interval
from jaxnorm.results import append_jsonl, write_json


def _write(folder, model, dataset, seed, accs, status="finished"):
    write_json(folder / "config.json", {"model": model, "dataset": dataset, "seed": seed, "norm": "vanilla", "name": folder.name,
                                        "optimizer": "adam", "learning_rate": 0.01, "batch_size": 100, "max_steps": 6000})
    lines = [{"kind": "eval", "split": "test", "epoch": 10 * e, "step": 400 * e, "loss": 1.0, "acc": a, "n": 1000} for e, a in enumerate(accs)]
    append_jsonl(folder / "metrics.jsonl", lines)
    write_json(folder / "status.json", {"status": status, "step": 400 * len(accs)})


# Final test accuracy per (model, dataset, seed); the curves end at these values.
FINAL = {
    ("mnist1d_linear", "mnist1d"): [0.31, 0.33, 0.32],
    ("mnist1d_mlp", "mnist1d"): [0.60, 0.62, 0.61],
    ("mnist1d_cnn", "mnist1d"): [0.93, 0.95, 0.94],
    ("mnist1d_gru", "mnist1d"): [0.90, 0.92, 0.93],
    ("mnist1d_linear", "mnist1d_shuffle"): [0.31, 0.33, 0.32],
    ("mnist1d_mlp", "mnist1d_shuffle"): [0.61, 0.61, 0.62],
    ("mnist1d_cnn", "mnist1d_shuffle"): [0.60, 0.58, 0.59],
}  # no GRU on the shuffled set: its cell stays empty


@pytest.fixture
def root(tmp_path):
    for (model, dataset), finals in FINAL.items():
        for seed, final in enumerate(finals):
            _write(tmp_path / f"{model}_{dataset}_s{seed}", model, dataset, seed, [0.1, final + 0.01, final])
    _write(tmp_path / "mnist1d_cnn_mnist1d_s9", "mnist1d_cnn", "mnist1d", 9, [0.1, 0.2], status="interrupted")  # left out
    return tmp_path


def test_table_intervals_and_verdicts(root):
    rows = {(r["model"], r["dataset"]): r for r in mb.table_rows(mb.collect(root))}
    for (model, dataset), finals in FINAL.items():
        r = rows[(mb.MODELS[model], mb.DATASETS[dataset])]
        half = stats.t.ppf(0.975, 2) * np.std(finals, ddof=1) / math.sqrt(3)
        assert r["final"].n == 3 and r["seeds"] == [0, 1, 2]
        np.testing.assert_allclose([r["final"].mean, r["final"].half_width], [np.mean(finals), half], rtol=1e-12)
        np.testing.assert_allclose(r["best"].mean, np.mean(finals) + 0.01, rtol=1e-12)
        pub = mb.PUBLISHED[(model, dataset)]
        inside = abs(np.mean(finals) - pub) <= half
        predicted = abs(np.mean(finals) - pub) <= stats.t.ppf(0.975, 2) * np.std(finals, ddof=1) * math.sqrt(1 + 1 / 3)
        expect = "agrees" if inside else "within single-run spread" if predicted else None
        assert r["verdict"] == expect or (expect is None and r["verdict"].endswith("pts")), (model, dataset, r["verdict"])
    assert rows[("MLP", "MNIST-1D")]["verdict"] == "below by 7.0 pts"
    assert rows[("MLP", "MNIST-1D (shuffle)")]["verdict"] == "below by 6.7 pts"  # 61.3 ± 1.43: 6.7 > 1.43·2
    assert rows[("GRU", "MNIST-1D (shuffle)")]["final"].n == 0 and rows[("GRU", "MNIST-1D (shuffle)")]["verdict"] == "—"


def test_published_verdict_forms():
    assert mb.published_verdict(mean_interval([0.5]), 0.4) == "+10.0 pts (n = 1)"
    assert mb.published_verdict(mean_interval([0.5, 0.52, 0.51]), 0.51) == "agrees"
    assert mb.published_verdict(mean_interval([0.5, 0.52, 0.51]), 0.9).startswith("below by 39.0")
    # Outside the mean's interval (half-width 0.0248) but inside one run's (0.0248·2 = 0.0497).
    assert mb.published_verdict(mean_interval([0.5, 0.52, 0.51]), 0.545) == "within single-run spread"
    assert mb.published_verdict(mean_interval([]), 0.9) == "—"


def test_claims_are_paired_by_seed(root):
    rows = {claim: (measured, verdict) for claim, measured, verdict in mb.claims(mb.collect(root))}
    cnn_vs_mlp = rows["CNN beats the MLP on MNIST-1D (spatial inductive bias)"]
    assert cnn_vs_mlp[0].startswith("+33.0 ± 0.0") and cnn_vs_mlp[1].startswith("holds")
    assert rows["shuffling the positions costs the CNN accuracy"][1].startswith("holds")
    assert rows["shuffling the positions costs the GRU accuracy"][0] == "—"  # no shuffled GRU run
    assert rows["shuffling leaves the logistic regression unchanged (it sees no order)"][1] == "holds (no significant change)"


def test_report_files_and_errors(root, tmp_path_factory):
    line = mb.write_report(root)
    assert line.startswith("MNIST-1D baselines:") and "of 7 measured cells" in line and "lie within the spread of a single run" in line
    summary = (root / "plots" / "summary.md").read_text()
    assert "![test accuracy](accuracy.png)" in summary and (root / "plots" / "accuracy.png").stat().st_size > 1000
    assert "| CNN | MNIST-1D | 3 | 94.0 ± " in summary and "| 94 | agrees |" in summary
    with pytest.raises(ValueError, match="no finished MNIST-1D baseline run"):
        mb.write_report(tmp_path_factory.mktemp("empty"))
