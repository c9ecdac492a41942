"""MNIST-1D: generated offline through the package, partitioned, normalized, cached.

Most tests build a reduced-size variant (``num_samples=500``: 400 training, 100 test
sequences, well under a second) by replacing the variant table; one test builds the real
default dataset (a few seconds), as a fresh clone does on its first ``load('mnist1d')``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import jaxnorm.data.mnist1d as m1d
from jaxnorm.data import load
from jaxnorm.data.loading import DATASETS, clear_cache, splits_of

SMALL = {"num_samples": 500}


@pytest.fixture
def small(monkeypatch, tmp_path):
    """Every variant at 500 samples, cached under tmp_path, caches cleared around the test."""
    monkeypatch.setenv("JAXNORM_DATA_DIR", str(tmp_path))
    table = {name: {**dict(over), **SMALL} for name, over in m1d.VARIANTS.items()}
    monkeypatch.setattr(m1d, "VARIANTS", table)
    clear_cache()
    yield tmp_path
    clear_cache()


def _package(**over):
    """The package's own output for its defaults with ``over`` applied (the independent side)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for k, v in over.items():
        setattr(args, k, v)
    return make_dataset(args)


def test_registered_with_every_partition_split():
    for name in ("mnist1d", "mnist1d_shuffle", "mnist1d_20k", "mnist1d_shuffle_20k"):
        assert name in DATASETS
        assert splits_of(name) == ("train", "validation", "train_eval", "full_train", "test")


def test_splits_shapes_and_partition(small):
    sizes = {s: len(load("mnist1d", s)) for s in splits_of("mnist1d")}
    assert sizes == {"train": 320, "validation": 80, "train_eval": 80, "full_train": 400, "test": 100}
    full = load("mnist1d", "full_train")
    assert full.images.shape == (400, 40, 1) and full.images.dtype == np.float32
    assert full.image_shape == (40, 1) and full.num_classes == 10
    assert full.images.min() >= 0.0 and full.images.max() <= 1.0
    # train and validation partition full_train; train_eval is a subset of train.
    rows = lambda ds: {r.tobytes() for r in np.asarray(ds.images)}
    train, val, tev = rows(load("mnist1d", "train")), rows(load("mnist1d", "validation")), rows(load("mnist1d", "train_eval"))
    assert train | val == rows(full) and not train & val and tev <= train
    # Another seed, another partition of the same 400.
    other = rows(load("mnist1d", "validation", seed=1))
    assert other != val and other <= rows(full)
    # Every split carries the training set's constants.
    for s in splits_of("mnist1d"):
        ds = load("mnist1d", s)
        assert ds.mean == full.mean and ds.std == full.std


def test_normalized_sequences_are_the_package_sequences(small):
    """Our [0, 1] storage + normalize() gives the package's sequences, standardized by the
    training part's mean and std. Float32 storage rounds each value by at most 2^-24 in
    [0, 1]; divided by std (~0.1) that is ~1e-7, so 1e-5 leaves two orders of headroom."""
    from jaxnorm.data import normalize

    ref = _package(**SMALL)
    ds_train, ds_test = load("mnist1d", "full_train"), load("mnist1d", "test")
    mu, sd = ref["x"].mean(), ref["x"].std()
    for ds, x, y in ((ds_train, ref["x"], ref["y"]), (ds_test, ref["x_test"], ref["y_test"])):
        ours = np.asarray(normalize(ds.images, ds.mean, ds.std))[..., 0]
        np.testing.assert_allclose(ours, (x - mu) / sd, atol=1e-5)
        np.testing.assert_array_equal(ds.labels, y)
    full = np.asarray(normalize(ds_train.images, ds_train.mean, ds_train.std))
    np.testing.assert_allclose([full.mean(), full.std()], [0.0, 1.0], atol=1e-5)


def test_shuffle_is_one_fixed_permutation_of_the_positions(small):
    plain, shuf = load("mnist1d", "full_train"), load("mnist1d_shuffle", "full_train")
    np.testing.assert_array_equal(plain.labels, shuf.labels)  # same sequences, same order
    a, b = np.asarray(plain.images)[..., 0], np.asarray(shuf.images)[..., 0]
    # Position j of the shuffled set is position perm[j] of the plain one, for every sequence.
    perm = np.array([int(np.flatnonzero(np.all(np.isclose(a, b[:, [j]], atol=1e-6), axis=0))[0]) for j in range(40)])
    assert sorted(perm) == list(range(40)) and not np.array_equal(perm, np.arange(40))
    np.testing.assert_allclose(b, a[:, perm], atol=1e-6)
    ta, tb = np.asarray(load("mnist1d", "test").images)[..., 0], np.asarray(load("mnist1d_shuffle", "test").images)[..., 0]
    np.testing.assert_allclose(tb, ta[:, perm], atol=1e-6)  # the same permutation for the test part


def test_global_random_state_is_left_alone(small):
    np.random.seed(123)
    random.seed(7)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(7)
    load("mnist1d", "train")
    assert np.random.rand() == expect_np and random.random() == expect_py


def test_cache_is_reused_and_a_damaged_file_is_rebuilt(small, monkeypatch):
    first = np.array(load("mnist1d", "test").images)
    files = list((small / "mnist1d").glob("mnist1d-*.npz"))
    assert len(files) == 1 and not [p for p in (small / "mnist1d").iterdir() if p.suffix == ".tmp"]  # no temporary left
    # Read back without generating.
    clear_cache()
    monkeypatch.setattr(m1d, "generate", lambda *a, **k: pytest.fail("regenerated although cached"))
    np.testing.assert_array_equal(load("mnist1d", "test").images, first)
    monkeypatch.undo()
    monkeypatch.setenv("JAXNORM_DATA_DIR", str(small))
    monkeypatch.setattr(m1d, "VARIANTS", {name: {**dict(over), **SMALL} for name, over in m1d.VARIANTS.items()})
    # A damaged file: a warning, then the same data again.
    files[0].write_bytes(b"not an npz file")
    clear_cache()
    with pytest.warns(UserWarning, match="could not be read"):
        again = load("mnist1d", "test").images
    np.testing.assert_array_equal(again, first)
    assert np.load(files[0])["test_x"].shape == (100, 40, 1)  # rewritten whole


def test_unwritable_cache_still_returns_the_data(small, monkeypatch):
    blocker = small / "file"
    blocker.write_text("x")
    monkeypatch.setenv("JAXNORM_DATA_DIR", str(blocker))  # a file where a directory should be
    clear_cache()
    with pytest.warns(UserWarning, match="could not write the cache"):
        ds = load("mnist1d", "test")
    assert len(ds) == 100


def test_errors():
    with pytest.raises(ValueError, match="unknown MNIST-1D variant"):
        m1d.load_mnist1d("mnist2d")
    with pytest.raises(ValueError, match="unknown MNIST-1D argument"):
        m1d.dataset_args({"num_sample": 10})
    with pytest.raises(ValueError, match="has splits"):
        load("mnist1d", "val")


def test_default_dataset_offline(monkeypatch, tmp_path):
    """The real default MNIST-1D, as a fresh clone builds it: 4,000 + 1,000 sequences of 40."""
    monkeypatch.setenv("JAXNORM_DATA_DIR", str(tmp_path))
    clear_cache()
    try:
        sizes = {s: len(load("mnist1d", s)) for s in splits_of("mnist1d")}
        assert sizes == {"train": 3200, "validation": 800, "train_eval": 800, "full_train": 4000, "test": 1000}
        test = load("mnist1d", "test")
        assert test.images.shape == (1000, 40, 1)
        assert np.all(np.bincount(test.labels, minlength=10) > 50)  # every class present
    finally:
        clear_cache()
