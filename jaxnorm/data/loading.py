"""``load(name, split)``: every dataset jaxnorm knows, by name, as a host-memory ``Dataset``.

Registry (``DATASETS`` lists every name):

=================================  ===========  =======  ==========================================
name                               image shape  classes  splits
=================================  ===========  =======  ==========================================
``digits``                         8x8x1        10       train, train_eval (= train), test
``digits32`` (CIFAR-shaped)        32x32x3      10       train, train_eval (= train), test
``cifar10``, ``cifar100``          32x32x3      10, 100  train, validation, train_eval, full_train, test
``mnist``, ``fashion_mnist``       28x28x1      10       train, validation, train_eval, full_train, test
``cifar10_corrupted/<c>_<s>``      32x32x3      10       test
``mnist1d``, ``mnist1d_shuffle``,  40x1         10       train, validation, train_eval, full_train, test
``mnist1d_20k``,
``mnist1d_shuffle_20k``
=================================  ===========  =======  ==========================================

* ``digits``/``digits32`` are embedded (scikit-learn's digits, :mod:`jaxnorm.data.digits`) and
  work offline. Their split is fixed; ``seed`` is ignored.
* The others are read with ``tfds.data_source(..., download=False)`` (random access, no
  TensorFlow needed), which requires the dataset to have been prepared in the
  ``array_record`` format beforehand (see :class:`DatasetNotPreparedError`). The whole split is
  read into host numpy once per process.
* ``train``/``validation``/``train_eval``/``full_train`` are the DeepOBS partition of the
  tfds ``train`` split (40k/10k/10k-of-the-40k/50k for CIFAR; 50k/10k/10k/60k for MNIST-style;
  exact rule, small ``n`` included, in :mod:`jaxnorm.data.splits`), a deterministic function
  of ``seed``. ``test`` is the tfds ``test`` split.
* ``mnist1d`` and its variants (Greydanus & Kobak, "Scaling Down Deep Learning with
  MNIST-1D", ICML 2024; :mod:`jaxnorm.data.mnist1d`) are generated offline by the
  ``mnist1d`` package and cached on disk; sequences ``(n, 40, 1)`` (batch, length,
  channels). ``train``/``validation``/``train_eval``/``full_train`` partition the package's
  training part (4,000 sequences: 3,200/800/800/4,000) by the rule of
  :mod:`jaxnorm.data.splits`, ``test`` is its test part (1,000).
* ``cifar10_corrupted/<corruption>_<severity>`` (CIFAR-10-C, Hendrycks & Dietterich 2019), e.g.
  ``'cifar10_corrupted/gaussian_noise_3'``, severity 1-5, is the tfds config of the same
  name; it only has ``test``.

Normalization constants (``Dataset.mean``/``std``): CIFAR-10 and CIFAR-100 use the DeepOBS
(PyTorch) constants, CIFAR-10-C uses CIFAR-10's (the model was trained with them). For the
other datasets they are the per-channel mean and population standard deviation (ddof 0) over
every pixel (sequence position) of the full training split (``full_train`` / digits
``train``), computed once per process; every split of a dataset carries the same constants.

Loaded datasets are cached in-process on ``(name, split, data_dir, seed)`` (``clear_cache()``
empties the caches) and their arrays are read-only, so a cached result cannot be mutated.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import numpy as np

from jaxnorm.data.dataset import Dataset
from jaxnorm.data.digits import NUM_CLASSES as _DIGITS_CLASSES
from jaxnorm.data.digits import load_digits
from jaxnorm.data.mnist1d import NUM_CLASSES as _MNIST1D_CLASSES
from jaxnorm.data.mnist1d import VARIANTS as _MNIST1D_VARIANTS
from jaxnorm.data.mnist1d import load_mnist1d
from jaxnorm.data.splits import partition_indices

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643846, 0.27615047)

CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic", "fog", "frost", "frosted_glass_blur",
    "gaussian_blur", "gaussian_noise", "impulse_noise", "jpeg_compression", "motion_blur",
    "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur",
)  # fmt: skip
"""The 19 CIFAR-10-C corruptions of tfds ``cifar10_corrupted`` (each at severities 1-5)."""
SEVERITIES = (1, 2, 3, 4, 5)

_READ_CHUNK = 1024  # records per batched read


class DatasetNotPreparedError(RuntimeError):
    """A tfds dataset is not prepared (in the array_record format) in the searched data_dir.

    Raised by :func:`load` instead of downloading: loading never touches the network, so it
    fails in milliseconds on an offline machine. The message says how to prepare the data.
    """


# --------------------------------------------------------------------------- tfds reading


def _searched_dir(data_dir: str | None) -> str:
    """The directory tfds reads when ``data_dir`` is None (its documented default)."""
    if data_dir is not None:
        return data_dir
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _not_prepared(name: str, tfds_name: str, tfds_split: str, data_dir: str | None, cause: BaseException):
    where = _searched_dir(data_dir)
    dir_flag = "" if data_dir is None else f" --data_dir={data_dir}"
    dir_kw = "" if data_dir is None else f", data_dir={data_dir!r}"
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return DatasetNotPreparedError(
        f"Dataset {name!r} (tfds {tfds_name!r}, split {tfds_split!r}) is not prepared in the array_record "
        f"format under data_dir {where!r}. jaxnorm reads with download=False, so nothing was downloaded.\n"
        f"To prepare it, on a machine with network access run\n"
        f"    tfds build {tfds_name} --file_format=array_record{dir_flag}\n"
        f"or, in Python,\n"
        f"    tfds.builder({tfds_name!r}{dir_kw}).download_and_prepare(file_format='array_record')\n"
        f"    # equivalently: tfds.data_source({tfds_name!r}, split={tfds_split!r}, download=True{dir_kw})\n"
        f"then copy the prepared <data_dir>/{tfds_name.split('/')[0]}/ folder into {where!r} (or pass "
        f"load(..., data_dir=<where it is>)). "
        f"Data prepared as tfrecord (tfds' default when TensorFlow is installed) cannot be read without "
        f"TensorFlow: rebuild it with --file_format=array_record.\n"
        f"The embedded datasets 'digits' and 'digits32' work offline with no preparation.\n"
        f"(tfds said: {type(cause).__name__}: {detail})"
    )


def _data_source(name: str, tfds_name: str, tfds_split: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(tfds_name, split=tfds_split, data_dir=data_dir, download=False, try_gcs=False)
        len(source)  # an empty/missing split may only fail here
    # tfds reports "not prepared" in many ways, depending on what is on disk: NotImplementedError
    # (no dataset_info.json, so it assumes TFRECORD), KeyError (empty `splits`), ValueError (no
    # file format available), FileNotFoundError/OSError (missing shards), AssertionError.
    except (NotImplementedError, KeyError, ValueError, OSError, AssertionError) as e:
        raise _not_prepared(name, tfds_name, tfds_split, data_dir, e) from e
    return source


def _read_records(source, n: int):
    """Yields every record of ``source`` in order, in batched reads where the source allows."""
    getitems = getattr(source, "__getitems__", None)
    for start in range(0, n, _READ_CHUNK):
        keys = list(range(start, min(n, start + _READ_CHUNK)))
        records = None
        if getitems is not None:
            try:
                records = getitems(keys)
            except TypeError:
                # tfds 4.9.10's mock_data installs a __getitems__ with the wrong signature;
                # fall back to one read per record (same records, just slower).
                getitems = None
        if records is None:
            records = [source[k] for k in keys]
        yield from records


@functools.lru_cache(maxsize=4)
def _read_split(name: str, tfds_name: str, tfds_split: str, data_dir: str | None, image_shape: tuple):
    """The whole tfds split as (uint8 (n, H, W, C), int64 (n,)), read-only."""
    source = _data_source(name, tfds_name, tfds_split, data_dir)
    n = len(source)
    images = np.empty((n, *image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    for i, record in enumerate(_read_records(source, n)):
        image = np.asarray(record["image"])
        if image.shape != image_shape or image.dtype != np.uint8:
            raise ValueError(
                f"{tfds_name!r} {tfds_split!r} record {i}: expected a uint8 image of shape {image_shape}, "
                f"got {image.dtype} {image.shape}."
            )
        images[i] = image
        labels[i] = int(record["label"])
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _channel_stats(images: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std (ddof 0) over all pixels of NHWC ``images / scale``."""
    flat = images.reshape(-1, images.shape[-1])
    mean = flat.mean(axis=0, dtype=np.float64) / scale
    sq = np.square(flat, dtype=np.float64).mean(axis=0) / scale**2
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    splits: dict  # our split -> (tfds split, partition split or None)
    mean: tuple[float, ...] | None = None  # None: computed from the tfds train split
    std: tuple[float, ...] | None = None


_PARTITIONED = {
    "train": ("train", "train"),
    "validation": ("train", "validation"),
    "train_eval": ("train", "train_eval"),
    "full_train": ("train", "full_train"),
    "test": ("test", None),
}
_TEST_ONLY = {"test": ("test", None)}


@functools.lru_cache(maxsize=8)
def _tfds_train_stats(name: str, tfds_name: str, data_dir: str | None, image_shape: tuple):
    images, _ = _read_split(name, tfds_name, "train", data_dir, image_shape)
    return _channel_stats(images, 255.0)


def _load_tfds(spec: _TfdsSpec, name: str, split: str, data_dir: str | None, seed: int) -> Dataset:
    tfds_split, part = spec.splits[split]
    images, labels = _read_split(name, spec.tfds_name, tfds_split, data_dir, spec.image_shape)
    if part is not None:
        idx = partition_indices(len(labels), part, seed)
        images, labels = images[idx], labels[idx]
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"{name!r} {split!r}: labels outside [0, {spec.num_classes}).")
    if spec.mean is None:
        mean, std = _tfds_train_stats(name, spec.tfds_name, data_dir, spec.image_shape)
    else:
        mean, std = spec.mean, spec.std
    return Dataset(
        images=images.astype(np.float32) / np.float32(255.0),
        labels=labels.astype(np.int32),
        num_classes=spec.num_classes,
        name=name,
        split=split,
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------- digits

_DIGITS_SPLITS = {"train": "train", "train_eval": "train", "test": "test"}


@functools.lru_cache(maxsize=2)
def _digits_stats(cifar_shape: bool):
    images, _ = load_digits("train", cifar_shape=cifar_shape)
    return _channel_stats(images, 1.0)


def _load_digits(cifar_shape: bool, name: str, split: str, data_dir: str | None, seed: int) -> Dataset:
    del data_dir, seed  # embedded data, fixed split
    images, labels = load_digits(_DIGITS_SPLITS[split], cifar_shape=cifar_shape)
    mean, std = _digits_stats(cifar_shape)
    return Dataset(images, labels, _DIGITS_CLASSES, name, split, mean, std)


# --------------------------------------------------------------------------- MNIST-1D


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(name: str) -> dict:
    return load_mnist1d(name)


def _load_mnist1d(name: str, split: str, data_dir: str | None, seed: int) -> Dataset:
    del data_dir  # generated and cached by jaxnorm.data.mnist1d (its cache_dir())
    arrays = _mnist1d_arrays(name)
    source, part = _PARTITIONED[split]
    x, y = arrays[f"{source}_x"], arrays[f"{source}_y"]
    if part is not None:
        idx = partition_indices(len(y), part, seed)
        x, y = x[idx], y[idx]
    mean, std = _channel_stats(arrays["train_x"], 1.0)
    return Dataset(x, y, _MNIST1D_CLASSES, name, split, mean, std)


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class _Entry:
    loader: Callable[..., Dataset]  # (name, split, data_dir, seed) -> Dataset
    splits: tuple[str, ...]


def _tfds_entry(spec: _TfdsSpec) -> _Entry:
    return _Entry(functools.partial(_load_tfds, spec), tuple(spec.splits))


_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(functools.partial(_load_digits, False), tuple(_DIGITS_SPLITS)),
    "digits32": _Entry(functools.partial(_load_digits, True), tuple(_DIGITS_SPLITS)),
    "cifar10": _tfds_entry(_TfdsSpec("cifar10", 10, (32, 32, 3), _PARTITIONED, CIFAR10_MEAN, CIFAR10_STD)),
    "cifar100": _tfds_entry(_TfdsSpec("cifar100", 100, (32, 32, 3), _PARTITIONED, CIFAR100_MEAN, CIFAR100_STD)),
    "mnist": _tfds_entry(_TfdsSpec("mnist", 10, (28, 28, 1), _PARTITIONED)),
    "fashion_mnist": _tfds_entry(_TfdsSpec("fashion_mnist", 10, (28, 28, 1), _PARTITIONED)),
}
_REGISTRY.update({name: _Entry(_load_mnist1d, tuple(_PARTITIONED)) for name in _MNIST1D_VARIANTS})
_BASE_NAMES = tuple(_REGISTRY)
_REGISTRY.update(
    {
        f"cifar10_corrupted/{c}_{s}": _tfds_entry(
            _TfdsSpec(f"cifar10_corrupted/{c}_{s}", 10, (32, 32, 3), _TEST_ONLY, CIFAR10_MEAN, CIFAR10_STD)
        )
        for c in CORRUPTIONS
        for s in SEVERITIES
    }
)

DATASETS: tuple[str, ...] = tuple(_REGISTRY)
"""Every name :func:`load` accepts: the base datasets, then the 95 CIFAR-10-C configs."""


def splits_of(name: str) -> tuple[str, ...]:
    """The split names ``load(name, split)`` accepts. Raises ValueError for an unknown name."""
    return _entry(name).splits


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {name!r}; known: {list(_BASE_NAMES)} and 'cifar10_corrupted/<corruption>_<severity>' "
            f"with severity in 1..5 and corruption in {list(CORRUPTIONS)}."
        ) from None


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, data_dir: str | None, seed: int) -> Dataset:
    return _REGISTRY[name].loader(name, split, data_dir, seed)


def load(
    name: str = "digits", split: str = "train", *, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> Dataset:
    """Loads one split of a named dataset into host memory (see the module docstring).

    Args:
      name: a name in ``DATASETS``: ``'digits'``, ``'digits32'``, ``'cifar10'``, ``'cifar100'``,
        ``'mnist'``, ``'fashion_mnist'``, ``'mnist1d'`` (and its variants) or
        ``'cifar10_corrupted/<corruption>_<severity>'``.
      split: one of ``splits_of(name)``.
      data_dir: tfds data directory; None means tfds' default (``$TFDS_DATA_DIR``, else
        ``~/tensorflow_datasets``). Ignored by the embedded datasets.
      seed: selects the DeepOBS train/validation/train_eval partition (same seed, same split);
        ignored by splits that are not part of that partition.

    Returns:
      A :class:`Dataset` with read-only float32 NHWC images (NLC sequences for MNIST-1D) in
      [0, 1] and int32 labels. Repeated
      calls with the same arguments return the same (cached) object.

    Raises:
      ValueError: unknown name or split (the message lists the known ones).
      DatasetNotPreparedError: a tfds dataset that is not prepared locally (raised at once,
        nothing is downloaded).
    """
    entry = _entry(name)
    if split not in entry.splits:
        raise ValueError(f"dataset {name!r} has splits {list(entry.splits)}; got {split!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    return _load_cached(name, split, None if data_dir is None else os.fspath(data_dir), int(seed))


def clear_cache() -> None:
    """Empties the in-process caches of loaded datasets and tfds reads (e.g. between mocks in tests)."""
    _load_cached.cache_clear()
    _mnist1d_arrays.cache_clear()
    _read_split.cache_clear()
    _tfds_train_stats.cache_clear()
