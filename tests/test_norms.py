"""Tests of the pure-function normalizations in :mod:`jaxnorm.norms`.

Every numerical check compares against an independent float64 NumPy reference
written below (none of it calls jaxnorm). Library math runs in float32, so the
typical tolerance is ~1e-5 (a few float32 ulps accumulated over small reductions).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnorm import norms
from jaxnorm.norms import BatchStats

# float32 math over reductions of <= a few hundred values: errors are ~1e-6 relative.
RTOL = 1e-5
ATOL = 1e-5

HYP = settings(max_examples=25, deadline=None, derandomize=True)

BN_STATIC = ("train", "momentum", "epsilon", "group_size", "axis_name", "unbiased_running_var")
# Jitted once at module level so that repeated calls hit the compilation cache.
JIT = {
    "batch_norm": jax.jit(norms.batch_norm, static_argnames=BN_STATIC),
    "layer_norm": jax.jit(norms.layer_norm, static_argnames=("epsilon",)),
    "group_norm": jax.jit(norms.group_norm, static_argnames=("num_groups", "epsilon")),
    "instance_norm": jax.jit(norms.instance_norm, static_argnames=("epsilon",)),
    "weight_norm": jax.jit(norms.weight_norm, static_argnames=("epsilon",)),
    "weight_standardize": jax.jit(norms.weight_standardize, static_argnames=("epsilon",)),
}


def call(name, jit, *args, **kwargs):
    fn = JIT[name] if jit else getattr(norms, name)
    return fn(*args, **kwargs)


def f64(a):
    return np.asarray(jnp.asarray(a, jnp.float32) if getattr(a, "dtype", None) == jnp.bfloat16 else a, np.float64)


# --------------------------------------------------------------------------------------
# Independent float64 references.


def ref_affine(y, scale, bias):
    if scale is not None:
        y = y * f64(scale)
    if bias is not None:
        y = y + f64(bias)
    return y


def ref_bn_train(x, scale, bias, eps, group_size=None):
    """Returns (y, mean of group means, mean of group biased vars, values per feature per group)."""
    x = f64(x)
    n, c = x.shape[0], x.shape[-1]
    g = n if group_size is None else group_size
    ys, mus, vs = [], [], []
    for start in range(0, n, g):
        chunk = x[start : start + g]
        flat = chunk.reshape(-1, c)
        mu, var = flat.mean(axis=0), flat.var(axis=0)
        ys.append((chunk - mu) / np.sqrt(var + eps))
        mus.append(mu)
        vs.append(var)
    y = ref_affine(np.concatenate(ys, axis=0), scale, bias)
    m = g * math.prod(x.shape[1:-1])
    return y, np.mean(mus, axis=0), np.mean(vs, axis=0), m


def ref_bn_eval(x, mean, var, scale, bias, eps):
    return ref_affine((f64(x) - f64(mean)) / np.sqrt(f64(var) + eps), scale, bias)


def ref_ema(old, batch, momentum):
    return momentum * f64(old) + (1.0 - momentum) * f64(batch)


def ref_layer_norm(x, scale, bias, eps):
    x = f64(x)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = (v - v.mean()) / np.sqrt(v.var() + eps)
    return ref_affine(out, scale, bias)


def ref_group_norm(x, num_groups, scale, bias, eps):
    x = f64(x)
    c = x.shape[-1]
    cg = c // num_groups
    out = np.empty_like(x)
    axes = tuple(range(1, x.ndim))
    for g in range(num_groups):
        sl = x[..., g * cg : (g + 1) * cg]
        mu = sl.mean(axis=axes, keepdims=True)
        var = sl.var(axis=axes, keepdims=True)
        out[..., g * cg : (g + 1) * cg] = (sl - mu) / np.sqrt(var + eps)
    return ref_affine(out, scale, bias)


def ref_instance_norm(x, scale, bias, eps):
    x = f64(x)
    axes = tuple(range(1, x.ndim - 1))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return ref_affine((x - mu) / np.sqrt(var + eps), scale, bias)


def ref_weight_norm(v, g, eps=0.0):
    v = f64(v)
    cols = v.reshape(-1, v.shape[-1])
    norm = np.sqrt((cols**2).sum(axis=0) + eps)
    w = v / norm
    return w if g is None else w * f64(g)


def ref_weight_standardize(w, eps):
    w = f64(w)
    cols = w.reshape(-1, w.shape[-1])
    return (w - cols.mean(axis=0)) / np.sqrt(cols.var(axis=0) + eps)


# --------------------------------------------------------------------------------------
# Data helpers.


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def rand_x(rng, shape, dtype=np.float32):
    c = shape[-1]
    loc = rng.uniform(-2, 2, size=c)
    scl = rng.uniform(0.5, 3.0, size=c)
    return (loc + scl * rng.standard_normal(shape)).astype(dtype)


def rand_stats(rng, c):
    return BatchStats(
        jnp.asarray(rng.normal(size=c), jnp.float32),
        jnp.asarray(rng.uniform(0.5, 2.0, size=c), jnp.float32),
    )


def rand_affine(rng, c, use_scale, use_bias):
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=c), jnp.float32) if use_scale else None
    bias = jnp.asarray(rng.normal(size=c), jnp.float32) if use_bias else None
    return scale, bias


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(f64(actual), f64(expected), rtol=rtol, atol=atol)


AFFINE = [(False, False), (True, False), (False, True), (True, True)]  # BN, BN_γ, BN_β, BN_γ,β
AFFINE_IDS = ["bn", "bn_gamma", "bn_beta", "bn_gamma_beta"]
BN_SHAPES = [(16, 5), (4, 3, 2, 6)]


# --------------------------------------------------------------------------------------
# batch_norm against the reference.


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("unbiased", [True, False], ids=["unbiased", "biased"])
@pytest.mark.parametrize("affine", AFFINE, ids=AFFINE_IDS)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["NC", "NHWC"])
def test_batch_norm_train_matches_reference(rng, shape, affine, unbiased, jit):
    x = rand_x(rng, shape)
    c = shape[-1]
    stats = rand_stats(rng, c)
    scale, bias = rand_affine(rng, c, *affine)
    momentum, eps = 0.8, 1e-3
    y, new = call(
        "batch_norm", jit, jnp.asarray(x), stats, scale, bias,
        train=True, momentum=momentum, epsilon=eps, unbiased_running_var=unbiased,
    )
    y_ref, mu, var, m = ref_bn_train(x, scale, bias, eps)
    assert m == math.prod(shape[:-1])
    if unbiased:
        var = var * m / (m - 1)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert isinstance(new, BatchStats)
    close(y, y_ref)
    close(new.mean, ref_ema(stats.mean, mu, momentum))
    close(new.var, ref_ema(stats.var, var, momentum))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("affine", AFFINE, ids=AFFINE_IDS)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["NC", "NHWC"])
def test_batch_norm_eval_matches_reference(rng, shape, affine, jit):
    x = rand_x(rng, shape)
    c = shape[-1]
    stats = rand_stats(rng, c)
    scale, bias = rand_affine(rng, c, *affine)
    y, new = call("batch_norm", jit, jnp.asarray(x), stats, scale, bias, train=False, epsilon=1e-3)
    close(y, ref_bn_eval(x, stats.mean, stats.var, scale, bias, 1e-3))
    # Eval mode returns the running statistics unchanged.
    np.testing.assert_array_equal(np.asarray(new.mean), np.asarray(stats.mean))
    np.testing.assert_array_equal(np.asarray(new.var), np.asarray(stats.var))
    if not jit:
        assert new is stats  # documented: "stats itself when train=False"


def test_batch_norm_default_is_unbiased_and_flax_momentum(rng):
    """Defaults: momentum=0.9 (Flax convention), epsilon=1e-5, Bessel-corrected running var."""
    x = rand_x(rng, (10, 3))
    stats = BatchStats.init(3)
    y, new = norms.batch_norm(jnp.asarray(x), stats, train=True)
    y_ref, mu, var, m = ref_bn_train(x, None, None, 1e-5)
    close(y, y_ref)
    close(new.mean, 0.9 * 0.0 + 0.1 * mu)
    close(new.var, 0.9 * 1.0 + 0.1 * var * m / (m - 1))


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_batch_norm_momentum_endpoints(rng, momentum):
    x = rand_x(rng, (8, 4))
    stats = rand_stats(rng, 4)
    _, new = norms.batch_norm(jnp.asarray(x), stats, train=True, momentum=momentum)
    _, mu, var, m = ref_bn_train(x, None, None, 1e-5)
    if momentum == 1.0:  # running stats frozen
        close(new.mean, stats.mean, rtol=0, atol=0)
        close(new.var, stats.var, rtol=0, atol=0)
    else:  # running stats replaced by the batch's
        close(new.mean, mu)
        close(new.var, var * m / (m - 1))


def test_batch_norm_single_image_conv_batch_is_allowed(rng):
    """A batch of one image still has H*W >= 2 values per feature."""
    x = rand_x(rng, (1, 3, 3, 2))
    y, new = norms.batch_norm(jnp.asarray(x), BatchStats.init(2), train=True, momentum=0.5)
    y_ref, mu, var, m = ref_bn_train(x, None, None, 1e-5)
    assert m == 9
    close(y, y_ref)
    close(new.var, ref_ema(np.ones(2), var * 9 / 8, 0.5))


# ----------------------------------------------------------------------------- ghost BN


GHOST_CASES = [((12, 4), 3), ((12, 4), 4), ((12, 4), 6), ((6, 2, 3, 4), 2), ((6, 2, 3, 4), 3)]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("unbiased", [True, False], ids=["unbiased", "biased"])
@pytest.mark.parametrize("shape,group_size", GHOST_CASES)
def test_ghost_batch_norm_matches_reference(rng, shape, group_size, unbiased, jit):
    x = rand_x(rng, shape)
    c = shape[-1]
    stats = rand_stats(rng, c)
    scale, bias = rand_affine(rng, c, True, True)
    y, new = call(
        "batch_norm", jit, jnp.asarray(x), stats, scale, bias,
        train=True, momentum=0.7, group_size=group_size, unbiased_running_var=unbiased,
    )
    y_ref, mu, var, m = ref_bn_train(x, scale, bias, 1e-5, group_size=group_size)
    assert m == group_size * math.prod(shape[1:-1])  # m counts one group only
    if unbiased:
        var = var * m / (m - 1)
    close(y, y_ref)
    close(new.mean, ref_ema(stats.mean, mu, 0.7))
    close(new.var, ref_ema(stats.var, var, 0.7))
    # Each group really is normalized by its own statistics: it differs from whole-batch BN.
    y_whole, _, _, _ = ref_bn_train(x, scale, bias, 1e-5)
    assert np.abs(f64(y) - y_whole).max() > 1e-2


# ------------------------------------------------------------------------------ bf16


@pytest.mark.parametrize("shape", BN_SHAPES, ids=["NC", "NHWC"])
def test_batch_norm_bf16(rng, shape):
    xb = jnp.asarray(rand_x(rng, shape), jnp.bfloat16)
    x32 = jnp.asarray(xb, jnp.float32)  # exactly the bf16 values
    c = shape[-1]
    scale, bias = rand_affine(rng, c, True, True)
    y, new = JIT["batch_norm"](xb, BatchStats.init(c), scale, bias, train=True, momentum=0.5)
    assert y.dtype == jnp.bfloat16 and y.shape == xb.shape
    assert new.mean.dtype == jnp.float32 and new.var.dtype == jnp.float32
    y_ref, mu, var, m = ref_bn_train(x32, scale, bias, 1e-5)
    # Statistics are reduced in float32: they match the float64 reference of the bf16
    # values at float32 tolerance (a bf16 reduction would be off by ~1e-2 relative).
    close(new.mean, ref_ema(np.zeros(c), mu, 0.5))
    close(new.var, ref_ema(np.ones(c), var * m / (m - 1), 0.5))
    # The output is rounded once to bf16 (8-bit mantissa, ulp ~ 4e-3 relative).
    close(y, y_ref, rtol=1e-2, atol=2e-2)
    y32, _ = JIT["batch_norm"](x32, BatchStats.init(c), scale, bias, train=True, momentum=0.5)
    close(y, y32, rtol=1e-2, atol=2e-2)
    # Eval mode keeps the dtype too.
    ye, _ = norms.batch_norm(xb, new, scale, bias, train=False)
    assert ye.dtype == jnp.bfloat16
    close(ye, ref_bn_eval(x32, new.mean, new.var, scale, bias, 1e-5), rtol=1e-2, atol=2e-2)


# --------------------------------------------------------------------------------------
# Hypothesis invariants.

SEEDS = st.integers(0, 2**31 - 1)
HYP_SHAPES = st.sampled_from([(8, 3), (4, 2, 3, 5)])


@HYP
@given(seed=SEEDS, shape=HYP_SHAPES, log_std=st.floats(-1.0, 2.0), loc=st.floats(-10.0, 10.0))
def test_hyp_bn_output_is_standardized(seed, shape, log_std, loc):
    rng = np.random.default_rng(seed)
    x = (loc + 10.0**log_std * rng.standard_normal(shape)).astype(np.float32)
    eps = 1e-5
    y, _ = JIT["batch_norm"](jnp.asarray(x), BatchStats.init(shape[-1]), train=True, epsilon=eps)
    flat_y = f64(y).reshape(-1, shape[-1])
    v = f64(x).reshape(-1, shape[-1]).var(axis=0)
    # Normalized values are O(1); float32 rounding leaves ~1e-6 in the mean.
    np.testing.assert_allclose(flat_y.mean(axis=0), 0.0, atol=1e-5)
    # Variance is v / (v + eps) exactly (not 1); two-pass float32 variance is good to ~1e-6.
    np.testing.assert_allclose(flat_y.var(axis=0), v / (v + eps), rtol=1e-4)


@HYP
@given(
    seed=SEEDS,
    shape=HYP_SHAPES,
    a=st.lists(st.floats(0.2, 5.0), min_size=5, max_size=5),
    b=st.lists(st.floats(-5.0, 5.0), min_size=5, max_size=5),
    per_feature=st.booleans(),
)
def test_hyp_bn_affine_invariance(seed, shape, a, b, per_feature):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = rng.standard_normal(shape).astype(np.float32)
    a = np.asarray(a[:c] if per_feature else [a[0]] * c)
    b = np.asarray(b[:c] if per_feature else [b[0]] * c)
    xt = (a * x + b).astype(np.float32)
    # epsilon=0: with eps > 0, BN(a x + b) = (x - mu) / sqrt(var + eps / a^2) != BN(x).
    y1, s1 = JIT["batch_norm"](jnp.asarray(x), BatchStats.init(c), train=True, epsilon=0.0)
    y2, s2 = JIT["batch_norm"](jnp.asarray(xt), BatchStats.init(c), train=True, epsilon=0.0)
    # Rounding a*x+b to float32 perturbs x by <= ~|b| * 6e-8 / a ~ 1.5e-6 in std units.
    close(y1, y2, rtol=0, atol=5e-5)
    # ...while the running statistics do see the transformation (sanity check of the inputs).
    _, mu, var, m = ref_bn_train(xt, None, None, 0.0)
    close(s2.mean, ref_ema(0.0, mu, 0.9), atol=1e-4)
    close(s2.var, ref_ema(1.0, var * m / (m - 1), 0.9), atol=1e-4)


@HYP
@given(seed=SEEDS, shape=HYP_SHAPES, momentum=st.floats(0.0, 1.0), unbiased=st.booleans())
def test_hyp_ghost_full_group_equals_plain(seed, shape, momentum, unbiased):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rand_x(rng, shape))
    stats = rand_stats(rng, shape[-1])
    kw = dict(train=True, momentum=momentum, unbiased_running_var=unbiased)
    # Eager: momentum is a static (Python) argument, so jit would recompile per example.
    y1, s1 = norms.batch_norm(x, stats, **kw)
    y2, s2 = norms.batch_norm(x, stats, group_size=shape[0], **kw)
    # Same arithmetic up to reduction order, but two separately compiled reductions (over
    # (m, c) and over a (1, m, c) reshape) that XLA may vectorize differently per
    # instruction set. Sums of m <= 24 values, mean|x| <= |loc| + scl <= 5 with std >= 0.5
    # (rand_x): the mean's reassociation error is up to m·u·mean|x| ≈ 7e-6 (worst case,
    # typically √m·u·mean|x| ≈ 1.5e-6), divided by std in y: 3e-6 typical, 1.4e-5 at
    # worst, above the old 1e-6. Each
    # side meets the module's RTOL/ATOL against the float64 reference (the tests above),
    # so they agree to about that; a group-statistics bug moves y by O(1).
    close(y1, y2)
    close(s1.mean, s2.mean)
    close(s1.var, s2.var)


@HYP
@given(seed=SEEDS, shape=HYP_SHAPES, momentum=st.floats(0.0, 1.0), unbiased=st.booleans())
def test_hyp_two_step_running_stats(seed, shape, momentum, unbiased):
    rng = np.random.default_rng(seed)
    x1, x2 = rand_x(rng, shape), rand_x(rng, shape)
    c = shape[-1]
    kw = dict(train=True, momentum=momentum, unbiased_running_var=unbiased)
    # Eager: momentum is a static (Python) argument, so jit would recompile per example.
    _, s = norms.batch_norm(jnp.asarray(x1), BatchStats.init(c), **kw)
    _, s = norms.batch_norm(jnp.asarray(x2), s, **kw)
    mean, var = np.zeros(c), np.ones(c)
    for xb in (x1, x2):
        _, mu, v, m = ref_bn_train(xb, None, None, 1e-5)
        if unbiased:
            v = v * m / (m - 1)
        mean, var = ref_ema(mean, mu, momentum), ref_ema(var, v, momentum)
    close(s.mean, mean)
    close(s.var, var)


@HYP
@given(seed=SEEDS, shape=HYP_SHAPES)
def test_hyp_eval_mode_is_per_example(seed, shape):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rand_x(rng, shape))
    c = shape[-1]
    stats = rand_stats(rng, c)
    scale, bias = rand_affine(rng, c, True, True)
    y, out_stats = JIT["batch_norm"](x, stats, scale, bias, train=False)
    np.testing.assert_array_equal(np.asarray(out_stats.mean), np.asarray(stats.mean))
    np.testing.assert_array_equal(np.asarray(out_stats.var), np.asarray(stats.var))
    # Element-wise math only: each example alone gives its row up to float32 round-off.
    for i in (0, shape[0] - 1):
        yi, _ = JIT["batch_norm"](x[i : i + 1], stats, scale, bias, train=False)
        close(yi[0], y[i], rtol=1e-6, atol=1e-6)
    close(y, ref_bn_eval(x, stats.mean, stats.var, scale, bias, 1e-5))


@HYP
@given(m=st.floats(0.0, 1.0))
def test_hyp_momentum_conversion_round_trips(m):
    f = norms.torch_momentum_to_flax(m)
    assert 0.0 <= f <= 1.0
    assert f == pytest.approx(1.0 - m, abs=1e-15)  # one float64 subtraction
    assert norms.flax_momentum_to_torch(f) == pytest.approx(m, abs=1e-15)
    assert norms.torch_momentum_to_flax(norms.flax_momentum_to_torch(m)) == pytest.approx(m, abs=1e-15)


def test_momentum_conversion_values_and_docs():
    assert norms.torch_momentum_to_flax(0.1) == pytest.approx(0.9, abs=1e-15)
    assert norms.flax_momentum_to_torch(0.9) == pytest.approx(0.1, abs=1e-15)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]"):
        norms.torch_momentum_to_flax(1.5)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]"):
        norms.flax_momentum_to_torch(-0.1)
    # Each converter keeps its own documentation (the alias must not overwrite it).
    assert "PyTorch" in norms.torch_momentum_to_flax.__doc__
    assert "Inverse" in norms.flax_momentum_to_torch.__doc__


# --------------------------------------------------------------------------------------
# Synchronized statistics over a named axis.


@pytest.mark.parametrize("unbiased", [True, False], ids=["unbiased", "biased"])
@pytest.mark.parametrize("shape,shards", [((8, 3), 2), ((8, 3), 8), ((8, 2, 3, 4), 4)])
def test_axis_name_vmap_equals_whole_batch(rng, shape, shards, unbiased):
    x = rand_x(rng, shape)
    c = shape[-1]
    stats = rand_stats(rng, c)
    scale, bias = rand_affine(rng, c, True, True)

    def shard_fn(xs):
        return norms.batch_norm(
            xs, stats, scale, bias, train=True, momentum=0.6, axis_name="d", unbiased_running_var=unbiased
        )

    xs = jnp.asarray(x).reshape((shards, shape[0] // shards) + shape[1:])
    y, new = jax.jit(jax.vmap(shard_fn, axis_name="d"))(xs)
    y_ref, mu, var, m = ref_bn_train(x, scale, bias, 1e-5)
    if unbiased:
        var = var * m / (m - 1)  # m counts the values of all shards
    close(y.reshape(shape), y_ref)
    for k in range(shards):  # every shard holds the same, global, statistics
        close(new.mean[k], ref_ema(stats.mean, mu, 0.6))
        close(new.var[k], ref_ema(stats.var, var, 0.6))
    # Without axis_name each shard would use its own statistics (so the test can fail).
    if shape[0] // shards > 1:
        y_local, _ = jax.vmap(lambda s: norms.batch_norm(s, stats, scale, bias, train=True))(xs)
        assert np.abs(f64(y_local).reshape(shape) - y_ref).max() > 1e-3


def test_axis_name_shard_map_one_device(rng):
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        pytest.skip("jax.shard_map not available")
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = rand_x(rng, (8, 2, 2, 3))
    stats = rand_stats(rng, 3)
    mesh = jax.make_mesh((1,), ("d",))
    f = shard_map(
        lambda xs: norms.batch_norm(xs, stats, train=True, momentum=0.5, axis_name="d"),
        mesh=mesh,
        in_specs=P("d"),
        out_specs=(P("d"), P()),
    )
    y, new = jax.jit(f)(jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("d"))))
    y_ref, mu, var, m = ref_bn_train(x, None, None, 1e-5)
    close(y, y_ref)
    close(new.mean, ref_ema(stats.mean, mu, 0.5))
    close(new.var, ref_ema(stats.var, var * m / (m - 1), 0.5))


# --------------------------------------------------------------------------------------
# Per-example normalizations.


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("shape", [(6, 8), (3, 4, 5, 8)], ids=["NC", "NHWC"])
def test_layer_norm_matches_reference(rng, shape, affine, jit):
    x = rand_x(rng, shape)
    scale, bias = rand_affine(rng, shape[-1], affine, affine)
    y = call("layer_norm", jit, jnp.asarray(x), scale, bias, epsilon=1e-4)
    assert y.shape == x.shape and y.dtype == jnp.float32
    close(y, ref_layer_norm(x, scale, bias, 1e-4))


GROUP_CASES = [((6, 8), 1), ((6, 8), 2), ((6, 8), 4), ((3, 4, 5, 8), 1), ((3, 4, 5, 8), 2), ((3, 4, 5, 8), 8)]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape,num_groups", GROUP_CASES)
def test_group_norm_matches_reference(rng, shape, num_groups, jit):
    x = rand_x(rng, shape)
    scale, bias = rand_affine(rng, shape[-1], True, True)
    y = call("group_norm", jit, jnp.asarray(x), scale, bias, num_groups=num_groups, epsilon=1e-5)
    close(y, ref_group_norm(x, num_groups, scale, bias, 1e-5))


def test_group_norm_extremes_are_layer_and_instance_norm(rng):
    x = jnp.asarray(rand_x(rng, (2, 3, 3, 4)))
    close(norms.group_norm(x, num_groups=1), ref_layer_norm(x, None, None, 1e-5))
    close(norms.group_norm(x, num_groups=4), ref_instance_norm(x, None, None, 1e-5))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 4, 5, 6)], ids=["NLC", "NHWC"])
def test_instance_norm_matches_reference(rng, shape, affine, jit):
    x = rand_x(rng, shape)
    scale, bias = rand_affine(rng, shape[-1], affine, affine)
    y = call("instance_norm", jit, jnp.asarray(x), scale, bias, epsilon=1e-5)
    close(y, ref_instance_norm(x, scale, bias, 1e-5))


def test_per_example_norms_ignore_the_rest_of_the_batch(rng):
    x = jnp.asarray(rand_x(rng, (4, 3, 3, 4)))
    for fn in (JIT["layer_norm"], lambda v: JIT["group_norm"](v, num_groups=2), JIT["instance_norm"]):
        full = fn(x)
        # A batch of 1 vs 4 compiles another program: its 36-value reductions (mean|x| <= 5,
        # std >= 0.5) may be reassociated: up to 36·u·mean|x|/std ≈ 2e-5 worst case,
        # √36·u·mean|x|/std ≈ 4e-6 typically, so the module's tolerance (as against the
        # float64 reference); using the rest of the batch would move the row by O(1).
        close(fn(x[2:3])[0], full[2])


# --------------------------------------------------------------------------------------
# Weight re-parameterizations.


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("with_g", [False, True], ids=["unit", "g"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 4, 6)], ids=["dense", "conv"])
def test_weight_norm_matches_reference(rng, shape, with_g, jit):
    v = rng.standard_normal(shape).astype(np.float32)
    g = jnp.asarray(rng.uniform(0.5, 2.0, shape[-1]), jnp.float32) if with_g else None
    w = call("weight_norm", jit, jnp.asarray(v), g)
    close(w, ref_weight_norm(v, g))
    # Each output column's norm is |g| (1 without g).
    col_norms = np.linalg.norm(f64(w).reshape(-1, shape[-1]), axis=0)
    close(col_norms, f64(g) if with_g else np.ones(shape[-1]))


def test_weight_norm_epsilon_guards_zero_column():
    v = jnp.zeros((4, 2), jnp.float32).at[:, 1].set(1.0)
    w = norms.weight_norm(v, epsilon=1e-12)
    assert np.all(np.isfinite(np.asarray(w)))
    close(w, ref_weight_norm(v, None, 1e-12))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 4, 6)], ids=["dense", "conv"])
def test_weight_standardize_matches_reference(rng, shape, jit):
    w = (0.3 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    ws = call("weight_standardize", jit, jnp.asarray(w), epsilon=1e-6)
    close(ws, ref_weight_standardize(w, 1e-6), rtol=1e-4, atol=1e-4)  # |mean|/std = 3: mild cancellation
    cols = f64(ws).reshape(-1, shape[-1])
    np.testing.assert_allclose(cols.mean(axis=0), 0.0, atol=1e-5)  # float32 round-off
    v = f64(w).reshape(-1, shape[-1]).var(axis=0)
    np.testing.assert_allclose(cols.var(axis=0), v / (v + 1e-6), rtol=1e-4)  # float32 two-pass var


# --------------------------------------------------------------------------------------
# Population statistics.


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 3)], ids=["NC", "NHWC"])
def test_population_stats_equal_batches(rng, shape):
    batches = [rand_x(rng, shape) for _ in range(4)]
    c = shape[-1]
    m = math.prod(shape[:-1])
    got = norms.population_stats(jnp.asarray(b) for b in batches)
    allv = np.concatenate([f64(b).reshape(-1, c) for b in batches])
    per_batch_var = np.stack([f64(b).reshape(-1, c).var(axis=0) for b in batches])
    close(got.mean, allv.mean(axis=0))
    close(got.var, m / (m - 1) * per_batch_var.mean(axis=0))
    # Not the variance of the whole data set (which adds the spread of batch means).
    assert not np.allclose(f64(got.var), allv.var(axis=0, ddof=1), rtol=1e-3)


def test_population_stats_unequal_batches(rng):
    sizes = [3, 7, 2, 5]
    batches = [rand_x(rng, (n, 4)) for n in sizes]
    got = norms.population_stats(batches)  # NumPy arrays are accepted too
    allv = np.concatenate([f64(b) for b in batches])
    pooled = sum(n * f64(b).var(axis=0) for n, b in zip(sizes, batches)) / sum(n - 1 for n in sizes)
    close(got.mean, allv.mean(axis=0))
    close(got.var, pooled)


def test_population_accumulator_in_scan_and_loop(rng):
    xs = np.stack([rand_x(rng, (6, 2, 3)) for _ in range(5)])  # 5 batches of (6, 2, 3)

    @jax.jit
    def scan_stats(xs):
        def body(acc, x):
            return acc.update(x), None

        acc, _ = jax.lax.scan(body, norms.PopulationAccumulator.init(3), xs)
        return acc.result()

    got = scan_stats(jnp.asarray(xs))
    acc = norms.PopulationAccumulator.init(3)
    for x in xs:
        acc = acc.update(jnp.asarray(x))
    loop = acc.result()
    m = 12
    allv = f64(xs).reshape(-1, 3)
    expected_var = m / (m - 1) * np.stack([f64(x).reshape(-1, 3).var(axis=0) for x in xs]).mean(axis=0)
    for res in (got, loop):
        close(res.mean, allv.mean(axis=0))
        close(res.var, expected_var)
    close(acc.count, 60, rtol=0, atol=0)
    close(acc.dof, 55, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Documented errors.

X2 = jnp.ones((4, 3), jnp.float32)
X4 = jnp.ones((2, 3, 3, 4), jnp.float32)
S3 = BatchStats.init(3)

BN_ERRORS = [
    ("dense_batch_of_one", lambda: norms.batch_norm(jnp.ones((1, 3)), S3, train=True),
     ValueError, r"at least 2 values per feature.*got 1"),
    ("group_size_one", lambda: norms.batch_norm(X2, S3, train=True, group_size=1),
     ValueError, r"at least 2 values per feature.*group_size=1"),
    ("stats_mean_shape", lambda: norms.batch_norm(X2, BatchStats.init(4), train=True),
     ValueError, r"stats\.mean must have shape \(3,\)"),
    ("stats_var_shape", lambda: norms.batch_norm(X2, BatchStats(jnp.zeros(3), jnp.ones(2)), train=False),
     ValueError, r"stats\.var must have shape \(3,\)"),
    ("scale_shape", lambda: norms.batch_norm(X2, S3, jnp.ones(2), train=True),
     ValueError, r"scale must have shape \(3,\)"),
    ("bias_shape", lambda: norms.batch_norm(X2, S3, None, jnp.ones((1, 3)), train=False),
     ValueError, r"bias must have shape \(3,\)"),
    ("int_x", lambda: norms.batch_norm(jnp.ones((4, 3), jnp.int32), S3, train=True),
     TypeError, r"x must be a floating-point array, got dtype int32"),
    ("int_scale", lambda: norms.batch_norm(X2, S3, jnp.ones(3, jnp.int32), train=True),
     TypeError, r"scale must be a floating-point array"),
    ("group_size_not_divisor", lambda: norms.batch_norm(X2, S3, train=True, group_size=3),
     ValueError, r"group_size=3 must be a positive divisor of the batch size 4"),
    ("group_size_zero", lambda: norms.batch_norm(X2, S3, train=True, group_size=0),
     ValueError, r"group_size=0 must be a positive divisor"),
    ("momentum_high", lambda: norms.batch_norm(X2, S3, train=True, momentum=1.1),
     ValueError, r"momentum must lie in \[0, 1\].*1\.1"),
    ("momentum_negative", lambda: norms.batch_norm(X2, S3, train=False, momentum=-0.5),
     ValueError, r"momentum must lie in \[0, 1\]"),
    ("rank_one", lambda: norms.batch_norm(jnp.ones((3,)), S3, train=True),
     ValueError, r"rank >= 2"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn,exc,match", [c[1:] for c in BN_ERRORS], ids=[c[0] for c in BN_ERRORS])
def test_batch_norm_errors(fn, exc, match, jit):
    # Errors are raised at trace time, so they surface under jit as well.
    with pytest.raises(exc, match=match):
        jax.jit(fn)() if jit else fn()


OTHER_ERRORS = [
    ("group_norm_groups", lambda: norms.group_norm(X4, num_groups=3),
     ValueError, r"num_groups=3 must be a positive divisor of the 4 features"),
    ("group_norm_zero_groups", lambda: norms.group_norm(X4, num_groups=0),
     ValueError, r"num_groups=0 must be a positive divisor"),
    ("group_norm_one_value_per_group", lambda: norms.group_norm(X2, num_groups=3),
     ValueError, r"at least 2 values per statistic.*no features per group"),
    ("instance_norm_no_spatial", lambda: norms.instance_norm(X2),
     ValueError, r"at least 2 values per statistic.*no spatial axes"),
    ("instance_norm_one_position", lambda: norms.instance_norm(jnp.ones((2, 1, 1, 3))),
     ValueError, r"at least 2 values per statistic"),
    ("layer_norm_rank_one", lambda: norms.layer_norm(jnp.ones((5,))),
     ValueError, r"batch, \.\.\., features"),
    ("layer_norm_int", lambda: norms.layer_norm(jnp.ones((2, 3), jnp.int32)),
     TypeError, r"floating-point"),
    ("layer_norm_scale_shape", lambda: norms.layer_norm(X2, jnp.ones(4)),
     ValueError, r"scale must have shape \(3,\)"),
    ("group_norm_bias_shape", lambda: norms.group_norm(X4, None, jnp.ones(3), num_groups=2),
     ValueError, r"bias must have shape \(4,\)"),
    ("weight_norm_1d", lambda: norms.weight_norm(jnp.ones((5,))),
     ValueError, r"kernel of shape \(\.\.\., fan_in, fan_out\)"),
    ("weight_norm_int", lambda: norms.weight_norm(jnp.ones((2, 3), jnp.int32)),
     TypeError, r"v must be a floating-point array"),
    ("weight_norm_g_shape", lambda: norms.weight_norm(X2, jnp.ones(2)),
     ValueError, r"g must have shape \(3,\)"),
    ("weight_standardize_1d", lambda: norms.weight_standardize(jnp.ones((5,))),
     ValueError, r"kernel of shape"),
    ("population_empty", lambda: norms.population_stats([]),
     ValueError, r"at least one batch"),
    ("population_feature_mismatch", lambda: norms.population_stats([jnp.ones((2, 3)), jnp.ones((2, 4))]),
     ValueError, r"expected x of shape \(batch, \.\.\., 3\)"),
    ("population_one_value", lambda: norms.population_stats([jnp.ones((1, 3))]),
     ValueError, r"at least 2 values per feature"),
    ("population_int", lambda: norms.population_stats([jnp.ones((2, 3), jnp.int32)]),
     TypeError, r"floating-point"),
]


@pytest.mark.parametrize("fn,exc,match", [c[1:] for c in OTHER_ERRORS], ids=[c[0] for c in OTHER_ERRORS])
def test_other_errors(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


# --------------------------------------------------------------------------------------
# Ghost groups combined with a mapped axis: groups stay local to their shard.


def test_ghost_groups_with_axis_name_stay_local_and_running_stats_agree():
    batch_norm = norms.batch_norm
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 3.0, size=(2, 8, 3)).astype(np.float32)  # 2 shards of 8 examples
    stats = BatchStats.init(3)

    def shard(xs):
        return batch_norm(xs, stats, train=True, group_size=4, axis_name="d")

    y, new = jax.vmap(shard, axis_name="d")(jnp.asarray(x))
    # Each shard's output equals ghost BN of that shard alone (group size unchanged by sharding).
    for d in range(2):
        y_ref, _ = batch_norm(jnp.asarray(x[d]), stats, train=True, group_size=4)
        np.testing.assert_allclose(np.asarray(y[d]), np.asarray(y_ref), atol=1e-5)  # float32
    # Running statistics: identical on both shards, equal to ghost BN of the whole batch
    # (mean of the four group statistics, m = 4 values per group).
    _, whole = batch_norm(jnp.asarray(x.reshape(16, 3)), stats, train=True, group_size=4)
    for d in range(2):
        np.testing.assert_allclose(np.asarray(new.mean[d]), np.asarray(whole.mean), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(new.var[d]), np.asarray(whole.var), rtol=1e-5)


def test_population_stats_rejects_unbatched_input():
    population_stats = norms.population_stats
    with pytest.raises(ValueError, match="batch"):
        population_stats([jnp.float32(1.0)])


def test_batch_stats_from_a_flax_style_dict_equal_the_named_tuple():
    """A flax ``batch_stats`` entry (``{'mean', 'var'}``) is accepted as it is (it used to
    be unpacked positionally into its keys, failing with a ``<U4`` dtype error)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    stats = BatchStats(jnp.full(3, 0.5), jnp.full(3, 2.0))
    for train in (True, False):
        y, new = norms.batch_norm(x, {"mean": stats.mean, "var": stats.var}, train=train)
        y_ref, new_ref = norms.batch_norm(x, stats, train=train)
        assert isinstance(new, BatchStats)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(new.var, new_ref.var)


@pytest.mark.parametrize("stats", [{"mean": jnp.zeros(3)}, {"mu": jnp.zeros(3), "var": jnp.ones(3)}, ("mean", "var"), jnp.zeros(3)])
def test_batch_stats_of_another_form_are_refused_clearly(stats):
    with pytest.raises(TypeError, match="'mean' and 'var'"):
        norms.batch_norm(jnp.ones((4, 3)), stats, train=True)
