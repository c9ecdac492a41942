"""The engine's training batches, for users' own training loops.

:func:`training_batch` is the one function that turns the stored images of a training
set into the batch of one step -- the permutation slice, then normalization or the
augmentation drawn from the step's key. :func:`jaxnorm.train.step.make_train_step` calls
it inside the compiled step, and :func:`batches` calls it from a host loop, so a user's
loop built on :func:`batches` sees exactly the examples, order and augmentation that
:func:`jaxnorm.train.fit` trains a config with the same ``seed`` on::

    ds = jaxnorm.data.load("digits", "train")
    for epoch in range(3):
        for x, y in jaxnorm.data.batches(ds, 128, seed=0, epoch=epoch):
            state = my_step(state, x, y)       # x: normalized (b, H, W, C), y: int32 (b,)

(``fit`` trains on ``ds`` cut to ``TrainConfig.train_subset`` first, when that is set:
pass the same cut.) Streams: :mod:`jaxnorm.data.batching` (the order is
``epoch_permutation(seed, epoch, n)``, the augmentation key the first half of
``split(step_key(seed, epoch, step))``, the dropout key the second).
"""

from __future__ import annotations

import functools
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.data.augmentation import AugmentConfig, augment, normalize
from jaxnorm.data.batching import batch_indices, epoch_permutation, step_key, steps_per_epoch
from jaxnorm.data.dataset import Dataset


def step_keys(seed, epoch, step_in_epoch) -> tuple[jax.Array, jax.Array]:
    """``(augmentation key, dropout key)`` of one training step: the two halves of
    ``split(step_key(seed, epoch, step_in_epoch))``. Traceable."""
    aug_key, dropout_key = jax.random.split(step_key(seed, epoch, step_in_epoch))
    return aug_key, dropout_key


def training_batch(images, labels, perm, aug_key, step_in_epoch, batch_size: int, mean, std,
                   augment_config: Optional[AugmentConfig] = None) -> tuple[jax.Array, jax.Array]:
    """``(x, y)`` of one training step, as the model sees them.

    Args:
      images, labels: the whole training set (float32 in [0, 1], ``(n, ...)``; int32 ``(n,)``).
      perm: the epoch's ``(n,)`` permutation (:func:`~jaxnorm.data.batching.epoch_permutation`).
      aug_key: the step's augmentation key (:func:`step_keys`); unused without augmentation.
      step_in_epoch: the step within the epoch (may be traced).
      batch_size: static.
      mean, std: per-channel normalization constants of the dataset.
      augment_config: None: normalization only; else :func:`~jaxnorm.data.augment` with it.
    """
    idx = batch_indices(perm, step_in_epoch, batch_size)
    x, y = images[idx], labels[idx]
    x = normalize(x, mean, std) if augment_config is None else augment(aug_key, x, augment_config, mean, std)
    return x, y


@functools.partial(jax.jit, static_argnames=("batch_size", "augment_config"))
def _batch(images, labels, perm, seed, epoch, step_in_epoch, mean, std, *, batch_size, augment_config):
    aug_key, _ = step_keys(seed, epoch, step_in_epoch)
    return training_batch(images, labels, perm, aug_key, step_in_epoch, batch_size, mean, std, augment_config)


def batches(dataset: Dataset, batch_size: int, seed: int, epoch: int, *,
            augment_config: Optional[AugmentConfig] = None) -> Iterator[tuple[jax.Array, jax.Array]]:
    """The training batches of one epoch, in the engine's order (module docstring).

    Yields ``steps_per_epoch(len(dataset), batch_size)`` pairs ``(x, y)`` of device
    arrays: ``x`` float32 ``(batch_size, *dataset.images.shape[1:])`` normalized by the
    dataset's constants (or augmented, with ``augment_config`` -- e.g.
    :data:`~jaxnorm.data.DEEPOBS_AUGMENT`), ``y`` int32 ``(batch_size,)``. Full batches
    only: the last ``len(dataset) % batch_size`` examples of the epoch's order are skipped
    (a different set every epoch), as in training. The dataset is put on the default
    device once per call and each batch is gathered there by one compiled function
    (compiled once per shape and ``augment_config``).

    Raises:
      TypeError: ``dataset`` is not a :class:`~jaxnorm.data.Dataset`.
      ValueError: ``batch_size`` below 1 or above the dataset's size, or a negative ``epoch``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"batches() takes a jaxnorm.data.Dataset (e.g. jaxnorm.data.load(...)), got {type(dataset).__name__}.")
    for name, value in (("batch_size", batch_size), ("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"batches(): {name} must be an int, got {value!r}.")
    if epoch < 0:
        raise ValueError(f"batches(): epoch must be >= 0, got {epoch}.")
    n = len(dataset.labels)
    steps = steps_per_epoch(n, int(batch_size))
    images, labels = jnp.asarray(dataset.images), jnp.asarray(dataset.labels)
    mean, std = jnp.asarray(dataset.mean, jnp.float32), jnp.asarray(dataset.std, jnp.float32)
    perm = epoch_permutation(int(seed), int(epoch), n)
    for s in range(steps):
        yield _batch(images, labels, perm, jnp.int32(seed), jnp.int32(epoch), jnp.int32(s), mean, std,
                     batch_size=int(batch_size), augment_config=augment_config)
