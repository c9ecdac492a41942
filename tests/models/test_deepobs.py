"""Tests for the DeepOBS networks 3c3d and allcnnc (“DeepOBS: A Deep Learning Optimizer Benchmark Suite”, Schneider, Balles & Hennig, ICLR 2019).

Parameter counts are taken from ``jax.eval_shape`` (no arrays are materialised). The
expected counts of the BatchNorm ablation variants are derived here independently of
the library, from the rule of the BatchNorm ablation thesis (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen 2023): a BN layer on a c-channel output
adds 2c parameters with learned γ and β, c with exactly one of them, 0 for plain BN,
and removes the preceding layer's c biases.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.models import get_model

VARIANTS = ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")
LEARNED_PER_CHANNEL = {"vanilla": None, "bn": 0, "bn_gamma": 1, "bn_beta": 1, "bn_gamma_beta": 2}

# Output channels of each weight layer (= each bn_positions slot), C = num_classes last.
C3D_CHANNELS = (64, 96, 128, 512, 256)  # + (C,)
ALLCNNC_CHANNELS = (96, 96, 96, 192, 192, 192, 192, 192)  # + (C,)

IMG = (1, 32, 32, 3)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_init(model, shape=IMG):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def expected_count(vanilla: int, channels, flags, variant: str) -> int:
    """Independent count: vanilla minus one bias per normalized channel plus the learned γ/β."""
    per = LEARNED_PER_CHANNEL[variant]
    if per is None:
        return vanilla
    normed = sum(c for c, f in zip(channels, flags) if f)
    return vanilla - normed + per * normed


def norm_modules(variables, collection):
    return sorted(k for k in variables.get(collection, {}) if k.startswith("norm"))


# --------------------------------------------------------------------------------------
# 3C3D.


@pytest.mark.parametrize("num_classes, total", [(10, 895_210), (100, 918_340)])
def test_3c3d_vanilla_parameter_count(num_classes, total):
    v = abstract_init(get_model("3c3d", num_classes=num_classes))
    assert count(v["params"]) == total
    assert "batch_stats" not in v


def test_3c3d_parameter_count_by_hand():
    # The DeepOBS layout written out: conv 5x5 3->64, 3x3 64->96, 3x3 96->128, dense
    # 1152->512->256->10, each with a bias.
    by_hand = (5 * 5 * 3 + 1) * 64 + (3 * 3 * 64 + 1) * 96 + (3 * 3 * 96 + 1) * 128
    by_hand += (1152 + 1) * 512 + (512 + 1) * 256 + (256 + 1) * 10
    assert by_hand == 895_210


@pytest.mark.parametrize("num_classes, vanilla", [(10, 895_210), (100, 918_340)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_3c3d_ablation_parameter_counts(variant, num_classes, vanilla):
    v = abstract_init(get_model("3c3d", num_classes=num_classes, norm=variant))
    flags = (1, 1, 1, 1, 1, 0)
    assert count(v["params"]) == expected_count(vanilla, C3D_CHANNELS + (num_classes,), flags, variant)
    slots = [] if variant == "vanilla" else [f"norm{k}" for k in range(1, 6)]
    assert norm_modules(v, "batch_stats") == slots
    learned = LEARNED_PER_CHANNEL[variant]
    assert norm_modules(v, "params") == (slots if learned else [])
    # The normalized layers lost their bias; the last one kept it.
    for layer in ["conv1", "conv2", "conv3", "dense1", "dense2"]:
        assert ("bias" in v["params"][layer]) == (variant == "vanilla"), layer
    assert "bias" in v["params"]["dense3"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_3c3d_nondefault_positions(variant):
    flags = (1, 0, 0, 0, 0, 1)  # first layer + the "BN at the last layer" slot
    v = abstract_init(get_model("3c3d", num_classes=10, norm=variant, bn_positions=flags))
    assert count(v["params"]) == expected_count(895_210, C3D_CHANNELS + (10,), flags, variant)
    slots = [] if variant == "vanilla" else ["norm1", "norm6"]
    assert norm_modules(v, "batch_stats") == slots
    assert norm_modules(v, "params") == (slots if LEARNED_PER_CHANNEL[variant] else [])
    if variant != "vanilla":
        assert "bias" not in v["params"]["conv1"] and "bias" not in v["params"]["dense3"]
        assert "bias" in v["params"]["conv2"] and "bias" in v["params"]["dense2"]
        assert v["batch_stats"]["norm6"]["mean"].shape == (10,)
        assert v["batch_stats"]["norm1"]["mean"].shape == (64,)


def test_3c3d_layer_names_and_shapes():
    v = abstract_init(get_model("3c3d", num_classes=10))
    p = v["params"]
    assert sorted(p) == ["conv1", "conv2", "conv3", "dense1", "dense2", "dense3"]
    assert p["conv1"]["kernel"].shape == (5, 5, 3, 64)
    assert p["conv2"]["kernel"].shape == (3, 3, 64, 96)
    assert p["conv3"]["kernel"].shape == (3, 3, 96, 128)
    # Spatial sizes 32 -> 28 -> 14 -> 12 -> 6 -> 6 -> 3: the flatten has 3 * 3 * 128 features.
    assert p["dense1"]["kernel"].shape == (1152, 512)
    assert p["dense2"]["kernel"].shape == (512, 256)
    assert p["dense3"]["kernel"].shape == (256, 10)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("norm", ["vanilla", "bn_gamma_beta"])
def test_3c3d_output_shape(num_classes, norm):
    model = get_model("3c3d", num_classes=num_classes, norm=norm)
    x = jnp.zeros((3, 32, 32, 3))
    v = abstract_init(model)
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), v)
    assert out.shape == (3, num_classes) and out.dtype == jnp.float32


def test_3c3d_intermediate_spatial_sizes():
    model = get_model("3c3d")
    x = jnp.zeros((2, 32, 32, 3))
    v = abstract_init(model)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]), v
    )
    inter = state["intermediates"]
    assert inter["conv1"]["__call__"][0].shape == (2, 28, 28, 64)
    assert inter["conv2"]["__call__"][0].shape == (2, 12, 12, 96)
    assert inter["conv3"]["__call__"][0].shape == (2, 6, 6, 128)
    assert inter["dense1"]["__call__"][0].shape == (2, 512)


def test_3c3d_initializers():
    # Conv kernels untruncated Glorot normal, dense kernels Glorot uniform, biases 0.
    model = get_model("3c3d", num_classes=10)
    v = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), jnp.zeros(IMG))
    p = jax.device_get(v["params"])
    for name in ["conv1", "conv2", "conv3", "dense1", "dense2", "dense3"]:
        np.testing.assert_array_equal(p[name]["bias"], 0.0)
    for name in ["conv2", "conv3"]:
        w = np.asarray(p[name]["kernel"], np.float64)
        *window, c_in, c_out = w.shape
        target = 2.0 / (np.prod(window) * (c_in + c_out))
        assert abs(w.var() - target) <= 4 * target * np.sqrt(2.0 / w.size)  # 4 SE of a normal variance
        # Normal, untruncated: values past the uniform's edge sqrt(3) sigma (8 % of them)
        # and past a two-sigma truncation's edge 2 sigma / 0.8796 (2.3 %) exist.
        assert np.mean(np.abs(w) > np.sqrt(3 * target)) > 0.05
        assert np.abs(w).max() > 2 * np.sqrt(target) / 0.87962566103423978
    for name in ["dense1", "dense2"]:
        w = np.asarray(p[name]["kernel"], np.float64)
        a = np.sqrt(6.0 / sum(w.shape))
        assert np.abs(w).max() <= a * (1 + 1e-6)  # float32 rounding slack
        assert np.abs(w).max() >= 0.99 * a  # >= 131k uniform draws reach the edge
        assert abs(w.var() - a**2 / 3) <= 4 * (a**2 / 3) * np.sqrt(0.8 / w.size)  # 4 SE, uniform: Var(s^2) = 0.8 sigma^4 / N


def test_3c3d_layer_norm_keeps_biases():
    # Layer norm's statistics are over features: the preceding bias is kept, +2c params.
    v = abstract_init(get_model("3c3d", num_classes=10, norm="layer"))
    assert count(v["params"]) == 895_210 + 2 * sum(C3D_CHANNELS)
    assert "batch_stats" not in v or not v["batch_stats"]


# --------------------------------------------------------------------------------------
# All-CNN-C.


def test_allcnnc_vanilla_parameter_count():
    v = abstract_init(get_model("allcnnc", num_classes=100))
    assert count(v["params"]) == 1_387_108
    assert get_model("allcnnc").num_classes == 100  # cifar100_allcnnc is the default


@pytest.mark.parametrize("variant", VARIANTS)
def test_allcnnc_ablation_parameter_counts(variant):
    v = abstract_init(get_model("allcnnc", num_classes=100, norm=variant))
    flags = (1,) * 8 + (0,)
    assert count(v["params"]) == expected_count(1_387_108, ALLCNNC_CHANNELS + (100,), flags, variant)
    slots = [] if variant == "vanilla" else [f"norm{k}" for k in range(1, 9)]
    assert norm_modules(v, "batch_stats") == slots
    assert norm_modules(v, "params") == (slots if LEARNED_PER_CHANNEL[variant] else [])
    for k in range(1, 9):
        assert ("bias" in v["params"][f"conv{k}"]) == (variant == "vanilla")
    assert "bias" in v["params"]["conv9"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_allcnnc_nondefault_positions(variant):
    flags = (1, 0, 1, 0, 0, 1, 0, 0, 1)  # four slots, the last conv included
    v = abstract_init(get_model("allcnnc", num_classes=100, norm=variant, bn_positions=flags))
    assert count(v["params"]) == expected_count(1_387_108, ALLCNNC_CHANNELS + (100,), flags, variant)
    slots = [] if variant == "vanilla" else ["norm1", "norm3", "norm6", "norm9"]
    assert norm_modules(v, "batch_stats") == slots
    assert norm_modules(v, "params") == (slots if LEARNED_PER_CHANNEL[variant] else [])
    if variant != "vanilla":
        assert [("bias" in v["params"][f"conv{k}"]) for k in range(1, 10)] == [not f for f in flags]
        assert v["batch_stats"]["norm9"]["var"].shape == (100,)


def test_allcnnc_layer_names_and_shapes():
    p = abstract_init(get_model("allcnnc", num_classes=100))["params"]
    assert sorted(p) == [f"conv{k}" for k in range(1, 10)]
    shapes = [p[f"conv{k}"]["kernel"].shape for k in range(1, 10)]
    assert shapes == [
        (3, 3, 3, 96),
        (3, 3, 96, 96),
        (3, 3, 96, 96),
        (3, 3, 96, 192),
        (3, 3, 192, 192),
        (3, 3, 192, 192),
        (3, 3, 192, 192),
        (1, 1, 192, 192),
        (1, 1, 192, 100),
    ]


@pytest.mark.parametrize("num_classes", [10, 100])
def test_allcnnc_output_shape(num_classes):
    model = get_model("allcnnc", num_classes=num_classes, norm="bn")
    x = jnp.zeros((4, 32, 32, 3))
    v = abstract_init(model)
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), v)
    assert out.shape == (4, num_classes)
    # Intermediate sizes: 32 -> 16 (stride-2 SAME) -> 8 -> 6 (VALID).
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]), v
    )
    inter = state["intermediates"]
    assert inter["conv3"]["__call__"][0].shape == (4, 16, 16, 96)
    assert inter["conv6"]["__call__"][0].shape == (4, 8, 8, 192)
    assert inter["conv7"]["__call__"][0].shape == (4, 6, 6, 192)
    assert inter["conv9"]["__call__"][0].shape == (4, 6, 6, num_classes)


# Real arrays from here on: 16x16 inputs (16 -> 8 -> 4 -> 2) keep every layer at a
# quarter of the cost; parameters do not depend on the spatial size.
SMALL = (2, 16, 16, 3)


@pytest.fixture(scope="module")
def allcnnc_default():
    model = get_model("allcnnc", num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=SMALL), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    return model, variables, x


def test_allcnnc_biases_default_zero(allcnnc_default):
    _, v, _ = allcnnc_default
    for k in range(1, 10):
        np.testing.assert_array_equal(np.asarray(v["params"][f"conv{k}"]["bias"]), 0.0)


def test_allcnnc_bias_init_deepobs():
    model = get_model("allcnnc", num_classes=10, bias_init=0.1)
    v = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), jnp.zeros(SMALL))
    for k in range(1, 10):
        b = np.asarray(v["params"][f"conv{k}"]["bias"])
        np.testing.assert_array_equal(b, np.float32(0.1))
    # Kernels are not affected by bias_init: untruncated Glorot normal, 2 / (fan_in + fan_out).
    w = np.asarray(v["params"]["conv5"]["kernel"], np.float64)
    target = 2.0 / (9 * 192 + 9 * 192)
    se = target * np.sqrt(2.0 / w.size)  # SE of a normal sample variance
    assert abs(w.var() - target) <= 4 * se


def test_allcnnc_dropout_only_in_training(allcnnc_default):
    model, v, x = allcnnc_default
    apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))  # no rng needed

    e1, e2 = evaluate(v, x), evaluate(v, x)
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    # Eval mode would not even look at a dropout rng: passing different ones changes nothing.
    r1 = model.apply(v, x, train=False, rngs={"dropout": jax.random.PRNGKey(1)})
    r2 = model.apply(v, x, train=False, rngs={"dropout": jax.random.PRNGKey(2)})
    # float32: eager vs jitted evaluation may fuse differently; outputs are O(0.1-1).
    np.testing.assert_allclose(np.asarray(r1), np.asarray(e1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(r1), np.asarray(r2))

    t1 = np.asarray(apply(v, x, jax.random.PRNGKey(1)))
    t1b = np.asarray(apply(v, x, jax.random.PRNGKey(1)))
    t2 = np.asarray(apply(v, x, jax.random.PRNGKey(2)))
    np.testing.assert_array_equal(t1, t1b)  # same key, same mask
    assert np.abs(t1 - t2).max() > 1e-3  # different masks -> visibly different logits
    assert np.abs(t1 - np.asarray(e1)).max() > 1e-3  # training output is not the eval output

    with pytest.raises(Exception, match="dropout"):
        model.apply(v, x, train=True)  # train mode needs the dropout rng


def test_allcnnc_no_dropout_when_rates_are_zero():
    model = get_model("allcnnc", num_classes=10, input_dropout=0.0, hidden_dropout=0.0)
    x = jnp.asarray(np.random.default_rng(1).normal(size=SMALL), jnp.float32)
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    v = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.01, s.dtype), v)
    f = jax.jit(lambda key, train: model.apply(v, x, train=train, rngs={"dropout": key}), static_argnums=1)
    np.testing.assert_array_equal(np.asarray(f(jax.random.PRNGKey(1), True)), np.asarray(f(jax.random.PRNGKey(2), True)))


# --------------------------------------------------------------------------------------
# bn_positions validation (both models).


@pytest.mark.parametrize("name, n", [("3c3d", 6), ("allcnnc", 9)])
def test_bn_positions_wrong_length(name, n):
    for flags in [(1,) * (n - 1), (1,) * (n + 1), ()]:
        model = get_model(name, norm="bn", bn_positions=flags)
        with pytest.raises(ValueError, match="bn_positions"):
            abstract_init(model)


@pytest.mark.parametrize("name, n", [("3c3d", 6), ("allcnnc", 9)])
@pytest.mark.parametrize("bad", [2, -1, 0.5, "1"])
def test_bn_positions_flags_must_be_binary(name, n, bad):
    flags = (1,) * (n - 1) + (bad,)
    with pytest.raises(ValueError, match="0 or 1"):
        abstract_init(get_model(name, norm="bn_gamma_beta", bn_positions=flags))


@pytest.mark.parametrize("name, n, vanilla", [("3c3d", 6, 895_210), ("allcnnc", 9, 1_387_108)])
def test_vanilla_ignores_bn_positions(name, n, vanilla):
    for flags in [(1,) * n, (0,) * n, (1, 0) * (n // 2) + (1,) * (n % 2)]:
        kw = {"num_classes": 10} if name == "3c3d" else {"num_classes": 100}
        v = abstract_init(get_model(name, norm="vanilla", bn_positions=flags, **kw))
        assert count(v["params"]) == vanilla
        assert not norm_modules(v, "params") and not norm_modules(v, "batch_stats")


@pytest.mark.parametrize("name", ["3c3d", "allcnnc"])
def test_all_zero_positions_equal_vanilla(name):
    n = 6 if name == "3c3d" else 9
    v = abstract_init(get_model(name, norm="bn_gamma_beta", bn_positions=(0,) * n))
    assert count(v["params"]) == count(abstract_init(get_model(name))["params"])
    assert not norm_modules(v, "batch_stats")


@pytest.mark.parametrize("name", ["3c3d", "allcnnc"])
def test_input_checks(name):
    model = get_model(name)
    with pytest.raises(ValueError, match="expects input"):
        abstract_init(model, (32, 32, 3))
    with pytest.raises(TypeError, match="floating"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(IMG, jnp.int32), train=False))
