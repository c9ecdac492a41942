"""The ablation study's entry point: every config in --quick mode, placements, shards."""

import json
import pathlib

import pytest
import tensorflow_datasets as tfds

from experiments import ablation
from experiments.configs import CONFIGS, get_config
from jaxnorm.layers import ABLATION_VARIANTS


def _runs(root):
    return sorted(p.parent for p in pathlib.Path(root).rglob("config.json"))


def test_digits_default_quick_trains_the_five_variants(tmp_path):
    assert ablation.main(["--quick", "--quick-steps", "3", "--results", str(tmp_path), "--no-plots", "--no-progress"]) == 0
    runs = _runs(tmp_path / "ablation" / "digits")
    assert [r.name for r in runs] == sorted(f"{v}_s0" for v in ABLATION_VARIANTS)
    for r in runs:
        status = json.loads((r / "status.json").read_text())
        assert status["status"] == "finished" and status["step"] == 3
        assert status["program"]["runs"] == 5 and status["program"]["superset"] == "bn_ablation"
        cfg = json.loads((r / "config.json").read_text())
        assert cfg["seed"] == 0 and cfg["learning_rate"] == pytest.approx(0.1) and cfg["max_steps"] == 3


# All-CNN-C is left out to keep `make test` short (~20 s here): cifar100_3c3d covers the
# CIFAR-100 pipeline, and tests/models trains the All-CNN-C network in training mode.
@pytest.mark.parametrize("name", ["cifar10_3c3d", "cifar100_3c3d"])
def test_cifar_configs_run_quick_on_mocked_tfds(tmp_path, name):
    with tfds.testing.mock_data(num_examples=40):
        argv = [name, "--quick", "--quick-steps", "2", "--quick-subset", "16", "--results", str(tmp_path)]
        assert ablation.main(argv + ["--no-plots", "--no-progress", "--variants", "vanilla", "bn_gamma_beta"]) == 0
    runs = _runs(tmp_path)
    assert len(runs) == 2
    for r in runs:
        assert json.loads((r / "status.json").read_text())["status"] in ("finished", "diverged")
        assert any(json.loads(l)["kind"] == "eval" for l in (r / "metrics.jsonl").read_text().splitlines())


def test_configs_reproduce_table_3_1_and_expose_the_published_code():
    c10, c100, acc = (get_config(n) for n in ("cifar10_3c3d", "cifar100_3c3d", "cifar100_allcnnc"))
    assert (c10.batch_size, c10.learning_rate, c10.epochs, c10.weight_decay) == (128, 0.022, 100, 0.002)
    assert (c100.batch_size, c100.learning_rate, c100.epochs, c100.weight_decay) == (256, 0.166, 350, 0.002)
    assert (acc.batch_size, acc.learning_rate, acc.epochs, acc.weight_decay, acc.model) == (256, 0.166, 350, 5e-4, "allcnnc")
    assert all(c.momentum == 0.0 and c.schedule == "constant" for c in (c10, c100, acc))
    code = get_config("cifar100_allcnnc", as_published_code=True)
    assert (code.learning_rate, code.epochs, code.weight_decay) == (0.01658, 500, 0.0)
    assert get_config("cifar10_3c3d", as_published_code=True).weight_decay == 0.0
    with pytest.raises(ValueError, match="unknown config"):
        get_config("imagenet")
    for name, fn in CONFIGS.items():
        assert "python -m experiments.ablation" in (__import__(fn.__module__, fromlist=["x"]).__doc__ or ""), name


def test_positions_presets():
    assert ablation.positions_preset("default", 6) is None
    assert ablation.positions_preset("with_last", 6) == (1, 1, 1, 1, 1, 1)
    assert ablation.positions_preset("first", 6) == (1, 0, 0, 0, 0, 0)
    assert ablation.positions_preset("penultimate", 6) == (0, 0, 0, 0, 1, 0)
    assert ablation.positions_preset("first3", 6) == (1, 1, 1, 0, 0, 0)
    assert ablation.positions_preset("last3", 6) == (0, 0, 1, 1, 1, 0)
    assert ablation.positions_preset("last4_incl", 9) == (0, 0, 0, 0, 0, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="unknown BN placement"):
        ablation.positions_preset("middle", 6)


def test_placement_and_lr_scale_runs(tmp_path):
    argv = ["--quick", "--quick-steps", "2", "--lr-scale", "0.1", "10", "--positions", "first", "--variants", "bn", "bn_beta"]
    assert ablation.main(argv + ["--results", str(tmp_path), "--no-plots", "--no-progress"]) == 0
    runs = _runs(tmp_path / "ablation" / "digits-first")
    assert sorted({r.parent.name for r in runs}) == ["lr0.1", "lr10"]
    cfg = json.loads((runs[0] / "config.json").read_text())
    assert cfg["model_kwargs"]["bn_positions"] == [1, 0, 0, 0, 0, 0]
    lrs = sorted(json.loads((r / "config.json").read_text())["learning_rate"] for r in runs)
    assert lrs == pytest.approx([0.01, 0.01, 1.0, 1.0])


def test_shards_partition_the_jobs():
    jobs = list(range(7))
    parts = [ablation.shard_jobs(jobs, f"{i}/3") for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == jobs and all(parts)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(ValueError, match="shard"):
            ablation.shard_jobs(jobs, bad)
