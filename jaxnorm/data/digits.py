"""The embedded offline dataset: scikit-learn's bundled handwritten digits.

1,797 real 8x8 grey-scale images of the digits 0-9 (UCI ML hand-written digits), shipped
inside scikit-learn, so every study and test runs with no network. A fixed, stratified
split (seed 0) gives 1,438 training and 359 test images (20% of each class, rounded).

Two shapes:
  * native: ``(n, 8, 8, 1)`` float32 in [0, 1];
  * ``cifar_shape=True``: ``(n, 32, 32, 3)``, each pixel repeated 4x4 and the grey
    channel copied to RGB, so every CIFAR model (3c3d, allcnnc) runs on it unchanged.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10
_TEST_FRACTION = 0.2
_SPLITS = ("train", "test")


@functools.lru_cache(maxsize=None)
def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load

    labels = _sk_load().target
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(NUM_CLASSES):  # stratified: the same class balance in both splits
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * _TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def load_digits(split: str = "train", *, cifar_shape: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)`` of the fixed ``split`` ('train' or 'test').

    Args:
      split: 'train' (1,438 examples) or 'test' (359).
      cifar_shape: upsample to ``(32, 32, 3)`` (see module docstring).

    Returns:
      images: float32 ``(n, 8, 8, 1)`` or ``(n, 32, 32, 3)`` in [0, 1];
      labels: int32 ``(n,)`` in 0..9.

    Raises:
      ValueError: unknown split.
    """
    if split not in _SPLITS:
        raise ValueError(f"digits has splits {_SPLITS}, got {split!r}.")
    from sklearn.datasets import load_digits as _sk_load

    data = _sk_load()
    idx = _split_indices()[split]
    images = (data.images[idx] / 16.0).astype(np.float32)[..., None]
    if cifar_shape:
        images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
        images = np.repeat(images, 3, axis=3)
    return images, data.target[idx].astype(np.int32)
