"""The one-call curvature helpers (``jaxnorm.diagnostics.model_curvature``), PyHessian's
``eigenvalues(top_n=k)`` and ``trace()`` from a model and a batch.

Reference: the dense Hessian of the same loss by ``jax.hessian`` (float32), symmetrized
and ``eigh``-ed in float64. Tolerances: float32 products and a float32 Lanczos with full
reorthogonalization are backward stable, so an eigenvalue moves by at most c·P·eps·‖H‖
with eps = 6e-8 and P = 39 here (~2e-6‖H‖ for c = 1); we allow 1e-4‖H‖ (50x headroom).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnorm.diagnostics import hessian_loss_fn, hessian_trace, lanczos, top_eigenpairs, top_eigenvalues
from jaxnorm.models import get_model

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((6, 5)), jnp.float32)
Y = jnp.asarray([0, 1, 2, 0, 1, 1], jnp.int32)


@pytest.fixture(scope="module")
def net():
    """A 2-layer tanh MLP (P = 39), its variables and the dense Hessian of its mean loss."""
    module = get_model("mlp", depth=2, width=4, num_classes=3, norm="vanilla", activation="tanh")
    v = jax.jit(lambda k: module.init(k, X, train=False))(jax.random.PRNGKey(1))
    loss = hessian_loss_fn(module, v, X, Y)
    flat, unravel = ravel_pytree(v["params"])
    h = np.asarray(jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat), np.float64)
    h = (h + h.T) / 2
    return module, v, h


def test_top_eigenvalues_at_full_order_are_the_dense_hessian_s(net):
    module, v, h = net
    got = top_eigenvalues(module, v, X, Y, k=3)  # the default order, min(P, max(4k, 40)) = P = 39 here
    want = np.sort(np.linalg.eigvalsh(h))[::-1][:3]
    scale = np.abs(np.linalg.eigvalsh(h)).max()
    np.testing.assert_allclose(np.asarray(got.eigenvalues, np.float64), want, rtol=0, atol=1e-4 * scale)
    assert got.info.curvature == "hessian" and got.eigenvalues.shape == (3,) and got.residuals.shape == (3,)
    # The eigenvectors, checked with the dense matrix (not the library's products): unit
    # norm, and H v = λ v up to the same tolerance; the reported residuals say the same.
    vecs = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], got.eigenvectors))[0], np.float64) for i in range(3)])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    dense_res = np.linalg.norm(vecs @ h - np.asarray(got.eigenvalues, np.float64)[:, None] * vecs, axis=1)
    assert np.all(dense_res <= 1e-3 * scale), dense_res
    assert np.all(np.asarray(got.residuals) <= 1e-3 * scale), got.residuals


def test_default_order_stays_within_its_residual_of_an_exact_eigenvalue(net):
    """Whatever the default order converged to, each value lies within its reported
    residual of some exact eigenvalue (C symmetric: the residual bounds the distance)."""
    module, v, h = net
    got = top_eigenvalues(module, v, X, Y, k=2, order=8)
    exact = np.linalg.eigvalsh(h)
    scale = np.abs(exact).max()
    for lam, res in zip(np.asarray(got.eigenvalues, np.float64), np.asarray(got.residuals, np.float64)):
        assert np.abs(exact - lam).min() <= res + 1e-4 * scale


def test_top_eigenvalues_pass_the_curvature_and_bn_mode_through(net):
    module, v, _ = net
    got = top_eigenvalues(module, v, X, Y, k=1, order=10, curvature="ggn", key=jax.random.PRNGKey(3))
    direct = top_eigenpairs(lanczos(hessian_loss_fn(module, v, X, Y), v["params"], 10, key=jax.random.PRNGKey(3), curvature="ggn"), 1)[0]
    np.testing.assert_allclose(np.asarray(got.eigenvalues), np.asarray(direct), rtol=1e-6)
    assert got.info.curvature == "ggn" and float(got.eigenvalues[0]) >= 0


def test_hessian_trace_hutchpp_with_a_full_sketch_is_exact(net):
    """Hutch++ with k = m/3 >= P sketch vectors spans the whole space: the trace is exact."""
    module, v, h = net
    p = h.shape[0]
    got = hessian_trace(module, v, X, Y, num_matvecs=3 * p)
    assert got.info.curvature == "hessian"
    np.testing.assert_allclose(float(got.estimate), np.trace(h), rtol=0, atol=1e-4 * p * np.abs(np.diag(h)).max())


def test_hessian_trace_hutchinson_agrees_within_its_standard_error(net):
    module, v, h = net
    got = hessian_trace(module, v, X, Y, method="hutchinson", num_matvecs=200, key=jax.random.PRNGKey(5))
    assert abs(float(got.estimate) - np.trace(h)) <= 5 * float(got.stderr)
    assert int(got.num_matvecs) == 200


@pytest.mark.parametrize("call, match", [
    (lambda m, v: top_eigenvalues(m, v, X, Y, k=0), "k must be an int >= 1"),
    (lambda m, v: top_eigenvalues(m, v, X, Y, k=5, order=4), "exceeds the Lanczos order"),
    (lambda m, v: top_eigenvalues(m, {"batch_stats": {}}, X, Y), "must hold 'params'"),
    (lambda m, v: hessian_trace(m, v, X, Y, method="exact"), "unknown trace method"),
    (lambda m, v: hessian_trace(m, v, X, Y, bn_mode="train"), "bn_mode"),
])
def test_bad_arguments_raise_clear_errors(net, call, match):
    module, v, _ = net
    with pytest.raises(ValueError, match=match):
        call(module, v)
