"""Many runs in one compiled program: the step mapped over a leading axis of runs.

Runs that share everything but their seed (same model structure, data, shapes and
hyperparameters) can be trained together: their states are stacked along a new leading
axis, and one jitted function advances all of them by one step. Three strategies:

* ``'vmap'``: ``jax.vmap`` of the step -- one batched program (convolutions over the
  run axis become grouped convolutions, fast on GPU/TPU, slow on some CPU builds);
* ``'map'``: ``jax.lax.map`` -- one program that runs the step for each run in turn
  (on XLA:CPU 11-13x slower than ``'loop'``: inside the loop body the backward
  convolutions miss the fast kernels; see BENCHMARKS.md);
* ``'loop'``: the step unrolled once per run inside one jit (what a Python loop over
  runs computes, without N dispatches).

``'auto'`` picks ``'loop'`` on CPU, where ``experiments/benchmarks/train_step.py``
measured vmap at 0.44x (N = 4) and 0.34x (N = 8) of the loop's throughput (BENCHMARKS.md),
and ``'vmap'`` on GPU/TPU, where batched convolutions are the usual win (not yet measured
here: rerun the benchmark on a GPU and change this default if it says otherwise).

Each run keeps its own seed, so its data order and augmentation are exactly those of the
same run trained alone; its trajectory equals the single run's up to floating-point
reassociation inside batched kernels.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

STRATEGIES = ("vmap", "map", "loop")


def resolve_strategy(strategy: str, num_runs: int) -> str:
    """``'auto'`` -> a concrete strategy for this backend (one run: ``'loop'``)."""
    if strategy == "auto":
        if num_runs == 1:
            return "loop"
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown multi-run strategy {strategy!r}; known: {('auto',) + STRATEGIES}")
    return strategy


def stack(trees: Sequence) -> object:
    """Stacks pytrees of equal structure along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, num: int) -> list:
    """Inverse of :func:`stack`."""
    return [jax.tree.map(lambda x: x[i], tree) for i in range(num)]


def map_over_runs(fn: Callable, strategy: str, in_axes: tuple, num_runs: int) -> Callable:
    """Lifts ``fn`` (one run) to stacked runs.

    Args:
      fn: a function of one run's arguments.
      strategy: ``'vmap'``, ``'map'`` or ``'loop'``.
      in_axes: per positional argument, 0 if it carries the run axis, None if shared.
      num_runs: N (the size of the run axis).

    Returns:
      A function of the stacked arguments whose outputs carry the run axis first.
    """
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def select(args, mapped):
        it = iter(mapped)
        return [next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]

    if strategy == "map":

        def mapped_fn(*args):
            mapped = tuple(a for a, ax in zip(args, in_axes) if ax == 0)
            return jax.lax.map(lambda m: fn(*select(args, m)), mapped)

        return mapped_fn

    if strategy == "loop":

        def looped_fn(*args):
            outs = []
            for i in range(num_runs):
                one = [jax.tree.map(lambda x: x[i], a) if ax == 0 else a for a, ax in zip(args, in_axes)]
                outs.append(fn(*one))
            return stack(outs)

        return looped_fn

    raise ValueError(f"unknown multi-run strategy {strategy!r}; known: {STRATEGIES}")
