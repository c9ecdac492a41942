"""The fixed probe set an observer measures on: normalized examples laid out as whole
batches (the shared setup of Sharpness, SpectralDensity and Smoothness)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxnorm.data.augmentation import normalize


def probe_batches(images, labels, mean, std, batch_size: Optional[int], *, min_batch: int = 2, what: str = "batch_size") -> tuple[jax.Array, jax.Array]:
    """``(x (k, b, ...), y (k, b))``: the first ``k·b`` examples, normalized by the
    dataset's ``mean``/``std``, as ``k = len(labels) // b`` batches of ``b = batch_size``
    (None: one batch of all); the remainder is dropped. With BatchNorm in ``'batch'``
    mode the batch size changes what is measured, so pass the training batch size.

    Raises:
      ValueError: images and labels of different lengths, or ``b`` outside
        ``[min_batch, len(labels)]``.
    """
    n = len(labels)
    if len(images) != n:
        raise ValueError(f"images and labels differ in length: {len(images)} and {n}.")
    b = n if batch_size is None else batch_size
    if not min_batch <= b <= n:
        raise ValueError(f"{what} must lie in [{min_batch}, {n}] (the probe set's size), got {b}.")
    k = n // b
    x = normalize(jnp.asarray(images[: k * b], jnp.float32), jnp.asarray(mean), jnp.asarray(std))
    y = jnp.asarray(labels[: k * b], jnp.int32)
    return x.reshape((k, b) + x.shape[1:]), y.reshape(k, b)
