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
  runs computes, without N dispatches);
* ``'shard'``: the runs spread over devices. A 2-D mesh ``(runs, data)``
  (:func:`jaxnorm.train.parallel.make_run_mesh`) of ``run_devices`` rows; the run axis
  is sharded over the rows and each device vmaps the step over its share of the runs
  inside ``jax.shard_map`` (manual over ``'runs'`` only), so no data moves between
  rows. The ``'data'`` axis stays automatic: with ``TrainConfig.num_devices = d > 1``
  each run's batch is split over the ``d`` devices of its row and XLA all-reduces
  within the row (data parallelism inside a run, as :mod:`jaxnorm.train.parallel`).
  N not a multiple of ``run_devices`` is padded with copies of the last run (dummy
  runs: trained, never recorded; :func:`padded_runs`).

``'auto'`` (:func:`auto_strategy`) picks ``'loop'`` on CPU, where
``experiments/benchmarks/train_step.py`` measured vmap at 0.44x (N = 4) and 0.34x (N = 8)
of the loop's throughput (BENCHMARKS.md), and ``'vmap'`` on GPU/TPU, where batched
convolutions are the usual win (not yet measured here: rerun the benchmark on a GPU and
change this default if it says otherwise); ``'shard'`` on a GPU/TPU host with at least
two rows of devices (devices // data devices >= 2) and at least two runs. Simulated CPU
devices (``--xla_force_host_platform_device_count``) share the same cores, so sharding
buys nothing there (``experiments/benchmarks/runs_sharded.py``); asking for
``run_devices`` > 1 picks ``'shard'`` anywhere. The strategy is single-process: on a
multi-host slice use ``'vmap'`` (or one ``fit_many`` per host).

Each run keeps its own seed, so its data order and augmentation are exactly those of the
same run trained alone; its trajectory equals the single run's up to floating-point
reassociation inside batched kernels.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxnorm.train.parallel import RUNS_AXIS, check_count

STRATEGIES = ("vmap", "map", "loop", "shard")


def auto_strategy(platform: str, num_devices: int, num_runs: int, data_devices: int = 1, run_devices: Optional[int] = None, processes: int = 1) -> str:
    """The rule behind ``'auto'``, a pure function of the machine it is given.

    Args:
      platform: ``jax.default_backend()`` (``'cpu'``, ``'gpu'``, ``'tpu'``...).
      num_devices: devices available (``jax.device_count()``).
      num_runs: N.
      data_devices: devices per run (``TrainConfig.num_devices``; data parallelism).
      run_devices: what the caller asked for (None: no preference).
      processes: ``jax.process_count()`` (``'shard'`` is single-process: never picked
        with several).

    Returns:
      ``'loop'`` for one run; ``'shard'`` when ``run_devices`` > 1 is asked for, or off
      CPU when the devices hold two or more rows of ``data_devices`` and N >= 2;
      otherwise ``'loop'`` on CPU and ``'vmap'`` elsewhere.
    """
    if num_runs == 1:
        return "loop"
    if run_devices is not None and run_devices > 1:
        return "shard"
    if processes > 1:
        return "loop" if platform == "cpu" else "vmap"
    if platform == "cpu":
        return "loop"
    return "shard" if num_devices // max(data_devices, 1) >= 2 else "vmap"


def resolve_strategy(strategy: str, num_runs: int, *, data_devices: int = 1, run_devices: Optional[int] = None, processes: Optional[int] = None) -> str:
    """``'auto'`` -> a concrete strategy for this backend (:func:`auto_strategy`; one run:
    ``'loop'``); a named one is checked.

    ``processes``: ``jax.process_count()`` unless given.

    Raises:
      ValueError: an unknown strategy; ``run_devices`` not an integer >= 1, or given
        with a strategy other than ``'shard'``/``'auto'``; ``'shard'`` (asked for, or
        ``run_devices`` > 1) with several processes.
    """
    if run_devices is not None:
        check_count("run_devices", run_devices)
    processes = jax.process_count() if processes is None else processes
    if strategy == "auto":  # run_devices=1 leaves it free to pick another
        strategy = auto_strategy(jax.default_backend(), jax.device_count(), num_runs, data_devices, run_devices, processes)
    elif strategy not in STRATEGIES:
        raise ValueError(f"unknown multi-run strategy {strategy!r}; known: {('auto',) + STRATEGIES}")
    elif run_devices is not None and strategy != "shard":
        raise ValueError(f"run_devices={run_devices!r} spreads runs over devices: it needs strategy='shard' (or 'auto'), not {strategy!r}.")
    if strategy == "shard" and processes > 1:
        raise ValueError(f"strategy='shard' runs in a single process; with {processes} processes use 'vmap' (or 'auto').")
    return strategy


def default_run_devices(num_runs: int, rows: int) -> int:
    """How many device rows ``'shard'`` uses for N runs when not told: as few as give
    the least runs per row (``ceil(N / ceil(N / rows))``), so padding is minimal: N = 5
    on 4 rows -> 3 rows of 2 runs (one dummy), not 4 rows (three dummies)."""
    if num_runs < 1 or rows < 1:
        raise ValueError(f"need num_runs >= 1 and rows >= 1, got {num_runs} and {rows}.")
    per_row = math.ceil(num_runs / rows)
    return math.ceil(num_runs / per_row)


def padded_runs(num_runs: int, run_devices: int) -> int:
    """N rounded up to a multiple of ``run_devices`` (the stacked width under ``'shard'``)."""
    return math.ceil(num_runs / run_devices) * run_devices


def stack(trees: Sequence) -> object:
    """Stacks pytrees of equal structure along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, num: int) -> list:
    """Inverse of :func:`stack`."""
    return [jax.tree.map(lambda x: x[i], tree) for i in range(num)]


def map_over_runs(fn: Callable, strategy: str, in_axes: tuple, num_runs: int, mesh=None) -> Callable:
    """Lifts ``fn`` (one run) to stacked runs.

    Args:
      fn: a function of one run's arguments.
      strategy: ``'vmap'``, ``'map'``, ``'loop'`` or ``'shard'``.
      in_axes: per positional argument, 0 if it carries the run axis, None if shared.
      num_runs: N (the size of the run axis).
      mesh: ``'shard'`` only: a run mesh (:func:`jaxnorm.train.parallel.make_run_mesh`).
        The run-axis arguments must be sharded (or shardable) over its ``'runs'`` axis,
        the shared ones replicated; every output carries the run axis and comes back
        sharded over ``'runs'``. Called under ``jit``.

    Returns:
      A function of the stacked arguments whose outputs carry the run axis first.

    Raises:
      ValueError: an unknown strategy; ``'shard'`` without a run mesh, or N not a
        multiple of its ``'runs'`` axis (pad first: :func:`padded_runs`).
    """
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    if strategy == "shard":
        if mesh is None or RUNS_AXIS not in mesh.shape:
            raise ValueError(f"strategy 'shard' needs a run mesh with a {RUNS_AXIS!r} axis, got {mesh}.")
        rows = mesh.shape[RUNS_AXIS]
        if num_runs % rows:
            raise ValueError(f"{num_runs} runs cannot be split over {rows} run devices; pad them to {padded_runs(num_runs, rows)}.")
        specs = tuple(P(RUNS_AXIS) if ax == 0 else P() for ax in in_axes)
        # Manual over 'runs' only: each device's block is vmapped, and the 'data' axis is
        # left to XLA (a run's batch sharding inside the step). check_vma=False: the
        # scans inside (evaluation) start from carries that do not vary over 'runs'.
        return jax.shard_map(
            jax.vmap(fn, in_axes=in_axes), mesh=mesh, in_specs=specs, out_specs=P(RUNS_AXIS), axis_names={RUNS_AXIS}, check_vma=False
        )

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
