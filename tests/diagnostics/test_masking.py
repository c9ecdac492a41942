"""Random gradient masks (§1.6): the drawn subsets, flattening, and masked metrics.

A mask keeps ceil(p·n) (>= 1) random coordinates of every parameter leaf. The metrics
are ratios of norms and inner products, which a random coordinate subset preserves up
to the common factor p, so masked metrics estimate the unmasked ones, exactly at p = 1
and better the larger p.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import (
    coherence_from_gram,
    confusion_from_gram,
    diversity_from_gram,
    flatten,
    num_coordinates,
    random_mask,
    relative_rank_from_gram,
)
from tests.diagnostics.helpers import flat64

# Leaf sizes 3, 70, 1, 50 (a bias, a kernel, a scalar, a vector).
PARAMS = {"a": {"bias": jnp.zeros(3), "kernel": jnp.zeros((10, 7))}, "b": jnp.zeros(()), "c": jnp.zeros(50)}


def test_mask_keeps_ceil_fraction_of_every_leaf_sorted_unique():
    """Per leaf: ceil(p·n) indices, at least one, sorted, unique, within the leaf; the mask
    size is their sum."""
    for p in (0.05, 0.5, 1.0):
        m = random_mask(jax.random.PRNGKey(0), PARAMS, p)
        sizes = [math.prod(l.shape) for l in jax.tree.leaves(PARAMS)]
        assert m.sizes == tuple(sizes) and m.fraction == p
        for idx, n in zip(m.indices, sizes):
            assert len(idx) == max(1, math.ceil(p * n))
            assert idx.dtype == np.int32 and np.all(np.diff(idx) > 0) and 0 <= idx.min() and idx.max() < n
        assert m.size == sum(max(1, math.ceil(p * n)) for n in sizes)
    # p = 1 keeps everything, in order.
    full = random_mask(jax.random.PRNGKey(0), PARAMS, 1.0)
    assert all(np.array_equal(i, np.arange(n)) for i, n in zip(full.indices, full.sizes))
    assert full.size == num_coordinates(PARAMS) == 124


def test_mask_is_deterministic_for_a_key_and_accepts_shapes():
    """Same key and shapes: the same mask (also from ShapeDtypeStructs, and from a new-style
    typed key with the same data); another key: another mask."""
    a = random_mask(jax.random.PRNGKey(7), PARAMS, 0.3)
    b = random_mask(jax.random.PRNGKey(7), jax.eval_shape(lambda: PARAMS), 0.3)
    c = random_mask(jax.random.wrap_key_data(jax.random.key_data(jax.random.PRNGKey(7))), PARAMS, 0.3)
    d = random_mask(jax.random.PRNGKey(8), PARAMS, 0.3)
    for m in (b, c):
        assert all(np.array_equal(x, y) for x, y in zip(a.indices, m.indices))
    assert not all(np.array_equal(x, y) for x, y in zip(a.indices, d.indices))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, float("nan")])
def test_fraction_outside_unit_interval_raises(fraction):
    with pytest.raises(ValueError, match=r"mask fraction must lie in \(0, 1\]"):
        random_mask(jax.random.PRNGKey(0), PARAMS, fraction)


def test_mask_of_an_empty_tree_raises():
    with pytest.raises(ValueError, match="without leaves"):
        random_mask(jax.random.PRNGKey(0), {}, 0.5)


def test_flatten_with_and_without_mask():
    """flatten: leaves raveled after the batch axes and concatenated in leaf order; with a
    mask, each leaf's masked coordinates (NumPy indexing here); a tree that does not
    match the mask raises."""
    r = np.random.default_rng(0)
    tree = jax.tree.map(lambda l: jnp.asarray(r.normal(size=(2, 3) + l.shape), jnp.float32), PARAMS)
    got = flatten(tree, 2)
    np.testing.assert_array_equal(got, flat64(tree, 2))
    m = random_mask(jax.random.PRNGKey(1), PARAMS, 0.2)
    want = np.concatenate(
        [np.asarray(l).reshape(2, 3, -1)[..., i] for l, i in zip(jax.tree.leaves(tree), m.indices)], axis=-1
    )
    np.testing.assert_array_equal(flatten(tree, 2, m), want)
    np.testing.assert_array_equal(m.apply(tree, batch_dims=2), want)
    with pytest.raises(ValueError, match="does not match the mask"):
        flatten({"a": tree["a"]}, 2, m)
    with pytest.raises(ValueError, match="does not match the mask"):
        m.apply(tree, batch_dims=1)  # wrong batch rank: leaf sizes differ


# --------------------------------------------------------------------------------------
# Masked metrics approach the unmasked ones.
#
# The metrics are taken from the Gram matrix of the (masked) flattened gradients with the
# library's *_from_gram forms (the matrix forms are checked against them in
# test_metrics.py): every mask gives an (8, 8) matrix, so only the static dimension of the
# relative rank differs between mask sizes.


@functools.partial(jax.jit, static_argnums=1)
def _from_gram(k, dim):
    return {
        "coherence": coherence_from_gram(k),
        "diversity": diversity_from_gram(k),
        "confusion": confusion_from_gram(k),
        "relative_rank": relative_rank_from_gram(k, dim),
    }


def metrics(g) -> dict[str, float]:
    g = np.asarray(g, np.float64)
    return {k: float(v) for k, v in _from_gram(jnp.asarray(g @ g.T, jnp.float32), g.shape[1]).items()}


@pytest.fixture(scope="module")
def grad_tree():
    """Per-example gradients of 8 examples over leaves of sizes 600, 300, 100 and 5 with
    scales 1-4: a component common to all examples, one shared direction with
    alternating sign (so pairs with negative cosine exist) and per-example noise.
    Every metric is away from its extreme values: coherence ~0.25, diversity ~0.5,
    confusion ~0.2, relative rank ~0.37."""
    r = np.random.default_rng(0)
    shapes = {"k1": (30, 20), "k2": (300,), "k3": (10, 10), "bias": (5,)}
    sign = np.array([1.0, -1.0] * 4)
    tree = {}
    for i, (name, shape) in enumerate(shapes.items()):
        common, shared = r.normal(size=shape), r.normal(size=shape)
        per_example = r.normal(size=(8,) + shape)
        g = 0.6 * common + 0.8 * sign.reshape((8,) + (1,) * len(shape)) * shared + per_example
        tree[name] = jnp.asarray(g * (i + 1), jnp.float32)
    return tree


def test_masked_gradients_equal_unmasked_at_fraction_one(grad_tree):
    """p = 1 keeps every coordinate in leaf order: the same matrix, hence the same metrics."""
    params = jax.tree.map(lambda a: a[0], grad_tree)
    m = random_mask(jax.random.PRNGKey(0), params, 1.0)
    np.testing.assert_array_equal(flatten(grad_tree, 1, m), flatten(grad_tree, 1))


def test_masked_metric_error_shrinks_as_the_fraction_grows(grad_tree):
    """Mean absolute error over 5 masks of each metric against the unmasked value: at
    p = 0.5 smaller than at p = 0.05. (Sampling without replacement: the variance of a
    coordinate-subset estimate falls like (1 - p)/(p n), ~20x from 0.05 to 0.5; here the
    mean errors differ by 4.5x-13x, and by > 1.4x for every one of 6 data seeds tried:
    the comparison is made on the mean over masks, not per mask.)"""
    params = jax.tree.map(lambda a: a[0], grad_tree)
    full = metrics(flatten(grad_tree, 1))
    assert full["confusion"] > 0.1 and 0.1 < full["coherence"] < 0.5
    err = {}
    for p in (0.05, 0.5):
        errs = {k: [] for k in full}
        for seed in range(5):
            got = metrics(flatten(grad_tree, 1, random_mask(jax.random.PRNGKey(seed), params, p)))
            for k in full:
                errs[k].append(abs(got[k] - full[k]))
        err[p] = {k: np.mean(v) for k, v in errs.items()}
    for k in full:
        assert err[0.5][k] < err[0.05][k], (k, err)
