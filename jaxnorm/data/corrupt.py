"""Common image corruptions (Hendrycks & Dietterich 2019) as pure JAX functions.

``corrupt(images, kind, severity, *, key)`` returns the batch ``images`` (float NHWC, values
in [0, 1], before normalization) corrupted by ``kind`` at ``severity`` 1-5: same shape and
dtype, clipped to [0, 1]. It is deterministic in ``key`` (the noises draw independently per
element; the other kinds ignore the key), works under ``jax.jit`` with ``kind`` and
``severity`` static, and takes the images as they come: any batch size, any H x W, one
channel (digits) or three (CIFAR).

The parameters are those of CIFAR-10-C (``make_cifar_c.py`` of
github.com/hendrycks/robustness, the code behind the tfds ``cifar10_corrupted`` configs
that :func:`jaxnorm.data.load` reads), one value per severity 1..5:

==================  =====================================  ======================================
kind                parameter per severity                 operation
==================  =====================================  ======================================
``gaussian_noise``  σ = .04, .06, .08, .09, .10            x + σ·N(0, 1)
``shot_noise``      λ = 500, 250, 100, 75, 50              Poisson(λ·x) / λ
``impulse_noise``   amount = .01, .02, .03, .05, .07       salt & pepper: each value, with
                                                           probability ``amount``, set to 0 or 1
                                                           (1/2 each; skimage ``random_noise``
                                                           ``'s&p'``)
``speckle_noise``   σ = .06, .10, .12, .16, .20            x + x·σ·N(0, 1)
``gaussian_blur``   σ = .4, .6, .7, .8, 1 (pixels)         Gaussian filter per channel, edge
                                                           mode ``'nearest'``, truncated at 4σ
                                                           (skimage/scipy ``gaussian``)
``contrast``        c = .75, .5, .4, .3, .15               (x − m)·c + m, m = each image's mean
                                                           per channel
``brightness``      c = .05, .1, .15, .2, .3               HSV value V ← clip(V + c): in closed
                                                           form x·V'/V (V = max over channels;
                                                           V' where V = 0), so hue and
                                                           saturation stay; for one channel
                                                           x + c
``pixelate``        c = .95, .9, .85, .75, .65             PIL ``BOX`` resize to int(c·H) x
                                                           int(c·W) and back
==================  =====================================  ======================================

Adapted to 8x8 digits: nothing is rescaled. Parameters in pixels (the blur's σ) therefore
blur an 8x8 digit four times as much relative to its size as a 32x32 CIFAR image; the
pixelate sizes int(c·8) are 7, 7, 6, 6, 5, so on 8x8 images severities 1 and 2 coincide,
and 3 and 4 (on 32x32: 30, 28, 27, 24, 20), and 8 -> 5 -> 8 is closer to the image than
8 -> 6 -> 8; ``digits32`` (the digits in 4x4 blocks) passes 32 -> 24 -> 32 unchanged: pixelate
is a severity ladder on natural 32x32 images only. A one-channel image is its own HSV value, so
``brightness`` adds c. The noises are drawn in float32 from ``jax.random`` (not numpy's
generator, so not the same draws as CIFAR-10-C), and no uint8 rounding follows (CIFAR-10-C
was stored as uint8). The other CIFAR-10-C corruptions (defocus/glass/motion/zoom blur,
snow, frost, fog, elastic, JPEG, spatter, saturate) need image libraries or assets; on
CIFAR, ``load('cifar10_corrupted/<kind>_<severity>', 'test')`` gives all 19.

References:
  D. Hendrycks, T. Dietterich. Benchmarking neural network robustness to common corruptions
  and perturbations. ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._registry import lookup

SEVERITIES = (1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """One corruption kind.

    Attributes:
      apply: ``(images float32 NHWC, argument, key) -> images`` (not yet clipped); the
        argument is one severity's slice of ``table``.
      params: the published parameter at severities 1..5.
      random: whether it draws from ``key`` (else the key is ignored and may be None).
      table: ``(params, image shape) -> arrays`` with a leading axis of 5: what ``apply``
        gets per severity (default: the parameters themselves). Arrays, so that a traced
        severity indexes them and one compiled program serves all five.
    """

    apply: Callable
    params: tuple
    random: bool
    table: Callable = lambda params, shape: np.asarray(params, np.float32)


def _gaussian_noise(x, sigma, key):
    return x + sigma * jax.random.normal(key, x.shape, jnp.float32)


def _shot_noise(x, lam, key):
    # Poisson of a rate that clipping has kept >= 0 (a negative rate would give NaN-free garbage).
    return jax.random.poisson(key, jnp.maximum(x, 0.0) * lam, x.shape).astype(jnp.float32) / lam


def _impulse_noise(x, amount, key):
    flip_key, salt_key = jax.random.split(key)
    flipped = jax.random.uniform(flip_key, x.shape) < amount
    salt = jax.random.uniform(salt_key, x.shape) < 0.5
    return jnp.where(flipped, salt.astype(jnp.float32), x)


def _speckle_noise(x, sigma, key):
    return x + x * sigma * jax.random.normal(key, x.shape, jnp.float32)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalized 1-D Gaussian of scipy's ``gaussian_filter1d`` (radius int(truncate·σ + 0.5))."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _filter_axis(x, kernel: jax.Array, axis: int):
    """Correlates ``x`` with a 1-D ``kernel`` along ``axis``, edges repeated ('nearest')."""
    r = kernel.shape[0] // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis]
    return sum(kernel[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i in range(kernel.shape[0]))


def _blur_table(sigmas, shape) -> np.ndarray:
    """The kernels of every σ, zero-padded to the widest (a zero weight adds exactly 0)."""
    del shape
    kernels = [gaussian_kernel(s) for s in sigmas]
    r = max(len(k) for k in kernels) // 2
    return np.stack([np.pad(k, r - len(k) // 2) for k in kernels])


def _gaussian_blur(x, kernel, key):
    del key
    return _filter_axis(_filter_axis(x, kernel, 1), kernel, 2)


def _contrast(x, c, key):
    del key
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


def _brightness(x, c, key):
    del key
    # HSV keeps hue and saturation when only V (the channel maximum) moves, and every RGB
    # channel is V·(1 − S·f(H)): scaling V scales the pixel. A black pixel (V = 0) has S = 0
    # and becomes grey V'. skimage's rgb2hsv -> hsv2rgb round trip, without the trip.
    v = jnp.max(x, axis=-1, keepdims=True)
    v_new = jnp.clip(v + c, 0.0, 1.0)
    safe = jnp.where(v > 0, v, 1.0)
    return jnp.where(v > 0, x * (v_new / safe), v_new)


def box_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)``: PIL's ``Image.resize(..., BOX)`` along one axis as a matrix.

    Pillow's ``precompute_coeffs`` for the box filter (support 1/2): output pixel i is the
    mean of the input pixels j with (j + ½ − center_i)·min(out/in, 1) in (−½, ½], center_i =
    (i + ½)·in/out, j in [int(center − support + ½), int(center + support + ½)) clipped to
    the image, support = ½·max(in/out, 1). Downsizing averages the input pixels a box
    covers; enlarging repeats the nearest one.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        for j in range(lo, hi):
            t = (j - center + 0.5) / filterscale
            m[i, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
        m[i] /= m[i].sum()
    return m.astype(np.float32)


def _pixelate_table(factors, shape) -> tuple[np.ndarray, np.ndarray]:
    """Per factor c, the (H, H) and (W, W) matrices of PIL's box resize to int(c·size) and back."""

    def down_up(n, c):
        m = max(int(n * c), 1)
        return box_resize_matrix(m, n) @ box_resize_matrix(n, m)

    _, h, w, _ = shape
    return np.stack([down_up(h, c) for c in factors]), np.stack([down_up(w, c) for c in factors])


def _pixelate(x, matrices, key):
    del key
    rows, cols = matrices
    hp = jax.lax.Precision.HIGHEST  # an exact average, not a bf16 matmul on accelerators
    return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x, precision=hp)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10), random=True),
    "shot_noise": Corruption(_shot_noise, (500.0, 250.0, 100.0, 75.0, 50.0), random=True),
    "impulse_noise": Corruption(_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07), random=True),
    "speckle_noise": Corruption(_speckle_noise, (0.06, 0.10, 0.12, 0.16, 0.20), random=True),
    "gaussian_blur": Corruption(_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0), random=False, table=_blur_table),
    "contrast": Corruption(_contrast, (0.75, 0.5, 0.4, 0.3, 0.15), random=False),
    "brightness": Corruption(_brightness, (0.05, 0.1, 0.15, 0.2, 0.3), random=False),
    "pixelate": Corruption(_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), random=False, table=_pixelate_table),
}
"""The corruptions by name (the tfds ``cifar10_corrupted`` names); see the module docstring."""


def corrupt(images: jax.Array, kind: str, severity: int, *, key: Optional[jax.Array] = None) -> jax.Array:
    """``images`` corrupted by ``kind`` at ``severity``; see the module docstring.

    Args:
      images: float ``(B, H, W, C)``, values in [0, 1] (not normalized). Computed in
        float32; the result has the input's dtype.
      kind: a name in :data:`CORRUPTIONS` (static under jit).
      severity: 1..5, a Python int (static under jit). :func:`corrupt_jit` takes it as
        data instead: one compiled program per kind and shape.
      key: a ``jax.random`` key; required by the noises, ignored by the others.

    Returns:
      The corrupted batch, same shape and dtype, clipped to [0, 1].

    Raises:
      ValueError: unknown ``kind``, ``severity`` not an int in 1..5, ``images`` not of rank 4,
        or a noise without a ``key``.
      TypeError: ``images`` not floating point (e.g. uint8: divide by 255 first).
    """
    spec = _check(images, kind, severity, key)
    return _corrupt(spec, images, severity, key)


def _check(images, kind, severity, key) -> Corruption:
    spec = lookup(CORRUPTIONS, kind, "corruption")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"corrupt: severity must be an int in 1..5, got {severity!r}.")
    if jnp.ndim(images) != 4:
        raise ValueError(f"corrupt: expected a batch of images (B, H, W, C), got shape {jnp.shape(images)}.")
    dtype = jnp.result_type(images)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"corrupt: expected floating-point images in [0, 1], got dtype {dtype} (uint8: divide by 255).")
    if spec.random and key is None:
        raise ValueError(f"corrupt: {kind!r} is random and needs a key.")
    return spec


def _corrupt(spec: Corruption, images, severity, key):
    """``severity`` may be traced here (an int32 scalar in 1..5, not checked)."""
    x = jnp.asarray(images, jnp.float32)
    arg = jax.tree.map(lambda t: jnp.asarray(t)[severity - 1], spec.table(spec.params, x.shape))
    out = spec.apply(x, arg, key)
    return jnp.clip(out, 0.0, 1.0).astype(jnp.result_type(images))


def psnr(clean: jax.Array, corrupted: jax.Array, axis=None) -> jax.Array:
    """Peak signal-to-noise ratio in dB for values in [0, 1]: −10·log10(mean squared error)
    over ``axis`` (None: everything). +inf where the images are equal."""
    mse = jnp.mean(jnp.square(jnp.asarray(corrupted, jnp.float32) - jnp.asarray(clean, jnp.float32)), axis=axis)
    return -10.0 * jnp.log10(mse)


def corrupt_jit(images: jax.Array, kind: str, severity: int, *, key: Optional[jax.Array] = None) -> jax.Array:
    """:func:`corrupt`, checked in Python, then run as one compiled program per (kind,
    shape, dtype) for all five severities (the severity and the key are data)."""
    _check(images, kind, severity, key)
    return _corrupt_compiled(images, kind, jnp.int32(severity), key)


@functools.partial(jax.jit, static_argnames="kind")
def _corrupt_compiled(images, kind, severity, key):
    return _corrupt(CORRUPTIONS[kind], images, severity, key)


def corrupt_stream(images, labels, kind: Optional[str], severity: int, *, seed: int = 0, passes: int = 1):
    """A test stream: ``images`` (``(n, H, W, C)`` in [0, 1]) ``passes`` times, the first
    pass in the given order and each later one in a new order (a permutation keyed by
    ``(seed, pass)``), each pass corrupted by ``kind`` at ``severity`` with its own noise
    draws (key ``(seed, crc32(kind), severity, pass)``: the same stream for the same
    arguments, independent of the other streams). ``kind=None``: the clean stream.

    Returns ``(clean, corrupted, labels)``: the ``(passes·n, ...)`` clean and corrupted
    images on the device (the same array when ``kind`` is None) and the labels in
    stream order (numpy). ValueError for ``passes < 1``, mismatched lengths or an unknown
    kind/severity."""
    import zlib

    images, labels = jnp.asarray(images), np.asarray(labels)
    if passes < 1 or len(images) != len(labels):
        raise ValueError(f"need passes >= 1 and as many labels as images, got passes={passes}, {len(images)} vs {len(labels)}.")
    key = jax.random.PRNGKey(seed)
    clean, out, order_labels = [], [], []
    for p in range(passes):
        order = np.arange(len(labels)) if p == 0 else np.asarray(jax.random.permutation(jax.random.fold_in(key, p), len(labels)))
        xp = images[order]
        if kind is not None:
            k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(kind.encode())), severity), p)
            out.append(corrupt_jit(xp, kind, severity, key=k))
        clean.append(xp)
        order_labels.append(labels[order])
    clean = jnp.concatenate(clean)
    return clean, (jnp.concatenate(out) if kind is not None else clean), np.concatenate(order_labels)


__all__ = ["CORRUPTIONS", "Corruption", "SEVERITIES", "box_resize_matrix", "corrupt", "corrupt_jit", "corrupt_stream", "gaussian_kernel", "psnr"]
