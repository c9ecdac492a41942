"""The smoothness study (``experiments/smoothness.py``): the quick study end to end, the
probe against closed forms on a quadratic, the noisy-BN noise, divergence, bad input."""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import smoothness
from jaxnorm.layers import Norm
from jaxnorm.models import get_model

PROBE_KEYS = {"loss", "grad_norm", "loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta_smoothness"}


def test_quick_study_writes_records_plots_and_summary(tmp_path):
    smoothness.main(["--quick", "--results", str(tmp_path)])
    cfg = smoothness.SmoothnessConfig().quick()
    root = tmp_path / "smoothness" / "digits-quick"
    for variant in cfg.variants:
        run = root / variant
        config = json.loads((run / "config.json").read_text())
        assert config["variant"] == variant and config["etas"] == pytest.approx(list(cfg.etas))
        lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        probes = [l for l in lines if l["kind"] == "smoothness"]
        train = [l for l in lines if l["kind"] == "train"]
        assert [l["step"] for l in probes] == list(range(0, cfg.steps, cfg.every))
        assert [l["step"] for l in train] == list(range(cfg.every, cfg.steps + 1, cfg.every))
        for p in probes:
            assert set(p) == PROBE_KEYS | {"kind", "step"}
            assert all(math.isfinite(v) for k, v in p.items() if k != "kind")
            assert p["loss_min"] <= p["loss_max"] and p["grad_change_min"] <= p["grad_change_max"]
            assert p["beta_smoothness"] > 0
        assert all(0 <= l["accuracy"] <= 1 for l in train)
        assert [l["split"] for l in lines if l["kind"] == "eval"] == ["test"]
    plots = root / "plots"
    names = ("landscape.png", "predictiveness.png", "beta_smoothness.png", "ics.png")
    for png in names:
        assert (plots / png).stat().st_size > 10_000
    summary = (plots / "summary.md").read_text()
    assert summary.count("| finished |") == len(cfg.variants) and "vanilla / BN" in summary

    # --plot-only redraws everything from the stored files.
    for f in plots.iterdir():
        f.unlink()
    smoothness.main(["--quick", "--plot-only", "--results", str(tmp_path)])
    assert all((plots / png).stat().st_size > 10_000 for png in names)
    assert (plots / "summary.md").read_text() == summary


def test_probe_matches_closed_forms_on_a_quadratic():
    """L(w) = ½ wᵀAw: g = Aw, L(w − ηg) = ½ (w − ηg)ᵀA(w − ηg), ∇L(w − ηg) − g = −ηAg, so
    the gradient change is η‖Ag‖ and the β-smoothness ‖Ag‖/‖g‖ (≤ λ_max) for every η.
    Params as a two-leaf pytree; float32 vs float64 closed forms, relative 1e-5 (entries
    O(1), dimension 7: a few float32 roundings of 6e-8)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    a = q @ np.diag([0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0]) @ q.T
    w = rng.normal(size=7)
    etas = np.array([0.01, 0.05, 0.2])

    def loss(params):
        v = jnp.concatenate([params["a"], params["b"].reshape(-1)])
        return 0.5 * v @ jnp.asarray(a, jnp.float32) @ v

    params = {"a": jnp.asarray(w[:4], jnp.float32), "b": jnp.asarray(w[4:].reshape(3, 1), jnp.float32)}
    got = {k: float(v) for k, v in jax.jit(lambda p: smoothness.smoothness_probe(loss, p, etas))(params).items()}
    g = a @ w
    moved = [0.5 * (w - e * g) @ a @ (w - e * g) for e in etas]
    change = etas * np.linalg.norm(a @ g)
    want = {
        "loss": 0.5 * w @ a @ w,
        "grad_norm": np.linalg.norm(g),
        "loss_min": min(moved),
        "loss_max": max(moved),
        "grad_change_min": change.min(),
        "grad_change_max": change.max(),
        "beta_smoothness": np.linalg.norm(a @ g) / np.linalg.norm(g),
    }
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k
    assert got["beta_smoothness"] <= 8.0 * (1 + 1e-6)


def test_bn_noise_is_a_pure_function_of_key_step_and_layer():
    key = jax.random.PRNGKey(3)
    scale, shift = smoothness.bn_noise(key, 5, "norm1", 16, 1.0, 2.0)
    again = smoothness.bn_noise(key, 5, "norm1", 16, 1.0, 2.0)
    np.testing.assert_array_equal(scale, again[0])
    np.testing.assert_array_equal(shift, again[1])
    for other in (smoothness.bn_noise(key, 6, "norm1", 16, 1.0, 2.0), smoothness.bn_noise(key, 5, "norm2", 16, 1.0, 2.0)):
        assert not np.allclose(scale, other[0]) and not np.allclose(shift, other[1])
    assert np.all(np.abs(shift) <= 1.0) and np.all((scale**2 >= 1.0 - 1e-6) & (scale**2 <= 3.0 + 1e-6))
    jitted = jax.jit(lambda s: smoothness.bn_noise(key, s, "norm1", 16, 1.0, 2.0))(5)  # a traced step
    np.testing.assert_array_equal(jitted[0], scale)
    zero = smoothness.bn_noise(key, 5, "norm1", 16, 0.0, 0.0)
    np.testing.assert_array_equal(zero[0], np.ones(16))
    np.testing.assert_array_equal(zero[1], np.zeros(16))


def test_noise_follows_each_bn_layer_and_is_the_identity_at_zero():
    """A 2-layer MLP: logits = dense2(relu(norm1(dense1 x))). With noise, the norm's output
    y becomes y·s + m, s and m from bn_noise of ('norm1', step); at magnitude 0 the
    network is exactly the BN network."""
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=2, width=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    variables = module.init(jax.random.PRNGKey(1), x, train=False)
    key = jax.random.PRNGKey(2)

    def apply(step, mean, var):
        with smoothness.inject_bn_noise(key, step, mean, var):
            return module.apply(variables, x, train=True, mutable=["batch_stats"])

    plain, plain_stats = module.apply(variables, x, train=True, mutable=["batch_stats"])
    zero, zero_stats = apply(7, 0.0, 0.0)
    np.testing.assert_array_equal(zero, plain)
    jax.tree.map(np.testing.assert_array_equal, zero_stats, plain_stats)

    captured = {}

    def capture(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        if isinstance(ctx.module, Norm):
            captured["/".join(ctx.module.path)] = out
        return out

    with nn.intercept_methods(capture):
        module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(captured) == {"norm1"}
    s, m = smoothness.bn_noise(key, 7, "norm1", 5, 1.0, 2.0)
    dense2 = variables["params"]["dense2"]
    want = jax.nn.relu(captured["norm1"] * s + m) @ dense2["kernel"] + dense2["bias"]
    noisy, _ = apply(7, 1.0, 2.0)
    np.testing.assert_allclose(noisy, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(apply(7, 1.0, 2.0)[0], noisy)
    assert not np.allclose(apply(8, 1.0, 2.0)[0], noisy)


def test_a_diverging_run_is_recorded_and_the_report_still_written(tmp_path):
    cfg = smoothness.SmoothnessConfig(variants=("vanilla",), learning_rate=1e4, eval_split=None).quick()
    recs = smoothness.run_one(cfg, "vanilla", tmp_path, log=lambda s: None)
    assert recs[-1]["kind"] == "divergence" and "non-finite" in recs[-1]["reason"]
    stored = [json.loads(l) for l in (tmp_path / "vanilla" / "metrics.jsonl").read_text().splitlines()]
    assert stored == recs
    smoothness.write_report(tmp_path, cfg, {"vanilla": recs})
    assert "| diverged |" in (tmp_path / "plots" / "summary.md").read_text()


def test_summarize_medians_and_ratios():
    recs = [
        {"kind": "smoothness", "step": i, "loss_min": 1.0, "loss_max": 1.0 + r, "grad_change_max": 2 * r, "beta_smoothness": 10 * r}
        for i, r in enumerate([1.0, 3.0, 2.0])
    ] + [{"kind": "train", "step": 3, "loss": 0.5, "accuracy": 0.75}, {"kind": "eval", "split": "test", "loss": 0.6, "accuracy": 0.7}]
    s = smoothness.summarize(recs)
    assert (s["loss_range"], s["grad_change"], s["beta_smoothness"], s["max_beta_smoothness"]) == (2.0, 4.0, 20.0, 30.0)
    assert (s["train_loss"], s["train_accuracy"], s["eval_accuracy"], s["status"]) == (0.5, 0.75, 0.7, "finished")
    assert math.isnan(smoothness.summarize([])["loss_range"])


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"variants": ("bn", "weird")}, "unknown variant"),
        ({"variants": ()}, "at least one"),
        ({"eta_factors": ()}, "eta_factors"),
        ({"eta_factors": (0.5, -1.0)}, "eta_factors"),
        ({"eta_factors": (float("nan"),)}, "eta_factors"),
        ({"every": 0}, "every"),
        ({"steps": 25, "every": 10}, "multiple of every"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 1}, "batch_size"),
        ({"noise_mean": -1.0}, "noise_mean"),
    ],
)
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        smoothness.SmoothnessConfig(**changes)


def test_bad_command_line_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        smoothness.main(["--config", "nope", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="every"):
        smoothness.main(["--quick", "--every", "0", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="no stored runs"):
        smoothness.main(["--plot-only", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown variant"):
        smoothness.run_one(smoothness.SmoothnessConfig().quick(), "gn", tmp_path)
