"""Data parallelism with ``jax.jit`` over a device ``Mesh`` (the successor to ``pmap``).

The state is replicated, each batch is sharded along its first axis over the mesh's
``'data'`` axis, and XLA inserts the all-reduces. Under ``jit`` a BatchNorm's statistics
of the global (sharded) batch are global: synchronized BN comes for free and one device
and N devices compute the same function. Per-device statistics are an explicit choice
(ghost groups of the per-device size, ``TrainConfig.sync_bn=False``), never an accident
of the hardware.

Multi-host (TPU pod slices, multi-node GPU): start every process the standard way
(:func:`initialize_distributed` calls ``jax.distributed.initialize()``); every process
loads the (small) dataset, draws the same global batch indices from (seed, epoch,
step), and :func:`put_replicated` assembles global arrays from process-local data.

Runs spread over devices (``fit_many(strategy='shard')``, :mod:`jaxnorm.train.multi_run`):
a 2-D mesh ``(runs, data)`` (:func:`make_run_mesh`); the stacked runs' leading axis is
sharded over ``'runs'`` (:func:`runs_sharding`), each run's batch over ``'data'``.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
RUNS_AXIS = "runs"


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when launched as one of several processes
    (``JAX_COORDINATOR_ADDRESS`` set, or a multi-host TPU environment); no-op otherwise."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all global devices if None).

    Raises:
      ValueError: more devices asked for than exist.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, but {len(devices)} exist: {devices}.")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def make_run_mesh(run_devices: int, data_devices: int = 1) -> Mesh:
    """A 2-D mesh ``(runs, data)`` of shape ``(run_devices, data_devices)`` over the first
    ``run_devices * data_devices`` devices: each row trains its share of the runs, the
    devices of a row split each of those runs' batches (data parallelism inside a run).

    Raises:
      ValueError: a count below 1, or more devices asked for than exist.
    """
    devices = jax.devices()
    check_count("run_devices", run_devices)
    check_count("data devices (num_devices)", data_devices)
    if run_devices * data_devices > len(devices):
        raise ValueError(
            f"run_devices={run_devices} x {data_devices} data device(s) needs {run_devices * data_devices} devices, "
            f"but {len(devices)} exist; use run_devices <= {max(len(devices) // data_devices, 1)}."
        )
    grid = np.asarray(devices[: run_devices * data_devices]).reshape(run_devices, data_devices)
    return Mesh(grid, (RUNS_AXIS, DATA_AXIS))


def check_count(what: str, n) -> None:
    """Raises a ValueError naming ``what`` unless ``n`` is an integer >= 1."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {n!r}.")


def runs_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (runs) axis over the mesh's ``'runs'`` axis (a 2-D run mesh),
    replicated over ``'data'``."""
    return NamedSharding(mesh, P(RUNS_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raises a clear ValueError when a batch cannot be split evenly over the devices (of
    the mesh's ``'data'`` axis: a run mesh's rows hold different runs)."""
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. {batch_size - batch_size % n or n})."
        )


def put_replicated(tree, mesh: Mesh):
    """Places host data replicated on the mesh (global arrays across processes too)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
