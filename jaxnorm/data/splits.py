"""The DeepOBS-style partition of a training set into train / validation / train_eval.

DeepOBS (PyTorch version) trains CIFAR on 40k of the 50k training images, validates on the
other 10k, and reports the training loss on a fixed 10k subset of the 40k. jaxnorm does the
same for every tfds dataset with a ``train`` split, for any size ``n`` (``n >= 5``):

* ``n_val = min(10_000, n // 5)``: 10k for CIFAR (50k) and MNIST-style (60k) sets, a fifth of
  the data for smaller ones (e.g. ``tfds.testing.mock_data(num_examples=30)``: 6);
* ``validation``: the last ``n_val`` positions of a seeded permutation of ``range(n)``;
* ``train``: the other ``n - n_val`` (40k of CIFAR's 50k, 50k of MNIST's 60k);
* ``train_eval``: the first ``n_val`` positions of the permutation, a subset of ``train``
  of the same size as ``validation`` (so the two losses average over equally many examples);
* ``full_train``: all ``n``.

Each split is returned as **sorted** indices into the tfds ``train`` split (storage order;
the training loop shuffles per epoch anyway).

The permutation orders ``range(n)`` by a SplitMix64 hash of ``(seed, index)`` in plain
unsigned 64-bit integer arithmetic. Unlike ``numpy.random`` or ``jax.random`` streams, whose
bits may change between library versions, this is fixed forever: a validation set never
silently changes under a dependency upgrade.
"""

from __future__ import annotations

import functools

import numpy as np

MAX_HELD_OUT = 10_000
"""Size of ``validation`` and ``train_eval`` for datasets with at least 50k examples."""

PARTITION_SPLITS = ("train", "validation", "train_eval", "full_train")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer (Steele, Lea & Flood 2014), elementwise on uint64, wrapping."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` (int64) that depends only on ``(n, seed)``, version-stable.

    Index ``i`` is ranked by ``splitmix64(splitmix64(seed) ^ i)``; ties are impossible in
    practice (64-bit hashes) and broken by index anyway (stable sort).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    salt = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))[0]
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ salt)
    return np.argsort(keys, kind="stable")


@functools.lru_cache(maxsize=16)
def _partition(n: int, seed: int) -> dict[str, np.ndarray]:
    perm = seeded_permutation(n, seed)
    n_val = min(MAX_HELD_OUT, n // 5)
    out = {
        "train": perm[: n - n_val],
        "validation": perm[n - n_val :],
        "train_eval": perm[:n_val],
        "full_train": perm,
    }
    out = {k: np.sort(v) for k, v in out.items()}
    for v in out.values():
        v.flags.writeable = False
    return out


def partition_indices(n: int, split: str, seed: int = 0) -> np.ndarray:
    """Sorted int64 indices into a training set of ``n`` examples for a DeepOBS-style ``split``.

    Args:
      n: size of the full training set, at least 5 (so that ``validation`` is not empty).
      split: one of ``PARTITION_SPLITS`` (see the module docstring for sizes).
      seed: selects the permutation; the same ``(n, split, seed)`` always gives the same indices.

    Returns:
      A read-only int64 array. ``train`` and ``validation`` are disjoint and together are
      ``range(n)``; ``train_eval`` is a subset of ``train`` with ``len(validation)`` elements.

    Raises:
      ValueError: unknown split, or ``n < 5``.
    """
    if split not in PARTITION_SPLITS:
        raise ValueError(f"unknown partition split {split!r}; known: {list(PARTITION_SPLITS)}")
    if n < 5:
        raise ValueError(f"need at least 5 training examples to hold out a validation split, got {n}.")
    return _partition(int(n), int(seed))[split]
