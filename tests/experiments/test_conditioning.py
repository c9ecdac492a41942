"""The gradient-conditioning study (``experiments/conditioning.py``) on the shared study
protocol: a quick study end to end (observers, the costs ``after`` step, the analysis,
a cheap rerun), its setups and command-line changes, and bad input."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from experiments import conditioning
from jaxnorm.data import load
from jaxnorm.observers import METRICS
from jaxnorm.study import setup_with
from jaxnorm.train import TrainConfig, build_model


def _lines(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.extended
def test_quick_study_records_every_metric_times_them_and_plots(tmp_path, capsys):
    argv = ["--quick", "--architectures", "ortho_relu", "resnet", "--norms", "bn_gamma_beta", "--results", str(tmp_path), "--no-progress"]
    assert conditioning.main(argv) == 0
    root = tmp_path / "conditioning" / "digits-quick"
    runs = sorted(p.parent for p in root.glob("*/config.json"))
    assert [r.name for r in runs] == ["ortho_relu-bn_gamma_beta-d4", "resnet-bn_gamma_beta-d4"]
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["track_step_conditioning"] and cfg["tag"] == run.name.split("-")[0] and cfg["study"] == "conditioning/digits-quick"
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
        # The same-batch form needs one step only (the tracker keeps w_{t-1}).
        assert math.isnan(step[0]["kappa_same_batch"]) and all(m["kappa_same_batch"] > 0 and m["cosine_same_batch"] <= 1 for m in step[1:])
        assert not [m for m in lines if m["kind"] == "conditioning_sweep"]  # --quick sweeps no η grid

        costs = json.loads((run / "costs.json").read_text())
        assert set(costs["seconds"]) == {"kappa_w", "confusion", "kappa_sgd", "batch_gradient"}
        assert all(s > 0 for s in costs["seconds"].values()) and costs["conditioning_every"] == 4 and costs["repeats"] == 2
        module = build_model(TrainConfig.from_dict(cfg), load("digits", "train").num_classes)
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
    assert "## Over seeds (n = 1 per configuration" in summary and "| κ_SGD, consecutive batches | κ_SGD, same batch |" in summary
    assert "2 runs (0 diverged); median final training loss by depth: depth 4: BN " in capsys.readouterr().out

    # A rerun restores the final checkpoints instead of retraining and keeps the measured costs.
    before = {r.name: ((r / "metrics.jsonl").read_text(), (r / "costs.json").stat().st_mtime_ns) for r in runs}
    assert conditioning.main(argv) == 0
    assert before == {r.name: ((r / "metrics.jsonl").read_text(), (r / "costs.json").stat().st_mtime_ns) for r in runs}


def test_setups_and_command_line_changes(tmp_path):
    digits = conditioning.SETUPS["digits"]
    jobs = digits.jobs(results="res")
    # BN vs no BN on three architectures at depth 4, the depth contrast on the FC ReLU net only.
    assert [c.name for c in jobs] == [f"{a}-{n}-d{d}" for a, ds in (("ortho_relu", (4, 11)), ("convnet", (4,)), ("resnet", (4,)))
                                      for n in ("vanilla", "bn_gamma_beta") for d in ds]  # fmt: skip
    assert all(c.dataset == "digits" and c.batch_size == 64 and c.track_step_conditioning for c in jobs)
    assert all(c.results_dir == "res" and c.study == "conditioning/digits" and c.checkpoint_every_epochs == c.epochs for c in jobs)
    assert digits.metric_names == METRICS
    assert (digits.seeds, digits.cost_seeds, digits.base.epochs, digits.sweep_every, digits.same_batch) == ((0, 1, 2), (0,), 15, 5, True)
    assert digits.etas[0] == 1e-6 and 1e-3 in digits.etas and digits.quick().etas == ()
    full = conditioning.SETUPS["digits_full"]
    by_name = {c.name: c for c in full.jobs(results="res")}
    assert len(by_name) == 5 * 2 * 2 and full.base == digits.base and full.sweep_every == 2
    assert dict(by_name["looks_linear-vanilla-d11"].model_kwargs) == {"depth": 11, "width": digits.fc_width, "activation": "crelu",
                                                                      "kernel_init": "looks_linear"}
    assert by_name["resnet-vanilla-d4"].model_kwargs["residual"] and by_name["resnet-vanilla-d4"].model_kwargs["stages"] == 1
    assert not by_name["convnet-vanilla-d11"].model_kwargs["residual"] and by_name["convnet-vanilla-d11"].model_kwargs["stages"] == 3
    assert [c.name for c in digits.jobs([0, 2])[:2]] == ["ortho_relu-vanilla-d4", "ortho_relu-vanilla-d4_s2"]
    # The seeds of a configuration are one fit_many group.
    groups = conditioning.STUDY.groups(digits, [0, 1, 2], tmp_path / "conditioning" / "digits")
    assert len(groups) == 8 and all([c.seed for c in g.configs] == [0, 1, 2] and g.after is not None for g in groups)
    assert all(len({c.name.split("_s")[0] for c in g.configs}) == 1 for g in groups)
    with pytest.raises(ValueError, match="unknown deep architecture"):
        setup_with(digits, {"deep_architectures": ["vgg"]}, quick=False)

    cifar = conditioning.SETUPS["cifar10"]
    assert (cifar.base.dataset, cifar.base.batch_size, cifar.base.schedule, cifar.depths) == ("cifar10", 64, "plateau", (11, 26, 40))
    assert cifar.samples_per_epoch == 2 and set(cifar.architectures) == set(conditioning.ARCHITECTURES)
    for module in (conditioning.conditioning_digits, conditioning.conditioning_cifar10):
        assert "python -m experiments.conditioning" in module.__doc__ and "untime" in module.__doc__, module

    assert setup_with(digits, {"add_depths": [26]}, quick=False).all_depths == (4, 11, 26)
    assert setup_with(digits, {"depths": [4]}, quick=False).all_depths == (4,)
    quick = setup_with(digits, {"add_depths": [11], "architectures": ["looks_linear"]}, quick=True)
    assert (quick.name, quick.all_depths, quick.architectures) == ("digits-quick", (4, 11), ("looks_linear",))
    assert quick.metrics == ("kappa_w", "confusion") and quick.run_config("resnet", "vanilla", 4).max_steps == 8
    assert setup_with(digits, {"quick_steps": 3}, quick=True).run_config("resnet", "vanilla", 4).max_steps == 3
    with pytest.raises(ValueError, match="unknown architecture"):
        setup_with(digits, {"architectures": ["vgg"]}, quick=False)
    with pytest.raises(ValueError, match="unknown metric"):
        setup_with(digits, {"metrics": ["kappa"]}, quick=False)
    with pytest.raises(ValueError, match="unknown norm"):
        setup_with(digits, {"norms": ["bn_relu"]}, quick=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "imagenet"], "invalid choice: 'imagenet'"),
        (["--shard", "0/4"], "--shard"),
        (["--metrics", "kappa"], "invalid choice: 'kappa'"),
        (["--every", "0"], "must be >= 1"),
        (["imagenet"], "argument CONFIG: invalid choice: 'imagenet'"),  # the setup may come first (= --config)
        (["digits", "cifar10"], "unrecognized arguments: cifar10"),
    ],
)
def test_bad_command_lines_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        conditioning.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_setup_errors_and_plot_only_without_runs_are_one_line(tmp_path, capsys):
    assert conditioning.main(["--norms", "bn_relu", "--results", str(tmp_path)]) == 2
    assert "unknown norm(s) ['bn_relu']" in capsys.readouterr().err
    assert conditioning.main(["--depths", "1", "--results", str(tmp_path)]) == 2
    assert "must be >= 2" in capsys.readouterr().err
    assert conditioning.main(["--plot-only", "--results", str(tmp_path)]) == 2
    assert "no stored conditioning runs" in capsys.readouterr().err
