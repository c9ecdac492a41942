"""``Dataset``: one split of an image-classification dataset, held in host memory.

Conventions (every loader in :mod:`jaxnorm.data.loading` returns exactly this):

* ``images``: float32, NHWC ``(n, height, width, channels)``, values in ``[0, 1]``
  (raw 8-bit pixels divided by 255; nothing subtracted, nothing augmented); or, for
  sequence data (MNIST-1D), NLC ``(n, length, channels)`` in ``[0, 1]``;
* ``labels``: int32 ``(n,)`` in ``0 .. num_classes - 1``;
* ``mean`` / ``std``: per-channel normalization constants *of the dataset* (not of this
  split), one float per channel, for :func:`jaxnorm.data.normalize`. Every split of a
  dataset carries the same constants, so training, validation and test images are
  normalized identically.

A ``Dataset`` is immutable: the dataclass is frozen and its arrays are read-only views
(the caller's own arrays are not touched). Use ``np.array(ds.images)`` for a writable copy.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `==` on arrays is elementwise, not a bool
class Dataset:
    """One split of a dataset; see the module docstring for the conventions.

    Attributes:
      images: float32 ``(n, H, W, C)`` (or ``(n, L, C)`` sequences) in [0, 1], read-only.
      labels: int32 ``(n,)`` in ``[0, num_classes)``, read-only.
      num_classes: number of classes of the dataset (not only those present in the split).
      name: the registry name it was loaded under, e.g. ``'cifar10'``.
      split: the split name, e.g. ``'train'``, ``'validation'``, ``'test'``.
      mean: per-channel mean, length ``C``.
      std: per-channel standard deviation, length ``C``, all > 0.

    Raises:
      TypeError / ValueError (from ``__post_init__``): wrong types, dtypes, shapes,
      value ranges, or constants whose length is not the channel count.
    """

    images: np.ndarray = dataclasses.field(repr=False)
    labels: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    name: str
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        where = f"Dataset({self.name!r}, split={self.split!r})"
        if not isinstance(self.images, np.ndarray) or not isinstance(self.labels, np.ndarray):
            raise TypeError(
                f"{where}: images and labels must be numpy arrays, got "
                f"{type(self.images).__name__} and {type(self.labels).__name__}."
            )
        if self.images.dtype != np.float32 or self.images.ndim not in (3, 4):
            raise ValueError(
                f"{where}: images must be float32 NHWC (n, H, W, C) or NLC sequences (n, L, C), got "
                f"{self.images.dtype} {self.images.shape}."
            )
        if self.labels.dtype != np.int32 or self.labels.ndim != 1:
            raise ValueError(f"{where}: labels must be int32 (n,), got {self.labels.dtype} {self.labels.shape}.")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{where}: {len(self.images)} images but {len(self.labels)} labels.")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise TypeError(f"{where}: num_classes must be an int, got {self.num_classes!r}.")
        if self.num_classes < 1:
            raise ValueError(f"{where}: num_classes must be >= 1, got {self.num_classes}.")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(
                f"{where}: labels must lie in [0, {self.num_classes}), got "
                f"[{self.labels.min()}, {self.labels.max()}]."
            )
        if self.images.size and (self.images.min() < 0.0 or self.images.max() > 1.0):
            raise ValueError(
                f"{where}: images must lie in [0, 1], got [{self.images.min()}, {self.images.max()}]."
            )
        channels = self.images.shape[-1]
        mean = tuple(float(m) for m in np.ravel(self.mean))
        std = tuple(float(s) for s in np.ravel(self.std))
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"{where}: mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}."
            )
        if not all(s > 0 for s in std):
            raise ValueError(f"{where}: std must be > 0, got {std}.")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "images", _readonly(self.images))
        object.__setattr__(self, "labels", _readonly(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of one image (``(L, C)`` of one sequence)."""
        return tuple(self.images.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )
