"""The gradient metrics on gradient matrices, against float64 NumPy references.

The references below are written from the definitions (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022),
never by calling jaxnorm. The library computes in float32 on
at most a few hundred numbers, so results agree to ~1e-6 relative; RTOL = 1e-5 leaves a
10x margin. Analytic cases (identical, orthogonal, a given cosine) pin the definitions'
conventions: which way a ratio goes, and what the batch size does.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxnorm.diagnostics as lib

# The library functions, jitted: one compilation per function and input shape costs less
# than compiling every primitive of an eager call separately. (The argument checks run
# while tracing, so jit changes no error; the error tests call the plain functions, as
# the pair check needs concrete pairs.)
coherence_from_gram = jax.jit(lib.coherence_from_gram)
coherence_from_norms = jax.jit(lib.coherence_from_norms)
confusion_from_gram = jax.jit(lib.confusion_from_gram)
cosine_matrix = jax.jit(lib.cosine_matrix)
diversity_from_gram = jax.jit(lib.diversity_from_gram)
gradient_coherence = jax.jit(lib.gradient_coherence)
gradient_confusion = jax.jit(lib.gradient_confusion)
gradient_diversity = jax.jit(lib.gradient_diversity)
kappa_w = jax.jit(lib.kappa_w)
min_cosine_similarity = jax.jit(lib.min_cosine_similarity)
relative_gradient_rank = jax.jit(lib.relative_gradient_rank)
sgd_step_condition_number = jax.jit(lib.sgd_step_condition_number)
stable_rank = jax.jit(lib.stable_rank)
stable_rank_from_gram = jax.jit(lib.stable_rank_from_gram)
weight_gradient_coherence = jax.jit(lib.weight_gradient_coherence)
weight_gradient_diversity = jax.jit(lib.weight_gradient_diversity)
relative_rank_from_gram = jax.jit(lib.relative_rank_from_gram, static_argnums=1)
gaussian_stable_rank = lib.gaussian_stable_rank  # host-side NumPy

RTOL = 1e-5
B, D = 8, 40  # one shape for most cases: each new shape costs compilations


# --------------------------------------------------------------------------------------
# Float64 references (Defs. 3.6, 3.7, 3.11, 3.12, 3.13, 2.5, 4.1).


def ref_stable_rank(a):
    s = np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)
    return np.sum(s**2) / s[0] ** 2


def ref_cos(u, v):
    return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))


def ref_confusion(g, pairs=None):
    g = np.asarray(g, np.float64)
    n = len(g)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j] if pairs is None else pairs
    return -min(min(ref_cos(g[i], g[j]) for i, j in pairs), 0.0)


def ref_diversity(g):
    g = np.asarray(g, np.float64)
    return sum(np.sum(r**2) for r in g) / np.sum(np.sum(g, axis=0) ** 2)


def ref_coherence(g):
    """Σ_i <ḡ, g_i> / Σ_i ‖g_i‖², ḡ the mean (the defining form, not the Gram shortcut)."""
    g = np.asarray(g, np.float64)
    mean = g.mean(axis=0)
    return sum(mean @ r for r in g) / sum(r @ r for r in g)


def ref_kappa_w(g0, gk, omegas, w):
    g0, gk, omegas, w = (np.asarray(a, np.float64) for a in (g0, gk, omegas, w))
    return max(
        np.linalg.norm(gk[k] - g0) * np.linalg.norm(w) / (np.linalg.norm(omegas[k]) * np.linalg.norm(g0))
        for k in range(len(gk))
    )


def ref_min_cosine(g0, gk):
    return min(ref_cos(np.asarray(r, np.float64), np.asarray(g0, np.float64)) for r in gk)


def ref_weight_gradient_coherence(g0, gk):
    g0, gk = np.asarray(g0, np.float64), np.asarray(gk, np.float64)
    return sum(g0 @ r for r in gk) / sum(r @ r for r in gk)


def ref_sgd_step(g_before, g_after, w, step):
    g_before, g_after, w, step = (np.asarray(a, np.float64) for a in (g_before, g_after, w, step))
    return (
        np.linalg.norm(g_after - g_before) * np.linalg.norm(w) / (np.linalg.norm(step) * np.linalg.norm(g_before))
    )


def gaussian_mc(n, d, draws, seed):
    """E[R(Y)] by Monte-Carlo over explicit standard Gaussian (n, d) matrices."""
    r = np.random.default_rng(seed)
    return np.mean([ref_stable_rank(r.normal(size=(n, d))) for _ in range(draws)])


@pytest.fixture(scope="module")
def grads():
    """8 gradients of dimension 40 with a common component: cosines of both signs (so
    confusion is non-zero), coherence strictly between 1/b and 1."""
    r = np.random.default_rng(0)
    g = (0.5 * r.normal(size=D) + r.normal(size=(B, D))).astype(np.float32)
    assert ref_confusion(g) > 0.05 and 1.2 / B < ref_coherence(g) < 0.9
    return g


def close(got, want, rtol=RTOL):
    np.testing.assert_allclose(float(got), float(want), rtol=rtol)


# --------------------------------------------------------------------------------------
# Against the references.


def test_stable_and_relative_rank_match_numpy(grads):
    """R(A) = ‖A‖_F²/‖A‖_2² by SVD in float64, for A and Aᵀ (either Gram side), from the
    matrix and from its Gram matrix; the relative rank divides by E[R(Y)] of the shape
    (gaussian_stable_rank, itself checked against Monte-Carlo below)."""
    g64 = grads.astype(np.float64)
    close(stable_rank(grads), ref_stable_rank(grads))
    close(stable_rank(grads.T), ref_stable_rank(grads))
    close(stable_rank_from_gram((g64 @ g64.T).astype(np.float32)), ref_stable_rank(grads))
    close(relative_gradient_rank(grads), ref_stable_rank(grads) / gaussian_stable_rank(8, 40))
    close(relative_rank_from_gram((g64 @ g64.T).astype(np.float32), 40), ref_stable_rank(grads) / gaussian_stable_rank(8, 40))


def test_confusion_diversity_coherence_match_numpy(grads):
    """Defs. 3.11-3.13 from the gradients and from their Gram matrix; confusion over all
    pairs and over given pairs (the sampled ζ_n, in either order)."""
    k = (grads.astype(np.float64) @ grads.T.astype(np.float64)).astype(np.float32)
    pairs = np.array([[0, 1], [3, 2], [5, 7]])
    close(gradient_confusion(grads), ref_confusion(grads))
    close(confusion_from_gram(k), ref_confusion(grads))
    close(gradient_confusion(grads, pairs), ref_confusion(grads, pairs.tolist()))
    close(confusion_from_gram(k, pairs), ref_confusion(grads, pairs.tolist()))
    close(gradient_diversity(grads), ref_diversity(grads))
    close(diversity_from_gram(k), ref_diversity(grads))
    close(gradient_coherence(grads), ref_coherence(grads))
    close(coherence_from_gram(k), ref_coherence(grads))
    g64 = grads.astype(np.float64)
    close(coherence_from_norms(np.sum(g64.sum(0) ** 2), (g64**2).sum(1)), ref_coherence(grads))
    cos = np.asarray(cosine_matrix(k))
    np.testing.assert_allclose(cos, [[ref_cos(a, b) for b in g64] for a in g64], atol=RTOL)


U32 = 2.0**-24  # float32 unit roundoff


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_diversity_times_coherence_times_n_is_one(grads, scale):
    """Over the same n gradients (per-example: n = b), Def. 3.12 × Def. 3.13 × n = 1:
    ``(Σ‖g_i‖²/‖Σg_i‖²)·(‖Σg_i‖²/(n Σ‖g_i‖²))·n``. Tolerances from the rounding:
    the Gram forms share every sum, so only the 2 divisions, n·tr K, the product and ×n
    round (n = 8 is exact): |err| <= 5u(1 + 5u) < 6u. The matrix forms compute ‖Σg_i‖²
    by one expression but Σ‖g_i‖² in two summation orders; each sum of N = n·d
    non-negative terms (each square rounded too) is within γ_N = N u/(1 − N u) of the
    exact value (Higham, Accuracy and Stability, §4.2), so |err| <= 2γ_N + 6u."""
    g = (grads * scale).astype(np.float32)
    n, d = g.shape
    k = (g.astype(np.float64) @ g.T.astype(np.float64)).astype(np.float32)
    product = float(diversity_from_gram(k)) * float(coherence_from_gram(k)) * n
    assert abs(product - 1.0) <= 6 * U32
    gamma = n * d * U32 / (1 - n * d * U32)
    product = float(gradient_diversity(g)) * float(gradient_coherence(g)) * n
    assert abs(product - 1.0) <= 2 * gamma + 6 * U32


def test_given_pairs_restrict_the_minimum(grads):
    """Confusion over a pair set is the worst cosine among those pairs only: choosing the
    pair with the most negative cosine gives the all-pairs value, a positive pair gives 0."""
    g64 = grads.astype(np.float64)
    cos = np.array([[ref_cos(a, b) for b in g64] for a in g64])
    worst = np.unravel_index(np.argmin(cos), cos.shape)
    best = np.unravel_index(np.argmax(cos - 2 * np.eye(8)), cos.shape)
    close(gradient_confusion(grads, np.array([worst])), ref_confusion(grads))
    assert cos[best] > 0 and float(gradient_confusion(grads, np.array([best]))) == 0.0


def test_weight_space_metrics_on_flat_vectors_match_numpy():
    """κ_W (Def. 2.5) from flat vectors, and the Def. 4.1 forms, on random vectors."""
    r = np.random.default_rng(1)
    w, g0 = r.normal(size=30).astype(np.float32), r.normal(size=30).astype(np.float32)
    gk = (g0 + 0.3 * r.normal(size=(3, 30))).astype(np.float32)
    omegas = (1e-2 * r.normal(size=(3, 30))).astype(np.float32)
    close(kappa_w(g0, gk, omegas, w), ref_kappa_w(g0, gk, omegas, w))
    close(min_cosine_similarity(g0, gk), ref_min_cosine(g0, gk))
    close(weight_gradient_diversity(gk), ref_diversity(gk))
    close(weight_gradient_coherence(g0, gk), ref_weight_gradient_coherence(g0, gk))
    g1, step = gk[0], omegas[0]
    close(sgd_step_condition_number(g0, g1, w, step), ref_sgd_step(g0, g1, w, step))
    # Pytrees: the norms are over all leaves together.
    tree = lambda a: {"a": a[:10], "b": {"c": a[10:].reshape(4, 5)}}
    close(sgd_step_condition_number(tree(g0), tree(g1), tree(w), tree(step)), ref_sgd_step(g0, g1, w, step))


def test_gaussian_stable_rank_matches_monte_carlo_with_explicit_matrices():
    """E[R(Y)] for standard Gaussian Y from the Bartlett/Wishart sampler (32 draws) vs a
    Monte-Carlo mean over 200 explicit (16, 300) matrices. R(Y) ≈ 10.6 here with a
    standard deviation of ~0.2 per draw, so both means are within ~0.5% of E[R(Y)]:
    2% is a > 4-sigma bound. Y and Yᵀ have the same R: the (300, 16) value is the
    same number (same p, q and seed), and the Monte-Carlo over (300, 16) matrices agrees."""
    got = gaussian_stable_rank(16, 300)
    np.testing.assert_allclose(got, gaussian_mc(16, 300, 200, seed=1), rtol=0.02)
    assert gaussian_stable_rank(300, 16) == got
    np.testing.assert_allclose(got, gaussian_mc(300, 16, 200, seed=2), rtol=0.02)
    # Small square case, where R(Y) is far from min(n, d).
    np.testing.assert_allclose(gaussian_stable_rank(4, 4), gaussian_mc(4, 4, 2000, seed=3), rtol=0.03)


def test_gaussian_stable_rank_rejects_empty_shapes():
    with pytest.raises(ValueError, match="must be >= 1"):
        gaussian_stable_rank(0, 5)


# --------------------------------------------------------------------------------------
# Analytic cases.


def test_identical_gradients():
    """b identical gradients: coherence 1, per-example diversity 1/b, stable rank 1 (so the
    relative rank is 1/E[R(Y)]), no confusion."""
    b, d = B, D
    g = np.tile(np.random.default_rng(2).normal(size=d), (b, 1)).astype(np.float32)
    close(gradient_coherence(g), 1.0)
    close(gradient_diversity(g), 1 / b)
    close(stable_rank(g), 1.0)
    close(relative_gradient_rank(g), 1 / gaussian_stable_rank(b, d))
    k = g.astype(np.float64) @ g.T.astype(np.float64)
    close(coherence_from_gram(k), 1.0)
    close(diversity_from_gram(k), 1 / b)
    assert float(gradient_confusion(g)) == 0.0


def test_orthogonal_gradients():
    """b mutually orthogonal gradients of different lengths: coherence 1/b, diversity 1,
    stable rank Σ‖g_i‖²/max‖g_i‖², and confusion exactly +0.0 (every cosine is 0, and the
    definition −min(min cos, 0) must not return −0.0)."""
    b, d = B, D
    lengths = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.7, 1.1, 2.5])
    g = np.zeros((b, d), np.float32)
    g[np.arange(b), np.arange(b) * 2] = lengths
    close(gradient_coherence(g), 1 / b)
    close(gradient_diversity(g), 1.0)
    close(stable_rank(g), np.sum(lengths**2) / np.max(lengths**2))
    c = float(gradient_confusion(g))
    assert c == 0.0 and not np.signbit(c)


@pytest.mark.parametrize("cosine,want", [(-0.3, 0.3), (0.5, 0.0), (0.0, 0.0)])
def test_confusion_of_one_pair_is_its_negative_cosine_or_zero(cosine, want):
    """Two gradients with cosine c (different lengths): confusion is −c for c < 0, and
    +0.0 (never −0.0) otherwise."""
    g = np.array([[2.0, 0.0], [cosine, np.sqrt(1 - cosine**2)]], np.float32) * np.array([[1.0], [0.7]], np.float32)
    got = float(gradient_confusion(g))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.signbit(got)


def test_scale_invariance(grads):
    """Scaling every gradient by c = 7 (the loss by 7) leaves every ratio metric unchanged:
    confusion, diversity, coherence, stable and relative rank, κ_W and the Def. 4.1 forms
    (gradients scale, perturbations and weights do not). The SGD-step formula is
    unchanged when only the gradients scale, and divided by c when the step grows c-fold
    (with or without the gradients): it is a ratio of the gradient change to the step.
    (With the loss × c at a fixed learning rate the step and the gradient change both grow
    c-fold, which restores invariance on a quadratic: test_weight_space.py.)"""
    c = np.float32(7.0)
    for fn in (gradient_confusion, gradient_diversity, gradient_coherence, stable_rank, relative_gradient_rank):
        close(fn(c * grads), fn(grads))
    r = np.random.default_rng(3)
    w, om = r.normal(size=40).astype(np.float32), 1e-2 * r.normal(size=(2, 40)).astype(np.float32)
    g0, gk = grads[0], grads[1:3]
    close(kappa_w(c * g0, c * gk, om, w), kappa_w(g0, gk, om, w))
    close(min_cosine_similarity(c * g0, c * gk), min_cosine_similarity(g0, gk))
    close(weight_gradient_diversity(c * gk), weight_gradient_diversity(gk))
    close(weight_gradient_coherence(c * g0, c * gk), weight_gradient_coherence(g0, gk))
    base = float(sgd_step_condition_number(g0, gk[0], w, om[0]))
    close(sgd_step_condition_number(c * g0, c * gk[0], w, om[0]), base)
    close(sgd_step_condition_number(c * g0, c * gk[0], w, c * om[0]), base / c)
    close(sgd_step_condition_number(g0, gk[0], w, c * om[0]), base / c)


# --------------------------------------------------------------------------------------
# Degenerate inputs and errors.


def test_all_zero_gradients_give_nan():
    """0/0 ratios are undefined: NaN, as documented (not 0, not an exception)."""
    z = np.zeros((4, 6), np.float32)
    for fn in (gradient_diversity, gradient_coherence, stable_rank):
        assert np.isnan(float(fn(z)))
    assert np.isnan(float(diversity_from_gram(z @ z.T))) and np.isnan(float(coherence_from_gram(z @ z.T)))
    assert np.isnan(float(kappa_w(np.zeros(3, np.float32), np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), np.ones(3, np.float32))))


def test_metric_argument_errors():
    g = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="one per row"):
        lib.gradient_diversity(g[0])
    with pytest.raises(ValueError, match="one per row"):
        lib.gradient_coherence(g[None])
    with pytest.raises(ValueError, match="at least one gradient"):
        lib.gradient_confusion(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="compares pairs"):
        lib.gradient_confusion(g[:1])
    with pytest.raises(ValueError, match="i != j"):
        lib.gradient_confusion(g, np.array([[0, 1], [2, 2]]))
    with pytest.raises(ValueError, match=r"\(m, 2\)"):
        lib.gradient_confusion(g, np.array([0, 1]))
    with pytest.raises(ValueError, match="expects a matrix"):
        lib.stable_rank(g[0])
    with pytest.raises(ValueError, match="expects a matrix"):
        lib.relative_gradient_rank(g[None])
