"""On-device data augmentation: pure JAX functions of ``(key, images)``.

Every function takes a batch ``images`` of shape ``(B, H, W, C)`` (float, values in [0, 1]
before normalization), returns an array of the same shape and dtype, is deterministic in its
``key`` (a ``jax.random`` key, raw ``PRNGKey`` or typed), draws independent randomness per
image, and works under ``jax.jit`` (Python-number arguments such as ``padding`` and the
``AugmentConfig`` are static: pass them with ``static_argnames`` / close over them).

The training pipeline of DeepOBS' PyTorch CIFAR problems (the one thesis 1 ran), in order:

1. :func:`random_crop`: zero-pad 2 px on every side, crop a random HxW window;
2. :func:`random_flip`: mirror left-right with probability 1/2;
3. :func:`color_jitter`: torchvision ``ColorJitter(brightness=63/255, contrast=(0.2, 1.8),
   saturation=(0.5, 1.5))``;
4. :func:`normalize`: per channel ``(x - mean) / std``.

:func:`deepobs_augment` runs all four, :func:`eval_preprocess` only the last (validation and
test images are never augmented). :class:`AugmentConfig` + :func:`augment` switch pieces off;
:func:`default_augment_config` gives each dataset's default. Do not flip digits: a mirrored
2, 3, 4, 5, 6, 7 or 9 is not that digit, so ``digits``, ``digits32`` and ``mnist`` default to
``flip=False``.

Each sampling step is exposed (:func:`crop_offsets`, :func:`flip_mask`,
:func:`jitter_params`) so a test or a user can see exactly which random choices a key made.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxnorm._registry import lookup

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601-2 luma weights of PIL's ``convert('L')``, the greyscale DeepOBS' PIL-image jitter used."""


def _check_batch(images, fn: str) -> None:
    if jnp.ndim(images) != 4:
        raise ValueError(f"{fn}: expected a batch of images (B, H, W, C), got shape {jnp.shape(images)}.")


# --------------------------------------------------------------------------- crop


def crop_offsets(key, batch_size: int, padding: int) -> jax.Array:
    """The random crop windows: int32 ``(B, 2)`` top-left corners ``(row, col)`` in the padded image.

    Each coordinate is uniform over ``0 .. 2 * padding`` (inclusive), independently per image;
    ``padding`` means no shift, ``0`` a shift of ``padding`` px down/right of the content.
    """
    return jax.random.randint(key, (batch_size, 2), 0, 2 * padding + 1, dtype=jnp.int32)


def random_crop(key, images: jax.Array, padding: int = 2) -> jax.Array:
    """Zero-pads ``padding`` px on each side of H and W, then crops a random HxW window per image.

    ``out[i] = pad(images[i])[r:r + H, c:c + W]`` with ``(r, c) = crop_offsets(key, B, padding)[i]``
    (torchvision ``RandomCrop(H, padding=padding)`` with zero fill). ``padding`` is static;
    ``padding=0`` returns ``images`` unchanged.
    """
    _check_batch(images, "random_crop")
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
        raise ValueError(f"random_crop: padding must be a static int >= 0, got {padding!r}.")
    if padding == 0:
        return images
    return _random_crop(key, images, int(padding))


@functools.partial(jax.jit, static_argnames="padding")  # compiled once per shape, also when called eagerly
def _random_crop(key, images, padding):
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = crop_offsets(key, b, padding)
    window = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jax.vmap(window)(padded, offsets)


# --------------------------------------------------------------------------- flip


def flip_mask(key, batch_size: int) -> jax.Array:
    """bool ``(B,)``: which images :func:`random_flip` mirrors (each with probability 1/2)."""
    return jax.random.bernoulli(key, 0.5, (batch_size,))


@jax.jit
def random_flip(key, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right (reverses W) with probability 1/2; the others are unchanged."""
    _check_batch(images, "random_flip")
    mask = flip_mask(key, images.shape[0])
    return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


# --------------------------------------------------------------------------- colour jitter


class JitterParams(NamedTuple):
    """The random choices of :func:`color_jitter` for a batch of B images.

    Attributes:
      brightness, contrast, saturation: float32 ``(B,)`` factors.
      order: int32 ``(B, 3)``; row i is the order in which image i gets the three ops,
        coded 0 = brightness, 1 = contrast, 2 = saturation.
    """

    brightness: jax.Array
    contrast: jax.Array
    saturation: jax.Array
    order: jax.Array


def _factor_range(value, what: str) -> tuple[float, float]:
    """torchvision's convention: a number v means [max(0, 1 - v), 1 + v]; a pair is (lo, hi)."""
    if value is None:
        return 1.0, 1.0
    if isinstance(value, numbers.Real):
        if value < 0:
            raise ValueError(f"color_jitter: {what} must be >= 0, got {value}.")
        return max(0.0, 1.0 - float(value)), 1.0 + float(value)
    lo, hi = value
    if not 0 <= lo <= hi:
        raise ValueError(f"color_jitter: {what} range must satisfy 0 <= lo <= hi, got {value}.")
    return float(lo), float(hi)


def jitter_params(
    key,
    batch_size: int,
    brightness: float | Sequence[float] | None = 63 / 255,
    saturation: float | Sequence[float] | None = (0.5, 1.5),
    contrast: float | Sequence[float] | None = (0.2, 1.8),
    random_order: bool = True,
) -> JitterParams:
    """Samples :class:`JitterParams`: each factor uniform in its range, independently per image.

    Ranges follow torchvision: a number ``v`` means ``[max(0, 1 - v), 1 + v]``, a pair
    ``(lo, hi)`` is used as is, None means the factor is 1 (the op is the identity). With
    ``random_order`` each image gets its own uniformly random order of the three ops (what
    torchvision's ``ColorJitter`` does per call, i.e. per image in a DeepOBS data loader);
    otherwise the fixed order brightness, contrast, saturation.
    """
    ranges = _ranges(brightness, saturation, contrast)
    return _jitter_params(key, int(batch_size), ranges, bool(random_order))


def _ranges(brightness, saturation, contrast) -> tuple[tuple[float, float], ...]:
    named = ((brightness, "brightness"), (saturation, "saturation"), (contrast, "contrast"))
    return tuple(_factor_range(v, what) for v, what in named)


@functools.partial(jax.jit, static_argnames=("batch_size", "ranges", "random_order"))
def _jitter_params(key, batch_size, ranges, random_order):
    kb, ks, kc, ko = jax.random.split(key, 4)
    factor = lambda k, rng: jax.random.uniform(k, (batch_size,), jnp.float32, *rng)
    if random_order:
        # argsort of i.i.d. uniforms: a uniformly random permutation per row (ties have
        # probability ~0), much cheaper to compile than a vmapped jax.random.permutation.
        order = jnp.argsort(jax.random.uniform(ko, (batch_size, 3)), axis=1)
    else:
        order = jnp.broadcast_to(jnp.arange(3), (batch_size, 3))
    b_range, s_range, c_range = ranges
    return JitterParams(
        brightness=factor(kb, b_range),
        contrast=factor(kc, c_range),
        saturation=factor(ks, s_range),
        order=order.astype(jnp.int32),
    )


def _grey(img: jax.Array) -> jax.Array:
    """(H, W, 1) luma of one (H, W, 3) image."""
    return (img @ jnp.asarray(LUMA_WEIGHTS, img.dtype))[..., None]


def _blend(img, other, factor):
    # torchvision's _blend for float images: factor * img + (1 - factor) * other, clipped to [0, 1].
    return jnp.clip(factor * img + (1 - factor) * other, 0.0, 1.0)


def _adjust_brightness(img, f):
    return _blend(img, 0.0, f)  # towards black


def _adjust_contrast(img, f):
    grey = _grey(img) if img.shape[-1] == 3 else img
    return _blend(img, jnp.mean(grey), f)  # towards the image's mean grey level


def _adjust_saturation(img, f):
    if img.shape[-1] == 1:
        return img  # a grey image has no saturation (torchvision returns it unchanged)
    return _blend(img, _grey(img), f)  # towards its own greyscale version


@jax.jit  # one compilation per shape, also for eager calls (vmap of switch is slow op by op)
def apply_color_jitter(images: jax.Array, params: JitterParams) -> jax.Array:
    """Applies given :class:`JitterParams` to ``(B, H, W, C)`` images, ``C`` in {1, 3}.

    Per image, in ``params.order``, each op blends with a reference and clips to [0, 1]:

    * brightness ``b``: ``clip(b * x)`` (blend with black);
    * contrast ``c``: ``clip(c * x + (1 - c) * m)``, ``m`` the mean over all pixels of the
      image's greyscale (of the image itself when ``C == 1``);
    * saturation ``s``: ``clip(s * x + (1 - s) * grey(x))`` per pixel, ``grey`` the
      ``LUMA_WEIGHTS`` sum over RGB; the identity for ``C == 1``.

    These are torchvision's float-tensor formulas with PIL's luma weights (0.299, not
    torchvision's 0.2989). DeepOBS applied the jitter to PIL uint8 images, which additionally
    rounds to 8 bits after every op and rounds the contrast mean to an integer grey level;
    jaxnorm stays in float32.
    """
    _check_batch(images, "color_jitter")
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"color_jitter: needs 1 or 3 channels, got {images.shape[-1]}.")
    ops = (_adjust_brightness, _adjust_contrast, _adjust_saturation)

    def one(img, b, c, s, order):
        factors = (b, c, s)
        branches = [lambda x, i=i: ops[i](x, factors[i]) for i in range(3)]
        for position in range(3):
            img = jax.lax.switch(order[position], branches, img)
        return img

    return jax.vmap(one)(images, params.brightness, params.contrast, params.saturation, params.order)


def color_jitter(
    key,
    images: jax.Array,
    brightness: float | Sequence[float] | None = 63 / 255,
    saturation: float | Sequence[float] | None = (0.5, 1.5),
    contrast: float | Sequence[float] | None = (0.2, 1.8),
    random_order: bool = True,
) -> jax.Array:
    """torchvision ``ColorJitter`` (hue off) per image: ``apply_color_jitter(images, jitter_params(key, ...))``.

    Defaults are DeepOBS': brightness factor in [1 - 63/255, 1 + 63/255], saturation in
    [0.5, 1.5], contrast in [0.2, 1.8], the three ops in a random order per image (as
    torchvision does; ``random_order=False`` fixes brightness, contrast, saturation). Outputs
    stay in [0, 1]. See :func:`jitter_params` and :func:`apply_color_jitter` for the exact rules.
    """
    _check_batch(images, "color_jitter")
    params = _jitter_params(key, images.shape[0], _ranges(brightness, saturation, contrast), bool(random_order))
    return apply_color_jitter(images, params)


# --------------------------------------------------------------------------- normalization


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Per-channel ``(images - mean) / std`` over the last axis; ``mean``/``std`` have C entries."""
    mean = jnp.asarray(mean, dtype=jnp.result_type(images, jnp.float32))
    std = jnp.asarray(std, dtype=mean.dtype)
    c = jnp.shape(images)[-1]
    if mean.shape != (c,) or std.shape != (c,):
        raise ValueError(f"normalize: mean and std need shape ({c},), got {mean.shape} and {std.shape}.")
    return (images - mean) / std


def eval_preprocess(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Validation/test preprocessing: :func:`normalize` only (no augmentation)."""
    return normalize(images, mean, std)


# --------------------------------------------------------------------------- configurable pipeline


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which pieces of the training pipeline run (hashable, so it can be a static jit argument).

    Attributes:
      crop_padding: zero padding of :func:`random_crop`; 0 switches the crop off.
      flip: :func:`random_flip` (never for digits, see the module docstring).
      color_jitter: :func:`color_jitter` with the DeepOBS defaults.
      normalize: :func:`normalize` with the dataset's mean/std.
    """

    crop_padding: int = 2
    flip: bool = True
    color_jitter: bool = True
    normalize: bool = True

    def __post_init__(self):
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, numbers.Integral):
            raise TypeError(f"AugmentConfig.crop_padding must be an int, got {self.crop_padding!r}.")
        if self.crop_padding < 0:
            raise ValueError(f"AugmentConfig.crop_padding must be >= 0, got {self.crop_padding}.")


DEEPOBS_AUGMENT = AugmentConfig()
"""The DeepOBS (PyTorch) CIFAR training pipeline: crop(2) -> flip -> jitter -> normalize."""

NO_AUGMENT = AugmentConfig(crop_padding=0, flip=False, color_jitter=False, normalize=True)
"""Normalization only (= :func:`eval_preprocess`); DeepOBS' MNIST-style problems train like this."""

_DEFAULT_CONFIGS = {
    "cifar10": DEEPOBS_AUGMENT,
    "cifar100": DEEPOBS_AUGMENT,
    "cifar10_corrupted": DEEPOBS_AUGMENT,  # test-only data; listed so every dataset name resolves
    "digits32": dataclasses.replace(DEEPOBS_AUGMENT, flip=False),  # the CIFAR stand-in, minus the flip
    "digits": dataclasses.replace(DEEPOBS_AUGMENT, crop_padding=1, flip=False),  # 8x8: 1 px ~ CIFAR's 2 px/32 scaled
    "mnist": NO_AUGMENT,
    "fashion_mnist": NO_AUGMENT,
}


def default_augment_config(name: str) -> AugmentConfig:
    """The training augmentation jaxnorm uses by default for dataset ``name`` (see ``_DEFAULT_CONFIGS``).

    ``'cifar10_corrupted/<config>'`` resolves through its base name. Unknown: ValueError.
    """
    return lookup(_DEFAULT_CONFIGS, name.split("/")[0] if isinstance(name, str) else name, "dataset")


def augment(key, images: jax.Array, config: AugmentConfig, mean=None, std=None) -> jax.Array:
    """Applies the pieces ``config`` enables, in DeepOBS order: crop, flip, jitter, normalize.

    The key is split into (crop, flip, jitter) keys the same way whatever is enabled, so
    switching one piece off does not change the random choices of the others.
    ``mean``/``std`` are required when ``config.normalize``. ``config`` must be static under jit.
    """
    _check_batch(images, "augment")
    k_crop, k_flip, k_jitter = jax.random.split(key, 3)
    x = images
    if config.crop_padding:
        x = random_crop(k_crop, x, config.crop_padding)
    if config.flip:
        x = random_flip(k_flip, x)
    if config.color_jitter:
        x = color_jitter(k_jitter, x)
    if config.normalize:
        if mean is None or std is None:
            raise ValueError("augment: config.normalize needs mean and std (e.g. Dataset.mean, Dataset.std).")
        x = normalize(x, mean, std)
    return x


def deepobs_augment(key, images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """The DeepOBS CIFAR training pipeline: ``augment(key, images, DEEPOBS_AUGMENT, mean, std)``."""
    return augment(key, images, DEEPOBS_AUGMENT, mean, std)
