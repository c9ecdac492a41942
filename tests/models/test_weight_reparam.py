"""Weight re-parameterizations as a model option (``weight_reparam=``): weight
normalization and weight standardization in the dense and conv layers of the zoo.

The kernels are checked against float64 NumPy (w = g·v/‖v‖ per output unit; (v − mean)/
√(var + ε) over the fan-in), the layers' outputs against the plain model run on that
NumPy kernel (flax's own dense/conv arithmetic is not what is tested here), and the
gradients against the closed form of weight normalization's gradient."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.layers import WEIGHT_REPARAMS, ReparamKernel, kernel_hook, weight_reparam_spec
from jaxnorm.models import get_model

# float32 forward passes of O(1) values through a few layers vs the same passes on a
# float64-computed kernel rounded to float32: a few ulps of the O(1) outputs.
RTOL, ATOL = 1e-5, 1e-5


def f64(a):
    return np.asarray(a, np.float64)


def np_weight_norm(v, g):
    v = f64(v)
    return f64(g) * v / np.sqrt(np.sum(v**2, axis=tuple(range(v.ndim - 1))))


def np_weight_std(w, eps=1e-5):
    w = f64(w)
    axes = tuple(range(w.ndim - 1))
    return (w - w.mean(axis=axes)) / np.sqrt(w.var(axis=axes) + eps)


# Jitted, not eager: an eager flax pass compiles every one of its small ops separately.
def init(model, x, seed=1):
    return jax.jit(lambda key: model.init(key, x, train=False))(jax.random.PRNGKey(seed))


def apply(model, params, x):
    return jax.jit(lambda p: model.apply({"params": p}, x, train=False))(params)


def randomized(params, seed):
    """The params with every leaf replaced by N(0, 1) draws (g's in [0.5, ∞)): a generic
    point. NumPy draws: a JAX draw would compile a program per leaf shape."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree.flatten_with_path(params)
    draw = lambda path, x: np.abs(rng.standard_normal(x.shape)) + 0.5 if path[-1].key == "g" else rng.standard_normal(x.shape)
    return jax.tree.unflatten(tree, [jnp.asarray(draw(path, x), jnp.float32) for path, x in leaves])


def plain_params(params, transform):
    """The params of the plain model: each reparameterized layer's kernel replaced by the
    NumPy kernel ``transform(kernel, g)`` and its ``reparam`` scope dropped."""

    def visit(tree):
        if "kernel" in tree and "reparam" in tree:
            rest = {k: v for k, v in tree.items() if k != "reparam"}
            return {**rest, "kernel": jnp.asarray(transform(tree["kernel"], tree["reparam"].get("g")), jnp.float32)}
        return {k: visit(v) if isinstance(v, dict) else v for k, v in tree.items()}

    return visit(params)


CASES = {
    "mlp": (dict(depth=3, width=6), (5, 4)),
    "convnet": (dict(depth=3, width=4, stages=1, norm_options={"num_groups": 2}), (3, 6, 6, 2)),
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_weight_norm_layers_equal_the_plain_net_on_the_numpy_kernel(model):
    kwargs, shape = CASES[model]
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    m = get_model(model, num_classes=3, weight_reparam="weight_norm", **kwargs)
    params = init(m, x)["params"]
    # Every weight layer, the output layer included, carries v (kernel) and g.
    for layer in params.values():
        assert set(layer) == {"kernel", "bias", "reparam"} and layer["reparam"]["g"].shape == layer["kernel"].shape[-1:]
    params = randomized(params, 2)
    got = apply(m, params, x)
    want = apply(get_model(model, num_classes=3, **kwargs), plain_params(params, np_weight_norm), x)
    np.testing.assert_allclose(f64(got), f64(want), rtol=RTOL, atol=ATOL)


def test_weight_norm_starts_as_the_plain_net():
    """g is initialized to ‖v‖: the initial network is the plain one with the same init."""
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    m = get_model("mlp", depth=3, width=6, num_classes=3, weight_reparam="weight_norm")
    variables = init(m, x)
    for layer in variables["params"].values():
        np.testing.assert_allclose(f64(layer["reparam"]["g"]), np.linalg.norm(f64(layer["kernel"]), axis=0), rtol=1e-6)
    plain = get_model("mlp", depth=3, width=6, num_classes=3)
    plain_vars = init(plain, x)
    # The same draw from the same key; the two inits are separate compilations of the
    # sampler, which may round its last bit differently (measured: 1 ulp in 1 of 36).
    np.testing.assert_allclose(plain_vars["params"]["dense2"]["kernel"], variables["params"]["dense2"]["kernel"],
                               rtol=4 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_allclose(f64(apply(m, variables["params"], x)), f64(apply(plain, plain_vars["params"], x)), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", sorted(CASES))
def test_weight_standardization_applies_to_the_normed_layers_only(model):
    """WS with GroupNorm: the hidden kernels (a norm follows) are standardized over their
    fan-in, the output layer's kernel (no norm) is used as it is; no new parameter."""
    kwargs, shape = CASES[model]
    kwargs = {**kwargs, "norm": "group", "norm_options": {"num_groups": 2}}
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    m = get_model(model, num_classes=3, weight_reparam="weight_std", **kwargs)
    params = randomized(init(m, x)["params"], 2)
    assert not any("reparam" in layer for layer in params.values())
    last = max((k for k in params if not k.startswith("norm")), key=lambda k: int(re.sub(r"\D", "", k)))
    want_params = {
        k: {**v, "kernel": jnp.asarray(np_weight_std(v["kernel"]), jnp.float32)} if "kernel" in v and k != last else v
        for k, v in params.items()
    }
    got = apply(m, params, x)
    want = apply(get_model(model, num_classes=3, **kwargs), want_params, x)
    np.testing.assert_allclose(f64(got), f64(want), rtol=RTOL, atol=ATOL)


def test_reparameterized_kernels_have_the_documented_form():
    """ReparamKernel's kernel, read through the op it wraps (an identity 'op'), for a conv
    kernel (3, 3, in, out): weight norm gives columns of norm g, weight standardization
    zero mean and unit variance over the 3·3·in fan-in."""
    v = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 2, 5)) * 0.3 + 0.1
    grab = lambda inputs, kernel: kernel
    for name in ("weight_norm", "weight_std"):
        mod = ReparamKernel(reparam=name, op=grab)
        variables = jax.jit(lambda key: mod.init(key, None, v))(jax.random.PRNGKey(1))
        kernel = jax.jit(lambda variables: mod.apply(variables, None, v))
        w = f64(kernel(variables))
        flat = w.reshape(-1, 5)
        if name == "weight_norm":
            g = f64(variables["params"]["g"])
            np.testing.assert_allclose(g, np.linalg.norm(f64(v).reshape(-1, 5), axis=0), rtol=1e-6)
            g2 = np.linspace(0.5, 2.0, 5)
            w2 = f64(kernel({"params": {"g": jnp.asarray(g2, jnp.float32)}})).reshape(-1, 5)
            np.testing.assert_allclose(np.linalg.norm(w2, axis=0), g2, rtol=1e-6)
            np.testing.assert_allclose(w2, np_weight_norm(v, g2).reshape(-1, 5), rtol=1e-6, atol=1e-7)
        else:
            assert "params" not in variables
            np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-6)
            var = f64(v).reshape(-1, 5).var(axis=0)
            np.testing.assert_allclose(flat.var(axis=0), var / (var + 1e-5), rtol=1e-5)  # 1 up to ε
            np.testing.assert_allclose(flat, np_weight_std(v).reshape(-1, 5), rtol=1e-5, atol=1e-6)


def test_gradients_flow_to_v_and_g():
    """For w = g·v/‖v‖ per column with G = ∂L/∂w: ∂L/∂g = Σ_i G_i v_i/‖v‖ and
    ∂L/∂v = (g/‖v‖)(G − (ŵ·G) ŵ), ŵ = v/‖v‖, which is orthogonal to v (Salimans &
    Kingma 2016, eq. 3-4). Checked against the gradient of the plain model w.r.t. its
    kernel at the same w."""
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
    y = jnp.array([0, 1, 2, 0, 1, 2, 0])
    # tanh: no unit is dead for the whole batch (a ReLU unit can be, and its g gets no gradient)
    m = get_model("mlp", depth=2, width=5, num_classes=3, activation="tanh", weight_reparam="weight_norm")
    plain = get_model("mlp", depth=2, width=5, num_classes=3, activation="tanh")
    params = randomized(init(m, x)["params"], 2)

    def loss(model, p):
        logits = model.apply({"params": p}, x, train=False)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(7), y])

    grads = jax.jit(jax.grad(lambda p: loss(m, p)))(params)
    pp = plain_params(params, np_weight_norm)
    plain_grads = jax.jit(jax.grad(lambda p: loss(plain, p)))(pp)
    for layer in ("dense1", "dense2"):
        v, g = f64(params[layer]["kernel"]), f64(params[layer]["reparam"]["g"])
        G = f64(plain_grads[layer]["kernel"])
        norm = np.linalg.norm(v, axis=0)
        w_hat = v / norm
        want_g = np.sum(G * w_hat, axis=0)
        want_v = g / norm * (G - np.sum(w_hat * G, axis=0) * w_hat)
        got_g, got_v = f64(grads[layer]["reparam"]["g"]), f64(grads[layer]["kernel"])
        assert np.all(np.abs(got_g) > 0) and np.all(np.abs(got_v) > 0)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.sum(got_v * v, axis=0), 0.0, atol=1e-5)  # ∂L/∂v ⟂ v
        np.testing.assert_allclose(f64(grads[layer]["bias"]), f64(plain_grads[layer]["bias"]), rtol=1e-5, atol=1e-7)


def test_weight_std_gradient_flows_through_the_standardization():
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    m = get_model("mlp", depth=2, width=4, num_classes=3, norm="group", norm_options={"num_groups": 2}, weight_reparam="weight_std")
    params = init(m, x)["params"]
    # Kernel entries of variance ~50: the scale invariance below is exact up to ε/σ² ~ 1e-6.
    params["dense1"]["kernel"] = 10.0 * params["dense1"]["kernel"]
    g = jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, train=False) ** 2)))(params)["dense1"]["kernel"]
    # The standardization is invariant to shifting each column of v and (up to ε) to
    # scaling it, so per column the gradient is orthogonal to the ones vector and to the
    # centred v (float32 gradients: 1e-5 of the norms).
    g, v = f64(g), f64(params["dense1"]["kernel"])
    c = v - v.mean(axis=0)
    assert np.all(np.abs(g).sum(axis=0) > 0)
    np.testing.assert_allclose(g.sum(axis=0) / np.linalg.norm(g, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(g * c, axis=0) / (np.linalg.norm(g, axis=0) * np.linalg.norm(c, axis=0)), 0.0, atol=1e-5)


def test_every_model_takes_the_option():
    for name, shape in (("3c3d", (2, 32, 32, 3)), ("allcnnc", (2, 32, 32, 3)), ("deep_fc", (2, 8))):
        m = get_model(name, num_classes=10, weight_reparam="weight_norm", **({"depth": 3, "width": 8} if name == "deep_fc" else {}))
        params = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))["params"]
        plain = jax.eval_shape(lambda: get_model(name, num_classes=10, **({"depth": 3, "width": 8} if name == "deep_fc" else {})).init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))["params"]
        count = lambda t: sum(np.prod(a.shape) for a in jax.tree.leaves(t))
        # one g per output unit of every weight layer
        extra = sum(layer["kernel"].shape[-1] for layer in plain.values() if "kernel" in layer)
        assert count(params) == count(plain) + extra, name


def test_registry_and_errors():
    assert set(WEIGHT_REPARAMS) == {"none", "weight_norm", "weight_std"}
    assert weight_reparam_spec("none") is None and weight_reparam_spec("weight_std").normed_only
    assert kernel_hook(nn.Dense, "none") == {}
    assert set(kernel_hook(nn.Dense, "weight_norm")) == {"dot_general_cls"}
    assert set(kernel_hook(nn.Conv, "weight_std")) == {"conv_general_dilated_cls"}
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="unknown weight_reparam 'wn'"):
        get_model("mlp", weight_reparam="wn").init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(ValueError, match="applies only to weight layers a norm follows"):
        get_model("mlp", weight_reparam="weight_std").init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(ValueError, match="applies only to weight layers a norm follows"):
        get_model("mlp", depth=2, norm="layer", bn_positions=(0, 0), weight_reparam="weight_std").init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(ValueError, match="not a flax weight layer"):
        kernel_hook(nn.Embed, "weight_norm")
    with pytest.raises(ValueError, match="not 'none'"):
        ReparamKernel(reparam="none", op=lambda a, b: a).init(jax.random.PRNGKey(0), x, x)
