"""Data parallelism with ``jax.jit`` over a device ``Mesh`` (the successor to ``pmap``).

The state is replicated, each batch is sharded along its first axis over the mesh's
``'data'`` axis, and XLA inserts the all-reduces. Under ``jit`` a BatchNorm's statistics
of the global (sharded) batch are global: synchronized BN comes for free and one device
and N devices compute the same function. Per-device statistics are an explicit choice
(ghost groups of the per-device size, ``TrainConfig.sync_bn=False``), never an accident
of the hardware.

Multi-process (TPU pod slices, multi-node GPU, or several local processes): start every
process the standard way (:func:`initialize_distributed` calls
``jax.distributed.initialize()``) and call the same ``fit`` in each. The mesh then spans
the devices of every process (:func:`make_mesh`); every process loads the (small)
dataset, :func:`put_replicated` assembles global arrays from the identical host data,
and each step's batch is drawn from (seed, epoch, step) inside the compiled step and
sharded over the global mesh. Metrics and observer records come out replicated, so
every process pulls the same numbers and takes the same decisions (divergence, stop
rules). Only process 0 writes a run's files (:func:`is_primary`): it prepares the
folder under :func:`on_primary` while the others wait, and the engine's
:func:`barrier` calls order its writes before the others' reads. All processes take
part in every checkpoint save and restore (orbax is multi-process aware: process 0
writes the replicated arrays and the metadata). The results directory must be one
shared file system (the same path on every host). Signals are agreed between the
processes at host syncs (``max_over_processes``), so every process stops at one step.
Not covered: an error that only one process meets mid-run (a full disk on process 0,
a crashed host) ends that process while the others block in their next collective until
JAX's distributed runtime reports the missing process (``jax.distributed.initialize``'s
heartbeat timeout) -- the run folder then holds what process 0 last wrote, and a rerun
resumes from its last checkpoint.

Runs spread over devices (``fit_many(strategy='shard')``, :mod:`jaxnorm.train.multi_run`):
a 2-D mesh ``(runs, data)`` (:func:`make_run_mesh`); the stacked runs' leading axis is
sharded over ``'runs'`` (:func:`runs_sharding`), each run's batch over ``'data'``. Single
process only (``fit_many`` refuses it with several processes).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
RUNS_AXIS = "runs"

T = TypeVar("T")


class PrimaryProcessError(RuntimeError):
    """Raised on processes other than 0 when process 0 failed a step that it alone
    performs (:func:`on_primary`); the message carries process 0's error."""


def _launched_as_several() -> bool:
    """Whether the environment says this is one of several processes: JAX's own variable,
    a multi-host TPU slice, or a SLURM step / Open MPI job of more than one task (the
    environments ``jax.distributed.initialize()`` reads its arguments from)."""
    env = os.environ

    def count(name: str) -> int:
        value = env.get(name, "").strip()
        return int(value) if value.isdigit() else 1

    return bool(
        env.get("JAX_COORDINATOR_ADDRESS")
        or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        or ("SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env and count("SLURM_NTASKS") > 1)
        or ("OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1)
    )


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` (arguments from the environment) when launched as
    one of several processes -- ``JAX_COORDINATOR_ADDRESS`` set, a multi-host TPU slice,
    or a SLURM step or Open MPI job of more than one task; a no-op otherwise, or when
    the distributed system is already initialized. Call it before any JAX computation."""
    if _launched_as_several() and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh over ``num_devices`` devices (all global devices if None).

    One process: its first ``num_devices`` devices. Several processes: every process
    takes part with the same number of devices, ``num_devices // jax.process_count()``
    of its own (its first ones), ordered by process, so ``num_devices`` is the global
    count (``jax.device_count()``) or another multiple of the process count.

    Raises:
      ValueError: more devices asked for than exist; with several processes, a count
        that is not a multiple of the process count, or more per process than a
        process has.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, but {len(devices)} exist: {devices}.")
    procs = jax.process_count()
    if procs == 1:
        return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))
    if n % procs:
        raise ValueError(
            f"num_devices={n} with {procs} processes: every process must take part with the same number of "
            f"devices, so use a multiple of {procs} (all of them: num_devices={len(devices)})."
        )
    per = n // procs
    by_process = [[d for d in devices if d.process_index == p] for p in range(procs)]
    fewest = min(len(ds) for ds in by_process)
    if per > fewest:
        raise ValueError(f"num_devices={n} asks {per} devices of each of the {procs} processes, but one has only {fewest}.")
    return Mesh(np.asarray([d for ds in by_process for d in ds[:per]]), (DATA_AXIS,))


def is_primary() -> bool:
    """Whether this process writes the run files (process 0; True in a single process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Blocks until every process has reached the barrier ``name`` (no-op in a single
    process). Every process must call the same barriers in the same order."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def max_over_processes(value: int) -> int:
    """The largest of every process's ``value`` (``value`` itself in a single process);
    a host-side collective: every process must call it at the same point."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


#: Bytes of process 0's error message passed to the other processes by :func:`on_primary`.
_MESSAGE_BYTES = 2048


def on_primary(fn: Callable[[], T], what: str) -> Optional[T]:
    """Runs ``fn()`` on process 0 only; every process returns once it has finished.

    Returns ``fn()``'s result on process 0 (and in a single process, where this is a
    plain call), None on the others. Every process must call it (it ends in a
    collective, which is also what makes the others wait).

    Raises:
      BaseException: on process 0, whatever ``fn`` raised (the others are told first).
      PrimaryProcessError: on the other processes when ``fn`` raised on process 0; the
        message names ``what`` and process 0's error (type and message, at most 2 KiB).
    """
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result, error = None, None
    if is_primary():
        try:
            result = fn()
        except BaseException as e:  # told to the others below, then re-raised here
            error = e
    text = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:_MESSAGE_BYTES] or b"?"
    message = np.zeros(_MESSAGE_BYTES, np.uint8)
    message[: len(text)] = np.frombuffer(text, np.uint8)
    told = np.asarray(multihost_utils.broadcast_one_to_all(message))
    if error is not None:
        raise error
    if told.any():
        said = bytes(told[told != 0]).decode(errors="replace")
        raise PrimaryProcessError(f"process 0 could not {what}: {said}")
    return result


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
