"""The normalization-kinds study (``experiments/norm_kinds.py``): the quick study end to
end, BatchNorm's population statistics and evaluation modes against NumPy, the summary
from synthetic records, divergence, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import norm_kinds as nk
from jaxnorm.models import get_model
from jaxnorm.results import RunDir


def f64(a):
    return np.asarray(a, np.float64)


def lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_quick_study_writes_records_plots_and_summary(tmp_path):
    nk.main(["--quick", "--results", str(tmp_path)])
    cfg = nk.NormKindsConfig().quick()
    root = tmp_path / "norm_kinds" / "digits-quick"
    for variant in cfg.variants:
        run = root / "curves" / "mlp" / variant
        config = json.loads((run / "config.json").read_text())
        assert (config["variant"], config["batch_size"], config["norm"]) == (variant, cfg.batch_size, nk.VARIANTS[variant].norm)
        recs = lines(run / "metrics.jsonl")
        train = [r for r in recs if r["kind"] == "train"]
        evals = [r for r in recs if r["kind"] == "eval" and r["split"] == "test"]
        train_evals = [r for r in recs if r["kind"] == "eval" and r["split"] == "train"]
        assert [r["epoch"] for r in train] == [r["epoch"] for r in evals] == [r["epoch"] for r in train_evals] == list(range(1, cfg.epochs + 1))
        steps = cfg.subset // cfg.batch_size
        assert [r["step"] for r in train] == [steps * e for e in range(1, cfg.epochs + 1)]
        assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in train + evals + train_evals)
        stats = [r for r in recs if r["kind"] == "eval_stats"]
        if variant == "batch":
            assert [(r["method"], r["batch_size"]) for r in stats] == [("running", None), ("population", None), ("batch", 16)]
            # The running-statistics evaluation is the epoch's eval record; n counts every example.
            assert stats[0]["accuracy"] == pytest.approx(evals[-1]["accuracy"], abs=1e-6) and stats[0]["n"] == 359
            assert stats[2]["n"] == 352  # 22 full test batches of 16
            rc = {r["norm"]: r for r in recs if r["kind"] == "rows_columns"}
            # LayerNorm: rows standardized, columns not; BatchNorm the other way round.
            assert rc["layer"]["rows_mean"] < 1e-5 and rc["layer"]["rows_std"] < 1e-4 and rc["layer"]["cols_mean"] > 0.1
            assert rc["batch"]["cols_mean"] < 1e-5 and rc["batch"]["cols_std"] < 1e-4 and rc["batch"]["rows_mean"] > 0.1
        else:
            assert stats == []
    sweep = lines(root / "batch_size" / "mlp" / "batch_b4" / "metrics.jsonl")
    assert [r["batch_size"] for r in sweep if r["kind"] == "eval_stats"] == [None, None, 4]
    assert json.loads((root / "batch_size" / "mlp" / "batch_b4" / "config.json").read_text())["learning_rate"] == pytest.approx(cfg.learning_rate * 4 / 16)
    plots = root / "plots"
    names = ("curves.png", "batch_size.png", "eval_stats.png")
    for png in names:
        assert (plots / png).stat().st_size > 10_000
    summary = (plots / "summary.md").read_text()
    assert summary.count("| finished |") == len(cfg.variants)
    for claim in ("harder to train to low loss", "degrades at small batches", "running averages"):
        assert claim in summary

    # --plot-only redraws everything from the stored files.
    for f in plots.iterdir():
        f.unlink()
    nk.main(["--quick", "--plot-only", "--results", str(tmp_path)])
    assert all((plots / png).stat().st_size > 10_000 for png in names)
    assert (plots / "summary.md").read_text() == summary


def _one_bn_layer_net():
    """dense1 (4 -> 5, no bias) -> BN (γ, β) -> ReLU -> dense2 (5 -> 3), random γ/β."""
    module = get_model("mlp", depth=2, width=5, num_classes=3, norm="bn_gamma_beta")
    x = jax.random.normal(jax.random.PRNGKey(0), (12, 4)) * 2.0 + 1.0
    variables = jax.jit(lambda k: module.init(k, x[:2], train=False))(jax.random.PRNGKey(1))
    params = dict(variables["params"])
    params["norm1"] = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-0.3, 0.3, 5)}
    return module, {"params": params, "batch_stats": variables["batch_stats"]}, x


def _numpy_forward(params, x, mean, var, eps=1e-5):
    p = jax.tree.map(f64, params)
    h = f64(x) @ p["dense1"]["kernel"]
    h = (h - mean) / np.sqrt(var + eps) * p["norm1"]["scale"] + p["norm1"]["bias"]
    return np.maximum(h, 0) @ p["dense2"]["kernel"] + p["dense2"]["bias"]


def test_population_stats_on_the_whole_training_set_normalize_with_its_mean_and_variance():
    """One batch of all n examples: the population statistics are the training set's mean
    and unbiased (n − 1) variance of the BN layer's input, and eval mode with them equals
    the NumPy network normalizing with those. float32 vs float64 on O(1) values: 1e-5."""
    module, variables, x = _one_bn_layer_net()
    stats = nk.population_batch_stats(module, variables, x, batch_size=len(x))
    h = f64(x) @ f64(variables["params"]["dense1"]["kernel"])
    np.testing.assert_allclose(f64(stats["norm1"]["mean"]), h.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f64(stats["norm1"]["var"]), h.var(axis=0, ddof=1), rtol=1e-5, atol=1e-5)
    x_test = jax.random.normal(jax.random.PRNGKey(5), (7, 4))
    got = jax.jit(lambda v: module.apply(v, x_test, train=False))({**variables, "batch_stats": stats})
    want = _numpy_forward(variables["params"], x_test, h.mean(axis=0), h.var(axis=0, ddof=1))
    np.testing.assert_allclose(f64(got), want, rtol=1e-5, atol=1e-5)
    # The caller's running statistics are untouched.
    np.testing.assert_array_equal(variables["batch_stats"]["norm1"]["var"], np.ones(5))


def test_population_stats_over_batches_follow_algorithm_2():
    """Batches of 4 of the 12 examples in the order data_order(seed, 0): the mean of the
    batch means and m/(m − 1) times the mean of the biased batch variances (m = 4)."""
    module, variables, x = _one_bn_layer_net()
    stats = nk.population_batch_stats(module, variables, x, batch_size=4, seed=3)
    h = (f64(x) @ f64(variables["params"]["dense1"]["kernel"]))[nk.data_order(3, 0, 12)].reshape(3, 4, 5)
    np.testing.assert_allclose(f64(stats["norm1"]["mean"]), h.mean(axis=1).mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f64(stats["norm1"]["var"]), 4 / 3 * h.var(axis=1).mean(axis=0), rtol=1e-5, atol=1e-5)


def test_evaluator_modes():
    """'running': eval mode, the same for any chunking (padding not counted); 'batch':
    each batch normalized by its own biased statistics, the incomplete batch dropped."""
    module, variables, x = _one_bn_layer_net()
    variables = {**variables, "batch_stats": {"norm1": {"mean": jnp.linspace(-1, 1, 5), "var": jnp.linspace(0.5, 2, 5)}}}
    y = jnp.arange(12) % 3
    ev = nk.evaluator(module)
    whole, chunked = ev(variables, x, y), ev(variables, x, y, batch_size=5)
    logits = _numpy_forward(variables["params"], x, np.linspace(-1, 1, 5), np.linspace(0.5, 2, 5))
    ce = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(12), np.asarray(y)])
    assert whole["n"] == chunked["n"] == 12
    for r in (whole, chunked):
        assert r["loss"] == pytest.approx(ce, rel=1e-5)
        assert r["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == np.asarray(y)))
    by_batch = ev(variables, x, y, mode="batch", batch_size=5)  # batches [0:5], [5:10]; 2 dropped
    h = f64(x[:10]) @ f64(variables["params"]["dense1"]["kernel"])
    parts = [_numpy_forward(variables["params"], x[i : i + 5], h[i : i + 5].mean(0), h[i : i + 5].var(0)) for i in (0, 5)]
    logits = np.concatenate(parts)
    ce = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(10), np.asarray(y[:10])])
    assert by_batch["n"] == 10 and by_batch["loss"] == pytest.approx(ce, rel=1e-5)
    with pytest.raises(ValueError, match="2 <= batch_size <= 12"):
        ev(variables, x, y, mode="batch", batch_size=13)
    with pytest.raises(ValueError, match="'running' or 'batch'"):
        ev(variables, x, y, mode="population")


def test_a_diverging_run_is_recorded_and_the_report_still_written(tmp_path):
    # No normalization: BN (or GN) layers would keep the activations finite at any lr.
    cfg = dataclasses.replace(nk.NormKindsConfig().quick(), variants=("none",), learning_rate=1e6, epochs=2)
    x, y = jax.random.normal(jax.random.PRNGKey(0), (32, 4)), jnp.arange(32) % 3
    data = nk.Data(x, y, x[:8], y[:8], x[:8], y[:8], num_classes=3)
    recs = nk.run_curves(cfg, "mlp", "none", data, tmp_path, log=lambda s: None)
    assert recs[-1]["kind"] == "divergence" and "non-finite" in recs[-1]["reason"]
    assert lines(tmp_path / "curves" / "mlp" / "none" / "metrics.jsonl") == recs
    assert "| diverged |" in nk.summary_markdown(cfg, {("mlp", "none"): recs}, {})


def _train(losses, accs, train_eval=()):
    """Synthetic records: training-mode losses, test accuracies, eval-mode training losses per epoch."""
    ep = range(1, len(losses) + 1)
    return (
        [{"kind": "train", "epoch": e, "step": e, "loss": l, "accuracy": 1.0} for e, l in zip(ep, losses)]
        + [{"kind": "eval", "epoch": e, "step": e, "split": "test", "loss": 0.0, "accuracy": a} for e, a in zip(ep, accs)]
        + [{"kind": "eval", "epoch": e, "step": e, "split": "train", "loss": l, "accuracy": 1.0} for e, l in zip(ep, train_eval)]
    )


def test_summary_from_synthetic_records():
    cfg = dataclasses.replace(
        nk.NormKindsConfig(), nets={"mlp": nk.Net("mlp")}, variants=("batch", "layer"), bs_nets=("mlp",),
        bs_variants=("batch", "layer"), batch_sizes=(2, 64), eval_batch_sizes=(8,),
    )  # fmt: skip
    stats = [
        {"kind": "eval_stats", "method": "running", "batch_size": None, "accuracy": 0.9},
        {"kind": "eval_stats", "method": "population", "batch_size": None, "accuracy": 0.91},
        {"kind": "eval_stats", "method": "batch", "batch_size": 8, "accuracy": 0.8},
    ]
    curves = {
        ("mlp", "batch"): _train([0.5, 0.01], [0.95, 0.9], [0.2, 0.01]) + stats,
        ("mlp", "layer"): _train([0.6, 0.04], [0.7, 0.9], [0.3, 0.04]),
    }
    sweep = {
        ("mlp", "batch", 2): _train([1.0], [0.5]) + stats[:2], ("mlp", "batch", 64): _train([0.1], [0.9]),
        ("mlp", "layer", 2): _train([0.2], [0.88]), ("mlp", "layer", 64): _train([0.1], [0.9]),
    }  # fmt: skip
    s = nk.summarize(curves[("mlp", "batch")])
    assert (s["first_loss"], s["train_loss"], s["train_eval_loss"], s["epochs_to_target"]) == (0.5, 0.01, 0.01, 2)
    assert (s["test_accuracy"], s["best_test_accuracy"], s["status"]) == (0.9, 0.95, "finished")
    assert (s["running"], s["population"], s["batch@8"]) == (0.9, 0.91, 0.8)
    assert nk.summarize(curves[("mlp", "batch")], loss_target=0.001)["epochs_to_target"] is None
    md = nk.summary_markdown(cfg, curves, sweep)
    assert "epoch-1 loss 0.600 vs 0.500; final eval-mode training loss 0.04 vs 0.01; epochs to ≤ 0.05 2 vs 2." in md
    assert "mlp, final test accuracy from the highest: batch 0.900, layer 0.900." in md
    assert "LayerNorm is behind BatchNorm on 2 of the 3 (epoch-1 loss, final eval-mode training loss)." in md
    assert "| mlp | batch | 0.500 | 0.900 | -0.400 |" in md and "BatchNorm degrades most" in md
    assert "0.900 with the running averages, 0.910 with exact population statistics: the damage is done in training" in md
    assert "| mlp (trained at b64) | 0.900 | 0.910 | 0.800 |" in md and "more than 0.01 below the running averages at test batches 8" in md
    assert math.isnan(nk.summarize([])["train_loss"])


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
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        nk.NormKindsConfig(**changes)


def test_bad_input_is_refused(tmp_path):
    cfg = nk.NormKindsConfig()
    with pytest.raises(ValueError, match="needs a conv net"):
        nk.build(cfg, "mlp", "instance", 10)
    assert nk.variants_for(cfg, "mlp", cfg.variants) == [v for v in cfg.variants if v != "instance"]
    assert "instance" in nk.variants_for(cfg, "convnet", cfg.variants)
    module, variables, x = _one_bn_layer_net()
    with pytest.raises(ValueError, match="2 <= batch_size <= 12"):
        nk.population_batch_stats(module, variables, x, batch_size=1)
    plain = get_model("mlp", depth=2, width=5, num_classes=3)
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        nk.population_batch_stats(plain, plain.init(jax.random.PRNGKey(0), x, train=False), x, batch_size=4)
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        nk.main(["--config", "nope", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="epochs"):
        nk.main(["--quick", "--epochs", "0", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="no stored runs"):
        nk.main(["--plot-only", "--results", str(tmp_path)])
    assert cfg.bs_learning_rate(16) == pytest.approx(cfg.learning_rate * 16 / cfg.batch_size)
    assert dataclasses.replace(cfg, lr_scaling="constant").bs_learning_rate(16) == cfg.learning_rate


def test_the_cifar10_config_builds_its_nets():
    """3C3D's instance norm only after its convs (its dense layers have one value per
    statistic), GroupNorm's 32 groups divide every normalized layer; shapes only."""
    cfg = nk.get_config("cifar10")
    x = jnp.zeros((2, 32, 32, 3))
    for variant in ("instance", "ws_group"):
        module = nk.build(cfg, "3c3d", variant, 10)
        params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False))["params"]
        norms = sorted(k for k in params if k.startswith("norm"))
        assert norms == (["norm1", "norm2", "norm3"] if variant == "instance" else ["norm1", "norm2", "norm3", "norm4", "norm5"])
    assert nk.variants_for(cfg, "mlp", cfg.variants) == [v for v in cfg.variants if v != "instance"]
