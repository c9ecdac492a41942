"""The embedded digits dataset: fixed, stratified, disjoint split; both shapes."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from jaxnorm.data import load_digits


def test_split_sizes_dtypes_and_ranges():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    assert xtr.shape == (1438, 8, 8, 1) and xte.shape == (359, 8, 8, 1)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int32
    assert 0.0 == xtr.min() and xtr.max() == 1.0
    assert set(np.unique(ytr)) == set(range(10)) == set(np.unique(yte))


def test_split_is_a_disjoint_stratified_partition_of_the_real_data():
    ref = sk_load_digits()
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    # Together the splits hold every (image, label) of the real data exactly once.
    ours = sorted(
        x.tobytes() + bytes([y]) for x, y in zip(np.concatenate([xtr, xte]).reshape(-1, 64), np.concatenate([ytr, yte]))
    )
    theirs = sorted(
        x.tobytes() + bytes([y]) for x, y in zip((ref.images / 16.0).astype(np.float32).reshape(-1, 64), ref.target)
    )
    assert ours == theirs
    # Class balance: each class's test share is 20% rounded, within one example.
    for c in range(10):
        n = int((ref.target == c).sum())
        assert abs(int((yte == c).sum()) - round(0.2 * n)) <= 1


def test_split_is_deterministic():
    a, la = load_digits("train")
    b, lb = load_digits("train")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_cifar_shape_repeats_pixels_and_channels():
    small, _ = load_digits("test")
    big, _ = load_digits("test", cifar_shape=True)
    assert big.shape == (359, 32, 32, 3)
    np.testing.assert_array_equal(big[:, ::4, ::4, 0], small[..., 0])
    np.testing.assert_array_equal(big[..., 0], big[..., 2])
    np.testing.assert_array_equal(big[:, 1::4, 2::4, 1], small[..., 0])


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="splits"):
        load_digits("validation")
