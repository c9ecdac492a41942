"""jaxnorm.analysis.regularization on synthetic run folders (hand-computed numbers):
reading runs by their config, the per-seed aggregates (mean ± 95% t-interval), paired
changes and their verdicts, the effective learning rate η/‖W‖² and the pure-decay
reference, and what happens to diverged and incomplete runs."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from jaxnorm.analysis import regularization as analysis
from jaxnorm.analysis.stats import paired_test
from jaxnorm.results import rewrite_jsonl, write_json


def _run(root, name, *, norm="bn", wd=0.0, p=0.0, seed=0, lr=0.5, train_acc=1.0, test_acc=0.9, norms=(2.0, 3.0), status="finished", evals=True):
    kwargs = {"depth": 3, **({"dropout_rate": p} if p else {})}
    config = {"norm": norm, "weight_decay": wd, "seed": seed, "learning_rate": lr, "model": "mlp", "model_kwargs": kwargs,
              "dataset": "digits", "train_subset": 64, "batch_size": 16, "max_steps": 10 * (len(norms) - 1)}  # fmt: skip
    lines = [{"kind": "weight_norms", "step": 10 * i, "scale_invariant": ["dense1"], "dense1": v, "dense2": 1.0} for i, v in enumerate(norms)]
    if evals:
        lines += [
            {"kind": "eval", "split": "train", "acc": train_acc, "loss": 0.1, "step": 10, "epoch": 0, "n": 64},
            {"kind": "eval", "split": "test", "acc": test_acc, "loss": 0.5, "step": 10, "epoch": 0, "n": 64},
        ]
    if status == "diverged":
        lines.append({"kind": "divergence", "step": 3, "reason": "non-finite loss"})
    write_json(root / name / "config.json", config)
    rewrite_jsonl(root / name / "metrics.jsonl", lines)
    write_json(root / name / "status.json", {"status": status})


def test_aggregates_paired_changes_and_effective_learning_rate(tmp_path):
    _run(tmp_path, "a0", seed=0, test_acc=0.9, norms=(2.0, 3.0))
    _run(tmp_path, "a1", seed=1, test_acc=0.8, norms=(2.0, 5.0))
    _run(tmp_path, "a2", seed=2, status="diverged", evals=False)
    _run(tmp_path, "b0", wd=0.1, seed=0, test_acc=0.9, norms=(2.0, 1.0))
    _run(tmp_path, "v0", norm="vanilla", p=0.5, seed=0)
    write_json(tmp_path / "study.json", {"setup": {"name": "toy", "norms": ["vanilla", "bn"]}, "seeds": [0, 1, 2]})
    info, runs = analysis.load_results(tmp_path)
    assert set(runs) == {("bn", 0.0, 0.0, 0), ("bn", 0.0, 0.0, 1), ("bn", 0.0, 0.0, 2), ("bn", 0.1, 0.0, 0), ("vanilla", 0.0, 0.5, 0)}
    s = analysis.aggregate([runs[("bn", 0.0, 0.0, k)] for k in range(3)])
    assert s["finished"] == 2
    # Two finished seeds: half-width t_{0.975, 1} · s/√2, and s/√2 = |0.9 − 0.8|/2.
    t1 = sp.t.ppf(0.975, 1)
    assert (s["test_acc"].mean, s["test_acc"].half_width, s["test_acc"].n) == (pytest.approx(0.85), pytest.approx(t1 * 0.05), 2)
    assert (s["acc_gap"].mean, s["acc_gap"].half_width) == (pytest.approx(0.15), pytest.approx(t1 * 0.05))
    assert (s["loss_gap"].mean, s["loss_gap"].half_width) == (pytest.approx(0.4), 0.0)
    assert math.isnan(analysis.aggregate([])["test_acc"].mean)

    eff = analysis.effective_lr(runs, "bn", 0.0)
    assert list(eff) == [(0.0, "dense1"), (0.1, "dense1")]
    means = lambda e: {k: e[k].mean for k in ("init", "end", "shrink", "lr_init", "lr_end")}
    assert means(eff[(0.0, "dense1")]) == pytest.approx({"init": 2.0, "end": 4.0, "shrink": 2.0, "lr_init": 0.125, "lr_end": (0.5 / 9 + 0.5 / 25) / 2})
    assert eff[(0.0, "dense1")]["end"].half_width == pytest.approx(t1 * 1.0)  # ends 3 and 5: s/√2 = 1
    assert eff[(0.0, "dense1")]["lr_end_by_seed"] == pytest.approx({0: 0.5 / 9, 1: 0.5 / 25})
    # One recorded interval of 10 steps: pure decay gives (1 − 0.5 · 0.1)^10 · 2.
    assert means(eff[(0.1, "dense1")]) == pytest.approx({"init": 2.0, "end": 1.0, "shrink": 0.95**10 * 2.0, "lr_init": 0.125, "lr_end": 0.5})
    assert analysis.effective_lr(runs, "nothing", 0.0) == {}

    # Paired by seed: only seed 0 has a partner at λ = 0.1.
    change = analysis.paired_change(runs, "bn", (0.0, 0.0), (0.1, 0.0), "test_acc")
    assert (change.n, change.diff.mean) == (1, pytest.approx(0.0))
    assert analysis.paired_change(runs, "bn", (0.0, 0.0), (0.5, 0.0), "test_acc").n == 0
    # Gap changes (other − base): consistently below zero, above, mixed, one pair.
    cases = (([0.1, 0.2, 0.15], [0.2, 0.3, 0.26]), ([0.3, 0.4, 0.36], [0.2, 0.3, 0.25]), ([0.1, 0.3, 0.2], [0.2, 0.2, 0.2]), ([0.1], [0.2]))
    assert [analysis.gap_verdict(paired_test(a, b)) for a, b in cases] == [
        "holds", "does not hold here", "not significant (n = 3)", "no test (n = 1)",
    ]  # fmt: skip

    grid = analysis.Grid(info, runs)
    assert grid.norms == ["vanilla", "bn"] and grid.weight_decays == [0.0, 0.1] and grid.dropout_rates == [0.0, 0.5]
    assert grid.seeds == [0, 1, 2] and grid.name == "toy"
    verdict = analysis.write_report(tmp_path)
    assert verdict.startswith("regularization toy: 4/5 runs finished; ")
    summary = (tmp_path / "plots" / "summary.md").read_text()
    # One seed at λ = 0.1 (no interval); the ratio is paired by seed: 0.5 / (0.5/9) = 9.
    assert "| 0.1 | dense1 | 2 | 1 | 1.2 | 0.125 | 0.5 | 9x |" in summary
    assert "Diverged (non-finite loss; not averaged): a2." in summary and "Incomplete" not in summary
    assert f"| bn | 0 | 0 | 1.000 ± 0.000 | 0.850 ± {t1 * 0.05:.3f} |" in summary and "| 2/3 |" in summary


def test_incomplete_runs_are_listed_not_averaged(tmp_path):
    _run(tmp_path, "done", seed=0)
    _run(tmp_path, "killed", seed=1, status="running", evals=False)
    _run(tmp_path, "no_eval", seed=2, status="finished", evals=False)
    _, runs = analysis.load_results(tmp_path)
    assert [analysis.state(runs[("bn", 0.0, 0.0, k)]) for k in range(3)] == ["finished", "incomplete", "incomplete"]
    assert analysis.aggregate(list(runs.values()))["finished"] == 1
    summary = analysis.summary_markdown({}, runs)
    assert "Incomplete (not finished: killed, failed or still running; not averaged; rerun to resume): killed, no_eval." in summary


def test_no_runs_or_duplicate_runs_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no stored runs"):
        analysis.load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no stored runs"):
        analysis.write_report(tmp_path / "empty")
    _run(tmp_path / "dup", "x", seed=0)
    _run(tmp_path / "dup", "y", seed=0)
    with pytest.raises(ValueError, match="both hold the run"):
        analysis.load_results(tmp_path / "dup")
