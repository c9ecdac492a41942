"""The gradient-conditioning study's entry point: a quick study end to end, and its configs."""

import argparse
import json
import math

import jax
import jax.numpy as jnp
import pytest

from experiments import conditioning
from jaxnorm.data import load
from jaxnorm.train import TrainConfig, build_model


def _lines(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_quick_study_records_every_metric_times_them_and_plots(tmp_path, capsys):
    argv = ["--quick", "--architectures", "ortho_relu", "resnet", "--norms", "bn_gamma_beta", "--results", str(tmp_path), "--no-progress"]
    assert conditioning.main(argv) == 0
    root = tmp_path / "conditioning" / "digits-quick"
    runs = sorted(p.parent for p in root.glob("*/config.json"))
    assert [r.name for r in runs] == ["ortho_relu-bn_gamma_beta-d4", "resnet-bn_gamma_beta-d4"]
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["track_step_conditioning"] and cfg["tag"] == run.name.split("-")[0]
        assert (cfg["batch_size"], cfg["max_steps"], cfg["model_kwargs"]["depth"], cfg["norm"]) == (64, 8, 4, "bn_gamma_beta")
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
        lines = _lines(run)
        # 512 examples / batch 64 = 8 steps per epoch: sampled twice per epoch and before the first step.
        cond = [m for m in lines if m["kind"] == "conditioning"]
        assert [m["step"] for m in cond] == [0, 4, 8]
        assert all(m["kappa_w"] > 0 and 0 <= m["confusion"] <= 1 and m["batch_size"] == 64 for m in cond)
        step = [m for m in lines if m["kind"] == "step_conditioning"]
        assert [m["step"] for m in step] == list(range(9))  # every logged step (log_every_steps=1)
        assert all(math.isnan(m["kappa_sgd"]) for m in step[:2])  # no previous step yet
        assert all(m["kappa_sgd"] > 0 and -1 <= m["cosine_sgd"] <= 1 for m in step[2:])

        costs = json.loads((run / "costs.json").read_text())
        assert set(costs["seconds"]) == {"kappa_w", "confusion", "kappa_sgd", "batch_gradient"}
        assert all(s > 0 for s in costs["seconds"].values()) and costs["conditioning_every"] == 4
        train = load("digits", "train")
        module = build_model(TrainConfig.from_dict(cfg), train.num_classes)
        variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False))
        assert costs["params"] == sum(x.size for x in jax.tree.leaves(variables["params"]))

    study_costs = json.loads((root / "costs.json").read_text())
    assert sorted(study_costs) == ["batch_gradient", "confusion", "kappa_sgd", "kappa_w"]
    assert sorted(e["run"] for e in study_costs["kappa_w"]) == [r.name for r in runs]
    plots = root / "plots"
    for name in ("curves_kappa_w", "scatter_kappa_w", "curves_kappa_sgd", "scatter_confusion", "costs"):
        assert (plots / f"{name}.png").is_file(), name
    summary = (plots / "summary.md").read_text()
    assert all(f"| {r.name} |" in summary for r in runs)

    # A second call with the same config skips the finished runs (and rewrites nothing).
    before = {r.name: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    capsys.readouterr()
    assert conditioning.main(argv + ["--no-plots"]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 2
    assert before == {r.name: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}


def _args(*argv):
    ns = argparse.Namespace(config="digits", depth=None, depths=None, architectures=None, norms=None, metrics=None,
                            every=None, cost_repeats=None, quick=False, quick_steps=8, quick_subset=512)
    for k, v in zip(argv[::2], argv[1::2]):
        setattr(ns, k, v)
    return ns


def test_configs_and_command_line_changes():
    from jaxnorm.observers import METRICS

    digits = conditioning.get_study("digits")
    jobs = digits.jobs("res")
    assert len(jobs) == 5 * 2 * 2 and len({c.name for c in jobs}) == len(jobs)
    assert jobs[0].name == "ortho_relu-vanilla-d4" and jobs[-1].name == "resnet-bn_gamma_beta-d11"
    assert all(c.dataset == "digits" and c.batch_size == 64 and c.track_step_conditioning for c in jobs)
    assert all(c.results_dir == "res/conditioning" and c.study == "digits" for c in jobs)
    assert digits.metric_names == METRICS
    by_name = {c.name: c for c in jobs}
    assert dict(by_name["looks_linear-vanilla-d11"].model_kwargs) == {"depth": 11, "width": digits.fc_width, "activation": "crelu",
                                                                      "kernel_init": "looks_linear"}
    assert by_name["resnet-vanilla-d4"].model_kwargs["residual"] and by_name["resnet-vanilla-d4"].model_kwargs["stages"] == 1
    assert not by_name["convnet-vanilla-d11"].model_kwargs["residual"] and by_name["convnet-vanilla-d11"].model_kwargs["stages"] == 3

    cifar = conditioning.get_study("cifar10")
    assert (cifar.base.dataset, cifar.base.batch_size, cifar.base.schedule, cifar.depths) == ("cifar10", 64, "plateau", (11, 26, 40))
    assert cifar.samples_per_epoch == 2 and set(cifar.architectures) == set(conditioning.ARCHITECTURES)
    for name, module in conditioning.CONFIGS.items():
        doc = __import__(f"experiments.configs.{module}", fromlist=["x"]).__doc__
        assert "python -m experiments.conditioning" in doc and "untime" in doc, name

    assert conditioning.study_from_args(_args("depth", [26])).depths == (4, 11, 26)
    assert conditioning.study_from_args(_args("depths", [4])).depths == (4,)
    quick = conditioning.study_from_args(_args("quick", True, "depth", [11], "architectures", ["looks_linear"]))
    assert (quick.name, quick.depths, quick.architectures) == ("digits-quick", (4, 11), ("looks_linear",))
    assert quick.metrics == ("kappa_w", "confusion") and quick.base.max_steps == 8
    with pytest.raises(ValueError, match="unknown architecture"):
        digits.replace(architectures=("vgg",))
    with pytest.raises(ValueError, match="unknown metric"):
        digits.replace(metrics=("kappa",))
    with pytest.raises(ValueError, match="unknown conditioning config"):
        conditioning.get_study("imagenet")
