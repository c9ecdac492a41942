"""Tests for jaxnorm.inits: every initializer's distribution, fans, and error paths.

Statistical checks use one large sample per case and a tolerance of 4 standard errors,
with the standard error computed from the sample itself (mean: sqrt(var / N); variance:
sqrt((m4 - var^2) / N), valid for any distribution with a finite fourth moment). The
keys are fixed, so the tests are deterministic; 4 SE keeps the chance that a correct
initializer fails on a new key below 1e-4.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import inits
from jaxnorm.inits import get_init

# Dense kernel with distinct fans, so fan_in / fan_out / fan_avg give distinguishable
# variances (2/500 = 4e-3, 2/2000 = 1e-3, 2/2500 = 8e-4): 1e6 samples.
DENSE = (500, 2000)
FAN_IN, FAN_OUT = 500, 2000
# Conv kernel (window 3x3, 16 -> 32 channels): fan_in = 9 * 16 = 144, fan_out = 9 * 32 = 288.
CONV = (3, 3, 16, 32)
CONV_FAN_IN, CONV_FAN_OUT = 144, 288
CONV_DRAWS = 64  # independent conv kernels per check: 64 * 4608 = 294,912 samples

TRUNC_CORRECTION = 0.87962566103423978  # std of a standard normal truncated at +-2


def _sample(init, shape, seed=0):
    w = init(jax.random.PRNGKey(seed), shape, jnp.float32)
    assert w.shape == tuple(shape)
    assert w.dtype == jnp.float32
    return np.asarray(w, np.float64)


def _conv_samples(init, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), CONV_DRAWS)
    w = jax.vmap(lambda k: init(k, CONV, jnp.float32))(keys)
    assert w.shape == (CONV_DRAWS,) + CONV
    return np.asarray(w, np.float64)


def assert_moments(w, target_var, n_se=4.0):
    """Mean 0 and variance ``target_var`` within ``n_se`` standard errors of the sample."""
    w = np.asarray(w, np.float64).ravel()
    n = w.size
    mean = w.mean()
    var = w.var()
    m4 = np.mean((w - mean) ** 4)
    se_mean = math.sqrt(var / n)
    se_var = math.sqrt((m4 - var**2) / n)
    assert abs(mean) <= n_se * se_mean, f"mean {mean:.3g} not 0 (SE {se_mean:.3g})"
    assert abs(var - target_var) <= n_se * se_var, (
        f"variance {var:.6g} vs target {target_var:.6g} (SE {se_var:.3g}, rel. err {var / target_var - 1:+.4f})"
    )


# --------------------------------------------------------------------------------------
# Glorot.


def test_glorot_normal_untruncated_variance_and_tails():
    w = _sample(inits.glorot_normal(), DENSE)
    target = 2.0 / (FAN_IN + FAN_OUT)
    assert_moments(w, target)
    # Untruncated: with 1e6 normal draws, values beyond 2 sigma (about 4.6 % of them) and
    # beyond the truncated form's hard bound must occur.
    std = math.sqrt(target)
    assert np.mean(np.abs(w) > 2 * std) > 0.04
    assert np.abs(w).max() > 2 * std / TRUNC_CORRECTION


def test_glorot_normal_default_is_untruncated():
    # The docstring: default truncated=False (PyTorch xavier_normal_); same key -> same draw.
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(
        np.asarray(inits.glorot_normal()(key, DENSE)), np.asarray(inits.glorot_normal(truncated=False)(key, DENSE))
    )
    assert not np.array_equal(
        np.asarray(inits.glorot_normal()(key, DENSE)), np.asarray(inits.glorot_normal(truncated=True)(key, DENSE))
    )


@pytest.mark.parametrize(
    "init",
    [inits.glorot_normal(truncated=True), inits.glorot_truncated_normal(), get_init("glorot_truncated_normal")],
    ids=["glorot_normal(truncated=True)", "glorot_truncated_normal()", "get_init"],
)
def test_glorot_normal_truncated(init):
    w = _sample(init, DENSE)
    target = 2.0 / (FAN_IN + FAN_OUT)
    # Two-sigma truncation of N(0, (std / 0.8796)^2): the bound is 2 * std / 0.8796.
    # 1e-6 relative slack: float32 rounding of the scaled sample.
    bound = 2 * math.sqrt(target) / TRUNC_CORRECTION
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    # ... and the truncation is actually reached (1e6 draws: the top 0.1 % is within 1 %).
    assert np.abs(w).max() >= 0.99 * bound
    # The rescaling preserves the variance (without it, it would be 0.774 * target).
    assert_moments(w, target)


def test_glorot_uniform_bounds_and_variance():
    w = _sample(inits.glorot_uniform(), DENSE)
    a = math.sqrt(6.0 / (FAN_IN + FAN_OUT))
    assert np.abs(w).max() <= a * (1 + 1e-6)  # float32 rounding slack
    assert np.abs(w).max() >= 0.999 * a  # 1e6 uniform draws reach within 0.1 % of the edge
    assert_moments(w, a**2 / 3)  # = 2 / (fan_in + fan_out)
    # Uniform, not normal: the histogram is flat (each tenth of [-a, a] holds 10 % +- 4 SE).
    counts, _ = np.histogram(w, bins=10, range=(-a, a))
    frac = counts / w.size
    se = math.sqrt(0.1 * 0.9 / w.size)
    np.testing.assert_allclose(frac, 0.1, atol=4 * se)


# --------------------------------------------------------------------------------------
# He and scaled normal.


def test_he_normal_variance():
    w = _sample(inits.he_normal(), DENSE)
    assert_moments(w, 2.0 / FAN_IN)
    # Untruncated.
    assert np.abs(w).max() > 2 * math.sqrt(2.0 / FAN_IN) / TRUNC_CORRECTION


def test_he_uniform_bounds_and_variance():
    w = _sample(inits.he_uniform(), DENSE)
    a = math.sqrt(6.0 / FAN_IN)  # variance a^2 / 3 = 2 / fan_in
    assert np.abs(w).max() <= a * (1 + 1e-6)  # float32 rounding slack
    assert np.abs(w).max() >= 0.999 * a
    assert_moments(w, 2.0 / FAN_IN)


@pytest.mark.parametrize("c", [1.0, 2.0, 3.0])
def test_scaled_normal_variance(c):
    w = _sample(inits.scaled_normal(c), DENSE, seed=int(c))
    assert_moments(w, c / FAN_IN)


def test_scaled_normal_by_name_with_kwargs():
    w = _sample(get_init("scaled_normal", c=3.0), DENSE, seed=7)
    assert_moments(w, 3.0 / FAN_IN)


@pytest.mark.parametrize("c", [0.0, -1.0, -2.5])
def test_scaled_normal_rejects_nonpositive_c(c):
    with pytest.raises(ValueError, match="c > 0"):
        inits.scaled_normal(c)
    with pytest.raises(ValueError):
        get_init("scaled_normal", c=c)


# --------------------------------------------------------------------------------------
# PyTorch's default.


def test_torch_default_kernel_and_bias_bounds_and_variance():
    # PyTorch's nn.Linear/nn.Conv* default: U(±1/sqrt(fan_in)), kernel and bias. A conv
    # kernel (window 3, 25 inputs: fan_in 75, as the MNIST-1D CNN's conv2), 300,000 draws.
    fan_in = 75
    w = np.asarray(inits.torch_default()(jax.random.PRNGKey(0), (3, 25, 4000)), np.float64)
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() >= 0.999 * bound
    assert_moments(w, bound**2 / 3)  # = 1 / (3 fan_in)
    b = np.asarray(inits.get_bias_init("torch_default", fan_in)(jax.random.PRNGKey(1), (300000,)), np.float64)
    assert np.abs(b).max() <= bound * (1 + 1e-6) and np.abs(b).max() >= 0.999 * bound
    assert_moments(b, bound**2 / 3)
    np.testing.assert_array_equal(inits.get_bias_init("zeros", 3)(jax.random.PRNGKey(0), (5,)), 0.0)
    with pytest.raises(ValueError, match="unknown bias initializer"):
        inits.get_bias_init("kaiming", 3)
    with pytest.raises(ValueError, match="fan-in"):
        inits.get_bias_init("torch_default", 0)
    with pytest.raises(ValueError, match="bound"):
        inits.symmetric_uniform(0.0)


# --------------------------------------------------------------------------------------
# Conv kernels: fans count the receptive field.


@pytest.mark.parametrize(
    "name, kwargs, target",
    [
        ("glorot_normal", {}, 2.0 / (CONV_FAN_IN + CONV_FAN_OUT)),
        ("glorot_truncated_normal", {}, 2.0 / (CONV_FAN_IN + CONV_FAN_OUT)),
        ("glorot_uniform", {}, 2.0 / (CONV_FAN_IN + CONV_FAN_OUT)),
        ("he_normal", {}, 2.0 / CONV_FAN_IN),
        ("he_uniform", {}, 2.0 / CONV_FAN_IN),
        ("scaled_normal", {"c": 1.0}, 1.0 / CONV_FAN_IN),
        ("scaled_normal", {"c": 3.0}, 3.0 / CONV_FAN_IN),
    ],
)
def test_conv_fans_include_receptive_field(name, kwargs, target):
    # Without the window, fan_in would be 16 and fan_out 32: variances 9x larger.
    w = _conv_samples(get_init(name, **kwargs))
    assert_moments(w, target)


# --------------------------------------------------------------------------------------
# Orthogonal.

# Float32 QR: entries of W^T W - I are sums of ~64 products, each with relative error
# ~6e-8, so 2e-5 leaves a wide margin while catching any non-orthogonal matrix.
ORTH_ATOL = 2e-5


def _assert_semi_orthogonal(m, scale=1.0):
    m = np.asarray(m, np.float64)
    r, c = m.shape
    gram = m.T @ m if r >= c else m @ m.T
    np.testing.assert_allclose(gram, scale**2 * np.eye(min(r, c)), atol=ORTH_ATOL * max(scale**2, 1.0))


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_orthogonal_dense(shape):
    w = inits.orthogonal()(jax.random.PRNGKey(0), shape, jnp.float32)
    assert w.shape == shape
    _assert_semi_orthogonal(w)
    # Not trivially the identity / a permutation.
    assert np.count_nonzero(np.abs(np.asarray(w)) > 1e-3) > 0.5 * w.size


def test_orthogonal_scale():
    w = inits.orthogonal(scale=2.0)(jax.random.PRNGKey(1), (64, 32), jnp.float32)
    _assert_semi_orthogonal(w, scale=2.0)


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (3, 3, 4, 64)])
def test_orthogonal_conv_folds_window_into_fan_in(shape):
    w = get_init("orthogonal")(jax.random.PRNGKey(2), shape, jnp.float32)
    assert w.shape == shape
    # (prod(window) * in, out): (144, 32) orthonormal columns; (36, 64) orthonormal rows.
    _assert_semi_orthogonal(np.asarray(w).reshape(-1, shape[-1]))


# --------------------------------------------------------------------------------------
# Looks-linear.


@pytest.mark.parametrize("shape", [(64, 16), (16, 32), (64, 32)])
def test_looks_linear_mirrored_blocks(shape):
    w = np.asarray(inits.looks_linear()(jax.random.PRNGKey(0), shape, jnp.float32))
    assert w.shape == shape
    n = shape[0] // 2
    top, bottom = w[:n], w[n:]
    np.testing.assert_array_equal(top, -bottom)  # exact negation, no rounding involved
    _assert_semi_orthogonal(top)


def test_looks_linear_is_linear_after_crelu():
    # relu(x) W - relu(-x) W = x W: the layer after a CReLU computes x @ top.
    from jaxnorm.layers import crelu

    w = inits.looks_linear()(jax.random.PRNGKey(0), (32, 8), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 16))
    # float32: two 32-term dot products vs one 16-term one; magnitudes O(1).
    np.testing.assert_allclose(crelu(x) @ w, x @ w[:16], atol=1e-5)


def test_looks_linear_scale():
    w = np.asarray(inits.looks_linear(scale=0.5)(jax.random.PRNGKey(4), (32, 16), jnp.float32))
    _assert_semi_orthogonal(w[:16], scale=0.5)


@pytest.mark.parametrize("shape", [(7, 4), (33, 16)])
def test_looks_linear_rejects_odd_fan_in(shape):
    with pytest.raises(ValueError, match="even fan-in"):
        inits.looks_linear()(jax.random.PRNGKey(0), shape, jnp.float32)


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (8, 4, 4), (8,)])
def test_looks_linear_rejects_non_2d(shape):
    with pytest.raises(ValueError, match="looks_linear"):
        get_init("looks_linear")(jax.random.PRNGKey(0), shape, jnp.float32)


# --------------------------------------------------------------------------------------
# The name table.


def test_get_init_unknown_name_lists_known():
    with pytest.raises(ValueError) as err:
        get_init("xavier_gaussian")
    msg = str(err.value)
    assert "xavier_gaussian" in msg
    for name in inits.INITS:
        assert name in msg


def test_get_init_knows_every_documented_name():
    expected = {
        "glorot_normal",
        "glorot_truncated_normal",
        "glorot_uniform",
        "he_normal",
        "he_uniform",
        "orthogonal",
        "scaled_normal",
        "looks_linear",
        "torch_default",
    }
    assert set(inits.INITS) == expected
    for name in expected:
        w = get_init(name)(jax.random.PRNGKey(0), (8, 4), jnp.float32)
        assert w.shape == (8, 4) and bool(jnp.all(jnp.isfinite(w)))


def test_get_init_passes_kwargs():
    a = get_init("glorot_normal", truncated=True)(jax.random.PRNGKey(5), DENSE)
    b = inits.glorot_truncated_normal()(jax.random.PRNGKey(5), DENSE)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(TypeError):
        get_init("he_normal", c=2.0)  # he_normal takes no arguments
