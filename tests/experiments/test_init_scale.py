"""The initialization-scale study (``experiments/init_scale.py``): the outcome classifier on
synthetic loss curves, the per-layer probe against a NumPy forward/backward pass and
against the (c/2)-per-layer law, the quick study end to end, divergence, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import init_scale
from jaxnorm.models import get_model

LN10 = math.log(10)
ramp = lambda a, b, n=50: list(np.geomspace(a, b, n))


@pytest.mark.parametrize(
    "losses, chance, want",
    [
        ([2.3, 2.2, float("nan")], None, "diverged"),
        ([2.3, 2.0, float("inf"), 1.0], None, "diverged"),
        ([float("nan")], None, "diverged"),
        ([2.3, 2.0, 30.0, 1.0], None, "diverged"),  # finite explosion: 30 > 10 x 2.3
        ([2.0, 20.1], None, "diverged"),
        ([2.0, 20.0], None, "no progress"),  # exactly 10 x: not above it; and 20 > 0.9 x 2
        ([0.5, 6.0], LN10, "no progress"),  # explosion is measured against max(initial, chance) = 2.30
        ([LN10] * 50, LN10, "no progress"),  # flat at chance: vanishing signal
        ([LN10 + 0.05 * math.sin(i) for i in range(50)], LN10, "no progress"),  # flat and noisy
        ([2.3], None, "no progress"),  # one value: nothing happened yet
        (ramp(2.3, 0.1), LN10, "trained"),
        (ramp(2.3, 0.5, 45) + [0.5, 0.5, 0.5, 0.5, 2.5], LN10, "trained"),  # a spike in the tail is averaged (final 0.9)
        ([2.0, 1.79], None, "trained"),  # just past the 10% progress threshold (1.8)
        ([2.0, 1.81], None, "no progress"),  # just short of it
        ([1e4] + [2.2] * 49, LN10, "no progress"),  # far above chance at first (c = 3): must still beat chance
        ([1e4] + [2.2] * 49, None, "trained"),  # ... which without a chance level counts as progress
    ],
)
def test_classify_synthetic_curves(losses, chance, want):
    assert init_scale.classify(losses, chance=chance) == want


def test_classify_thresholds_are_arguments():
    curve = [2.0, 1.5]  # 25% below the start
    assert init_scale.classify(curve, progress_fraction=0.2) == "trained"
    assert init_scale.classify(curve, progress_fraction=0.3) == "no progress"
    assert init_scale.classify([2.0, 5.0, 1.0], explode_factor=2.0) == "diverged"
    assert init_scale.classify([2.0, 5.0, 1.0], explode_factor=3.0) == "trained"
    tail_spike = [2.0] + [0.2] * 8 + [5.0]  # final = mean of the last 1 or 5 values
    assert init_scale.classify(tail_spike, tail_fraction=0.1) == "no progress"
    assert init_scale.classify(tail_spike, tail_fraction=0.5) == "trained"


@pytest.mark.parametrize(
    "losses, kwargs, match",
    [
        ([], {}, "non-empty 1-D"),
        ([[2.3, 2.0]], {}, "non-empty 1-D"),
        ([2.3, -0.1], {}, ">= 0"),
        ([2.3], {"chance": 0.0}, "chance"),
        ([2.3], {"chance": float("nan")}, "chance"),
        ([2.3], {"explode_factor": 1.0}, "explode_factor"),
        ([2.3], {"progress_fraction": 0.0}, "progress_fraction"),
        ([2.3], {"progress_fraction": 1.0}, "progress_fraction"),
        ([2.3], {"tail_fraction": 0.0}, "tail_fraction"),
        ([2.3], {"tail_fraction": 1.5}, "tail_fraction"),
    ],
)
def test_classify_refuses_bad_input(losses, kwargs, match):
    with pytest.raises(ValueError, match=match):
        init_scale.classify(losses, **kwargs)


def _numpy_mlp(params, x, y, norm: str):
    """Float64 forward pass of the MLP (dense -> norm -> relu; logits last) and, for
    ``vanilla``, its backward pass by hand: δ_D = (softmax − onehot)/B,
    ∂L/∂W_i = z_{i−1}ᵀ δ_i, δ_{i−1} = (δ_i W_iᵀ) ⊙ 1[h_{i−1} > 0]."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    depth = sum(k.startswith("dense") for k in p)
    zs, hs = [np.asarray(x, np.float64).reshape(len(x), -1)], []
    for i in range(1, depth + 1):
        h = zs[-1] @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"].get("bias", 0.0)
        if i < depth and norm != "vanilla":
            axis = 0 if norm == "bn_gamma_beta" else 1  # BN: over the batch per feature; LN: per example
            mu, var = h.mean(axis, keepdims=True), h.var(axis, keepdims=True)
            h = (h - mu) / np.sqrt(var + 1e-5) * p[f"norm{i}"]["scale"] + p[f"norm{i}"]["bias"]
        hs.append(h)
        zs.append(np.maximum(h, 0.0) if i < depth else h)
    logits = zs[-1]
    e = np.exp(logits - logits.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    onehot = np.eye(logits.shape[1])[np.asarray(y)]
    out = {
        "loss": -np.mean(np.log(prob[np.arange(len(y)), y])),
        "accuracy": np.mean(logits.argmax(1) == np.asarray(y)),
        "activation_rms": np.array([np.sqrt(np.mean(z**2)) for z in zs[1:]]),
        "weight_norm": np.array([np.linalg.norm(p[f"dense{i}"]["kernel"]) for i in range(1, depth + 1)]),
    }
    if norm == "vanilla":
        delta, grads = (prob - onehot) / len(y), []
        for i in range(depth, 0, -1):
            grads.append(np.linalg.norm(zs[i - 1].T @ delta))
            if i > 1:
                delta = (delta @ p[f"dense{i}"]["kernel"].T) * (hs[i - 2] > 0)
        out["grad_norm"] = np.array(grads[::-1])
    return out


@pytest.mark.parametrize("norm", ["vanilla", "bn_gamma_beta", "layer"])
def test_layer_probe_matches_a_numpy_pass(norm):
    """The quick study's network and probe batch shape (64 digits-shaped 8x8x1 inputs,
    depth 3, width 16, 10 classes) through the quick study's compiled probe, so the
    programs are shared with it; random biases/γ/β so nothing is trivially 0 or 1.
    Float32 against float64 through 3 layers: relative 1e-4 is ~1000 float32 roundings
    (measured worst: ~1e-6)."""
    cfg = init_scale.InitScaleConfig().quick()
    module = get_model("mlp", norm=norm, num_classes=10, depth=cfg.depth, width=cfg.width, kernel_init="scaled_normal", kernel_init_kwargs={"c": 2.0})
    # NumPy draws for everything but the kernels: a jax.random draw of a new shape is one
    # more program to compile.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(cfg.probe_size, 8, 8, 1)), jnp.float32)
    y = jnp.arange(cfg.probe_size) % 10
    variables = module.init(jax.random.PRNGKey(1), x, train=False)
    params = jax.tree.map(lambda a: a if a.ndim == 2 else jnp.asarray(1.0 + 0.3 * rng.normal(size=a.shape), jnp.float32), variables["params"])
    stats = variables.get("batch_stats", {})
    got = init_scale._trainer(cfg, norm, 10).probe(params, stats, x, y)  # = jit(layer_probe) of this network
    want = _numpy_mlp(params, x, y, norm)
    assert set(got) == {"loss", "accuracy", "activation_rms", "grad_norm", "weight_norm"}
    assert got["activation_rms"].shape == got["grad_norm"].shape == got["weight_norm"].shape == (3,)
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k], np.float64), v, rtol=1e-4, err_msg=k)


def test_relu_activations_scale_by_c_over_2_per_layer():
    """The study's premise, for the library's init: W ~ N(0, c/n) (``scaled_normal``), zero
    biases: E[mean z_{i+1}² | z_i] = (c/2) mean z_i² exactly (half of a symmetric Gaussian
    pre-activation survives the ReLU). Width 256, 10 hidden layers, 64 Gaussian inputs:
    the mean of the 10 per-layer ratios over c/2 had std 0.029 over 20 seeds, so 15% is
    ~5σ. And since relu is positively homogeneous and the kernels of one seed are the same
    draws times √c, z_i(c) = (c/2)^{i/2} z_i(2) to float32 rounding."""
    x = np.random.default_rng(100).normal(size=(64, 256)).astype(np.float32)
    y = np.zeros(64, np.int64)
    rms = {}
    for c in (1.0, 2.0, 3.0):
        # 256 classes: every kernel is (256, 256), one random-normal program to compile.
        module = get_model("mlp", depth=11, width=256, num_classes=256, kernel_init="scaled_normal", kernel_init_kwargs={"c": c})
        rms[c] = _numpy_mlp(module.init(jax.random.PRNGKey(0), x, train=False)["params"], x, y, "vanilla")["activation_rms"]
        ms = np.concatenate([[np.mean(x**2)], rms[c][:-1] ** 2])  # input, hidden layers 1..10
        assert np.mean(ms[1:] / ms[:-1]) == pytest.approx(c / 2, rel=0.15)
    layers = np.arange(1, 12)
    for c in (1.0, 3.0):
        np.testing.assert_allclose(rms[c] / rms[2.0], (c / 2) ** (layers / 2), rtol=1e-5)


QUICK_ARGS = ["--quick", "--norms", "vanilla", "bn_gamma_beta", "--scales", "1", "3"]


def test_quick_study_writes_records_plots_and_summary(tmp_path):
    init_scale.main(QUICK_ARGS + ["--results", str(tmp_path)])
    cfg = dataclasses.replace(init_scale.InitScaleConfig(), norms=("vanilla", "bn_gamma_beta"), scales=(1.0, 3.0)).quick()
    root = tmp_path / "init_scale" / "digits-quick"
    probe_steps = list(range(0, cfg.steps + 1, cfg.probe_every))
    for norm in cfg.norms:
        for c in cfg.scales:
            run = root / f"{norm}_c{c:g}"
            config = json.loads((run / "config.json").read_text())
            assert (config["norm"], config["c"], config["depth"], config["num_classes"]) == (norm, c, cfg.depth, 10)
            lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            assert [l["step"] for l in lines if l["kind"] == "train"] == list(range(0, cfg.steps + 1, cfg.every))
            assert [l["step"] for l in lines if l["kind"] == "probe"] == probe_steps
            assert [l["split"] for l in lines if l["kind"] == "eval"] == ["test"]
            assert all(math.isfinite(l["loss"]) and 0 <= l["accuracy"] <= 1 for l in lines if l["kind"] != "divergence")
            with np.load(run / "layer_norms.npz") as f:
                arrays = dict(f)
            assert arrays["steps"].tolist() == probe_steps
            for k in ("activation_rms", "grad_norm", "weight_norm"):
                assert arrays[k].shape == (len(probe_steps), cfg.depth) and np.all(arrays[k] > 0), k
            np.testing.assert_allclose(arrays["weight_ratio"], arrays["weight_norm"][-1] / arrays["weight_norm"][0])
            # W ~ N(0, c/n): ‖W_0‖_F² ≈ c · fan_out (fan_in · fan_out entries of variance c / fan_in).
            fan_out = np.array([cfg.width] * (cfg.depth - 1) + [10])
            np.testing.assert_allclose(arrays["weight_norm"][0] ** 2 / (c * fan_out), 1.0, rtol=0.35)  # 3σ of the 160-entry last layer
    plots = root / "plots"
    names = ("loss.png", "layers_init.png", "layers_training.png", "weight_ratio.png")
    for png in names:
        assert (plots / png).stat().st_size > 10_000, png
    summary = (plots / "summary.md").read_text()
    for claim in ("c = 3 gives NaN, c = 2 trains, c = 1 makes no progress", "persist", "normalization removes the sensitivity to c"):
        assert claim in summary
    assert summary.count("| vanilla | 1 |") == 3 and summary.count("| bn_gamma_beta | 3 |") == 3  # claims 1, init, 2

    # --plot-only reads the runs back (_stored) and reports them (write_report, as above):
    # the summary from the stored files is the same.
    assert init_scale.summary_markdown(cfg, init_scale._stored(root, cfg)) == summary


def test_a_diverging_run_is_recorded_and_the_report_still_written(tmp_path):
    """c = 10⁸ in the quick net: the loss starts ~10¹² and SGD drives it past 10x that within
    the first 10 steps (an explosion, still finite; measured 5.6e14). The same network and
    lr as the quick study, so the compiled programs are shared."""
    cfg = dataclasses.replace(init_scale.InitScaleConfig(), norms=("vanilla",), scales=(1e8,)).quick()
    res = init_scale.run_one(cfg, "vanilla", 1e8, tmp_path, log=lambda s: None)
    assert res.records[-1]["kind"] == "divergence" and "training loss above 10 x" in res.records[-1]["reason"]
    assert not any(r["kind"] == "eval" for r in res.records)
    stored = [json.loads(l) for l in (tmp_path / "vanilla_c1e+08" / "metrics.jsonl").read_text().splitlines()]
    assert stored == res.records
    assert np.isnan(res.arrays["weight_ratio"]).all() and res.arrays["steps"].tolist() == [0]
    assert init_scale.summarize(res.records, res.arrays, cfg, res.chance)["outcome"] == "diverged"
    init_scale.write_report(tmp_path, cfg, {("vanilla", 1e8): res})
    assert "| vanilla | 1e+08 | diverged |" in (tmp_path / "plots" / "summary.md").read_text()


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"norms": ("vanilla", "weird")}, "unknown norm"),
        ({"norms": ()}, "at least one"),
        ({"scales": ()}, "at least one"),
        ({"scales": (1.0, -2.0)}, "scales"),
        ({"scales": (float("nan"),)}, "scales"),
        ({"scales": (2.0, 2.0)}, "repeat"),
        ({"depth": 1}, "depth"),
        ({"activation": "sigmoid"}, "unknown activation"),
        ({"every": 0}, "every"),
        ({"steps": 150}, "multiple of probe_every"),
        ({"probe_every": 30}, "multiple of every"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 1}, "batch_size"),
        ({"progress_fraction": 1.5}, "progress_fraction"),
        ({"explode_factor": 0.5}, "explode_factor"),
    ],
)
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        init_scale.InitScaleConfig(**changes)


def test_bad_command_line_and_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        init_scale.main(["--config", "nope", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="scales"):
        init_scale.main(["--quick", "--scales", "0", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="no stored runs"):
        init_scale.main(["--plot-only", "--results", str(tmp_path)])
    cfg = init_scale.InitScaleConfig().quick()
    with pytest.raises(ValueError, match="unknown norm"):
        init_scale.run_one(cfg, "gn", 2.0, tmp_path)
    with pytest.raises(ValueError, match="c must be"):
        init_scale.run_one(cfg, "vanilla", 0.0, tmp_path)
