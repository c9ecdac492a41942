"""Random gradient masks (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, §1.6), and flattening gradient pytrees.

A mask keeps a fixed random subset of ``fraction`` of each parameter leaf's
coordinates -- rounded up, so every leaf (a layer's kernel, its bias, a norm's γ, ...)
keeps at least one -- and stacks them into one vector. It is drawn once (from the
parameter *shapes*, e.g. at initialization) and reused for every later measurement,
so the same coordinates are compared throughout training. Random coordinate subsets
approximately preserve norms and inner products up to the common factor ``fraction``
(thesis §1.6), so every scale-invariant metric can be computed on masked gradients at
a fraction of the memory.

The thesis samples "each layer"; jaxnorm samples each parameter leaf, which is the
same for layers with one parameter and guarantees that a layer's bias and γ/β are
represented too.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._precision import as_working, working_dtype

__all__ = ["GradientMask", "random_mask", "flatten", "num_coordinates"]


class GradientMask(NamedTuple):
    """A fixed coordinate subset of a parameter pytree.

    Attributes:
      indices: one sorted ``int32`` NumPy array per leaf (leaf order of the params),
        flat indices into that leaf.
      fraction: the requested fraction in (0, 1].
      sizes: the leaves' sizes (to check a tree against the mask).
    """

    indices: tuple[np.ndarray, ...]
    fraction: float
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """Length of a masked gradient vector."""
        return int(sum(len(i) for i in self.indices))

    def apply(self, tree: Any, batch_dims: int = 0) -> jax.Array:
        """The masked coordinates of ``tree`` stacked: ``(*batch, size)``.

        Args:
          tree: a pytree with the params' structure; each leaf may carry
            ``batch_dims`` leading axes (e.g. per-example gradients, ``(b, ...)``).
          batch_dims: how many leading axes are batch axes.

        Raises:
          ValueError: the tree's leaves do not match the mask's leaf sizes.
        """
        leaves = jax.tree_util.tree_leaves(tree)
        _check_sizes([math.prod(l.shape[batch_dims:]) for l in leaves], self.sizes)
        parts = [
            l.reshape(l.shape[:batch_dims] + (-1,))[..., jnp.asarray(i)] for l, i in zip(leaves, self.indices)
        ]
        return jnp.concatenate(parts, axis=-1)


def _check_sizes(got, want) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(
            f"the gradient tree does not match the mask: leaf sizes {list(got)}, mask drawn for {list(want)}. "
            "Draw the mask from this model's params."
        )


def random_mask(key: jax.Array, params: Any, fraction: float) -> GradientMask:
    """Draws a mask keeping ``ceil(fraction * n)`` (>= 1) random coordinates of every leaf.

    Args:
      key: PRNG key (the same key and params give the same mask).
      params: a pytree of arrays or ``jax.ShapeDtypeStruct`` (only shapes are used).
      fraction: in (0, 1]; 1 keeps everything (in a random order-free, sorted layout).

    Raises:
      ValueError: ``fraction`` outside (0, 1], or ``params`` has no leaves.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mask fraction must lie in (0, 1], got {fraction}.")
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("cannot draw a mask for a pytree without leaves.")
    sizes = tuple(int(math.prod(l.shape)) for l in leaves)
    # NumPy on the host: the mask is a constant of every later compiled computation.
    seed = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key).ravel()
    rng = np.random.default_rng(seed.astype(np.uint64))
    indices = tuple(
        np.sort(rng.choice(n, size=max(1, math.ceil(fraction * n)), replace=False)).astype(np.int32) for n in sizes
    )
    return GradientMask(indices, float(fraction), sizes)


def num_coordinates(params: Any) -> int:
    """The number of scalars in a pytree (the length of its flattened vector)."""
    return int(sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(params)))


def flatten(tree: Any, batch_dims: int = 0, mask: Optional[GradientMask] = None) -> jax.Array:
    """``tree`` as one matrix ``(*batch, P)`` (or ``(*batch, mask.size)``), in float32 or
    the leaves' wider dtype (float64 leaves stay float64).

    Leaves are raveled in leaf order after their ``batch_dims`` leading axes and
    concatenated; with ``mask`` only its coordinates are kept.
    """
    if mask is not None:
        return as_working(mask.apply(tree, batch_dims))
    leaves = jax.tree_util.tree_leaves(tree)
    dtype = working_dtype(jnp.result_type(*leaves))
    return jnp.concatenate([l.reshape(l.shape[:batch_dims] + (-1,)).astype(dtype) for l in leaves], axis=-1)
