"""Stable (effective) rank and the relative gradient rank (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, Defs. 3.6-3.7).

``R(A) = ‖A‖_F² / ‖A‖_2²`` (the stable rank; at most rank A). The relative gradient
rank of a gradient matrix ``A`` (rows: the per-example weight gradients ``h_W`` or
input gradients ``h_X`` of a batch) is ``R(A) / R(Y)`` with Y a standard Gaussian matrix
of A's shape (Balduzzi et al. 2017, "The shattered gradients problem"): near 1 the
gradients look like white noise, near 0 they are highly correlated.

``R(Y)`` depends only on the shape, so it is computed once per shape and cached
(:func:`gaussian_stable_rank`). It is computed exactly in distribution without
drawing the ``b × d`` matrix: ``Yᵀ Y``'s nonzero eigenvalues are those of a Wishart
matrix ``W_p(q, I)`` with ``p = min(b, d)``, ``q = max(b, d)``, sampled in ``O(p²)`` by
the Bartlett decomposition ``W = L Lᵀ``, ``L`` lower triangular with
``L_ii² ~ χ²(q - i)`` and ``L_ij ~ N(0, 1)`` below the diagonal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnorm._precision import as_working
import numpy as np

__all__ = [
    "stable_rank",
    "stable_rank_from_gram",
    "gaussian_stable_rank",
    "relative_gradient_rank",
    "relative_rank_from_gram",
]


def gram(a: jax.Array) -> jax.Array:
    """The smaller Gram matrix of ``a`` (``(n, n)`` for ``(n, d)``, n <= d), in float32 or
    ``a``'s wider dtype (float64 stays float64)."""
    a = as_working(a)
    return a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a


def stable_rank_from_gram(k: jax.Array) -> jax.Array:
    """``R(A) = tr(K) / λ_max(K)`` for a Gram matrix ``K = A Aᵀ`` (or ``Aᵀ A``).

    NaN for an all-zero matrix (the ratio is undefined)."""
    top = jnp.linalg.eigvalsh(k)[-1]
    return jnp.where(top > 0, jnp.trace(k) / jnp.where(top > 0, top, 1.0), jnp.nan)


def stable_rank(a: jax.Array) -> jax.Array:
    """``R(A) = ‖A‖_F² / ‖A‖_2²`` of an ``(n, d)`` matrix (Def. 3.6)."""
    if a.ndim != 2:
        raise ValueError(f"stable_rank expects a matrix (n, d), got shape {a.shape}.")
    return stable_rank_from_gram(gram(a))


@functools.lru_cache(maxsize=None)
def gaussian_stable_rank(n: int, d: int, samples: int = 32, seed: int = 0) -> float:
    """``E[R(Y)]`` for a standard Gaussian ``(n, d)`` matrix, averaged over ``samples``
    Bartlett-sampled Wishart draws (see the module docstring). Cached per arguments;
    a host-side float64 computation of ``O(samples · min(n, d)³)``.

    Raises:
      ValueError: ``n`` or ``d`` < 1.
    """
    if n < 1 or d < 1:
        raise ValueError(f"matrix dimensions must be >= 1, got ({n}, {d}).")
    p, q = min(n, d), max(n, d)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        low = np.tril(rng.standard_normal((p, p)), -1)
        low[np.diag_indices(p)] = np.sqrt(rng.chisquare(q - np.arange(p)))
        w = low @ low.T
        out.append(np.trace(w) / np.linalg.eigvalsh(w)[-1])
    return float(np.mean(out))


def relative_gradient_rank(a: jax.Array) -> jax.Array:
    """``Δ R = R(A) / E[R(Y)]`` (Def. 3.7) of a gradient matrix ``A``, ``(n, d)``:
    one gradient per row (per-example weight or input gradients, flattened; see
    :func:`jaxnorm.diagnostics.masking.flatten`)."""
    if a.ndim != 2:
        raise ValueError(f"relative_gradient_rank expects a matrix (n, d), got shape {a.shape}.")
    return stable_rank(a) / gaussian_stable_rank(*a.shape)


def relative_rank_from_gram(k: jax.Array, dim: int) -> jax.Array:
    """:func:`relative_gradient_rank` from the ``(n, n)`` Gram matrix of ``n`` gradients
    of dimension ``dim`` (e.g. :func:`~jaxnorm.diagnostics.per_example.per_example_gram`)."""
    return stable_rank_from_gram(k) / gaussian_stable_rank(k.shape[0], dim)
