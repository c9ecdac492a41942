"""The MNIST-1D baseline study (``experiments/mnist1d_baselines.py``) end to end on the real
generated MNIST-1D: two models on both datasets for a few Adam steps, the table written
from the stored runs, the paper's setup in every config, bad input refused."""

from __future__ import annotations

import json

import pytest

from experiments import mnist1d_baselines as study


@pytest.mark.extended
def test_quick_study_trains_both_datasets_and_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXNORM_DATA_DIR", str(tmp_path / "data"))
    argv = ["--quick", "--results", str(tmp_path), "--no-progress", "--models", "mnist1d_linear", "mnist1d_cnn", "--steps", "40"]
    assert study.main(argv) == 0
    root = tmp_path / "mnist1d_baselines" / "mnist1d-quick"
    for model in ("mnist1d_linear", "mnist1d_cnn"):
        for dataset in ("mnist1d", "mnist1d_shuffle"):
            run = root / study.run_name(model, dataset, 0)
            assert json.loads((run / "status.json").read_text())["status"] == "finished"
            cfg = json.loads((run / "config.json").read_text())
            assert (cfg["optimizer"], cfg["learning_rate"], cfg["batch_size"], cfg["max_steps"]) == ("adam", 0.01, 100, 40)
            assert (cfg["train_split"], cfg["eval_splits"], cfg["norm"], cfg["weight_decay"]) == ("full_train", ["test"], "vanilla", 0.0)
            evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            evals = [e for e in evals if e.get("kind") == "eval"]
            assert evals and all(e["split"] == "test" and e["n"] == 1000 and 0 <= e["acc"] <= 1 for e in evals)
    summary = (root / "plots" / "summary.md").read_text()
    assert "| CNN | MNIST-1D | 1 |" in summary and "| 94 |" in summary and "| GRU | MNIST-1D | 0 |" in summary
    assert (root / "plots" / "accuracy.png").exists()
    assert "MNIST-1D baselines:" in capsys.readouterr().out


def test_setup_refuses_bad_input():
    with pytest.raises(ValueError, match="registered names"):
        study.BaselineSetup(models=("mnist1d_transformer",))
    with pytest.raises(ValueError, match="registered names"):
        study.BaselineSetup(datasets=("mnist2d",))
    with pytest.raises(ValueError, match="steps must be an int"):
        study.BaselineSetup(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        study.BaselineSetup(learning_rate=float("nan"))
    assert study.main(["--models", "mnist1d_transformer"]) == 2  # a one-line error, not a traceback
