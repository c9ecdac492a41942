"""The normalization-kinds study (``experiments/norm_kinds.py`` on the engine, analysis
in ``jaxnorm.analysis.norm_kinds``): the quick study end to end (fit's run folders, the
observers' records, plots, summary, --plot-only, a rerun that trains nothing), the
analysis from synthetic stored runs (several seeds, divergence), the rows-vs-columns
check against its invariants, the configs, bad input."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import norm_kinds as nk
from jaxnorm.analysis import norm_kinds as an
from jaxnorm.results import read_jsonl, write_json
from jaxnorm.train import build_model


@pytest.mark.extended
def test_quick_study_writes_runs_records_plots_and_summary(tmp_path, capsys):
    assert nk.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    setup = nk.SETUPS["digits"].quick()
    root = tmp_path / "norm_kinds" / "digits-quick"
    assert sorted(p.name for p in root.iterdir()) == ["bs-mlp-batch-b4-s0", "curves-mlp-batch-s0", "plots", "study.json"]
    run = root / "curves-mlp-batch-s0"
    config = json.loads((run / "config.json").read_text())
    assert (config["norm"], config["tag"], config["batch_size"], config["epochs"], config["momentum"]) == ("bn_gamma_beta", "batch", 16, 2, 0.9)
    recs = read_jsonl(run / "metrics.jsonl")
    train = [r for r in recs if r["kind"] == "train"]
    steps = setup.subset // setup.batch_size
    # One train line per epoch (its mean), two eval lines per epoch.
    assert [(r["epoch"], r["step"], r["steps"]) for r in train] == [(0, steps, steps), (1, 2 * steps, steps)]
    assert [(r["epoch"], r["split"]) for r in recs if r["kind"] == "eval"] == [(0, "test"), (0, "train_eval"), (1, "test"), (1, "train_eval")]
    bn = [r for r in recs if r["kind"] == "bn_eval"]
    assert [r["step"] for r in bn] == [0, 2 * steps]
    last_test = [r for r in recs if r["kind"] == "eval" and r["split"] == "test"][-1]
    assert bn[-1]["running_acc"] == pytest.approx(last_test["acc"], abs=1e-6)
    assert (bn[-1]["n"], bn[-1]["batch16_n"], bn[-1]["population_batch_size"], bn[-1]["population_examples"]) == (359, 352, 16, 256)
    traj = np.load(run / "trajectories.npz")
    assert traj["norm_inputs/norm1"].shape == (2, setup.rows_columns_batch, 16)
    sweep = root / "bs-mlp-batch-b4-s0"
    assert json.loads((sweep / "config.json").read_text())["learning_rate"] == pytest.approx(setup.learning_rate * 4 / 16)
    last_bn = [r for r in read_jsonl(sweep / "metrics.jsonl") if r["kind"] == "bn_eval"][-1]
    assert [k for k in last_bn if k.startswith("batch") and k.endswith("_acc")] == ["batch4_acc"]
    plots = root / "plots"
    names = ("curves.png", "batch_size.png", "eval_stats.png")
    assert all((plots / png).stat().st_size > 10_000 for png in names)
    summary = (plots / "summary.md").read_text()
    assert summary.count("| finished |") == 1
    for claim in ("harder to train to low loss", "degrades at small batches", "running averages", "| mlp | batch, seed 0 | layer |"):
        assert claim in summary
    assert "norm_kinds digits-quick: mlp test acc at batch 4" in capsys.readouterr().out

    # --plot-only redraws everything from the stored files; a rerun trains nothing.
    for f in plots.iterdir():
        f.unlink()
    assert nk.main(["--quick", "--plot-only", "--results", str(tmp_path)]) == 0
    assert all((plots / png).stat().st_size > 10_000 for png in names)
    assert (plots / "summary.md").read_text() == summary
    before = (run / "metrics.jsonl").read_text()
    assert nk.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    assert (run / "metrics.jsonl").read_text() == before and (plots / "summary.md").read_text() == summary


# --------------------------------------------------------------------------- synthetic stored runs


def _run(root, name, norm, tag, losses, accs, train_eval, bn=None, status="finished", seed=0):
    """A run folder as fit writes it: train/eval lines per epoch (0-based) and a bn_eval line."""
    write_json(root / name / "config.json", {"norm": norm, "tag": tag, "seed": seed, "model_kwargs": {}})
    lines = []
    for e, (l, a, te) in enumerate(zip(losses, accs, train_eval)):
        lines += [
            {"kind": "train", "epoch": e, "step": e + 1, "loss": l, "acc": 1.0},
            {"kind": "eval", "epoch": e, "step": e + 1, "split": "test", "loss": 0.0, "acc": a},
            {"kind": "eval", "epoch": e, "step": e + 1, "split": "train_eval", "loss": te, "acc": 1.0},
        ]
    if status == "diverged":
        lines.append({"kind": "divergence", "step": len(losses) + 1, "reason": "non-finite loss"})
    if bn:
        lines += [{"kind": "bn_eval", "step": 0, "running_acc": 0.1, "population_acc": 0.1}, {"kind": "bn_eval", "step": len(losses), **bn}]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    write_json(root / name / "status.json", {"status": status})


def _stored_study(root, seeds=(0,)):
    setup = dataclasses.replace(
        nk.SETUPS["digits"], nets={"mlp": nk.Net("mlp")}, variants=("batch", "layer"), bs_variants=("batch", "layer"),
        batch_sizes=(2, 64), eval_batch_sizes=(8,), seeds=tuple(seeds),
    )  # fmt: skip
    write_json(root / "study.json", {"study": "norm_kinds", "setup": json.loads(json.dumps(dataclasses.asdict(setup), default=str)), "seeds": list(seeds)})
    bn = {"running_acc": 0.9, "population_acc": 0.91, "batch8_acc": 0.8}
    for s in seeds:
        d = 0.01 * s
        _run(root, an.run_name("curves", "mlp", "batch", s), "bn_gamma_beta", "batch", [0.5, 0.01], [0.95, 0.9 + d], [0.2, 0.01], bn, seed=s)
        _run(root, an.run_name("curves", "mlp", "layer", s), "layer", "layer", [0.6, 0.04], [0.7, 0.9 + d], [0.3, 0.04 + d], seed=s)
        _run(root, an.run_name("bs", "mlp", "batch", s, 2), "bn_gamma_beta", "batch", [1.0], [0.5], [1.0], {"running_acc": 0.5, "population_acc": 0.52, "batch2_acc": 0.3}, seed=s)
        _run(root, an.run_name("bs", "mlp", "batch", s, 64), "bn_gamma_beta", "batch", [0.1], [0.9], [0.1], seed=s)
        _run(root, an.run_name("bs", "mlp", "layer", s, 2), "layer", "layer", [0.2], [0.88], [0.2], seed=s)
        _run(root, an.run_name("bs", "mlp", "layer", s, 64), "layer", "layer", [0.1], [0.9], [0.1], seed=s)
    return setup


def test_summary_from_synthetic_runs(tmp_path):
    _stored_study(tmp_path)
    stored = an.load_study(tmp_path)
    s = an.run_summary(stored.curves[("mlp", "batch")][0])
    assert (s["first_loss"], s["train_loss"], s["train_eval_loss"], s["epochs_to_target"]) == (0.5, 0.01, 0.01, 2)
    assert (s["test_acc"], s["best_test_acc"], s["status"]) == (0.9, 0.95, "finished")
    assert (s["running"], s["population"], s["batch@8"]) == (0.9, 0.91, 0.8)
    assert an.run_summary(stored.curves[("mlp", "batch")][0], loss_target=0.001)["epochs_to_target"] is None
    md = an.summary_markdown(stored)
    # One seed: values without an interval, paired differences without a test.
    assert "| mlp | layer | 1 | 0.600 | 0.0400 | 0.0400 | 2.0 | 1.000 | 0.900 | 0.900 | finished |" in md
    assert "| mlp | epoch-1 loss | layer − batch | 0.600 | 0.500 | +0.100 (n = 1: no test) | no test (n = 1) |" in md
    assert "| mlp | final eval-mode training loss | layer − batch | 0.0400 | 0.0100 | +0.0300 (n = 1: no test) | no test (n = 1) |" in md
    assert "mlp, final test accuracy from the highest: batch 0.900, layer 0.900." in md
    assert "| mlp | batch | 1 | 0.500 | 0.900 | -0.400 (n = 1: no test) |" in md
    assert "| mlp | b2 − b64 accuracy | batch − layer | -0.400 | -0.020 | -0.380 (n = 1: no test) | no test (n = 1) |" in md
    assert "0.500 with the running averages, 0.520 with exact population statistics" in md and "the damage is done in training" in md
    assert "| mlp batch (trained at b64) | 1 | 0.900 | 0.910 | 0.800 |" in md and "| mlp batch | 2 | 1 | 0.500 | 0.520 | 0.300 |" in md
    assert "`batch` = norm `bn_gamma_beta`; `layer` = norm `layer`" in md
    v = an.analyze(tmp_path)
    assert v == "norm_kinds digits: mlp test acc at batch 2 vs 64: batch 0.500/0.900, layer 0.880/0.900; mlp batch running/population/test-batch-8 0.900/0.910/0.800"
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in ("curves.png", "batch_size.png", "eval_stats.png"))


def test_several_seeds_give_intervals_and_paired_tests(tmp_path):
    """Three seeds with known values: t-interval half-widths t_{0.975, 2} · sd / √3
    (t = 4.3027); a difference the same in every seed has half-width 0 and p = 0; epochs
    to the target of a seed that never reaches it count as epochs + 1 = 16 in the pairs."""
    _stored_study(tmp_path, seeds=(0, 1, 2))
    md = an.summary_markdown(an.load_study(tmp_path))
    # test acc 0.90, 0.91, 0.92: sd 0.01, half-width 0.0248. Seed 2's eval-mode training loss 0.06 never reaches 0.05.
    assert "| mlp | layer | 3 | 0.600 ± 0.000 | 0.0400 ± 0.0000 | 0.0500 ± 0.0248 | 2.0 ± 0.0; never: 1 of 3 | 1.000 ± 0.000 | 0.910 ± 0.025 |" in md
    # LN − BN eval-mode loss 0.03, 0.04, 0.05: 0.04 ± 0.0248, t = 0.04 / (0.01 / √3) = 6.93 on 2 df: p = 0.020.
    assert "| mlp | final eval-mode training loss | layer − batch | 0.0500 ± 0.0248 | 0.0100 ± 0.0000 | +0.0400 ± 0.0248 (p = 0.02; sign 3+/0−, p = 0.25) | holds |" in md
    assert "| mlp | epoch-1 loss | layer − batch | 0.600 ± 0.000 | 0.500 ± 0.000 | +0.100 ± 0.000 (p < 0.001; sign 3+/0−, p = 0.25) | holds |" in md
    assert "| mlp | epochs to ≤ 0.05 | layer − batch | 6.7 ± 20.1 | 2.0 ± 0.0 | +4.7 ± 20.1 (p = 0.42; sign 1+/0−, p = 1) | not significant (n = 3) |" in md
    assert "- mlp: LayerNorm behind BatchNorm (paired interval above zero) on 2 of 3 measures; the others: not significant (n = 3)." in md
    assert "| mlp | b2 − b64 accuracy | batch − layer | -0.400 ± 0.000 | -0.020 ± 0.000 | -0.380 ± 0.000 (p < 0.001; sign 0+/3−, p = 0.25) | holds |" in md
    assert "| mlp batch | accuracy | population − running | 0.910 ± 0.000 | 0.900 ± 0.000 | +0.010 ± 0.000 (p < 0.001; sign 3+/0−, p = 0.25) | population higher |" in md
    assert "| mlp batch | accuracy | test batch 8 − running | 0.800 ± 0.000 | 0.900 ± 0.000 | -0.100 ± 0.000 (p < 0.001; sign 0+/3−, p = 0.25) | holds |" in md


def test_a_diverged_run_is_reported(tmp_path):
    _stored_study(tmp_path)
    _run(tmp_path, an.run_name("curves", "mlp", "layer", 0), "layer", "layer", [0.6], [0.7], [0.3], status="diverged")
    md = an.summary_markdown(an.load_study(tmp_path))
    assert "| diverged |" in md and "| finished |" in md


def test_a_killed_run_is_reported_as_interrupted_with_its_step(tmp_path):
    import socket
    import subprocess
    import sys

    _stored_study(tmp_path)
    name = an.run_name("curves", "mlp", "layer", 0)
    _run(tmp_path, name, "layer", "layer", [0.6], [0.7], [0.3], status="running")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process
    write_json(tmp_path / name / "status.json", {"status": "running", "step": 1, "total_steps": 2, "pid": dead.pid, "host": socket.gethostname()})
    md = an.summary_markdown(an.load_study(tmp_path))
    assert "| interrupted at step 1 of 2 |" in md and not any(line.endswith("| running |") for line in md.splitlines())


def test_rows_columns_invariants():
    """A matrix with distinct row and column scales: each normalization standardizes its
    own direction up to epsilon (|std − 1| <= ε / (2 var)), not the other one."""
    z = np.random.default_rng(0).normal(size=(32, 16)) * np.linspace(0.5, 3, 16) + np.linspace(-2, 2, 16)
    r = {x["norm"]: x for x in an.rows_columns(z)}
    # std of (v - mean) / sqrt(var + ε) is sqrt(var / (var + ε)): 1 − ε / (2 var) to first order.
    rows_bound, cols_bound = (1.01 * an.EPSILON / (2 * z.var(axis).min()) for axis in (1, 0))
    assert r["layer"]["rows_mean"] < 1e-12 and r["layer"]["rows_std"] < rows_bound and r["layer"]["cols_mean"] > 0.5
    assert r["batch"]["cols_mean"] < 1e-12 and r["batch"]["cols_std"] < cols_bound and r["batch"]["rows_mean"] > 0.5
    for bad in (np.zeros(4), np.zeros((1, 4)), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match="needs a matrix"):
            an.rows_columns(bad)


# --------------------------------------------------------------------------- configs and bad input


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"variants": ("batch", "weird")}, "unknown variant"),
        ({"variants": ()}, "at least one"),
        ({"nets": {}}, "at least one"),
        ({"nets": {"mlp": "mlp"}}, "must be a Net"),
        ({"bs_nets": ("resnet",)}, "unknown net"),
        ({"lr_scaling": "sqrt"}, "unknown lr_scaling"),
        ({"batch_sizes": (1, 4)}, "batch_sizes"),
        ({"eval_batch_sizes": (2.5,)}, "eval_batch_sizes"),
        ({"batch_size": 1}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_setup_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        nk.NormKindsSetup(**changes)


def test_bad_input_is_refused(tmp_path, capsys):
    setup = nk.SETUPS["digits"]
    with pytest.raises(ValueError, match="needs a conv net"):
        nk.train_config(setup, tmp_path / "a" / "b", "mlp", "instance", 0)
    assert nk.variants_for(setup, "mlp", setup.variants) == [v for v in setup.variants if v != "instance"]
    assert "instance" in nk.variants_for(setup, "convnet", setup.variants)
    assert nk.main(["--quick", "--epochs", "0", "--results", str(tmp_path)]) == 2
    assert "epochs must be an int >= 1" in capsys.readouterr().err
    assert nk.main(["--plot-only", "--results", str(tmp_path)]) == 2
    assert "no stored runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nk.main(["--config", "nope"])
    with pytest.raises(ValueError, match="run_name"):
        an.run_name("bs", "mlp", "batch", 0)
    assert setup.bs_learning_rate(16) == pytest.approx(setup.learning_rate * 16 / setup.batch_size)
    assert dataclasses.replace(setup, lr_scaling="constant").bs_learning_rate(16) == setup.learning_rate


def test_the_run_configs_and_groups(tmp_path):
    """29 groups (13 curves, 4 variants x 4 batch sizes), the seeds of a variant in one
    group, three seeds by default and one with --quick; the weight reparametrizations
    reach the model; lr linear in the batch size."""
    setup, root = nk.SETUPS["digits"], tmp_path / "norm_kinds" / "digits"
    assert setup.seeds == (0, 1, 2) and setup.quick().seeds == (0,)
    groups = nk.STUDY.groups(setup, [0, 1], root)
    assert len(groups) == 13 + 16 and all(len(g.configs) == 2 for g in groups)
    assert {c.seed for c in groups[0].configs} == {0, 1}
    c = nk.train_config(setup, root, "mlp", "ws_group", 0)
    assert (c.norm, c.model_kwargs["weight_reparam"], c.study, c.name, c.log_every_steps) == ("group", "weight_std", "norm_kinds/digits", "curves-mlp-ws_group-s0", nk.ONE_LINE_PER_EPOCH)
    c = nk.train_config(setup, root, "mlp", "batch", 0, batch_size=2)
    assert (c.learning_rate, c.epochs, c.name, c.checkpoint_every_epochs) == (pytest.approx(0.05 * 2 / 64), 8, "bs-mlp-batch-b2-s0", 8)


def test_the_cifar10_setup_builds_its_nets():
    """3C3D's instance norm only after its convs, GroupNorm's 32 groups divide every
    normalized layer; shapes only."""
    setup = nk.SETUPS["cifar10"]
    x = jnp.zeros((2, 32, 32, 3))
    for variant in ("instance", "ws_group"):
        module = build_model(nk.train_config(setup, __import__("pathlib").Path("/r/norm_kinds/cifar10"), "3c3d", variant, 0), 10)
        params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False))["params"]
        norms = sorted(k for k in params if k.startswith("norm"))
        assert norms == (["norm1", "norm2", "norm3"] if variant == "instance" else ["norm1", "norm2", "norm3", "norm4", "norm5"])
    assert nk.variants_for(setup, "mlp", setup.variants) == [v for v in setup.variants if v != "instance"]
