"""One call from a model and a batch to its curvature's top eigenvalues or trace -- the
two questions PyHessian's ``hessian(model, criterion, data).eigenvalues(top_n=k)`` and
``.trace()`` answer (Yao, Gholami, Keutzer and Mahoney, "PyHessian: Neural Networks
Through the Lens of the Hessian", 2020).

Both build the loss with :func:`~jaxnorm.diagnostics.hessian.hessian_loss_fn` and call
the matrix-free solvers of :mod:`jaxnorm.diagnostics.hessian`; everything those take
(``curvature``, ``loop``, ``precision``, the BN mode) is a keyword here too, and the
result records it. Differences from PyHessian, on purpose:

* BatchNorm defaults to ``bn_mode='batch'`` (the training objective's Hessian: batch
  statistics differentiated through); PyHessian users call ``model.eval()`` first, which
  is ``bn_mode='running'`` here.
* The top eigenvalues come from Lanczos with full reorthogonalization (the largest
  *algebraic* eigenvalues, all k from one Krylov space) instead of power iteration with
  deflation (largest in magnitude, one solve per eigenvalue), and every eigenpair comes
  with its residual ``‖Cv − λv‖`` -- computed with one more product per pair, so how far
  each value can be trusted is part of the answer.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnorm.diagnostics.curvature import curvature_matvec
from jaxnorm.diagnostics.hessian import (
    SolverInfo,
    TraceResult,
    hessian_loss_fn,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    top_eigenpairs,
)

#: Trace estimators of :func:`hessian_trace`: name -> solver.
TRACE_METHODS = {"hutchinson": hutchinson_trace, "hutchpp": hutchpp_trace}


class Eigenpairs(NamedTuple):
    """The top-k eigenpairs of a curvature matrix.

    Attributes:
      eigenvalues: ``(k,)``, descending.
      eigenvectors: a pytree like the params whose leaves have a leading axis k
        (``jax.tree.map(lambda v: v[i], eigenvectors)`` is the i-th, unit norm over all leaves).
      residuals: ``(k,)``, ``‖C v_i − λ_i v_i‖`` (v_i of unit norm): an eigenvalue is
        within this distance of an exact eigenvalue of C (C symmetric).
      info: the :class:`~jaxnorm.diagnostics.hessian.SolverInfo` of the Lanczos run.
    """

    eigenvalues: jax.Array
    eigenvectors: Any
    residuals: jax.Array
    info: SolverInfo


def _loss(module, variables, x, y, bn_mode, weight_decay, loss):
    if "params" not in variables:
        raise ValueError(f"variables must hold 'params' (flax's {{'params': ..., 'batch_stats': ...}}), got keys {sorted(variables)}.")
    return hessian_loss_fn(module, variables, jnp.asarray(x), jnp.asarray(y), bn_mode=bn_mode, weight_decay=weight_decay, loss=loss)


def top_eigenvalues(
    module,
    variables,
    x,
    y,
    k: int = 1,
    *,
    order: Optional[int] = None,
    bn_mode: str = "batch",
    curvature: str = "hessian",
    weight_decay: float = 0.0,
    loss="ce",
    key: Optional[jax.Array] = None,
    loop: str = "auto",
    precision: Optional[str] = "highest",
) -> Eigenpairs:
    """The ``k`` largest eigenvalues (and eigenvectors) of the ``curvature`` matrix of the
    mean loss of ``module`` on the batch ``(x, y)`` (``x (b, ...)``, ``y (b,)``; or several
    batches ``(n, b, ...)``/``(n, b)``, averaged -- :func:`hessian_loss_fn`).

    ``order`` Lanczos steps (default ``min(P, max(4k, 40))``, P the parameter count; with
    ``order = P`` the values are exact up to rounding). Check ``residuals`` before trusting
    a value: a Ritz value that has not converged has a large one; raise ``order`` then.

    Raises:
      ValueError: ``k`` < 1 or above ``order``; ``order`` above P; ``variables`` without
        ``'params'``; the errors of :func:`hessian_loss_fn` and :func:`lanczos`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}.")
    loss_fn = _loss(module, variables, x, y, bn_mode, weight_decay, loss)
    params = variables["params"]
    p = ravel_pytree(params)[0].shape[0]
    order = min(p, max(4 * k, 40)) if order is None else order
    if k > order:
        raise ValueError(f"k = {k} exceeds the Lanczos order {order} (at most the {p} parameters).")
    result = lanczos(loss_fn, params, order, key=key, curvature=curvature, loop=loop, precision=precision)
    values, flat_vectors = top_eigenpairs(result, k)
    # The residual products at the solver's precision (TF32 products on a GPU would otherwise
    # make every residual look ~1e-3 relative even for exact eigenpairs).
    with contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision):
        matvec, _ = curvature_matvec(loss_fn, params, curvature)
        flat_vectors = flat_vectors / jnp.linalg.norm(flat_vectors, axis=1, keepdims=True)
        products = jnp.stack([matvec(v) for v in flat_vectors])
    residuals = jnp.linalg.norm(products - values[:, None] * flat_vectors, axis=1)
    unravel = ravel_pytree(params)[1]
    vectors = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[unravel(v) for v in flat_vectors])
    return Eigenpairs(values, vectors, residuals, result.info)


def hessian_trace(
    module,
    variables,
    x,
    y,
    *,
    method: str = "hutchpp",
    num_matvecs: int = 99,
    bn_mode: str = "batch",
    curvature: str = "hessian",
    weight_decay: float = 0.0,
    loss="ce",
    key: Optional[jax.Array] = None,
    loop: str = "auto",
    precision: Optional[str] = "highest",
) -> TraceResult:
    """A stochastic estimate of the trace of the ``curvature`` matrix of the mean loss of
    ``module`` on ``(x, y)`` (shapes as :func:`top_eigenvalues`), with its standard error.

    ``method``: ``'hutchpp'`` (default; Hutch++, exact on a low-rank sketch plus
    Hutchinson on the rest -- several times more accurate for the PSD ``'ggn'``/``'fisher'``
    at equal products, no worse for the indefinite Hessian beyond ~30 products;
    BENCHMARKS.md) or ``'hutchinson'`` (PyHessian's estimator: ``num_matvecs`` Rademacher
    probes). ``num_matvecs`` curvature products in either case; ``key`` defaults to
    ``PRNGKey(0)``.

    Raises:
      ValueError: an unknown ``method``; the errors of :func:`hessian_loss_fn` and the solver.
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown trace method {method!r}; known: {sorted(TRACE_METHODS)}.")
    loss_fn = _loss(module, variables, x, y, bn_mode, weight_decay, loss)
    key = jax.random.PRNGKey(0) if key is None else key
    count = {"hutchpp": "num_matvecs", "hutchinson": "num_samples"}[method]
    return TRACE_METHODS[method](loss_fn, variables["params"], key=key, curvature=curvature, loop=loop,
                                 precision=precision, **{count: num_matvecs})
