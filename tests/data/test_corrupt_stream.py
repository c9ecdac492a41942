"""``jaxnorm.data.corrupt.corrupt_stream``: the test streams of the TENT study, against
``corrupt_jit`` with the documented keys and permutations (an independent rebuild)."""

from __future__ import annotations

import zlib

import jax
import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.data.corrupt import corrupt_jit, corrupt_stream

DIGITS = load("digits", "test")
X, Y = DIGITS.images[:12], DIGITS.labels[:12]


def _key(seed, kind, severity, p):
    k = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(kind.encode()))
    return jax.random.fold_in(jax.random.fold_in(k, severity), p)


def test_one_pass_is_the_test_set_in_order_corrupted_with_its_key():
    clean, noisy, labels = corrupt_stream(X, Y, "gaussian_noise", 3, seed=5)
    np.testing.assert_array_equal(np.asarray(clean), X)
    np.testing.assert_array_equal(labels, Y)
    np.testing.assert_array_equal(np.asarray(noisy), np.asarray(corrupt_jit(X, "gaussian_noise", 3, key=_key(5, "gaussian_noise", 3, 0))))
    again = corrupt_stream(X, Y, "gaussian_noise", 3, seed=5)[1]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(noisy))  # deterministic
    assert not np.array_equal(np.asarray(corrupt_stream(X, Y, "gaussian_noise", 4, seed=5)[1]), np.asarray(noisy))


def test_later_passes_are_permuted_with_new_noise_and_labels_follow():
    clean, noisy, labels = corrupt_stream(X, Y, "shot_noise", 2, seed=1, passes=3)
    assert clean.shape == (36, *X.shape[1:]) and noisy.shape == clean.shape and labels.shape == (36,)
    for p in (1, 2):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(1), p), len(Y)))
        assert sorted(order) == list(range(len(Y))) and not np.array_equal(order, np.arange(len(Y)))
        sl = slice(12 * p, 12 * (p + 1))
        np.testing.assert_array_equal(np.asarray(clean[sl]), X[order])
        np.testing.assert_array_equal(labels[sl], Y[order])
        want = corrupt_jit(X[order], "shot_noise", 2, key=_key(1, "shot_noise", 2, p))
        np.testing.assert_array_equal(np.asarray(noisy[sl]), np.asarray(want))


def test_the_clean_stream_and_bad_input():
    clean, same, labels = corrupt_stream(X, Y, None, 0, passes=2)
    assert same is clean and clean.shape[0] == 24 and labels.shape == (24,)
    with pytest.raises(ValueError, match="passes >= 1"):
        corrupt_stream(X, Y, "contrast", 1, passes=0)
    with pytest.raises(ValueError, match="as many labels"):
        corrupt_stream(X, Y[:3], "contrast", 1)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_stream(X, Y, "fog", 1)
