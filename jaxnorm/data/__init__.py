"""Data: named datasets in host memory, on-device augmentation, deterministic batching.

* :mod:`~jaxnorm.data.loading` -- ``load(name, split, *, data_dir=None, seed=0) -> Dataset``;
  ``DATASETS``; ``DatasetNotPreparedError``. Offline: ``digits`` / ``digits32``
  (:mod:`~jaxnorm.data.digits`, also ``load_digits``); via tfds (prepared as array_record):
  ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``cifar10_corrupted/<c>_<s>``.
* :mod:`~jaxnorm.data.dataset` -- ``Dataset`` (float32 NHWC in [0, 1], int32 labels, mean/std).
* :mod:`~jaxnorm.data.splits` -- the DeepOBS train/validation/train_eval partition.
* :mod:`~jaxnorm.data.augmentation` -- ``random_crop``, ``random_flip``, ``color_jitter``,
  ``normalize``, ``deepobs_augment``, ``eval_preprocess``, ``AugmentConfig`` + ``augment``.
* :mod:`~jaxnorm.data.corrupt` -- ``corrupt(images, kind, severity, *, key)``, ``corrupt_jit``,
  ``CORRUPTIONS`` (CIFAR-10-C parameters), ``psnr``.
* :mod:`~jaxnorm.data.batching` -- ``step_key``, ``epoch_permutation``, ``steps_per_epoch``,
  ``batch_indices``, ``get_batch``, ``iterate_eval``.
* :mod:`~jaxnorm.data.batches` -- ``batches(dataset, batch_size, seed, epoch)``: the engine's
  training batches for users' own loops; ``training_batch``, ``step_keys`` (what the step uses).
"""

from jaxnorm.data.augmentation import (
    DEEPOBS_AUGMENT,
    NO_AUGMENT,
    AugmentConfig,
    JitterParams,
    apply_color_jitter,
    augment,
    color_jitter,
    crop_offsets,
    deepobs_augment,
    default_augment_config,
    eval_preprocess,
    flip_mask,
    jitter_params,
    normalize,
    random_crop,
    random_flip,
)
from jaxnorm.data.batches import batches, step_keys, training_batch
from jaxnorm.data.batching import (
    batch_indices,
    epoch_permutation,
    get_batch,
    iterate_eval,
    step_key,
    steps_per_epoch,
)
from jaxnorm.data.corrupt import CORRUPTIONS, corrupt, corrupt_jit, psnr
from jaxnorm.data.dataset import Dataset
from jaxnorm.data.digits import load_digits
from jaxnorm.data.loading import DATASETS, DatasetNotPreparedError, clear_cache, load, splits_of
from jaxnorm.data.splits import partition_indices

__all__ = [
    "CORRUPTIONS",
    "DATASETS",
    "DEEPOBS_AUGMENT",
    "AugmentConfig",
    "Dataset",
    "DatasetNotPreparedError",
    "JitterParams",
    "NO_AUGMENT",
    "apply_color_jitter",
    "augment",
    "batch_indices",
    "batches",
    "clear_cache",
    "color_jitter",
    "corrupt",
    "corrupt_jit",
    "crop_offsets",
    "deepobs_augment",
    "default_augment_config",
    "epoch_permutation",
    "eval_preprocess",
    "flip_mask",
    "get_batch",
    "iterate_eval",
    "jitter_params",
    "load",
    "load_digits",
    "normalize",
    "partition_indices",
    "psnr",
    "random_crop",
    "random_flip",
    "splits_of",
    "step_key",
    "step_keys",
    "steps_per_epoch",
    "training_batch",
]
