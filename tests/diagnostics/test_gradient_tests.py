"""Cockpit's gradient tests and mean GSNR (``jaxnorm.diagnostics.gradient_tests``) against
the papers' forms computed directly from per-example gradients in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics.gradient_tests import (
    GSNR_EPSILON,
    gradient_tests,
    inner_product_test,
    mean_gsnr,
    norm_test,
    orthogonality_test,
)


def _grads(seed=0, b=16, d=40):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(d) + 0.7 * rng.standard_normal((b, d))  # a shared direction plus noise


def _references(g):
    """Byrd et al. eq. 3.9 and Bollapragada et al. eqs. 2.6, 3.3, straight from the gradients."""
    b = len(g)
    mean = g.mean(axis=0)
    g2 = mean @ mean
    proj = g @ mean
    norm = np.sqrt(np.sum(np.var(g, axis=0, ddof=1)) / (b * g2))
    inner = np.sqrt(np.var(proj, ddof=1) / (b * g2**2))
    orth = np.sqrt(np.sum((g - np.outer(proj / g2, mean)) ** 2) / (b - 1) / (b * g2))
    return norm, inner, orth


def test_the_tests_equal_the_papers_forms():
    g = _grads()
    k = g @ g.T
    with jax.enable_x64(True):
        got = jax.jit(gradient_tests)(jnp.asarray(k))
        assert got["norm_test"].dtype == jnp.float64  # the input's precision is kept
    for name, ref in zip(("norm_test", "inner_product_test", "orthogonality_test"), _references(g)):
        assert float(got[name]) == pytest.approx(ref, rel=1e-12)
    # float32: rounding of the Gram's entries (|K| <= ~100, eps 6e-8) over b = 16 terms.
    got32 = gradient_tests(jnp.asarray(k, jnp.float32))
    for name, ref in zip(("norm_test", "inner_product_test", "orthogonality_test"), _references(g)):
        assert float(got32[name]) == pytest.approx(ref, rel=1e-4)


def test_identical_gradients_pass_every_test_and_a_zero_gradient_is_nan():
    g = np.tile(_grads()[:1], (8, 1))
    with jax.enable_x64(True):
        got = gradient_tests(jnp.asarray(g @ g.T))
        assert all(abs(float(v)) < 1e-6 for v in got.values())
        zero = np.vstack([g[:4], -g[:4]])  # the batch gradient cancels
        assert all(np.isnan(float(v)) for v in gradient_tests(jnp.asarray(zero @ zero.T)).values())


def test_mean_gsnr_is_cockpits_on_a_tree():
    g = _grads(1, b=12, d=30)
    tree = {"a": g[:, :10], "b": g[:, 10:].reshape(12, 4, 5)}
    mean = jax.tree.map(lambda x: x.mean(axis=0), tree)
    second = jax.tree.map(lambda x: (x**2).mean(axis=0), tree)
    m = g.mean(axis=0)
    ref = np.mean(m**2 / (np.var(g, axis=0) + GSNR_EPSILON))  # population variance, as Cockpit
    with jax.enable_x64(True):
        got = jax.jit(mean_gsnr)(jax.tree.map(jnp.asarray, mean), jax.tree.map(jnp.asarray, second))
    assert float(got) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("call, message", [
    (lambda: norm_test(jnp.ones((3, 2))), r"\(b, b\)"),
    (lambda: inner_product_test(jnp.ones((1, 1))), "b >= 2"),
    (lambda: orthogonality_test(jnp.ones(4)), r"\(b, b\)"),
    (lambda: mean_gsnr({"a": jnp.ones(3)}, {"a": jnp.ones(4)}), "same structure"),
    (lambda: mean_gsnr({"a": jnp.ones(3)}, {"b": jnp.ones(3)}), "same structure"),
])  # fmt: skip
def test_bad_inputs_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
