"""jaxnorm.data.batches: the engine's training batches for users' own loops.

Checked against a NumPy reference of the documented order (the epoch permutation,
sliced) and normalization, and against what the engine's compiled step itself saw (a
training-batch observer records ``view.x``/``view.y`` inside ``fit``).
"""

import dataclasses

import jax
import numpy as np
import pytest

import jaxnorm.data as jd
from jaxnorm.data import DEEPOBS_AUGMENT, Dataset, batches, epoch_permutation
from jaxnorm.train import TrainConfig, fit


def _dataset(n=37, shape=(8, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, *shape), dtype=np.float32)
    return Dataset(images, rng.integers(0, 5, n).astype(np.int32), 5, "toy", "train", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


def test_order_and_normalization_match_a_numpy_reference():
    ds, b = _dataset(), 8
    got = list(batches(ds, b, seed=3, epoch=2))
    perm = np.asarray(epoch_permutation(3, 2, len(ds.labels)))
    assert len(got) == len(ds.labels) // b == 4
    for s, (x, y) in enumerate(got):
        idx = perm[s * b:(s + 1) * b]
        want = (ds.images[idx] - np.float32(ds.mean)) / np.float32(ds.std)
        # One subtraction and one division, each rounded once in float32 on both sides (XLA
        # may divide through the reciprocal: one more rounding), so a few ulps of |x| <= 5.
        np.testing.assert_allclose(np.asarray(x), want, rtol=0, atol=8 * 5 * 2.0**-24)
        np.testing.assert_array_equal(np.asarray(y), ds.labels[idx])
        assert x.dtype == np.float32 and y.dtype == np.int32


def test_an_epoch_visits_distinct_examples_and_epochs_differ():
    ds = dataclasses.replace(_dataset(), labels=np.arange(37, dtype=np.int32) % 5)
    seen = np.concatenate([np.asarray(jax.device_get(x)).reshape(8, -1)[:, 0] for x, _ in batches(ds, 8, 0, 0)])
    assert len(np.unique(seen)) == 32  # full batches only: 37 // 8 * 8 distinct examples, none twice
    first = [np.asarray(x) for x, _ in batches(ds, 8, 0, 0)]
    again = [np.asarray(x) for x, _ in batches(ds, 8, 0, 0)]
    other = [np.asarray(x) for x, _ in batches(ds, 8, 0, 1)]
    assert all(np.array_equal(a, c) for a, c in zip(first, again))
    assert not all(np.array_equal(a, c) for a, c in zip(first, other))


class _RecordBatch:
    """A training-batch observer that stores the batch the compiled step saw."""

    name, every, sink, in_step, statistics = "batch", 1, "trajectories", True, frozenset()

    def __call__(self, view):
        return {"x": view.x, "y": view.y}


def test_equals_what_fit_trains_on_with_augmentation(tmp_path):
    cfg = TrainConfig(dataset="digits", model="mlp", model_kwargs={"depth": 1, "width": 16}, norm="vanilla", batch_size=16,
                      epochs=2, max_steps=5, train_subset=48, seed=7, augment=DEEPOBS_AUGMENT, results_dir=str(tmp_path),
                      study="b", name="r", eval_every_epochs=100)
    fit(cfg, observers=[_RecordBatch()], progress=False)
    stored = np.load(tmp_path / "b" / "r" / "trajectories.npz")
    steps, xs, ys = stored["batch/steps"], stored["batch/x"], stored["batch/y"]
    train = jd.load("digits", "train")
    ds = dataclasses.replace(train, images=train.images[:48], labels=train.labels[:48])
    ours = [pair for epoch in (0, 1) for pair in batches(ds, 16, 7, epoch, augment_config=DEEPOBS_AUGMENT)]
    assert list(steps) == [0, 1, 2, 3, 4]
    for t, x, y in zip(steps, xs, ys):
        # The same function on the same inputs, compiled in two programs: XLA may fuse the
        # normalization differently, so allow a few float32 ulps of the normalized range.
        np.testing.assert_allclose(np.asarray(ours[t][0]), x, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ours[t][1]), y)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=38), ValueError, "larger than the dataset"),
    (dict(batch_size=2.0), ValueError, "batch_size must be an int"),
    (dict(epoch=-1), ValueError, "epoch must be >= 0"),
    (dict(seed=True), ValueError, "seed must be an int"),
])
def test_bad_arguments_are_refused(kwargs, error, match):
    args = dict(batch_size=8, seed=0, epoch=0) | kwargs
    with pytest.raises(error, match=match):
        next(batches(_dataset(), **args))


def test_refuses_arrays_that_are_not_a_dataset():
    with pytest.raises(TypeError, match="jaxnorm.data.Dataset"):
        next(batches(np.zeros((4, 2)), 2, 0, 0))
