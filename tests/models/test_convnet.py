"""Tests for 'convnet', the plain/residual ConvNet of configurable depth (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.models import get_model
from tests.models.reference1d import (
    assert_batchnorm_over_batch_and_length,
    assert_within_forward_bound,
    conv,
    dense,
    draw_fan_in,
    inputs,
    mean_over_length,
    pool,
    relu,
)

X = (2, 8, 8, 3)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_init(model, shape=X, dtype=jnp.float32):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape, dtype), train=False))


def weight_layers(params):
    return [k for k in params if k.startswith(("conv", "dense"))]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("depth", [2, 3, 4, 5, 11, 26])
def test_depth_counts_weight_layers(depth, residual):
    model = get_model("convnet", depth=depth, width=4, num_classes=5, residual=residual)
    p = abstract_init(model)["params"]
    layers = weight_layers(p)
    assert len(layers) == depth
    assert set(p) == set(layers)  # vanilla: nothing else
    # Numbered 1..depth in bn_positions order: convs first, the dense head last.
    assert sorted(layers, key=lambda k: int(k.lstrip("convdense"))) == [f"conv{k}" for k in range(1, depth)] + [
        f"dense{depth}"
    ]
    assert p["conv1"]["kernel"].shape == (3, 3, 3, 4)
    for k in range(2, depth):
        assert p[f"conv{k}"]["kernel"].shape == (3, 3, 4, 4)
    assert p[f"dense{depth}"]["kernel"].shape == (4, 5)
    # Output shape.
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(X), train=False), {"params": p})
    assert out.shape == (2, 5)


@pytest.mark.parametrize("depth", [2, 4, 7, 11, 26])
def test_residual_and_plain_have_same_parameters(depth):
    plain = abstract_init(get_model("convnet", depth=depth, width=6, residual=False))
    res = abstract_init(get_model("convnet", depth=depth, width=6, residual=True))
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(res)
    assert count(plain["params"]) == count(res["params"])
    # By hand: stem 3x3x3xw + w, (depth-2) x (3x3xwxw + w), head w x 10 + 10.
    w = 6
    assert count(plain["params"]) == (27 * w + w) + (depth - 2) * (9 * w * w + w) + (w * 10 + 10)


def _zero_body(params, depth):
    """Zeroes conv2..conv{depth-1} (kernels and biases)."""
    p = dict(params)
    for k in range(2, depth):
        p[f"conv{k}"] = jax.tree_util.tree_map(jnp.zeros_like, p[f"conv{k}"])
    return p


def test_residual_skips_are_identities():
    # depth 8: 6 body layers in 3 stages of 2 = one residual block per stage. With every
    # body conv zeroed, each block is x <- relu(x + 0) = x (x is post-ReLU), so the net
    # reduces to stem -> (2x2 average pools, which keep the global mean on 8x8) -> head:
    # exactly the depth-2 net with the same stem and head, and the by-hand computation. The plain net instead
    # collapses to the head bias.
    depth = 8
    x = jnp.asarray(np.random.default_rng(0).normal(size=X), jnp.float32)
    res = get_model("convnet", depth=depth, width=4, num_classes=3, residual=True)
    plain = res.clone(residual=False)
    short = res.clone(depth=2)
    v = jax.jit(functools.partial(res.init, train=False))(jax.random.PRNGKey(0), x)
    p0 = _zero_body(v["params"], depth)
    # Give the head a nonzero bias so "collapses to the bias" is a visible claim.
    p0[f"dense{depth}"] = {**p0[f"dense{depth}"], "bias": jnp.arange(3.0)}
    apply = jax.jit(lambda m, p: m.apply({"params": p}, x, train=False), static_argnums=0)
    out_res = np.asarray(apply(res, p0))
    out_short = np.asarray(apply(short, {"conv1": p0["conv1"], "dense2": p0[f"dense{depth}"]}))
    out_plain = np.asarray(apply(plain, p0))
    # By hand: relu(conv3x3_SAME(x) + b) -> global mean -> dense.
    stem = jax.lax.conv_general_dilated(
        x, p0["conv1"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    feat = jnp.mean(jax.nn.relu(stem + p0["conv1"]["bias"]), axis=(1, 2))
    by_hand = np.asarray(feat @ p0[f"dense{depth}"]["kernel"] + p0[f"dense{depth}"]["bias"])
    # float32: averaging 64 positions in two different orders (pools then mean vs mean).
    np.testing.assert_allclose(out_res, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_short, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_plain, np.broadcast_to(np.arange(3.0), (2, 3)))
    assert np.abs(out_res - out_plain).max() > 1e-3

    # With the initialized (nonzero) body the two nets share parameters but not outputs.
    r, q = np.asarray(apply(res, v["params"])), np.asarray(apply(plain, v["params"]))
    assert np.abs(r - q).max() > 1e-3


def test_forward_backward_with_bn_residual():
    # (The plain net's train step is covered by tests/models/test_registry.py.)
    # depth 5: 3 body layers in one stage = a plain layer then a residual block.
    model = get_model("convnet", depth=5, width=4, num_classes=3, residual=True, stages=1, norm="bn_gamma_beta")
    x = jnp.asarray(np.random.default_rng(1).normal(size=X), jnp.float32)
    v = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    assert sorted(v["batch_stats"]) == ["norm1", "norm2", "norm3", "norm4"]  # every conv, not the head
    assert "bias" in v["params"]["dense5"] and "bias" not in v["params"]["conv2"]

    def loss(p):
        out, upd = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(jax.nn.logsumexp(out, axis=-1) - out[:, 0]), upd

    (val, upd), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
    assert np.isfinite(float(val))
    g = jax.device_get(g)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g))
    assert all(np.abs(g[f"conv{k}"]["kernel"]).max() > 0 for k in range(1, 5))
    assert not np.allclose(upd["batch_stats"]["norm2"]["mean"], 0.0)


def test_bn_positions_has_depth_flags():
    flags = (0, 1, 0, 0, 1, 1)
    v = abstract_init(get_model("convnet", depth=6, width=4, norm="bn", bn_positions=flags))
    assert sorted(v["batch_stats"]) == ["norm2", "norm5", "norm6"]
    assert v["batch_stats"]["norm6"]["mean"].shape == (10,)
    with pytest.raises(ValueError, match="bn_positions"):
        abstract_init(get_model("convnet", depth=6, norm="bn", bn_positions=(1,) * 5))


def test_crelu_plain_doubles_channels():
    p = abstract_init(get_model("convnet", depth=4, width=4, num_classes=3, activation="crelu"))["params"]
    assert p["conv2"]["kernel"].shape == (3, 3, 8, 4)
    assert p["dense4"]["kernel"].shape == (8, 3)


def test_residual_with_crelu_rejected():
    with pytest.raises(ValueError, match="crelu"):
        abstract_init(get_model("convnet", residual=True, activation="crelu"))


@pytest.mark.parametrize("depth", [1, 0, -3])
def test_depth_below_two_rejected(depth):
    with pytest.raises(ValueError, match="depth"):
        abstract_init(get_model("convnet", depth=depth))


def test_stages_below_one_rejected():
    with pytest.raises(ValueError, match="stages"):
        abstract_init(get_model("convnet", stages=0))


# Rank 3 is a sequence (batch, length, channels) now (tests/models/test_mnist1d_models.py).
@pytest.mark.parametrize("shape", [(64,), (2, 64), (1, 2, 8, 8, 3)])
def test_wrong_input_rank(shape):
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, length, channels\) or \(batch, height"):
        abstract_init(get_model("convnet", depth=4, width=4), shape)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_non_float_input(dtype):
    with pytest.raises(TypeError, match="floating"):
        abstract_init(get_model("convnet", depth=4, width=4), X, dtype)


# --------------------------------------------------------------------------------------
# Sequences (batch, length, channels), e.g. MNIST-1D: width-3 convs, width-2 pools.


def ref_convnet1d(p, t):
    """'convnet' depth 4, 2 stages, on (b, L, C): conv3 SAME -> ReLU (stem), conv3 -> ReLU
    (stage 1), pool 2, conv3 -> ReLU (stage 2), mean over length, dense."""
    t = relu(conv(t, p["conv1"], 1, 1))
    t = relu(conv(t, p["conv2"], 1, 1))
    t = relu(conv(pool(t), p["conv3"], 1, 1))
    return dense(mean_over_length(t), p["dense4"])


def test_convnet_on_sequences_matches_numpy():
    model = get_model("convnet", depth=4, width=5, stages=2, num_classes=3)
    x = inputs((2, 12, 2))
    v = draw_fan_in(model, x)
    assert v["params"]["conv1"]["kernel"].shape == (3, 2, 5)
    assert v["params"]["conv2"]["kernel"].shape == (3, 5, 5)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert_within_forward_bound(out, ref_convnet1d, v["params"], x)


def test_convnet_on_sequences_residual_stops_pooling_at_length_one():
    # depth 5, 3 stages of one body layer on length 2: pooled to 1 before stage 2, and not
    # again before stage 3 (a width-2 pool of length 1 would leave nothing to average).
    model = get_model("convnet", depth=5, width=4, residual=True, num_classes=3, norm="bn")
    x = inputs((2, 2, 3))
    v = draw_fan_in(model, x)
    assert count(v["params"]) == (9 * 4) + 3 * (12 * 4) + (4 * 3 + 3)  # BN: no conv biases
    out, state = jax.jit(
        lambda v: model.apply(v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"])
    )(v)
    lengths = [state["intermediates"][f"conv{k}"]["__call__"][0].shape[1] for k in (1, 2, 3, 4)]
    assert lengths == [2, 2, 1, 1]
    assert out.shape == (2, 3) and np.all(np.isfinite(np.asarray(out)))


def test_batchnorm_on_sequences_normalizes_over_batch_and_length():
    model = get_model("convnet", depth=3, width=4, num_classes=3, norm="bn")
    assert_batchnorm_over_batch_and_length(model, inputs((4, 16, 2)), ("norm1", "norm2"))
