"""Mapping a function over chunks inside a compiled computation.

On GPU/TPU a chunked map is ``jax.lax.map`` (a loop: compile time independent of the
number of chunks). On the CPU backend the chunks are unrolled into straight-line code
instead: XLA:CPU runs convolutions (above all their gradients) inside a loop body an
order of magnitude slower than outside one -- measured here on 3C3D: ``coupled``
per-example gradients of 16 examples took 7.8 s as a 16-trip ``lax.map`` and 0.87 s as
one unrolled block (BENCHMARKS.md has the same effect on training steps). Unrolling
costs compile time proportional to the number of chunks, so keep chunks few on a CPU.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def unroll_default() -> bool:
    """True on the CPU backend (see the module docstring)."""
    return jax.default_backend() == "cpu"


def map_chunks(fn: Callable, xs, *, unroll: Optional[bool] = None):
    """``[fn(x) for x in xs]`` stacked along a new leading axis (``xs``: a pytree whose
    leaves share a leading axis): ``lax.map`` or, with ``unroll``, a Python loop."""
    if not (unroll_default() if unroll is None else unroll):
        return jax.lax.map(fn, xs)
    n = jax.tree.leaves(xs)[0].shape[0]
    outs = [fn(jax.tree.map(lambda a: a[i], xs)) for i in range(n)]
    return jax.tree.map(lambda *o: jnp.stack(o), *outs)


def map_batched(fn: Callable, xs, batch_size: Optional[int] = None, *, unroll: Optional[bool] = None):
    """``jax.vmap(fn)(xs)`` computed ``batch_size`` rows at a time (None: all at once);
    the last chunk is padded by repeating the last row and the padding dropped."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if batch_size is None or batch_size >= n:
        return jax.vmap(fn)(xs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
    chunks = -(-n // batch_size)
    idx = jnp.minimum(jnp.arange(chunks * batch_size), n - 1).reshape(chunks, batch_size)
    out = map_chunks(lambda i: jax.vmap(fn)(jax.tree.map(lambda a: a[i], xs)), idx, unroll=unroll)
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)
