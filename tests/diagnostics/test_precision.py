"""float64 honoured (issue 15, item 5): the gradient metrics keep float64 inputs in
float64 (they used to cast to float32) and compute narrower inputs in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import flatten, gradient_coherence, gradient_diversity, stable_rank
from jaxnorm.diagnostics.effective_rank import gram


def test_float64_gradients_give_float64_metrics_to_float64_accuracy():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((6, 50)) + 3.0  # one shared direction: coherence well above 0
    with jax.enable_x64(True):
        tree = {"a": jnp.asarray(g[:, :20].reshape(6, 4, 5)), "b": jnp.asarray(g[:, 20:])}
        flat = flatten(tree, batch_dims=1)
        assert flat.dtype == jnp.float64 and np.array_equal(np.asarray(flat), g)
        assert gram(flat).dtype == jnp.float64
        k = g @ g.T
        mean = g.mean(axis=0)
        # diversity = Σ‖g_i‖² / ‖Σ g_i‖² (Def. 3.12); float32 would leave relative errors near 1e-7.
        assert float(gradient_diversity(flat)) == pytest.approx(np.trace(k) / (36 * mean @ mean), rel=1e-13)
        assert float(stable_rank(flat)) == pytest.approx(np.trace(k) / np.linalg.eigvalsh(k)[-1], rel=1e-12)
        assert gradient_coherence(flat).dtype == jnp.float64


def test_half_precision_is_computed_in_float32():
    g = jnp.ones((3, 4), jnp.bfloat16)
    assert flatten({"w": g}, batch_dims=1).dtype == jnp.float32
    assert gram(g).dtype == jnp.float32 and gradient_diversity(g).dtype == jnp.float32


def test_the_hessian_condition_number_of_a_float64_quadratic_is_exact():
    from jaxnorm.diagnostics import hessian_condition_number

    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    a = q @ np.diag([5.0, 2.0, 1.0, 0.5, 0.2, 0.1]) @ q.T
    bvec, w = rng.standard_normal(6), rng.standard_normal(6)
    with jax.enable_x64(True):
        loss = lambda p: 0.5 * p["w"] @ jnp.asarray(a) @ p["w"] - jnp.asarray(bvec) @ p["w"]
        got = hessian_condition_number(loss, {"w": jnp.asarray(w)}, order=6)  # order = P: Lanczos is exact
        assert got.kappa.dtype == jnp.float64
    g = a @ w - bvec
    # Exact in exact arithmetic; float64 rounding of a 6-step Lanczos, ~1e-14 relative.
    assert float(got.kappa) == pytest.approx(5.0 * np.linalg.norm(w) / np.linalg.norm(g), rel=1e-10)
    assert float(got.directional) == pytest.approx(np.linalg.norm(a @ g) / np.linalg.norm(g) * np.linalg.norm(w) / np.linalg.norm(g), rel=1e-10)
