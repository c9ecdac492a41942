"""Batch-dissonance metrics: gradient confusion, diversity and coherence (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, §3.6-3.8).

Each metric is a function of a set of gradient vectors, given either as an ``(n, d)``
matrix (one gradient per row) or as its ``(n, n)`` Gram matrix ``K = G Gᵀ`` (the
``*_from_gram`` forms: :func:`~jaxnorm.diagnostics.per_example.per_example_gram`
computes ``K`` without materializing ``G``). The rows are either mini-batch gradients
``ḡ(χ_i)`` of ``n`` batches, or the per-example gradients ``g_i`` of one batch; ``n``
is part of the result (diversity depends on it), so compare at equal ``n``.

All are invariant to scaling every gradient by one constant (e.g. the loss by c > 0).

Over the *same* n gradients, diversity and coherence are reciprocal up to n:
``diversity × coherence × n = (Σ‖g_i‖²/‖Σg_i‖²)·(‖Σg_i‖²/(n Σ‖g_i‖²))·n = 1`` exactly
(to float32 rounding when computed; tested). So the per-example diversity of one batch
(Yin et al.) and the per-example coherence (Def. 3.13) of that batch carry the same
information, ``per_example_diversity × coherence × b = 1``; report one of them. The
identity does not link Def. 3.12 over n *batch* gradients with the coherence of one
batch's per-example gradients, nor the Def. 4.1 forms (their coherence uses ḡ(w), not
the mean of the perturbed gradients).
An all-zero set makes the ratios 0/0; the result is then NaN.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxnorm._precision import as_working

__all__ = [
    "gradient_confusion",
    "confusion_from_gram",
    "gradient_diversity",
    "diversity_from_gram",
    "gradient_coherence",
    "coherence_from_gram",
    "coherence_from_norms",
    "cosine_matrix",
]


def _matrix(g: jax.Array, what: str) -> jax.Array:
    if g.ndim != 2:
        raise ValueError(f"{what} expects gradients as a matrix (n, d), one per row; got shape {g.shape}.")
    if g.shape[0] < 1:
        raise ValueError(f"{what} needs at least one gradient.")
    return as_working(g)


def _safe_div(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), jnp.nan)


def cosine_matrix(k: jax.Array) -> jax.Array:
    """Pairwise cosine similarities from a Gram matrix (NaN where a gradient is zero)."""
    d = jnp.sqrt(jnp.diag(k))
    return _safe_div(k, d[:, None] * d[None, :])


def confusion_from_gram(k: jax.Array, pairs: Optional[jax.Array] = None) -> jax.Array:
    """Gradient confusion (Def. 3.11) from the Gram matrix of ``n >= 2`` gradients.

    ``−min(min_{(i, j) ∈ pairs} cos(g_i, g_j), 0)``: the most negative cosine similarity
    over the pairs, or 0 if none is negative (Sankararaman et al. 2020, normalized).

    Args:
      k: ``(n, n)`` Gram matrix.
      pairs: ``(m, 2)`` int index pairs with i != j (the sampled pairs ζ_n); None: all
        pairs i < j.

    Raises:
      ValueError: fewer than two gradients, or a pair with i == j.
    """
    n = k.shape[0]
    if n < 2:
        raise ValueError(f"gradient confusion compares pairs of gradients; got {n}.")
    cos = cosine_matrix(k)
    if pairs is None:
        i, j = jnp.triu_indices(n, 1)
    else:
        pairs = jnp.asarray(pairs)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be (m, 2) indices, got shape {pairs.shape}.")
        i, j = pairs[:, 0], pairs[:, 1]
        if not isinstance(i, jax.core.Tracer) and bool(jnp.any(i == j)):
            raise ValueError("gradient confusion pairs must have i != j (a gradient is not confused with itself).")
    return jnp.maximum(-jnp.min(cos[i, j]), 0.0)


def gradient_confusion(g: jax.Array, pairs: Optional[jax.Array] = None) -> jax.Array:
    """Gradient confusion (Def. 3.11) of ``(n, d)`` gradients; see :func:`confusion_from_gram`."""
    g = _matrix(g, "gradient_confusion")
    return confusion_from_gram(g @ g.T, pairs)


def diversity_from_gram(k: jax.Array) -> jax.Array:
    """Gradient diversity (Def. 3.12; Yin et al. 2018): ``Σ‖g_i‖² / ‖Σ g_i‖² = tr K / ΣK``.

    1/n for n identical gradients, 1 for orthogonal ones, > 1 when they cancel. Over the
    same gradients, ``diversity × coherence × n = 1`` (module docstring)."""
    return _safe_div(jnp.trace(k), jnp.sum(k))


def diversity_from_norms(sum_sq_norm: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """Diversity from ``‖Σ g_i‖²`` and the ``(n,)`` squared norms ``‖g_i‖²`` (as
    :func:`coherence_from_norms`): ``Σ‖g_i‖² / ‖Σ g_i‖²``."""
    return _safe_div(jnp.sum(sq_norms), sum_sq_norm)


def gradient_diversity(g: jax.Array) -> jax.Array:
    """Gradient diversity (Def. 3.12) of ``(n, d)`` gradients, in O(n d) (no Gram matrix)."""
    g = _matrix(g, "gradient_diversity")
    return _safe_div(jnp.sum(jnp.square(g)), jnp.sum(jnp.square(jnp.sum(g, axis=0))))


def coherence_from_gram(k: jax.Array) -> jax.Array:
    """Gradient coherence (Def. 3.13; Chatterjee & Zielinski 2020):
    ``Σ_i <ḡ, g_i> / Σ_i ‖g_i‖² = ‖Σ g_i‖² / (n Σ‖g_i‖²) = ΣK / (n tr K)``.

    1 for identical gradients, 1/n for orthogonal ones. Over the same gradients,
    ``diversity × coherence × n = 1`` (module docstring)."""
    return _safe_div(jnp.sum(k), k.shape[0] * jnp.trace(k))


def coherence_from_norms(sum_sq_norm: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """Coherence from ``‖Σ g_i‖²`` and the ``(n,)`` squared norms ``‖g_i‖²`` -- the
    metrics-only path: ``Σ g_i = n ḡ`` is one batch gradient
    (:func:`~jaxnorm.diagnostics.per_example.mean_gradient`) and the norms need one
    chunk of gradients at a time
    (:func:`~jaxnorm.diagnostics.per_example.per_example_sq_norms`)."""
    return _safe_div(sum_sq_norm, sq_norms.shape[0] * jnp.sum(sq_norms))


def gradient_coherence(g: jax.Array) -> jax.Array:
    """Gradient coherence (Def. 3.13) of ``(n, d)`` per-example gradients, in O(n d)."""
    g = _matrix(g, "gradient_coherence")
    return coherence_from_norms(jnp.sum(jnp.square(jnp.sum(g, axis=0))), jnp.sum(jnp.square(g), axis=1))
