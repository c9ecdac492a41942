"""``jaxnorm.diagnostics.hessian``: HVPs against ``jax.hessian``, the iterative solvers
against ``numpy.linalg.eigh``, trace and density against known spectra.

Tolerances: float32 throughout. HVP vs the dense Hessian: the same derivatives in a
different order, 1e-4 relative to the largest entry. Lanczos with full
reorthogonalization and order = dimension: the Ritz values are the eigenvalues up to
float32 rounding of a 30x30 (or ~60x60) problem, 1e-4 relative to λ_max.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnorm.diagnostics.hessian import (
    block_loss_fn,
    hessian_loss_fn,
    hutchinson_trace,
    hvp,
    lanczos,
    outlier_ratio,
    power_iteration,
    spectral_density,
    top_eigenpairs,
)
from jaxnorm.models import get_model

RNG = np.random.default_rng(0)
_M = RNG.standard_normal((30, 30))
A = (_M + _M.T) / 2
A[0, 0] += 20.0  # a clear top eigenvalue, so power iteration converges in a few steps
EIGS = np.linalg.eigvalsh(A)[::-1]
W = {"a": jnp.asarray(RNG.standard_normal(20), jnp.float32), "b": jnp.asarray(RNG.standard_normal(10), jnp.float32)}


def quadratic(p):
    v = jnp.concatenate([p["a"], p["b"]])
    return 0.5 * v @ jnp.asarray(A, jnp.float32) @ v


@pytest.fixture(scope="module")
def tiny_bn():
    """A 3-layer MLP with BN on 4 features and its exact Hessian (train and eval mode)."""
    module = get_model("mlp", depth=3, width=4, norm="bn_gamma_beta", num_classes=3)
    x = jnp.asarray(RNG.standard_normal((8, 5)), jnp.float32)
    y = jnp.arange(8) % 3
    v = module.init(jax.random.PRNGKey(0), x, train=False)
    v = {"params": v["params"], "batch_stats": jax.tree.map(lambda a: a + 0.3, v["batch_stats"])}
    out = {}
    for mode in ("batch", "running"):
        loss = hessian_loss_fn(module, v, x, y, bn_mode=mode)
        flat, unravel = ravel_pytree(v["params"])
        dense = jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat)  # jitted: op by op it compiles every op
        out[mode] = (loss, dense)
    return v["params"], out


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_hvp_equals_dense_hessian_times_v(tiny_bn, mode):
    params, out = tiny_bn
    loss, dense = out[mode]
    flat, unravel = ravel_pytree(params)
    v = jnp.asarray(RNG.standard_normal(flat.shape), jnp.float32)
    got, _ = ravel_pytree(jax.jit(lambda p, v: hvp(loss, p, unravel(v)))(params, v))
    # Float32 rounding of a dot product is bounded by ~n·eps times Σ_j |H_ij v_j|; the
    # measured error is 2e-7 of that bound, so 1e-5 of it (plus 1e-7 for zero rows).
    bound = np.abs(np.asarray(dense)) @ np.abs(np.asarray(v))
    assert np.all(np.abs(np.asarray(got) - np.asarray(dense @ v)) <= 1e-5 * bound + 1e-7)


def test_train_and_eval_mode_hessians_differ(tiny_bn):
    """The BN mode is not a no-op: batch statistics (differentiated through) vs running."""
    _, out = tiny_bn
    assert float(jnp.abs(out["batch"][1] - out["running"][1]).max()) > 1e-3


def test_lanczos_full_order_recovers_eigh_of_a_matrix():
    res = jax.jit(lambda p: lanczos(quadratic, p, 30, key=jax.random.PRNGKey(1)))(W)
    ritz = np.sort(np.linalg.eigvalsh(np.asarray(res.tridiagonal(), np.float64)))[::-1]
    np.testing.assert_allclose(ritz, EIGS, atol=1e-4 * EIGS[0])
    vals, vecs = top_eigenpairs(res, 2)
    np.testing.assert_allclose(vals, EIGS[:2], rtol=1e-4)
    # Ritz vectors are eigenvectors: A u = λ u.
    np.testing.assert_allclose(A @ np.asarray(vecs[0]), float(vals[0]) * np.asarray(vecs[0]), atol=1e-3 * EIGS[0])


def test_lanczos_full_order_recovers_a_networks_exact_hessian(tiny_bn):
    params, out = tiny_bn
    loss, dense = out["batch"]
    n = dense.shape[0]
    res = jax.jit(lambda p: lanczos(loss, p, n, key=jax.random.PRNGKey(2)))(params)
    want = np.linalg.eigvalsh(np.asarray(dense, np.float64))
    got = np.linalg.eigvalsh(np.asarray(res.tridiagonal(), np.float64))
    np.testing.assert_allclose(np.sort(got), np.sort(want), atol=1e-4 * np.abs(want).max())


def test_power_iteration_and_lanczos_agree_on_the_top_eigenvalue_without_recompiling():
    traces = []

    @jax.jit
    def top(p, n, tol):
        traces.append(1)
        return power_iteration(quadratic, p, num_iters=n, tol=tol)

    few = top(W, 3, 1e-6)
    res = top(W, 500, 1e-6)
    assert len(traces) == 1, "changing num_iters at run time must not recompile"
    assert int(few.iterations) == 3 and int(res.iterations) < 500 and bool(res.converged)
    lz = top_eigenpairs(lanczos(quadratic, W, 20), 1)[0][0]
    assert abs(float(res.eigenvalue) - float(lz)) <= 1e-3 * abs(float(lz))
    assert abs(float(res.eigenvalue) - EIGS[0]) <= 1e-3 * EIGS[0]
    # Warm start from the eigenvector: converged after the minimum of two iterations.
    warm = power_iteration(quadratic, W, num_iters=500, tol=1e-6, v0=res.eigenvector)
    assert int(warm.iterations) <= 3


def test_power_iteration_residual_is_that_of_the_last_iterate():
    """residual after n iterations = ‖Hu − (uᵀHu)u‖ / |uᵀHu| for u the vector returned after
    n − 1 (tolerance 0: both run every iteration); it shrinks as the vector converges."""
    early = power_iteration(quadratic, W, num_iters=4, tol=0.0)
    before = power_iteration(quadratic, W, num_iters=3, tol=0.0)
    u = np.concatenate([np.asarray(before.eigenvector[k], np.float64) for k in ("a", "b")])
    hu = np.asarray(A, np.float64) @ u
    lam = u @ hu
    assert float(early.residual) == pytest.approx(np.linalg.norm(hu - lam * u) / abs(lam), rel=1e-4)
    late = power_iteration(quadratic, W, num_iters=500, tol=0.0)
    assert float(late.residual) < 0.1 * float(early.residual)


def test_power_iteration_with_a_shift_finds_the_top_eigenvalue_under_a_dominant_negative_one():
    """diag(3, 1, -10): unshifted power iteration converges to -10 (largest magnitude);
    shifted by -10 it returns the top eigenvalue 3."""
    d = jnp.asarray([3.0, 1.0, -10.0])
    loss = lambda p: 0.5 * jnp.sum(d * p**2)
    p0 = jnp.ones(3)
    plain = power_iteration(loss, p0, num_iters=500, tol=1e-7)
    assert float(plain.eigenvalue) == pytest.approx(-10.0, rel=1e-4)
    top = power_iteration(loss, p0, num_iters=500, tol=1e-7, shift=plain.eigenvalue)
    assert float(top.eigenvalue) == pytest.approx(3.0, rel=1e-3)


def test_hutchinson_trace_converges_to_the_exact_trace():
    est, err = jax.jit(lambda p: hutchinson_trace(quadratic, p, key=jax.random.PRNGKey(0), num_samples=3000))(W)
    assert abs(float(est) - np.trace(A)) <= 4 * float(err)
    assert float(err) < 0.05 * np.abs(A).sum()


def test_spectral_density_integrates_to_one_with_mass_at_the_eigenvalues():
    d = jnp.asarray([1.0, 1.0, 1.0, 5.0, 5.0, 10.0])
    loss = lambda p: 0.5 * jnp.sum(d * p**2)
    out = spectral_density(loss, jnp.ones(6), key=jax.random.PRNGKey(0), order=6, num_vectors=30, sigma=0.1)
    g, dens = np.asarray(out["grid"]), np.asarray(out["density"])
    assert np.trapezoid(dens, g) == pytest.approx(1.0, abs=1e-3)
    near = lambda c: np.trapezoid(dens[np.abs(g - c) < 0.5], g[np.abs(g - c) < 0.5])
    # Each eigenvalue carries weight (multiplicity / 6) in expectation over start vectors.
    assert near(1.0) == pytest.approx(0.5, abs=0.12)
    assert near(5.0) == pytest.approx(1 / 3, abs=0.12)
    assert near(10.0) == pytest.approx(1 / 6, abs=0.1)
    assert near(3.0) < 1e-3  # no mass between the eigenvalues
    np.testing.assert_allclose(np.asarray(out["weights"]).sum(axis=1), 1.0, atol=1e-5)


def test_block_spectrum_is_the_hessians_diagonal_block():
    loss, sub = block_loss_fn(quadratic, W, "^b$")
    res = lanczos(loss, sub, 10)
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(np.asarray(res.tridiagonal(), np.float64))),
        np.linalg.eigvalsh(A[20:, 20:]),
        atol=1e-4 * EIGS[0],
    )
    assert float(outlier_ratio(jnp.asarray(EIGS), 2)) == pytest.approx(EIGS[0] / EIGS[1])


def test_several_batches_average():
    """The loss over (n, b) batches is the mean of the batch losses, so its HVP is the mean HVP."""
    module = get_model("mlp", depth=2, width=4, num_classes=3)
    x = jnp.asarray(RNG.standard_normal((2, 4, 5)), jnp.float32)
    y = jnp.asarray([[0, 1, 2, 0], [1, 1, 2, 2]])
    v = module.init(jax.random.PRNGKey(0), x[0], train=False)
    both = hessian_loss_fn(module, v, x, y)
    each = [hessian_loss_fn(module, v, x[i], y[i]) for i in range(2)]
    u = jax.tree.map(jnp.ones_like, v["params"])
    got = hvp(both, v["params"], u)
    want = jax.tree.map(lambda a, b: (a + b) / 2, *(hvp(f, v["params"], u) for f in each))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_documented_errors():
    module = get_model("mlp", depth=2, width=4, num_classes=3)
    x = jnp.zeros((4, 5))
    v = module.init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(ValueError, match="bn_mode"):
        hessian_loss_fn(module, v, x, jnp.zeros(4, jnp.int32), bn_mode="frozen")
    with pytest.raises(ValueError, match="expected x"):
        hessian_loss_fn(module, v, x[None], jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="order"):
        lanczos(quadratic, W, 31)
    with pytest.raises(ValueError, match="order"):
        spectral_density(quadratic, W, key=jax.random.PRNGKey(0), order=0)
    with pytest.raises(ValueError, match="k must"):
        top_eigenpairs(lanczos(quadratic, W, 5), 6)
    with pytest.raises(ValueError, match="matches no parameter"):
        block_loss_fn(quadratic, W, "^conv")
