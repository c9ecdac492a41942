"""Dataset: validation of shapes/dtypes/ranges, immutability, conveniences."""

import numpy as np
import pytest

from jaxnorm.data import Dataset


def _make(**overrides):
    kw = dict(
        images=np.full((4, 5, 6, 3), 0.5, np.float32),
        labels=np.array([0, 1, 2, 1], np.int32),
        num_classes=3,
        name="toy",
        split="train",
        mean=(0.5, 0.5, 0.5),
        std=[0.25, 0.25, 0.25],
    )
    kw.update(overrides)
    return Dataset(**kw)


def test_valid_dataset_has_len_shape_and_tuple_constants():
    ds = _make()
    assert len(ds) == 4
    assert ds.image_shape == (5, 6, 3)
    assert ds.std == (0.25, 0.25, 0.25) and isinstance(ds.std, tuple)
    assert "n=4" in repr(ds) and "toy" in repr(ds)


def test_arrays_are_read_only_views_and_the_callers_arrays_stay_writable():
    images = np.zeros((2, 3, 3, 1), np.float32)
    ds = _make(images=images, labels=np.zeros(2, np.int32), mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError):
        ds.images[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        ds.labels[0] = 1
    images[0, 0, 0, 0] = 0.5  # the caller's array is untouched by the read-only view
    assert ds.images[0, 0, 0, 0] == 0.5
    with pytest.raises(AttributeError):
        ds.name = "other"  # frozen


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(images=np.zeros((4, 5, 6, 3), np.float64)), "float32"),
        (dict(images=np.zeros((4, 30), np.float32)), "NHWC"),
        (dict(images=np.zeros((4, 5, 6, 3, 1), np.float32)), "NLC"),
        (dict(labels=np.zeros(4, np.int64)), "int32"),
        (dict(labels=np.zeros(3, np.int32)), "4 images but 3 labels"),
        (dict(labels=np.array([0, 1, 3, 0], np.int32)), r"\[0, 3\)"),
        (dict(labels=np.array([0, -1, 2, 0], np.int32)), r"\[0, 3\)"),
        (dict(images=np.full((4, 5, 6, 3), 1.5, np.float32)), r"\[0, 1\]"),
        (dict(mean=(0.5,)), "one value per channel"),
        (dict(std=(0.1, 0.0, 0.1)), "std must be > 0"),
        (dict(num_classes=0), ">= 1"),
    ],
)
def test_invalid_fields_are_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        _make(**overrides)


def test_non_arrays_are_a_type_error():
    with pytest.raises(TypeError, match="numpy arrays"):
        _make(images=[[0.0]])
