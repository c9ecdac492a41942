"""Deterministic batching: data order and augmentation randomness as pure functions of (seed, epoch, step).

Nothing here depends on history or on the number of devices: the examples of step ``s`` of
epoch ``e`` and the key that augments them are the same whether the run was resumed, how many
steps ran before, or how the batch is later sharded. That is what makes a resumed run
bit-identical to an uninterrupted one.

Typical training loop (everything but the Python loop can live inside one jitted step)::

    n = len(ds)
    steps = steps_per_epoch(n, batch_size)                 # full batches only
    for epoch in range(num_epochs):
        perm = epoch_permutation(seed, epoch, n)           # on device, (n,) int32
        for s in range(steps):
            idx = batch_indices(perm, s, batch_size)       # jit-able with a traced s
            x, y = get_batch(images, labels, idx)
            x = deepobs_augment(step_key(seed, epoch, s), x, ds.mean, ds.std)

Evaluation covers every example exactly once with fixed-shape padded batches::

    indices, mask = iterate_eval(n, batch_size)            # (num_batches, batch_size) each
    for idx, m in zip(indices, mask):                      # m False on padding
        ...  # sum per-example metrics * m, divide by n

Random streams: ``step_key(seed, epoch, step) = fold_in(fold_in(PRNGKey(seed), epoch), step)``;
the epoch's shuffle uses ``step_key(seed, epoch, SHUFFLE_STEP)`` with ``SHUFFLE_STEP = 2**32 - 1``,
a step index no epoch reaches, so data order and augmentation never share random bits; the
DeepOBS-style redrawn ``train_eval`` set of epoch ``e`` uses ``step_key(seed, e, TRAIN_EVAL_STEP)``
(``2**32 - 2``, equally unreachable).
Note these are ``jax.random`` (threefry) streams: the same JAX version and configuration
reproduce them exactly; a JAX upgrade may change them (the train/validation partition in
:mod:`jaxnorm.data.splits` does not depend on JAX and never changes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SHUFFLE_STEP = 2**32 - 1
"""The (unreachable) step index whose key shuffles an epoch."""
TRAIN_EVAL_STEP = 2**32 - 2
"""The (unreachable) step index whose key draws and augments an epoch's ``train_eval`` set."""


def step_key(seed: int, epoch, step) -> jax.Array:
    """The augmentation key of one step: ``fold_in(fold_in(PRNGKey(seed), epoch), step)``.

    ``epoch`` and ``step`` may be traced int32/uint32 scalars (call it inside jit). ``step`` is
    the step within the epoch (the global step works equally well; use one convention per run).
    Returns a raw ``uint32[2]`` key.
    """
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), step)


def epoch_permutation(seed: int, epoch, n: int) -> jax.Array:
    """int32 ``(n,)``: the order in which epoch ``epoch`` visits the ``n`` examples.

    A function of ``(seed, epoch)`` only (and static ``n``); ``epoch`` may be traced.
    """
    key = step_key(seed, epoch, SHUFFLE_STEP)
    return jax.random.permutation(key, n).astype(jnp.int32)


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches in an epoch of ``n`` examples.

    ``drop_remainder=True`` (training): ``n // batch_size`` full batches; the last
    ``n % batch_size`` examples of each epoch's permutation are skipped (a different set every
    epoch). ``False``: ``ceil(n / batch_size)``, the last batch ragged (use :func:`iterate_eval`).

    Raises:
      ValueError: ``batch_size < 1``, ``n < 0``, or no full batch with ``drop_remainder``.
    """
    if batch_size < 1 or n < 0:
        raise ValueError(f"need batch_size >= 1 and n >= 0, got batch_size={batch_size}, n={n}.")
    if drop_remainder:
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} examples): no full batch.")
        return n // batch_size
    return -(-n // batch_size)


def batch_indices(perm: jax.Array, step_in_epoch, batch_size: int) -> jax.Array:
    """``perm[step * batch_size : (step + 1) * batch_size]`` via ``lax.dynamic_slice``.

    ``step_in_epoch`` may be traced; ``batch_size`` is static. Valid for
    ``0 <= step < steps_per_epoch(len(perm), batch_size)``; beyond that XLA clamps the start,
    so the slice would repeat earlier examples (the caller's loop bound prevents it).
    """
    start = jnp.asarray(step_in_epoch, jnp.int32) * batch_size
    return jax.lax.dynamic_slice(perm, (start,), (batch_size,))


def get_batch(images, labels, idx) -> tuple[jax.Array, jax.Array]:
    """``(images[idx], labels[idx])`` as JAX arrays.

    Put the dataset on the device once (``jax.device_put(ds.images)``) and pass those arrays:
    the gather then runs on the device, inside or outside jit. Host numpy arrays with a concrete
    ``idx`` are gathered on the host and only the batch is transferred; inside jit, pass them as
    arguments rather than closing over them (a closed-over array becomes a compile-time constant).
    """
    if isinstance(images, np.ndarray) and not isinstance(idx, jax.core.Tracer):
        host_idx = np.asarray(idx)
        return jnp.asarray(images[host_idx]), jnp.asarray(np.asarray(labels)[host_idx])
    return jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)


def iterate_eval(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-shape evaluation batches covering examples ``0 .. n-1`` exactly once, in order.

    Returns host numpy ``(indices, mask)``, both ``(ceil(n / batch_size), batch_size)``:
    ``indices`` int32, ``mask`` bool. Row ``b`` holds examples ``b * batch_size ...``; the last
    row is padded with index 0 and ``mask=False`` so every batch has the same shape (one
    compilation). Weight per-example results by ``mask`` and divide by ``n`` (= ``mask.sum()``).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}.")
    num_batches = -(-n // batch_size)
    flat = np.arange(num_batches * batch_size)
    mask = flat < n
    indices = np.where(mask, flat, 0).astype(np.int32)
    return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)
