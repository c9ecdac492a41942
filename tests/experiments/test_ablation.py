"""The ablation study (``experiments/ablation.py``) on the shared study protocol: the
digits default in --quick mode end to end, the CIFAR configs on mocked tfds, placements
and learning-rate scales, shards, command-line errors, and the re-plot command's refusal
of folders that are not ablation runs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import ablation, plot
from experiments.configs import CONFIGS, get_config
from jaxnorm.analysis.logit_scale import ce_at_scale, logit_scale
from jaxnorm.layers import ABLATION_VARIANTS
from jaxnorm.study import run_study, setup_with
from jaxnorm.train import build_model


def _runs(root):
    return sorted(p.parent for p in pathlib.Path(root).rglob("config.json"))


def _train(tmp_path, overrides=(), config="digits", seeds=(0,)):
    """Trains a quick setup through the study protocol (no analysis); returns its root."""
    setup = setup_with(ablation.STUDY.setups[config], dict(overrides), quick=True)
    run_study(ablation.STUDY, setup, seeds=seeds, results=str(tmp_path), progress=False)
    return tmp_path / "ablation" / setup.name


@pytest.mark.extended
def test_digits_default_quick_trains_the_five_variants_and_reports(ablation_quick):
    # The shared run of tests/conftest.py: `--config digits --quick` as the notebook runs it.
    results, out = ablation_quick
    root = results / "ablation" / "digits-quick"
    runs = _runs(root)
    seeds = list(range(ablation.QUICK_SEEDS))  # --quick keeps two seeds: intervals and paired tests
    assert [r.name for r in runs] == sorted(f"{v}_s{s}" for v in ABLATION_VARIANTS for s in seeds)
    assert {r.parent.name for r in runs} == {"lr1"}
    for r in runs:
        status = json.loads((r / "status.json").read_text())
        # --quick-steps 20 caps the steps, the one epoch of 512 examples at batch 64 ends first
        assert status["status"] == "finished" and status["step"] == status["total_steps"] == 512 // 64
        # on CPU one program per seed (ablation.seeds_in_one_program)
        assert status["program"]["runs"] == 5 and status["program"]["superset"] == "bn_ablation"
        cfg = json.loads((r / "config.json").read_text())
        assert cfg["seed"] == int(r.name[-1]) and cfg["learning_rate"] == pytest.approx(0.1) and cfg["max_steps"] == 20
        assert cfg["study"] == "ablation/digits-quick/lr1" and cfg["results_dir"] == str(results)
        assert cfg["train_subset"] == 512
        # The after step stored the final state's train_eval logits; the cross-entropy
        # recomputed from them (float64) is the stored final train loss, a float32 mean
        # over <= 1437 examples (relative rounding <= n·2^-24 ≈ 1e-4, with headroom).
        with np.load(r / "final_logits.npz") as f:
            logits, labels, step = f["logits"], f["labels"], int(f["step"])
        assert step == status["step"] and logits.shape == (len(labels), 10)
        final = [m["loss"] for m in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
                 if m.get("kind") == "eval" and m.get("split") == "train_eval"][-1]
        assert ce_at_scale(logits, labels, logit_scale(logits)) == pytest.approx(final, rel=2e-4, abs=1e-5)
    stored = json.loads((root / "study.json").read_text())
    assert stored["study"] == "ablation" and stored["setup"]["quick_steps"] == 20 and stored["seeds"] == seeds
    summary = (root / "plots" / "summary.md").read_text()
    assert all(f"| {v} | 2 |" in summary for v in ABLATION_VARIANTS) and (root / "plots" / "curves_lr0.1.png").is_file()
    assert " ± " in summary.split("|---", 1)[1] and "(p = " in summary  # intervals and paired tests in the cells
    assert "## Logit scale, lr0.1" in summary and "| bn_gamma − bn_beta |" in summary
    assert "lr 0.1: final test acc vanilla" in out and "beat vanilla" in out

    # The re-plot command redraws the same summary from the stored files.
    (root / "plots" / "summary.md").unlink()
    assert plot.main([str(root)]) == 0 and (root / "plots" / "summary.md").read_text() == summary


# One CIFAR config is trained end to end on mocked tfds; the other two only differ from it
# by dataset (loaded on mocked tfds in tests/data/test_load.py) and network head/model (the
# next test builds them; tests/models trains All-CNN-C in training mode).
@pytest.mark.extended
def test_cifar_config_runs_quick_on_mocked_tfds(tmp_path):
    name = "cifar10_3c3d"
    with tfds.testing.mock_data(num_examples=40):
        root = _train(tmp_path, {"quick_steps": 2, "quick_subset": 16, "variants": ["vanilla", "bn_gamma_beta"]}, config=name)
    runs = _runs(root)
    assert len(runs) == 2 and root.name == f"{name}-quick"
    for r in runs:
        assert json.loads((r / "status.json").read_text())["status"] in ("finished", "diverged")
        assert any(json.loads(l)["kind"] == "eval" for l in (r / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("name, dataset, classes", [("cifar100_3c3d", "cifar100", 100), ("cifar100_allcnnc", "cifar100", 100)])
def test_the_other_cifar_configs_build_their_network_on_their_dataset(name, dataset, classes):
    setup = setup_with(ablation.STUDY.setups[name], {}, quick=True)
    cfg = setup.base_config()
    assert cfg.dataset == dataset and setup.name == f"{name}-quick"
    module = build_model(cfg, classes)
    out = jax.eval_shape(lambda: module.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)[0])
    assert out.shape == (2, classes)


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
    # The published code's runs get their own folder; the digits configs have no such variant.
    setup = ablation.STUDY.setups["cifar10_3c3d"]
    assert setup_with(setup, {"published_code": True}, quick=True).name == "cifar10_3c3d-published-quick"
    assert setup_with(setup, {"published_code": True}, quick=False).base_config().weight_decay == 0.0
    with pytest.raises(ValueError, match="no published-code variant"):
        setup_with(ablation.STUDY.setups["digits"], {"published_code": True}, quick=False)


def test_positions_presets():
    assert ablation.positions_preset("default", 6) is None
    assert ablation.positions_preset("with_last", 6) == (1, 1, 1, 1, 1, 1)
    assert ablation.positions_preset("first", 6) == (1, 0, 0, 0, 0, 0)
    assert ablation.positions_preset("penultimate", 6) == (0, 0, 0, 0, 1, 0)
    assert ablation.positions_preset("first3", 6) == (1, 1, 1, 0, 0, 0)
    assert ablation.positions_preset("last3", 6) == (0, 0, 1, 1, 1, 0)
    assert ablation.positions_preset("last4_incl", 9) == (0, 0, 0, 0, 0, 1, 1, 1, 1)
    assert ablation.positions_preset("last_conv", 6, 3) == (0, 0, 1, 0, 0, 0)
    assert ablation.positions_preset("last_conv", 9, 9) == (0,) * 8 + (1,)
    assert set(ablation.PLACEMENTS) == {"default", "with_last", "first", "penultimate", "first3", "last3", "first4", "last4", "last4_incl", "last_conv"}
    with pytest.raises(ValueError, match="unknown BN placement"):
        ablation.positions_preset("middle", 6)
    for convs in (None, 0, 7):  # an MLP has no conv; more convs than layers is a caller's bug
        with pytest.raises(ValueError, match="'last_conv' needs the number of convs in \\[1, 6\\]"):
            ablation.positions_preset("last_conv", 6, convs)


def _group_configs(tmp_path, config, positions):
    setup = setup_with(ablation.STUDY.setups[config], {"positions": positions}, quick=True)
    return [g.configs for g in ablation.STUDY.groups(setup, [0], tmp_path / "ablation" / setup.name)]


def _abstract_state(cfg, module):
    """The run's initial state as shapes only (nothing compiled or allocated)."""
    import jax
    import jax.numpy as jnp

    from jaxnorm.train import create_state, make_optimizer

    return jax.eval_shape(lambda: create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), jnp.zeros((1, 32, 32, 3))))


@pytest.mark.parametrize("config, convs, norm", [("cifar10_3c3d", 3, "norm3"), ("cifar100_allcnnc", 9, "norm9")])
def test_last_conv_places_exactly_one_norm_after_the_last_conv(tmp_path, config, convs, norm):
    """Thesis Fig. A.13 C: one BN layer, after the last conv (3C3D's conv3 before its dense
    layers; All-CNN-C's conv9, all nine being convs)."""
    from jaxnorm.train import build_model

    with tfds.testing.mock_data(num_examples=40):
        (configs,) = _group_configs(tmp_path, config, ["last_conv"])
    for c in configs:
        assert c.tag == "last_conv" and c.name.endswith("_last_conv_s0")
        assert c.model_kwargs["bn_positions"] == tuple(int(i == convs - 1) for i in range(len(c.model_kwargs["bn_positions"])))
    bn = next(c for c in configs if c.norm == "bn_gamma_beta")
    params = _abstract_state(bn, build_model(bn, 100)).params
    assert [k for k in params if k.startswith("norm")] == [norm]


@pytest.mark.parametrize("config, probed", [("cifar100_allcnnc", {f"norm{i}" for i in range(1, 10)}), ("cifar10_3c3d", {f"norm{i}" for i in range(1, 6)})])
def test_relu_sparsity_probes_every_norm_a_relu_follows(tmp_path, config, probed):
    """``with_last``: All-CNN-C's norm9 feeds a ReLU (the thesis's key case) and is probed;
    3C3D's norm6 feeds the logits and is not. Shapes only: which layers, not values."""
    import jax

    with tfds.testing.mock_data(num_examples=40):
        (configs,) = _group_configs(tmp_path, config, ["with_last"])
        observers = ablation.observers_for(configs, probe_size=4)
    (sparsity,) = [o for o in observers if o.name == "relu_sparsity"]
    record = jax.eval_shape(sparsity, _abstract_state(configs[0], sparsity.module))
    assert set(record) == probed


@pytest.mark.extended
def test_placements_and_lr_scales_are_groups_of_one_root(tmp_path):
    setup = setup_with(ablation.STUDY.setups["digits"], {"lr_scale": [0.1, 10], "positions": ["default", "first"]}, quick=True)
    root = tmp_path / "ablation" / setup.name
    configs = {f"{c.study.rsplit('/', 1)[1]}/{c.name}": c for g in ablation.STUDY.groups(setup, [0], root) for c in g.configs}
    assert sorted(configs) == sorted(f"lr{s}/{v}{p}_s0" for s in ("0.1", "10") for v in ABLATION_VARIANTS for p in ("", "_first"))
    first = configs["lr0.1/bn_first_s0"]
    assert first.model_kwargs["bn_positions"] == (1, 0, 0, 0, 0, 0) and first.tag == "first"
    assert "bn_positions" not in configs["lr0.1/bn_s0"].model_kwargs and configs["lr0.1/bn_s0"].tag == ""
    assert sorted({c.learning_rate for c in configs.values()}) == pytest.approx([0.01, 1.0])
    assert {c.results_dir for c in configs.values()} == {str(tmp_path)}

    # Two placements in one root: the report groups by learning rate and placement (the tag),
    # each placement's rows compared with the baselines of that placement.
    root = _train(tmp_path, {"quick_steps": 2, "lr_scale": [10], "positions": ["default", "first"], "variants": ["bn"]})
    assert sorted(str(r.relative_to(root)) for r in _runs(root)) == ["lr10/bn_first_s0", "lr10/bn_s0"]
    verdict = ablation.STUDY.analyze(setup, root)
    assert "lr 1, first: final test acc bn+first" in verdict and "lr 1: final test acc bn " in verdict
    assert (root / "plots" / "curves_lr1_tagfirst.png").is_file() and "bn+first" in (root / "plots" / "summary.md").read_text()


def test_groups_are_the_jobs_and_shards_split_them(tmp_path):
    # digits with a batched program (vmap: GPU/TPU): the seeds of one (scale, placement) train
    # in one program with the variants
    grid = {"lr_scale": [1, 2], "positions": ["default", "first"]}
    setup = setup_with(ablation.STUDY.setups["digits"], {**grid, "strategy": "vmap"}, quick=True)
    groups = ablation.STUDY.groups(setup, [0, 1], tmp_path / "ablation" / setup.name)
    assert len(groups) == 2 * 2 and all(len(g.configs) == 10 for g in groups)
    assert len({c.study + "/" + c.name for g in groups for c in g.configs}) == 40
    assert {len({c.seed for c in g.configs}) for g in groups} == {2}
    # unrolled (loop: what auto is on CPU): one program per (scale, placement, seed)
    loop = setup_with(ablation.STUDY.setups["digits"], {**grid, "strategy": "loop"}, quick=True)
    groups = ablation.STUDY.groups(loop, [0, 1], tmp_path / "ablation" / loop.name)
    assert len(groups) == 2 * 2 * 2 and {len({c.seed for c in g.configs}) for g in groups} == {1}
    # the CIFAR configs: one (scale, placement, seed) per program
    cifar = setup_with(ablation.STUDY.setups["cifar10_3c3d"], {"lr_scale": [1, 2], "strategy": "vmap"}, quick=True)
    assert not cifar.seeds_together and ablation.STUDY.setups["digits"].seeds_together
    with tfds.testing.mock_data(num_examples=40):
        cifar_groups = ablation.STUDY.groups(cifar, [0, 1], tmp_path / "ablation" / cifar.name)
    assert len(cifar_groups) == 2 * 2 and {len({c.seed for c in g.configs}) for g in cifar_groups} == {1}
    assert all(s.seeds == (0, 1, 2) for s in ablation.STUDY.setups.values())  # three seeds by default
    assert setup.seeds == (0, 1)  # --quick keeps two
    assert ablation.main(["--quick", "--quick-steps", "1", "--variants", "bn", "--seeds", "0", "1", "--shard", "2/2",
                          "--results", str(tmp_path), "--no-progress"]) == 0  # fmt: skip
    assert [r.name for r in _runs(tmp_path / "ablation" / "digits-quick")] == ["bn_s1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shard", "3/2"], "--shard"),
        (["--shard", "x"], "--shard"),
        (["--positions", "middle"], "invalid choice: 'middle'"),
        (["--lr-scale", "0"], "must be finite and > 0"),
        (["--lr-scale", "nan"], "must be finite and > 0"),
        (["--lr-scale", "fast"], "invalid positive float value"),
        (["--variants", "bn_relu"], "invalid choice: 'bn_relu'"),
        (["--config", "imagenet"], "invalid choice: 'imagenet'"),
        (["--quick-steps", "0"], "must be >= 1"),
        (["digits", "--shard", "x"], "--shard"),  # the old positional config is still accepted
        (["digits", "cifar10_3c3d"], "unrecognized arguments: cifar10_3c3d"),
    ],
)
def test_bad_command_lines_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ablation.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_config_errors_are_one_line(tmp_path, capsys):
    assert ablation.main(["--published-code", "--results", str(tmp_path)]) == 2
    assert "no published-code variant" in capsys.readouterr().err
    assert ablation.main(["--plot-only", "--results", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plot_refuses_folders_that_are_not_ablation_runs(tmp_path, capsys):
    other = tmp_path / "conditioning" / "digits"
    (other / "run").mkdir(parents=True)
    (other / "study.json").write_text(json.dumps({"study": "conditioning", "setup": {}, "seeds": [0]}))
    (other / "run" / "config.json").write_text("{}")
    (other / "plots").mkdir()
    (other / "plots" / "summary.md").write_text("conditioning summary")
    for folder, message in [
        (other, "holds the 'conditioning' study, not an ablation"),
        (other / "run", "is a single run"),
        (tmp_path / "elsewhere", "does not exist"),
        (tmp_path, "not an ablation results folder"),
    ]:
        with pytest.raises(SystemExit) as e:
            plot.main([str(folder)])
        assert e.value.code == 2 and message in capsys.readouterr().err, folder
    assert (other / "plots" / "summary.md").read_text() == "conditioning summary"  # untouched
    legacy = tmp_path / "ablation" / "digits" / "lr1" / "bn_s0"  # a root from before study.json
    legacy.mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / "ablation")])
    assert "pass one of them: digits" in capsys.readouterr().err
