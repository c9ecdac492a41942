"""Tests for the MNIST-1D baselines (:mod:`jaxnorm.models.mnist1d`; “Scaling Down Deep
Learning with MNIST-1D”, Greydanus & Kobak, ICML 2024). The 1-D ``'convnet'`` is tested in
test_convnet.py.

Forward passes are compared with float64 NumPy references written from the definitions
(conv1d with zero padding and stride, the residual MLP, the GRU recurrence with flax's
gate equations) on the same float32 weights. Tolerances:

* the feed-forward nets: the first-order float32 forward error bound carried along by
  the references (tests/models/reference1d.py).
* the GRU (tanh, sigmoid and products through 40 recurrent steps, whose error
  propagation has no simple a-priori bound): a measured margin. The same NumPy
  recurrence run in float32 shows how far float32 rounding moves this computation;
  another float32 implementation (XLA's, another summation order and other tanh/logistic
  approximations, each a few ulp) moves it by the same order, so the check is at 30x that
  distance plus 16 ulp of the output scale.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import per_example_gram, per_example_sq_norms, per_example_statistics
from jaxnorm.models import MNIST1DCNN, MNIST1DGRU, MNIST1DMLP, MNIST1DLinear, get_model
from tests.models.reference1d import (
    U32,
    add,
    assert_batchnorm_over_batch_and_length,
    assert_within_forward_bound,
    conv,
    count,
    dense,
    draw_fan_in,
    flatten,
    np64,
    relu,
)
from tests.models.reference1d import inputs as _inputs
from tests.models.reference1d import shapes_of as _shapes_of

NAMES = ("mnist1d_linear", "mnist1d_mlp", "mnist1d_cnn", "mnist1d_gru")
X = (3, 40, 1)  # MNIST-1D: length 40, one channel


def shapes_of(model, shape=X, dtype=jnp.float32):
    return _shapes_of(model, shape, dtype)


def inputs(shape=X, seed=1):
    return _inputs(shape, seed)


def draw(model, x, seed=0):
    """Variables of ``model`` with every parameter ~ U(-0.6, 0.6) drawn in NumPy (no init
    compile; larger than the default init, so no layer is near-linear or near-zero)."""
    r = np.random.default_rng(seed)
    shapes = shapes_of(model, x.shape)
    return jax.tree.map(lambda s: jnp.asarray(r.uniform(-0.6, 0.6, s.shape), jnp.float32), shapes)


# --------------------------------------------------------------------------------------
# Registry, parameter counts, shapes.


@pytest.mark.parametrize(
    "name, cls, by_hand, documented",
    [
        ("mnist1d_linear", MNIST1DLinear, 40 * 10 + 10, 410),
        ("mnist1d_mlp", MNIST1DMLP, 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10, 15_210),
        ("mnist1d_cnn", MNIST1DCNN, 1 * 25 * 5 + 25 + 25 * 25 * 3 + 25 + 25 * 25 * 3 + 25 + 125 * 10 + 10, 5_210),
        # per direction 3·(6·1 + 6) input kernels and biases + 3·6·6 recurrent kernels + 6 (b_hn).
        ("mnist1d_gru", MNIST1DGRU, 2 * (3 * (6 + 6) + 3 * 36 + 6) + 480 * 10 + 10, 5_110),
    ],
)
def test_parameter_counts_and_output_shape(name, cls, by_hand, documented):
    model = get_model(name)
    assert type(model) is cls
    v = shapes_of(model)
    assert count(v["params"]) == by_hand == documented
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(X), train=False), v)
    assert out.shape == (X[0], 10)


def test_gru_count_differs_from_pytorch_by_the_two_redundant_biases():
    # PyTorch: 3·(W_ih 6x1 + W_hh 6x6 + b_ih 6 + b_hh 6) = 162 per direction; flax has no
    # b_hr, b_hz (12 fewer).
    p = shapes_of(get_model("mnist1d_gru"))["params"]
    torch_per_direction = 3 * (6 * 1 + 6 * 6 + 6 + 6)
    assert torch_per_direction == 162
    for d in ("gru_forward", "gru_backward"):
        assert count(p[d]) == torch_per_direction - 2 * 6
        assert "bias" not in p[d]["hr"] and "bias" not in p[d]["hz"] and "bias" in p[d]["hn"]


def test_cnn_lengths_are_pytorchs():
    model = get_model("mnist1d_cnn")
    v = shapes_of(model)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(X), train=False, capture_intermediates=True, mutable=["intermediates"]), v
    )
    lengths = [state["intermediates"][f"conv{k}"]["__call__"][0].shape for k in (1, 2, 3)]
    assert lengths == [(3, 19, 25), (3, 10, 25), (3, 5, 25)]
    assert v["params"]["dense4"]["kernel"].shape == (125, 10)


@pytest.mark.parametrize("name", NAMES)
def test_rank_two_input_gets_a_channel_axis(name):
    model = get_model(name, hidden=2) if name == "mnist1d_gru" else get_model(name)
    x = inputs((2, 40, 1))
    v = draw(model, x)
    np.testing.assert_array_equal(model.apply(v, x[..., 0], train=False), model.apply(v, x, train=False))


# --------------------------------------------------------------------------------------
# Forward passes against NumPy.


def ref_linear(p, t):
    return dense(flatten(t), p["dense1"])


def ref_mlp(p, t):
    h = relu(dense(flatten(t), p["dense1"]))
    h = add(h, relu(dense(h, p["dense2"])))
    return dense(h, p["dense3"])


def ref_cnn(p, t):
    for k in (1, 2, 3):
        t = relu(conv(t, p[f"conv{k}"], 2, 1))
    return dense(flatten(t), p["dense4"])


FEED_FORWARD = {"mnist1d_linear": ref_linear, "mnist1d_mlp": ref_mlp, "mnist1d_cnn": ref_cnn}


@pytest.mark.parametrize("name", sorted(FEED_FORWARD))
def test_feed_forward_baselines_match_numpy(name):
    model = get_model(name)
    x = inputs()
    v = draw_fan_in(model, x)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert_within_forward_bound(out, FEED_FORWARD[name], v["params"], x)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def gru_direction(p, x):
    """flax's GRUCell over the steps of ``x`` (b, T, C) from h = 0: every step's h, (b, T, H)."""
    h = np.zeros((x.shape[0], p["hn"]["kernel"].shape[0]), x.dtype)
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = _sigmoid(xt @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
        z = _sigmoid(xt @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
        n = np.tanh(xt @ p["in"]["kernel"] + p["in"]["bias"] + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)


def ref_gru(p, x):
    """Forward direction, backward direction (run on the reversed sequence, its outputs
    put back in time order, as PyTorch's bidirectional GRU), concatenated per step."""
    fwd = gru_direction(p["gru_forward"], x)
    bwd = gru_direction(p["gru_backward"], x[:, ::-1])[:, ::-1]
    h = np.concatenate([fwd, bwd], axis=-1).reshape(len(x), -1)
    return h @ p["dense2"]["kernel"] + p["dense2"]["bias"]


def test_gru_matches_numpy_recurrence():
    model = get_model("mnist1d_gru")
    x = inputs((2, 40, 1))
    v = draw(model, x)
    out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x), np.float64)
    p32 = jax.tree.map(np.asarray, v["params"])
    ref64 = ref_gru(np64(p32), np.asarray(x, np.float64))
    ref32 = ref_gru(p32, np.asarray(x)).astype(np.float64)
    sensitivity = np.max(np.abs(ref32 - ref64))
    scale = np.max(np.abs(ref64))
    tol = 30 * sensitivity + 16 * U32 * scale  # module docstring
    np.testing.assert_array_less(np.abs(out - ref64), tol)
    assert tol < 1e-4 * scale  # not vacuous: far below any semantic difference
    # Order matters: the backward outputs left in reverse time order are another function.
    p64, x64 = np64(p32), np.asarray(x, np.float64)
    h_f = gru_direction(p64["gru_forward"], x64)
    h_b = gru_direction(p64["gru_backward"], x64[:, ::-1])  # not put back in time order
    wrong = np.concatenate([h_f, h_b], -1).reshape(2, -1) @ p64["dense2"]["kernel"] + p64["dense2"]["bias"]
    assert np.abs(wrong - ref64).max() > 1e3 * tol


# --------------------------------------------------------------------------------------
# BatchNorm over batch and length.


def test_batchnorm_normalizes_over_batch_and_length():
    assert_batchnorm_over_batch_and_length(get_model("mnist1d_cnn", channels=4, norm="bn"), inputs((4, 40, 1)), ("norm1", "norm2", "norm3"))


# --------------------------------------------------------------------------------------
# Norm slots.


@pytest.mark.parametrize(
    "name, kwargs, default, flags, flagged",
    [
        ("mnist1d_linear", {}, [], (1,), ["norm1"]),
        ("mnist1d_mlp", {}, ["norm1", "norm2"], (0, 1, 1), ["norm2", "norm3"]),
        ("mnist1d_cnn", {}, ["norm1", "norm2", "norm3"], (1, 0, 0, 1), ["norm1", "norm4"]),
        ("mnist1d_gru", dict(hidden=2), ["norm1"], (1, 1), ["norm1", "norm2"]),
    ],
)
def test_norm_slots(name, kwargs, default, flags, flagged):
    v = shapes_of(get_model(name, norm="bn", **kwargs))
    assert sorted(v.get("batch_stats", {})) == default
    v = shapes_of(get_model(name, norm="bn", bn_positions=flags, **kwargs))
    assert sorted(v["batch_stats"]) == flagged
    with pytest.raises(ValueError, match="bn_positions"):
        shapes_of(get_model(name, norm="bn", bn_positions=flags + (0,), **kwargs))


def test_norm_drops_the_bias_it_absorbs_but_the_gru_keeps_its_own():
    p = shapes_of(get_model("mnist1d_cnn", norm="bn"))["params"]
    assert all("bias" not in p[f"conv{k}"] for k in (1, 2, 3)) and "bias" in p["dense4"]
    g = shapes_of(get_model("mnist1d_gru", norm="bn"))
    assert count(g["params"]) == 5110  # 'bn' has no γ/β, and the GRU keeps every bias
    assert g["batch_stats"]["norm1"]["mean"].shape == (12,)  # the 2·6 output features


# --------------------------------------------------------------------------------------
# Initialization: PyTorch's default.


def test_baselines_initialize_as_pytorch():
    x = jnp.zeros((1, 40, 1))
    # Each layer's kernel and bias within ±1/sqrt(fan_in) and reaching a good part of it.
    for name, fans in (
        ("mnist1d_mlp", {"dense1": 40, "dense2": 100, "dense3": 100}),
        ("mnist1d_cnn", {"conv1": 5, "conv2": 75, "conv3": 75, "dense4": 125}),
    ):
        p = jax.jit(functools.partial(get_model(name).init, train=False))(jax.random.PRNGKey(0), x)["params"]
        for layer, fan_in in fans.items():
            for leaf in ("kernel", "bias"):
                a = np.abs(np.asarray(p[layer][leaf]))
                assert a.max() <= (1 + 1e-6) / np.sqrt(fan_in), (name, layer, leaf)
                assert a.max() >= 0.5 / np.sqrt(fan_in), (name, layer, leaf)
    # The GRU: PyTorch's nn.GRU draws every weight and bias from U(±1/sqrt(hidden)).
    p = get_model("mnist1d_gru").init(jax.random.PRNGKey(0), x, train=False)["params"]
    for leaf in jax.tree.leaves(p["gru_forward"]) + jax.tree.leaves(p["gru_backward"]):
        assert np.abs(np.asarray(leaf)).max() <= (1 + 1e-6) / np.sqrt(6)
    assert np.abs(np.asarray(p["gru_forward"]["ir"]["kernel"])).max() >= 0.5 / np.sqrt(6)  # not 1/sqrt(fan_in = 1)
    flax_init = get_model("mnist1d_gru", gru_init="flax_default").init(jax.random.PRNGKey(0), x, train=False)["params"]
    np.testing.assert_array_equal(flax_init["gru_forward"]["ir"]["bias"], 0.0)


# --------------------------------------------------------------------------------------
# Layer-wise per-example statistics: the GRU falls back (the three others, and the 1-D
# convnet, are in tests/diagnostics/test_layerwise.py's zoo-wide test).


def test_gru_per_example_statistics_fall_back_to_materialized():
    model = get_model("mnist1d_gru", hidden=2, num_classes=3, norm="bn_gamma_beta")
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 1)))
        y = jnp.asarray([0, 2, 1])
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), draw(model, x))
        with pytest.raises(ValueError, match="gru_forward/hn/bias"):
            jax.eval_shape(lambda v: per_example_statistics(model, v, x, y, method="layerwise"), v)

        def both(v):
            return [(f(model, v, x, y), f(model, v, x, y, method="materialize")) for f in (per_example_gram, per_example_sq_norms)]

        for auto, materialized in jax.jit(both)(v):
            assert auto.dtype == jnp.float64
            np.testing.assert_array_equal(auto, materialized)  # 'auto' took the materialized path
        assert np.all(np.asarray(materialized) > 0)


# --------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(40,), (2, 1, 40, 1)])
def test_wrong_rank(name, shape):
    with pytest.raises(ValueError, match=r"\(batch, length, channels\), or \(batch, length\)"):
        shapes_of(get_model(name), shape)


@pytest.mark.parametrize("name", NAMES)
def test_non_float_input(name):
    with pytest.raises(TypeError, match="floating"):
        shapes_of(get_model(name), X, jnp.int32)


@pytest.mark.parametrize("name", NAMES)
def test_bad_norm(name):
    with pytest.raises(ValueError, match="unknown norm"):
        shapes_of(get_model(name, norm="batchnorm"))


def test_bad_inits():
    with pytest.raises(ValueError, match="unknown GRU initializer"):
        shapes_of(get_model("mnist1d_gru", gru_init="torch"))
    with pytest.raises(ValueError, match="unknown bias initializer"):
        shapes_of(get_model("mnist1d_cnn", bias_init="torch"))
    with pytest.raises(ValueError, match="unknown initializer"):
        shapes_of(get_model("mnist1d_mlp", kernel_init="torch"))
