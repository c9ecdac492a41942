"""Cockpit's gradient tests and GSNR, from a batch's per-example gradient Gram matrix and
per-coordinate moments.

Notation: a batch of ``b`` examples with per-example loss gradients ``g_n = ∇ℓ_n`` (the
gradient of example n's own loss term, not divided by ``b``), the batch gradient
``ḡ = (1/b) Σ_n g_n`` and the Gram matrix ``K_nm = g_nᵀ g_m``. Then ``‖ḡ‖² = Σ_nm K_nm / b²``
and ``g_nᵀ ḡ = Σ_m K_nm / b``, so the three tests below need only ``K`` -- which
:func:`jaxnorm.diagnostics.per_example_gram` (or the layer-wise statistics) computes
without holding every gradient. Each test returns the largest tolerance for which it
would pass at this batch size (what Cockpit tracks: "the maximum θ for which the test
would pass"); below about 1 the batch is large enough by that criterion.

* :func:`norm_test` -- Byrd, Chin, Nocedal, Wu, "Sample size selection in optimization
  methods for machine learning" (2012), eq. 3.9:
  ``θ = sqrt( Σ_n ‖g_n − ḡ‖² / ((b − 1) · b · ‖ḡ‖²) )``.
* :func:`inner_product_test` -- Bollapragada, Byrd, Nocedal, "Adaptive sampling strategies
  for stochastic optimization" (2018), eq. 2.6:
  ``θ = sqrt( Σ_n (g_nᵀḡ − ‖ḡ‖²)² / ((b − 1) · b · ‖ḡ‖⁴) )``.
* :func:`orthogonality_test` -- the same paper, eq. 3.3:
  ``ν = sqrt( Σ_n ‖g_n − (g_nᵀḡ/‖ḡ‖²) ḡ‖² / ((b − 1) · b · ‖ḡ‖²) )``.
* :func:`mean_gsnr` -- Liu et al., "Understanding Why Neural Networks Generalize Well
  Through GSNR of Parameters" (ICLR 2020): per coordinate ``ḡ_j² / (Var_n g_nj + ε)``
  with the population variance ``(1/b) Σ_n g_nj² − ḡ_j²``, averaged over every
  coordinate; ``ε = 1e-5`` as Cockpit's ``MeanGSNR``.

These are the definitions of Cockpit (Schneider, Dangel, Hennig, "Cockpit: A Practical
Debugging Tool for the Training of Deep Neural Networks", NeurIPS 2021) rewritten in
per-example gradients: Cockpit reads BackPACK's quantities of the mean-reduced loss,
which are ``g_n / b`` (``BatchGrad``), ``K / b²`` (``BatchDotGrad``) and
``Σ_n g_n² / b²`` (``SumGradSquared``), and its rearrangements cancel those factors to
exactly the forms above. The tests use sample variances (``b − 1``), the GSNR the
population variance, as Cockpit does.

All functions are pure ``jnp`` (jit, vmap), keep the input dtype (float64 under
``jax_enable_x64``), and return NaN for a zero batch gradient (no direction to test).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

#: Cockpit's ``MeanGSNR`` stabilizer.
GSNR_EPSILON = 1e-5


class Projections(NamedTuple):
    """The O(b) pieces the three tests need instead of the Gram matrix:
    ``sq_norms`` ``‖g_n‖²`` and ``projections`` ``g_nᵀḡ`` (the Gram's row means), both
    ``(b,)`` (:class:`~jaxnorm.diagnostics.PerExampleStats` has both); ``‖ḡ‖²`` is the
    projections' mean. Every test takes either this or the Gram matrix."""

    sq_norms: jax.Array
    projections: jax.Array


def _gram(gram) -> jax.Array:
    k = jnp.asarray(gram)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < 2:
        raise ValueError(f"the Gram matrix must be (b, b) with b >= 2 examples, got shape {k.shape}.")
    return k


def _pieces(gram):
    """``(b, ‖ḡ‖², g_nᵀḡ (b,), ‖g_n‖² (b,))`` from the Gram matrix or :class:`Projections`."""
    if isinstance(gram, Projections):
        sq, proj = jnp.asarray(gram.sq_norms), jnp.asarray(gram.projections)
        if sq.ndim != 1 or sq.shape != proj.shape or sq.shape[0] < 2:
            raise ValueError(f"Projections need two (b,) arrays with b >= 2, got shapes {sq.shape} and {proj.shape}.")
        return sq.shape[0], jnp.mean(proj), proj, sq
    k = _gram(gram)
    b = k.shape[0]
    projections = jnp.sum(k, axis=1) / b
    return b, jnp.sum(projections) / b, projections, jnp.diagonal(k)


def _ratio(num, den):
    """``sqrt(num / den)``, NaN where ``den`` is 0 (a zero batch gradient)."""
    ok = den > 0
    return jnp.where(ok, jnp.sqrt(jnp.maximum(num, 0.0) / jnp.where(ok, den, 1.0)), jnp.nan)


def norm_test(gram) -> jax.Array:
    """Byrd et al.'s norm test: the largest θ it passes (module docstring).
    ``gram``: ``(b, b)`` per-example gradient Gram matrix, ``b >= 2``."""
    b, g2, _, sq = _pieces(gram)
    variance_l1 = (jnp.sum(sq) - b * g2) / (b - 1)  # Σ_n ‖g_n − ḡ‖² / (b − 1)
    return _ratio(variance_l1, b * g2)


def inner_product_test(gram) -> jax.Array:
    """Bollapragada et al.'s inner-product test: the largest θ it passes (module docstring)."""
    b, g2, proj, _ = _pieces(gram)
    variance = jnp.sum((proj - g2) ** 2) / (b - 1)
    return _ratio(variance, b * g2**2)


def orthogonality_test(gram) -> jax.Array:
    """Bollapragada et al.'s orthogonality test: the largest ν it passes (module docstring)."""
    b, g2, proj, sq = _pieces(gram)
    variance = (jnp.sum(sq) - jnp.sum(proj**2) / jnp.where(g2 > 0, g2, 1.0)) / (b - 1)  # Σ_n ‖g_n − proj_n‖² / (b − 1)
    return _ratio(variance, b * g2)


def gradient_tests(gram) -> dict[str, jax.Array]:
    """All three tests of one Gram matrix: ``{'norm_test', 'inner_product_test', 'orthogonality_test'}``."""
    return {"norm_test": norm_test(gram), "inner_product_test": inner_product_test(gram), "orthogonality_test": orthogonality_test(gram)}


def mean_gsnr(mean_grad, second_moment, epsilon: float = GSNR_EPSILON) -> jax.Array:
    """The mean gradient signal-to-noise ratio over every coordinate (module docstring).

    Args:
      mean_grad: ``ḡ``, the batch gradient (any pytree, e.g. the params' structure).
      second_moment: ``(1/b) Σ_n g_n²`` per coordinate, the same structure.
      epsilon: added to each variance.

    Raises:
      ValueError: the two trees differ in structure or shapes.
    """
    means, moments = jax.tree.leaves(mean_grad), jax.tree.leaves(second_moment)
    if jax.tree.structure(mean_grad) != jax.tree.structure(second_moment) or any(
        jnp.shape(a) != jnp.shape(m) for a, m in zip(means, moments)
    ):
        raise ValueError("mean_grad and second_moment must have the same structure and shapes.")
    total = sum(jnp.sum(jnp.asarray(a) ** 2 / (jnp.asarray(m) - jnp.asarray(a) ** 2 + epsilon)) for a, m in zip(means, moments))
    return total / sum(jnp.size(a) for a in means)
