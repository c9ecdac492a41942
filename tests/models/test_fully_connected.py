"""Tests for the fully-connected models: 'mlp' (the lecture's network) and 'deep_fc'
(the gradient-conditioning study's deep nets, including the looks-linear net)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.models import get_model


def jit_init(model, x, seed=0):
    return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(seed), x)


def abstract_init(model, x):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))


def dense_names(params):
    return sorted((k for k in params if k.startswith("dense")), key=lambda k: int(k[5:]))


def rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def assert_semi_orthogonal(w, atol=2e-5):
    """Orthonormal columns (tall) or rows (wide). 2e-5: float32 QR on <= 64-dim matrices."""
    w = np.asarray(w, np.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, np.eye(min(w.shape)), atol=atol)


# --------------------------------------------------------------------------------------
# MLP.


@pytest.mark.parametrize("depth, width", [(1, 16), (2, 8), (5, 12)])
def test_mlp_depth_and_width(depth, width):
    model = get_model("mlp", depth=depth, width=width, num_classes=7)
    v = abstract_init(model, jnp.zeros((2, 20)))
    names = dense_names(v["params"])
    assert names == [f"dense{k}" for k in range(1, depth + 1)]
    assert set(v["params"]) == set(names)  # vanilla: no other modules
    widths_in = [20] + [width] * (depth - 1)
    widths_out = [width] * (depth - 1) + [7]
    for name, fi, fo in zip(names, widths_in, widths_out):
        assert v["params"][name]["kernel"].shape == (fi, fo)
        assert v["params"][name]["bias"].shape == (fo,)


def test_mlp_crelu_doubles_next_fan_in():
    v = abstract_init(get_model("mlp", depth=3, width=8, num_classes=4, activation="crelu"), jnp.zeros((2, 5)))
    shapes = [v["params"][n]["kernel"].shape for n in dense_names(v["params"])]
    assert shapes == [(5, 8), (16, 8), (16, 4)]


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "linear"])
def test_mlp_activation_respected(activation):
    # Recompute the forward pass by hand from the parameters.
    model = get_model("mlp", depth=3, width=16, num_classes=4, activation=activation)
    x = rand((3, 6))
    v = jit_init(model, x)
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "linear": lambda z: z}[activation]
    p = v["params"]
    h = x
    for k in (1, 2):
        h = act(h @ p[f"dense{k}"]["kernel"] + p[f"dense{k}"]["bias"])
    want = h @ p["dense3"]["kernel"] + p["dense3"]["bias"]
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    # float32, three 16-wide layers of O(1) values: a few ulps of O(1).
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_mlp_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation"):
        abstract_init(get_model("mlp", activation="swishh"), jnp.zeros((2, 4)))


def test_mlp_scaled_normal_c3_variance():
    # Kernels of a 512-wide net: dense2 is 512 x 512 = 262,144 draws, variance 3 / 512.
    model = get_model(
        "mlp", depth=3, width=512, num_classes=10, kernel_init="scaled_normal", kernel_init_kwargs={"c": 3.0}
    )
    v = jit_init(model, jnp.zeros((1, 256)))
    for name, fan_in in [("dense1", 256), ("dense2", 512), ("dense3", 512)]:
        w = np.asarray(v["params"][name]["kernel"], np.float64)
        target = 3.0 / fan_in
        se = target * np.sqrt(2.0 / w.size)  # SE of a normal sample variance
        assert abs(w.var() - target) <= 4 * se, (name, w.var(), target)
    # c matters: c = 1 gives a third of the variance, far outside the tolerance above.
    v1 = jit_init(model.clone(kernel_init_kwargs={"c": 1.0}), jnp.zeros((1, 256)))
    ratio = np.var(np.asarray(v["params"]["dense2"]["kernel"])) / np.var(np.asarray(v1["params"]["dense2"]["kernel"]))
    assert abs(ratio - 3.0) < 0.1  # each variance within ~1 %, so the ratio within ~3 %


def test_mlp_scaled_normal_rejects_bad_c():
    with pytest.raises(ValueError, match="c > 0"):
        abstract_init(get_model("mlp", kernel_init="scaled_normal", kernel_init_kwargs={"c": 0.0}), jnp.zeros((2, 4)))


def test_mlp_layer_norm():
    model = get_model("mlp", depth=4, width=8, num_classes=3, norm="layer")
    x = rand((4, 10))
    v = jit_init(model, x)
    p = v["params"]
    assert "batch_stats" not in v or not v["batch_stats"]
    assert sorted(k for k in p if k.startswith("norm")) == ["norm1", "norm2", "norm3"]  # every hidden layer
    for k in (1, 2, 3):
        assert p[f"norm{k}"]["scale"].shape == (8,) and p[f"norm{k}"]["bias"].shape == (8,)
        assert "bias" in p[f"dense{k}"]  # layer norm does not absorb the bias
    out = jax.jit(lambda v, x: model.apply(v, x, train=True))(v, x)  # stateless: no mutable needed
    assert out.shape == (4, 3) and np.all(np.isfinite(np.asarray(out)))
    # The norm really acts: scaling the input by 100 leaves the first hidden layer's
    # normalized output unchanged (bias 0 at init), hence the logits too.
    out100 = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, 100.0 * x)
    out1 = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    # float32: layer-norm epsilon 1e-5 against per-row variances of O(1) -> ~1e-5 relative.
    np.testing.assert_allclose(np.asarray(out100), np.asarray(out1), rtol=1e-4, atol=1e-4)


def test_mlp_flattens_image_input():
    model = get_model("mlp", depth=2, width=8, num_classes=5)
    x = rand((3, 4, 4, 3))
    v = jit_init(model, x)
    assert v["params"]["dense1"]["kernel"].shape == (48, 8)
    f = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out_img = f(v, x)
    out_flat = f(v, x.reshape(3, 48))
    assert out_img.shape == (3, 5)
    np.testing.assert_array_equal(np.asarray(out_img), np.asarray(out_flat))


def test_mlp_input_checks():
    model = get_model("mlp")
    with pytest.raises(ValueError):
        abstract_init(model, jnp.zeros((5,)))
    with pytest.raises(TypeError, match="floating"):
        abstract_init(model, jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="depth"):
        abstract_init(get_model("mlp", depth=0), jnp.zeros((2, 5)))


def test_mlp_dropout_only_in_training():
    model = get_model("mlp", depth=3, width=32, num_classes=4, dropout_rate=0.5)
    x = rand((4, 8))
    v = jit_init(model, x)
    f = jax.jit(lambda v, x, key, train: model.apply(v, x, train=train, rngs={"dropout": key}), static_argnums=3)
    e1 = np.asarray(f(v, x, jax.random.PRNGKey(1), False))
    e2 = np.asarray(f(v, x, jax.random.PRNGKey(2), False))
    np.testing.assert_array_equal(e1, e2)
    # No rng is needed in eval mode.
    e3 = np.asarray(model.apply(v, x, train=False))
    np.testing.assert_allclose(e3, e1, rtol=1e-5, atol=1e-6)  # eager vs jit fusion, float32
    t1 = np.asarray(f(v, x, jax.random.PRNGKey(1), True))
    t2 = np.asarray(f(v, x, jax.random.PRNGKey(2), True))
    assert np.abs(t1 - t2).max() > 1e-3
    assert np.abs(t1 - e1).max() > 1e-3
    # Without dropout, train and eval agree (vanilla: nothing else depends on train).
    m0 = model.clone(dropout_rate=0.0)
    g = jax.jit(lambda v, x, key: m0.apply(v, x, train=True, rngs={"dropout": key}))
    np.testing.assert_array_equal(np.asarray(g(v, x, jax.random.PRNGKey(3))), e1)


# --------------------------------------------------------------------------------------
# deep_fc.

IN, WIDTH, CLASSES, DEPTH = 16, 32, 8, 10


def _deep_fc(**kw):
    kw = {"depth": DEPTH, "width": WIDTH, "num_classes": CLASSES, **kw}
    model = get_model("deep_fc", **kw)
    return model, jit_init(model, jnp.zeros((1, IN)))


@pytest.fixture(scope="module")
def looks_linear_net():
    return _deep_fc(activation="crelu", kernel_init="looks_linear")


def test_deep_fc_looks_linear_structure(looks_linear_net):
    _, v = looks_linear_net
    p = v["params"]
    assert dense_names(p) == [f"dense{k}" for k in range(1, DEPTH + 1)]
    # Layer 1 sees the raw input: a plain orthogonal (16, 32) kernel.
    assert p["dense1"]["kernel"].shape == (IN, WIDTH)
    assert_semi_orthogonal(p["dense1"]["kernel"])
    # Later layers see CReLU outputs: mirrored blocks [[W], [-W]] with W orthogonal.
    for k in range(2, DEPTH + 1):
        w = np.asarray(p[f"dense{k}"]["kernel"])
        assert w.shape == (2 * WIDTH, CLASSES if k == DEPTH else WIDTH)
        np.testing.assert_array_equal(w[:WIDTH], -w[WIDTH:])
        assert_semi_orthogonal(w[:WIDTH])
    for k in range(1, DEPTH + 1):
        np.testing.assert_array_equal(np.asarray(p[f"dense{k}"]["bias"]), 0.0)


def _linearity_errors(f, x, y):
    """Relative homogeneity (a = 0.7, -1.3) and additivity errors of f."""
    fx, fy = f(x), f(y)
    scale = np.linalg.norm(fx) + np.linalg.norm(fy)
    errs = {f"hom{a}": np.linalg.norm(f(a * x) - a * fx) / (abs(a) * np.linalg.norm(fx)) for a in (0.7, -1.3)}
    errs["add"] = np.linalg.norm(f(x + y) - fx - fy) / scale
    return errs


def test_deep_fc_looks_linear_is_linear_float64(looks_linear_net):
    model, v = looks_linear_net
    x, y = rand((4, IN), 1), rand((4, IN), 2)
    with jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), v)
        f = jax.jit(lambda z: model.apply(v64, z, train=False))
        g = lambda z: np.asarray(f(jnp.asarray(z, jnp.float64)))  # noqa: E731
        assert g(x).dtype == np.float64
        errs = _linearity_errors(g, np.asarray(x, np.float64), np.asarray(y, np.float64))
        # Also equal to the product of the top blocks: x W1 T2 ... T10.
        m = np.asarray(v64["params"]["dense1"]["kernel"])
        for k in range(2, DEPTH + 1):
            m = m @ np.asarray(v64["params"][f"dense{k}"]["kernel"])[:WIDTH]
        np.testing.assert_allclose(g(x), np.asarray(x, np.float64) @ m, rtol=0, atol=1e-12)
    # float64: 10 layers of <= 64-term sums of O(1) values -> ~1e-14; 1e-12 is a wide margin.
    for name, e in errs.items():
        assert e < 1e-12, (name, e)


def test_deep_fc_looks_linear_is_linear_float32(looks_linear_net):
    model, v = looks_linear_net
    f = jax.jit(lambda z: model.apply(v, z, train=False))
    g = lambda z: np.asarray(f(jnp.asarray(z, jnp.float32)))  # noqa: E731
    errs = _linearity_errors(g, np.asarray(rand((4, IN), 1)), np.asarray(rand((4, IN), 2)))
    # float32: per layer a relative rounding error ~ sqrt(64) * 6e-8 = 5e-7, ten layers
    # ~5e-6; 1e-4 keeps a margin and is still ~1000x below the ReLU net's error below.
    for name, e in errs.items():
        assert e < 1e-4, (name, e)


@pytest.mark.parametrize("activation", ["relu", "crelu"])
def test_deep_fc_orthogonal_is_not_linear(activation):
    model, v = _deep_fc(activation=activation, kernel_init="orthogonal")
    p = v["params"]
    for k in range(1, DEPTH + 1):
        assert_semi_orthogonal(p[f"dense{k}"]["kernel"])
    f = jax.jit(lambda z: model.apply(v, z, train=False))
    errs = _linearity_errors(lambda z: np.asarray(f(z)), rand((4, IN), 1), rand((4, IN), 2))
    # A ReLU net is positively homogeneous (biases 0) but not additive nor odd.
    assert errs["hom0.7"] < 1e-4  # float32, as for the looks-linear net
    assert errs["add"] > 0.05
    assert errs["hom-1.3"] > 0.05


def test_deep_fc_looks_linear_needs_crelu():
    with pytest.raises(ValueError, match="crelu"):
        abstract_init(get_model("deep_fc", kernel_init="looks_linear", activation="relu"), jnp.zeros((2, 4)))


@pytest.mark.parametrize("init", ["he_normal", "glorot_normal", "scaled_normal", "nope"])
def test_deep_fc_rejects_other_inits(init):
    with pytest.raises(ValueError, match="orthogonal"):
        abstract_init(get_model("deep_fc", kernel_init=init), jnp.zeros((2, 4)))


def test_deep_fc_depth():
    v = abstract_init(get_model("deep_fc", depth=26, width=8, num_classes=3), jnp.zeros((2, 5)))
    assert dense_names(v["params"]) == [f"dense{k}" for k in range(1, 27)]
    with pytest.raises(ValueError, match="depth"):
        abstract_init(get_model("deep_fc", depth=0), jnp.zeros((2, 5)))


def test_deep_fc_bn_variant_default_positions():
    v = abstract_init(get_model("deep_fc", depth=5, width=8, num_classes=3, norm="bn_gamma"), jnp.zeros((2, 5)))
    assert sorted(v["batch_stats"]) == ["norm1", "norm2", "norm3", "norm4"]
    for k in range(1, 5):
        assert "bias" not in v["params"][f"dense{k}"]
        assert set(v["params"][f"norm{k}"]) == {"scale"}
    assert "bias" in v["params"]["dense5"]
