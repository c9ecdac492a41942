"""Tests of :mod:`jaxnorm.layers`: the ``Norm`` module, the name vocabulary and activations.

Numbers are checked against flax.linen's own normalization layers (same parameters copied
into both) or against float64 NumPy references written here (none calls jaxnorm).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import layers
from jaxnorm.layers import ACTIVATIONS, NORMS, Norm, NormSpec, get_activation, make_norm, norm_spec

# float32 on both sides, different summation orders (and flax's E[x^2]-E[x]^2 variance):
# ~1e-6 relative differences; 1e-5 leaves headroom.
RTOL = 1e-5
ATOL = 1e-5

KEY = jax.random.PRNGKey(0)


def f64(a):
    return np.asarray(a, np.float64)


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(f64(actual), f64(expected), rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def rand_x(rng, shape):
    c = shape[-1]
    return (rng.uniform(-1, 1, c) + rng.uniform(0.5, 2.0, c) * rng.standard_normal(shape)).astype(np.float32)


def ref_batch_stats(x):
    """float64 per-feature batch mean and biased variance, and the values per feature."""
    flat = f64(x).reshape(-1, x.shape[-1])
    return flat.mean(axis=0), flat.var(axis=0), flat.shape[0]


# --------------------------------------------------------------------------------------
# Vocabulary.

EXPECTED_SPECS = {
    "bn": ("batch", False, False),
    "bn_gamma": ("batch", True, False),
    "bn_beta": ("batch", False, True),
    "bn_gamma_beta": ("batch", True, True),
    "layer": ("layer", True, True),
    "group": ("group", True, True),
    "instance": ("instance", True, True),
}


def test_norm_vocabulary_matches_documented_table():
    assert set(NORMS) == {"vanilla", "bn_ablation", *EXPECTED_SPECS}
    assert norm_spec("bn_ablation") == NormSpec("batch", use_scale=True, use_bias=True, maskable=True)
    assert not norm_spec("bn_ablation").absorbs_bias  # its vanilla runs need the bias
    assert layers.ABLATION_VARIANTS == ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")
    assert norm_spec("vanilla") is None
    assert make_norm("vanilla") is None
    for name, (kind, s, b) in EXPECTED_SPECS.items():
        assert norm_spec(name) == NormSpec(kind, use_scale=s, use_bias=b)
        m = make_norm(name, momentum=0.5)
        assert isinstance(m, Norm)
        assert (m.kind, m.use_scale, m.use_bias, m.momentum) == (kind, s, b, 0.5)


@pytest.mark.parametrize(
    "kind,absorbs", [("batch", True), ("instance", True), ("layer", False), ("group", False)]
)
def test_absorbs_bias(kind, absorbs):
    assert NormSpec(kind, True, True).absorbs_bias is absorbs


@pytest.mark.parametrize("name", ["batchnorm", "BN", "", None, ["bn"]])
def test_unknown_norm_name(name):
    with pytest.raises(ValueError, match=r"unknown norm .*known: \[.*'bn_gamma_beta'.*'vanilla'\]"):
        norm_spec(name)
    with pytest.raises(ValueError, match=r"unknown norm"):
        make_norm(name)


def test_unknown_norm_kind():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"unknown norm kind 'weight'; known: batch, layer, group, instance"):
        Norm(kind="weight").init(KEY, x, False)


# --------------------------------------------------------------------------------------
# Norm variables.


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norm_variables_per_name(name):
    x = jnp.ones((2, 4, 4, 6), jnp.float32) * jnp.arange(6.0)
    module = make_norm(name, num_groups=2)
    if name == "vanilla":
        assert module is None
        return
    spec = NORMS[name]
    variables = module.init(KEY, x, False)
    params = variables.get("params", {})
    expected = {k for k, on in (("scale", spec.use_scale), ("bias", spec.use_bias)) if on}
    assert set(params) == expected
    for k in expected:
        assert params[k].shape == (6,) and params[k].dtype == jnp.float32
    if "scale" in expected:
        np.testing.assert_array_equal(np.asarray(params["scale"]), 1.0)  # default γ init
    if "bias" in expected:
        np.testing.assert_array_equal(np.asarray(params["bias"]), 0.0)  # default β init
    if spec.kind == "batch":
        assert set(variables) <= {"params", "batch_stats"}
        switches = {"use_scale", "use_bias", "use_norm"} if spec.maskable else set()
        assert set(variables["batch_stats"]) == {"mean", "var"} | switches
        np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["mean"]), np.zeros(6))
        np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["var"]), np.ones(6))
    else:
        assert "batch_stats" not in variables
        assert set(variables) <= {"params"}


@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 3, 3)])
def test_init_with_train_does_not_move_running_stats(rng, shape):
    x = jnp.asarray(rand_x(rng, shape) + 5.0)  # mean far from 0: an update would be visible
    variables = Norm(kind="batch").init(KEY, x, True)
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["mean"]), 0.0)
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["var"]), 1.0)


@pytest.mark.parametrize("unbiased", [True, False])
def test_apply_train_updates_and_eval_keeps_running_stats(rng, unbiased):
    shape, momentum = (6, 2, 2, 3), 0.7
    x1, x2 = rand_x(rng, shape), rand_x(rng, shape)
    module = Norm(kind="batch", momentum=momentum, unbiased_running_var=unbiased)
    variables = module.init(KEY, jnp.asarray(x1), False)

    @jax.jit
    def train_step(variables, x):
        return module.apply(variables, x, True, mutable=["batch_stats"])

    mean, var = np.zeros(3), np.ones(3)
    for x in (x1, x2):
        y, updates = train_step(variables, jnp.asarray(x))
        variables = {**variables, **updates}
        mu, v, m = ref_batch_stats(x)
        if unbiased:
            v = v * m / (m - 1)
        mean, var = momentum * mean + (1 - momentum) * mu, momentum * var + (1 - momentum) * v
        # Training output uses the batch statistics (γ=1, β=0 at init).
        close(y, (f64(x) - x.reshape(-1, 3).mean(0)) / np.sqrt(x.reshape(-1, 3).astype(np.float64).var(0) + 1e-5))
    close(variables["batch_stats"]["mean"], mean)
    close(variables["batch_stats"]["var"], var)

    # train=False: running statistics are used and left unchanged, even if mutable.
    y_eval, updates = jax.jit(lambda v, x: module.apply(v, x, False, mutable=["batch_stats"]))(
        variables, jnp.asarray(x1)
    )
    np.testing.assert_array_equal(np.asarray(updates["batch_stats"]["mean"]), np.asarray(variables["batch_stats"]["mean"]))
    np.testing.assert_array_equal(np.asarray(updates["batch_stats"]["var"]), np.asarray(variables["batch_stats"]["var"]))
    close(y_eval, (f64(x1) - mean) / np.sqrt(var + 1e-5))
    # ...and plain apply (nothing mutable) works in eval mode.
    close(module.apply(variables, jnp.asarray(x1), False), y_eval, rtol=1e-6, atol=1e-6)


def test_apply_train_without_mutable_batch_stats_fails(rng):
    """Updating the running statistics needs mutable=['batch_stats'] (flax refuses otherwise)."""
    x = jnp.asarray(rand_x(rng, (4, 3)))
    module = Norm(kind="batch")
    variables = module.init(KEY, x, False)
    with pytest.raises(Exception, match="batch_stats"):
        module.apply(variables, x, True)


def test_norm_passes_group_size_and_axis_name(rng):
    x = rand_x(rng, (8, 3))
    variables = {"batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
    ghost = Norm(kind="batch", use_scale=False, use_bias=False, group_size=4, momentum=0.5)
    y, upd = ghost.apply(variables, jnp.asarray(x), True, mutable=["batch_stats"])
    halves = [ref_batch_stats(x[:4]), ref_batch_stats(x[4:])]
    for k, (mu, v, _) in enumerate(halves):
        close(y[4 * k : 4 * k + 4], (f64(x[4 * k : 4 * k + 4]) - mu) / np.sqrt(v + 1e-5))
    close(upd["batch_stats"]["var"], 0.5 + 0.5 * np.mean([v * 4 / 3 for _, v, _ in halves], axis=0))

    synced = Norm(kind="batch", use_scale=False, use_bias=False, axis_name="d", momentum=0.5)
    ys, upd = jax.vmap(
        lambda xs: synced.apply(variables, xs, True, mutable=["batch_stats"]), axis_name="d"
    )(jnp.asarray(x).reshape(2, 4, 3))
    mu, v, m = ref_batch_stats(x)
    close(ys.reshape(8, 3), (f64(x) - mu) / np.sqrt(v + 1e-5))
    close(upd["batch_stats"]["mean"][0], 0.5 * mu)
    close(upd["batch_stats"]["var"][1], 0.5 + 0.5 * v * m / (m - 1))


# --------------------------------------------------------------------------------------
# Equivalence with flax.linen.


def _copy_vars(rng, c, use_scale, use_bias, with_stats):
    params = {}
    if use_scale:
        params["scale"] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    if use_bias:
        params["bias"] = jnp.asarray(rng.normal(size=c), jnp.float32)
    v = {"params": params} if params else {}
    if with_stats:
        v["batch_stats"] = {
            "mean": jnp.asarray(rng.normal(size=c), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
        }
    return v


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 2, 6)], ids=["NC", "NHWC"])
def test_batch_norm_matches_flax(rng, shape, affine, train):
    use_scale, use_bias = affine
    m, eps = 0.8, 1e-4
    x = jnp.asarray(rand_x(rng, shape))
    variables = _copy_vars(rng, shape[-1], use_scale, use_bias, with_stats=True)
    ours = Norm(kind="batch", use_scale=use_scale, use_bias=use_bias, momentum=m, epsilon=eps,
                unbiased_running_var=False)
    theirs = nn.BatchNorm(use_running_average=not train, momentum=m, epsilon=eps,
                          use_scale=use_scale, use_bias=use_bias)
    # Same variable tree: flax creates exactly the same names and shapes.
    ref_tree = jax.tree_util.tree_map(jnp.shape, theirs.init(KEY, x))
    our_tree = jax.tree_util.tree_map(jnp.shape, ours.init(KEY, x, train))
    assert our_tree == ref_tree
    y1, u1 = jax.jit(lambda v, x: ours.apply(v, x, train, mutable=["batch_stats"]))(variables, x)
    y2, u2 = jax.jit(lambda v, x: theirs.apply(v, x, mutable=["batch_stats"]))(variables, x)
    close(y1, y2)
    close(u1["batch_stats"]["mean"], u2["batch_stats"]["mean"])
    close(u1["batch_stats"]["var"], u2["batch_stats"]["var"])
    if not train:
        np.testing.assert_array_equal(np.asarray(u1["batch_stats"]["var"]), np.asarray(variables["batch_stats"]["var"]))


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", [(6, 8), (3, 4, 5, 8)], ids=["NC", "NHWC"])
def test_layer_norm_matches_flax(rng, shape, affine):
    x = jnp.asarray(rand_x(rng, shape))
    variables = _copy_vars(rng, shape[-1], affine, affine, with_stats=False)
    ours = Norm(kind="layer", use_scale=affine, use_bias=affine, epsilon=1e-5)
    theirs = nn.LayerNorm(reduction_axes=tuple(range(1, len(shape))), epsilon=1e-5,
                          use_scale=affine, use_bias=affine)
    assert jax.tree_util.tree_map(jnp.shape, ours.init(KEY, x, False)) == jax.tree_util.tree_map(
        jnp.shape, theirs.init(KEY, x))
    y1 = jax.jit(lambda v, x: ours.apply(v, x, True))(variables, x)
    y2 = theirs.apply(variables, x)
    close(y1, y2)


@pytest.mark.parametrize("num_groups", [1, 2, 4])
@pytest.mark.parametrize("shape", [(6, 8), (3, 4, 5, 8)], ids=["NC", "NHWC"])
def test_group_norm_matches_flax(rng, shape, num_groups):
    x = jnp.asarray(rand_x(rng, shape))
    variables = _copy_vars(rng, shape[-1], True, True, with_stats=False)
    ours = Norm(kind="group", num_groups=num_groups, epsilon=1e-5)
    theirs = nn.GroupNorm(num_groups=num_groups, epsilon=1e-5)
    y1 = jax.jit(lambda v, x: ours.apply(v, x, False))(variables, x)
    y2 = theirs.apply(variables, x)
    close(y1, y2)


def test_instance_norm_matches_flax(rng):
    x = jnp.asarray(rand_x(rng, (3, 4, 5, 6)))
    variables = _copy_vars(rng, 6, True, True, with_stats=False)
    y1 = jax.jit(lambda v, x: Norm(kind="instance").apply(v, x, False))(variables, x)
    y2 = nn.InstanceNorm(epsilon=1e-5).apply(variables, x)
    close(y1, y2)


# --------------------------------------------------------------------------------------
# Activations.


def _gelu_exact(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


REF_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "crelu": lambda x: np.concatenate([np.maximum(x, 0.0), np.maximum(-x, 0.0)], axis=-1),
    "tanh": np.tanh,
    "gelu": _gelu_exact,
    "linear": lambda x: x,
}


def test_every_activation_has_a_reference():
    assert set(ACTIVATIONS) == set(REF_ACTIVATIONS)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", sorted(REF_ACTIVATIONS))
def test_activation_matches_reference(rng, name, jit):
    x = rng.normal(size=(3, 2, 4)).astype(np.float32) * 2.0
    fn = get_activation(name)
    assert fn is ACTIVATIONS[name]
    y = (jax.jit(fn) if jit else fn)(jnp.asarray(x))
    expected = REF_ACTIVATIONS[name](f64(x))
    assert y.shape == expected.shape and y.dtype == jnp.float32
    # gelu may use the tanh approximation (|error| < 1e-3 vs the erf form); others are float32-exact.
    tol = 1e-3 if name == "gelu" else 1e-6
    close(y, expected, rtol=tol, atol=tol)


def test_crelu_doubles_last_axis_and_concatenates(rng):
    x = jnp.asarray(rng.normal(size=(2, 3, 5)).astype(np.float32))
    y = jax.jit(layers.crelu)(x)
    assert y.shape == (2, 3, 10)
    np.testing.assert_array_equal(np.asarray(y[..., :5]), np.maximum(np.asarray(x), 0))
    np.testing.assert_array_equal(np.asarray(y[..., 5:]), np.maximum(-np.asarray(x), 0))
    # relu(x) - relu(-x) = x: the pair loses no information.
    np.testing.assert_array_equal(np.asarray(y[..., :5] - y[..., 5:]), np.asarray(x))


@pytest.mark.parametrize("name", ["Relu", "swish", "", None])
def test_unknown_activation(name):
    with pytest.raises(ValueError, match=r"unknown activation .*known: \['crelu', 'gelu', 'linear', 'relu', 'tanh'\]"):
        get_activation(name)


# --------------------------------------------------------------------------------------
# The maskable superset: one structure, any ablation variant chosen by data.


def test_maskable_norm_computes_each_variant_exactly():
    from jaxnorm.layers import ABLATION_VARIANTS, make_norm, set_ablation_variant

    x = jax.random.normal(jax.random.PRNGKey(0), (16, 5)) * 2 + 1
    sup = make_norm("bn_ablation")
    v = sup.init(jax.random.PRNGKey(1), x, train=False)
    params = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-1, 1, 5)}
    for variant in ABLATION_VARIANTS:
        bs = set_ablation_variant(v["batch_stats"], variant)
        y, new = sup.apply({"params": params, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
        single = make_norm(variant)
        if single is None:
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x))  # vanilla: identity
            continue
        sp = {k: params[k] for k in single.init(jax.random.PRNGKey(1), x, train=False).get("params", {})}
        ref, _ = single.apply({"params": sp, "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)}}, x, train=True, mutable=["batch_stats"])
        np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))  # bit-identical
        assert float(new["batch_stats"]["use_norm"]) == 1.0  # switches are never updated


def test_maskable_switched_off_gamma_beta_get_exactly_zero_gradient():
    from jaxnorm.layers import make_norm, set_ablation_variant

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    sup = make_norm("bn_ablation")
    v = sup.init(jax.random.PRNGKey(1), x, train=False)
    bs = set_ablation_variant(v["batch_stats"], "bn_beta")

    def loss(p):
        y, _ = sup.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(y**3)

    g = jax.grad(loss)(v["params"])
    np.testing.assert_array_equal(np.asarray(g["scale"]), 0.0)
    assert np.abs(np.asarray(g["bias"])).max() > 0


def test_set_ablation_variant_errors():
    from jaxnorm.layers import make_norm, set_ablation_variant

    v = make_norm("bn_gamma_beta").init(jax.random.PRNGKey(0), jnp.ones((4, 2)), train=False)
    with pytest.raises(ValueError, match="no maskable norm"):
        set_ablation_variant(v["batch_stats"], "bn")
    with pytest.raises(ValueError, match="unknown ablation variant"):
        set_ablation_variant(v["batch_stats"], "layer")


# --------------------------------------------------------------------------------------
# Noise injection (Norm.noise_mean / noise_var; Santurkar et al. 2018's noisy BN) and
# population statistics of a network's norm layers.

NOISE = {"noise_mean": 1.0, "noise_var": 2.0}


def _per_channel_affine(noisy, plain):
    """``(s, m)`` with ``noisy = s·plain + m`` per channel (asserted for every row): the
    noise is one draw per channel, shared by the batch."""
    n, p = f64(noisy).reshape(-1, noisy.shape[-1]), f64(plain).reshape(-1, plain.shape[-1])
    s = (n[0] - n[1]) / (p[0] - p[1])
    m = n[0] - s * p[0]
    close(n, s * p + m)
    return s, m


@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_norm_noise_is_a_per_channel_affine_map_in_training_mode_only(rng, kind):
    """Output y becomes y·s + m, one (s, m) per channel shared by the batch and every
    position of a feature map, with s² in [1, 1 + noise_var] and |m| <= noise_mean; the
    same key gives the same draw, another key another; eval mode has no noise; the
    running statistics are those of the input, as without noise."""
    x = jnp.asarray(rand_x(rng, (6, 3, 3, 8)))
    plain, noisy = Norm(kind=kind), Norm(kind=kind, **NOISE)
    v = plain.init(KEY, x, train=False)
    apply = lambda mod, key: mod.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
    y0, s0 = apply(plain, KEY)
    y1, s1 = apply(noisy, jax.random.PRNGKey(5))
    s, m = _per_channel_affine(y1, y0)
    assert np.all((s**2 >= 1 - 1e-5) & (s**2 <= 3 + 1e-5)) and np.all(np.abs(m) <= 1 + 1e-5)
    assert np.ptp(s) > 0.01 and np.ptp(m) > 0.01  # really random per channel
    jax.tree.map(np.testing.assert_array_equal, s1, s0)
    np.testing.assert_array_equal(apply(noisy, jax.random.PRNGKey(5))[0], y1)
    assert not np.allclose(apply(noisy, jax.random.PRNGKey(6))[0], y1)
    np.testing.assert_array_equal(noisy.apply(v, x, train=False), plain.apply(v, x, train=False))


def test_norm_noise_draws_per_layer_under_jit_and_zero_is_the_plain_network():
    """In a 3-layer MLP each norm layer gets its own draw from the one 'dropout' key;
    under jit the same as eagerly; magnitudes 0 need no key and give the plain network
    bit for bit; init needs no key."""
    from jaxnorm.models import get_model

    x = jax.random.normal(KEY, (8, 4))
    plain = get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=3, width=5)
    noisy = get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=3, width=5, norm_options=NOISE)
    v = noisy.init(jax.random.PRNGKey(1), x, train=False)
    rngs = {"dropout": jax.random.PRNGKey(2)}

    def outputs(module, **kw):
        got = {}

        def grab(next_fun, args, kwargs, ctx):
            out = next_fun(*args, **kwargs)
            if isinstance(ctx.module, Norm):
                got["/".join(ctx.module.path)] = (args[0], out)
            return out

        with nn.intercept_methods(grab):
            module.apply(v, x, train=True, mutable=["batch_stats"], **kw)
        return got

    clean, dirty = outputs(plain), outputs(noisy, rngs=rngs)
    # norm1's input is noise-free; norm2's depends on norm1's noise, so compare each
    # noisy norm's output with the plain norm of the same (noisy) input.
    draws = []
    for name in ("norm1", "norm2"):
        ref, _ = Norm().apply({"params": v["params"][name], "batch_stats": v["batch_stats"][name]}, dirty[name][0], train=True, mutable=["batch_stats"])
        draws.append(_per_channel_affine(dirty[name][1], ref))
    assert not np.allclose(draws[0][0], draws[1][0]) and not np.allclose(draws[0][1], draws[1][1])
    np.testing.assert_allclose(f64(dirty["norm1"][0]), f64(clean["norm1"][0]))
    eager, _ = noisy.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)
    jitted, _ = jax.jit(lambda v, r: noisy.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": r}))(v, rngs["dropout"])
    close(jitted, eager)
    zero = get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=3, width=5, norm_options={"noise_mean": 0.0, "noise_var": 0.0})
    np.testing.assert_array_equal(zero.apply(v, x, train=True, mutable=["batch_stats"])[0], plain.apply(v, x, train=True, mutable=["batch_stats"])[0])


def test_norm_noise_skips_a_switched_off_maskable_norm():
    """In the bn_ablation superset a vanilla run's norm is the identity: no noise either."""
    from jaxnorm.layers import set_ablation_variant

    x = jax.random.normal(KEY, (8, 3))
    sup = make_norm("bn_ablation", **NOISE)
    v = sup.init(KEY, x, train=False)
    off = {"params": v["params"], "batch_stats": set_ablation_variant(v["batch_stats"], "vanilla")}
    y, _ = sup.apply(off, x, train=True, mutable=["batch_stats"], rngs={"dropout": KEY})
    np.testing.assert_array_equal(y, x)


def test_norm_noise_function_and_errors():
    from jaxnorm.layers import norm_noise

    scale, shift = norm_noise(KEY, 16, 1.0, 2.0)
    assert scale.shape == shift.shape == (16,)
    np.testing.assert_array_equal(jax.jit(lambda k: norm_noise(k, 16, 1.0, 2.0))(KEY)[0], scale)
    zero = norm_noise(KEY, 4, 0.0, 0.0)
    np.testing.assert_array_equal(zero[0], np.ones(4))
    np.testing.assert_array_equal(zero[1], np.zeros(4))
    # 10k draws: the ranges and the means of U(-1, 1) and U(1, 3) (±5 standard errors).
    s, m = norm_noise(KEY, 10_000, 1.0, 2.0)
    v = f64(s) ** 2
    assert v.min() >= 1 - 1e-6 and v.max() <= 3 + 1e-6 and abs(v.mean() - 2) < 5 * (2 / math.sqrt(12)) / 100
    assert np.abs(f64(m)).max() <= 1 and abs(f64(m).mean()) < 5 * (2 / math.sqrt(12)) / 100
    for bad in ({"noise_mean": -1.0}, {"noise_var": float("nan")}, {"noise_var": True}):
        with pytest.raises(ValueError, match="noise_"):
            Norm(**bad).init(KEY, jnp.ones((4, 2)), train=False)
    with pytest.raises(ValueError, match="noise_mean"):
        norm_noise(KEY, 3, -0.5, 0.0)
    noisy = Norm(**NOISE)
    v = noisy.init(KEY, jnp.ones((4, 2)), train=True)  # init: no noise, no key needed
    with pytest.raises(ValueError, match="needs a 'dropout' RNG"):
        noisy.apply(v, jnp.ones((4, 2)), train=True, mutable=["batch_stats"])

