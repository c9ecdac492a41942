"""``fit(config)``: the training loop every study runs on.

One call trains one run described by a :class:`~jaxnorm.train.config.TrainConfig` and
writes ``results/<study>/<run>/`` (see :mod:`jaxnorm.results`). The loop:

* loads the dataset once and keeps it on the device; each epoch's order is
  ``epoch_permutation(seed, epoch)`` and each step's randomness
  ``step_key(seed, epoch, step)``, so the run is a function of its config alone;
* dispatches the jitted, state-donating train step (traced once; ``FitResult.traces``
  counts the traces of every compiled function);
* calls the observers every ``every`` steps, keeping their results on the device;
* pulls metrics to the host only every ``log_every_steps`` steps and at epoch ends
  (the loop's only host syncs), checking there for divergence; the lines written to
  ``metrics.jsonl`` there also go to the run's opt-in sinks (``config.loggers``:
  TensorBoard, W&B; :mod:`jaxnorm.train.metric_loggers`), closed when the run ends,
  fails or is interrupted;
* evaluates every ``eval_every_epochs`` epochs on each eval split (one compiled call
  per split; with ``train_eval_mode='deepobs'`` the ``train_eval`` set is redrawn and
  augmented on the device from (seed, epoch), by one compiled call traced once),
  checkpoints every ``checkpoint_every_epochs`` epochs.

The pieces: :func:`~jaxnorm.train.run_groups.check_compatible` decides whether the
configs can share one program (:mod:`jaxnorm.train.run_groups`); ``_plan`` loads the data
and counts steps (full batch: the whole subset each step, unshuffled); ``_Program``
builds and places the compiled functions of the N stacked runs; ``_restore`` resumes
them (or records the observers' view of the initial state); ``_Loop`` is the hot loop
(steps, observers, host syncs, evaluation, checkpoints); the run folder's bookkeeping is
:mod:`jaxnorm.train.run_folder`.

Divergence (a non-finite loss, or with ``divergence_factor`` a loss above that multiple
of the first step's) stops the run cleanly: the first bad step and the reason are
written to ``metrics.jsonl`` and ``status.json``, and ``fit`` returns normally (a sweep
goes on). Any other failure marks the run ``failed`` in ``status.json`` and re-raises;
checkpoints and metrics written so far stay.

Resuming: with ``resume=True`` (default) a run whose folder holds a checkpoint continues
from it; its final state is bit-identical to an uninterrupted run's on the same machine.
An unreadable newest checkpoint is passed over, with a warning, for the previous one.

Safety (``fit_many``, so every study): ``_validate`` loads and checks the data and
traces the model's initialization abstractly before any file is written; each run
folder is then locked (one writer; :func:`~jaxnorm.train.run_folder.run_lock`) and
prepared (identity = the config less bookkeeping;
:func:`~jaxnorm.train.run_folder.prepare_run_dir`); ``status.json`` is rewritten at
the start and at host sync points (at most once a second) with a heartbeat; SIGINT and
SIGTERM are turned into a flag checked between steps (``InterruptGuard``), so an
interrupted run ends ``interrupted`` with its files consistent, never inside a
compilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import pathlib
import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxnorm.data import epoch_permutation, load, steps_per_epoch
from jaxnorm.layers import set_ablation_variant
from jaxnorm.models import get_model
from jaxnorm.train import parallel
from jaxnorm.train.checkpoint import CheckpointError, Checkpointer
from jaxnorm.train.multi_run import default_run_devices, map_over_runs, padded_runs, resolve_strategy, stack, unstack
from jaxnorm.train.config import TrainConfig
from jaxnorm.train.interrupts import InterruptGuard
from jaxnorm.train.metric_loggers import RunLoggers, check_available
from jaxnorm.train.run_groups import check_compatible, learned_filter
from jaxnorm.train.run_folder import (
    eval_lines,
    has_checkpoint,
    load_carry,
    load_trajectories,
    prepare_run_dir,
    prune_carries,
    record,
    run_dir_of,
    run_lock,
    save_carries,
    stored_status,
    write_status,
    write_trajectories,
)
from jaxnorm.observers import GammaBetaRecorder, Observer, is_stateful
from jaxnorm.observers.protocol import is_in_step
from jaxnorm.observers.stopping import GroupStop
from jaxnorm.train.optim import make_optimizer
from jaxnorm.results import append_jsonl, read_json, read_jsonl, rewrite_jsonl
from jaxnorm.train.state import TrainState, create_state
from jaxnorm.train.step import layout_eval, make_drawn_evaluate, make_evaluate, make_train_step


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final :class:`TrainState` (after the last good step if diverged: the
        state of the last sync point before the divergence is not kept, so this is the
        diverged state; use the checkpoint for the last good one).
      status: ``'finished'`` or ``'diverged'``.
      step: optimizer steps taken.
      run_dir: the run's folder.
      divergence: ``{'step', 'reason'}`` if diverged, else None.
      metrics: every ``metrics.jsonl`` record.
      traces: how often each compiled function was traced (1 each: no recompiles).
    """

    state: TrainState
    status: str
    step: int
    run_dir: pathlib.Path
    divergence: Optional[dict]
    metrics: list[dict]
    traces: dict[str, int] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        # The dataclass repr prints every parameter and metric (thousands of lines).
        params = "none" if self.state is None else f"{sum(int(np.size(x)) for x in jax.tree.leaves(self.state.params)):,}"
        return (
            f"FitResult(status={self.status!r}, step={self.step}, run_dir='{self.run_dir}', "
            f"metrics={len(self.metrics)} records, params={params})"
        )


class _TraceCounter:
    """Counts traces of wrapped functions (a retrace in the loop is a performance bug).

    ``chex.assert_max_traces`` keys its counter by source location, which would trip
    on the second ``fit`` in one process; this counter belongs to one call."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, fn):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return counted


def build_model(config: TrainConfig, num_classes: int, norm: Optional[str] = None):
    """The config's model (``num_classes`` from the dataset unless the config sets it;
    per-device BN as ghost groups when ``sync_bn=False`` on several devices; ``norm``
    overrides the config's, e.g. with the ``'bn_ablation'`` superset).

    ``config.gamma_init != 1`` sets every norm layer's ``scale_init`` to that constant
    (merged into ``model_kwargs['norm_options']``). Norms without a learned γ create no
    ``scale`` parameter, so it changes nothing for them; in the ``bn_ablation`` superset
    the γ parameter exists for every variant but a switched-off γ is used as exactly 1.
    """
    kwargs = {"num_classes": num_classes, **dict(config.model_kwargs)}
    norm_options = dict(kwargs.get("norm_options") or {})
    n_dev = config.num_devices or 1
    if n_dev > 1 and not config.sync_bn:
        norm_options["group_size"] = config.batch_size // n_dev
    if config.gamma_init != 1.0:
        norm_options["scale_init"] = nn.initializers.constant(config.gamma_init)
    if norm_options:
        kwargs["norm_options"] = norm_options
    return get_model(config.model, norm=norm or config.norm, **kwargs)


@dataclasses.dataclass
class _Plan:
    """What every run of a program shares: data, shapes and step counts."""

    config: TrainConfig
    images: np.ndarray
    labels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_classes: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    last_epoch: int
    shuffle: bool


def _plan(cfg: TrainConfig) -> _Plan:
    """Loads the training split and derives the batch size and step counts (full batch:
    the whole subset every step, in its stored order)."""
    train = load(cfg.dataset, cfg.train_split)
    images, labels = train.images, train.labels
    if cfg.train_subset is not None:
        images, labels = images[: cfg.train_subset], labels[: cfg.train_subset]
    _check_finite(images, f"dataset {cfg.dataset!r} split {cfg.train_split!r}")
    n = len(labels)
    batch_size = n if cfg.full_batch else cfg.batch_size
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training examples.")
    spe = steps_per_epoch(n, batch_size)
    total = spe * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, spe * cfg.epochs)
    return _Plan(cfg, images, labels, train.mean, train.std, train.num_classes, batch_size, spe, total, math.ceil(total / spe) - 1, not cfg.full_batch)


def _check_finite(images: np.ndarray, what: str, chunk: int = 4096) -> None:
    """Refuses data holding NaN or inf (checked once per program, in chunks to bound the
    memory): inside training it would reach the BN running statistics, and a NaN loss
    would report the run as diverged when its data is at fault."""
    if not np.issubdtype(images.dtype, np.floating):
        return
    for i in range(0, len(images), chunk):
        bad = ~np.isfinite(images[i : i + chunk].reshape(min(chunk, len(images) - i), -1)).all(axis=1)
        if bad.any():
            raise ValueError(f"{what} holds non-finite values (NaN or inf), first in example {i + int(np.argmax(bad))}.")


def _optimizer(c: TrainConfig, plan: _Plan):
    return make_optimizer(
        c.learning_rate,
        optimizer=c.optimizer,
        momentum=c.momentum,
        nesterov=c.nesterov,
        weight_decay=c.weight_decay,
        l2_scope=c.l2_scope,
        schedule=c.schedule,
        schedule_kwargs=c.schedule_kwargs,
        warmup_steps=c.warmup_steps,
        total_steps=plan.total_steps,
        steps_per_epoch=plan.steps_per_epoch,
        optimizer_kwargs=c.optimizer_kwargs,
        frozen=c.frozen,
        track_step_conditioning=c.track_step_conditioning,
    )


_PERMUTE = jax.jit(jax.vmap(epoch_permutation, in_axes=(0, None, None)), static_argnums=(2,))


class _Program:
    """The compiled functions of N stacked runs, with their placement on the devices.

    Built once per ``fit_many``: ``train_step``, ``evaluate``, one function per observer
    and the epoch permutation, each traced once (``traced.counts``).

    ``num`` is the number of real runs; ``width`` the stacked run axis, larger under
    ``'shard'`` when N is padded to a multiple of the run devices with copies of the last
    run (``width - num`` dummy runs, which the loop never reads). :meth:`put_runs` stacks
    and places per-run trees (padding them), :meth:`place` places shared ones."""

    def __init__(self, plan: _Plan, configs: Sequence[TrainConfig], module, observers, strategy: str, run_devices: Optional[int] = None):
        cfg, num = plan.config, len(configs)
        self.num, self.observers = num, list(observers)
        # Training-batch observers are measured inside the step (jaxnorm.observers.protocol).
        self.in_step = [o for o in self.observers if is_in_step(o)]
        n_dev = cfg.num_devices or 1
        runs_sh = None
        if strategy == "shard":
            rows = default_run_devices(num, jax.device_count() // n_dev) if run_devices is None else run_devices
            mesh = parallel.make_run_mesh(rows, n_dev)
            runs_sh = parallel.runs_sharding(mesh)
            self.width = padded_runs(num, rows)
            self.info = {"run_devices": rows, "data_devices": n_dev, "dummy_runs": self.width - num}
        else:
            mesh = parallel.make_mesh(n_dev)
            self.width, self.info = num, {}
        parallel.check_batch_divisible(plan.batch_size, mesh)
        width = self.width
        # One device: default placement. Several: everything replicated, each batch sharded;
        # outputs pinned to the same placement so no call ever sees new shardings (no retrace).
        # 'shard': every output carries the run axis, pinned sharded over the rows.
        rep = runs_sh if runs_sh is not None else parallel.replicated(mesh) if n_dev > 1 else None
        self.place = (lambda t: parallel.put_replicated(t, mesh)) if n_dev > 1 or runs_sh is not None else jax.device_put
        self._place_runs = (lambda t: jax.device_put(t, runs_sh)) if runs_sh is not None else self.place
        jit = lambda f, **kw: jax.jit(f, **({"out_shardings": rep} if rep is not None else {}), **kw)
        over_runs = functools.partial(map_over_runs, strategy=strategy, num_runs=width, mesh=mesh if runs_sh is not None else None)
        self.traced = _TraceCounter()
        txs = [_optimizer(c, plan) for c in configs]  # one per run: each state holds its own hyperparameters
        step_kwargs = dict(
            batch_size=plan.batch_size,
            mean=plan.mean,
            std=plan.std,
            loss=cfg.loss,
            l2_scope=cfg.l2_scope,
            augment_config=cfg.augment,
            # Inside shard_map's manual 'runs' axis a sharding names the free 'data' axis only.
            batch_sharding=(P(parallel.DATA_AXIS) if runs_sh is not None else parallel.batch_sharding(mesh)) if n_dev > 1 else None,
        )
        # txs[0]: the update reads the hyperparameters from each run's state.
        step_fn = make_train_step(module, txs[0], **step_kwargs)
        self.train_step = jit(self.traced("train_step", over_runs(step_fn, in_axes=(0, None, 0, 0, None, None))), donate_argnums=(0,))

        def instrumented(names):  # one compiled step per set of due training-batch observers
            fn = make_train_step(module, txs[0], in_step=[o for o in self.in_step if o.name in names], **step_kwargs)
            return jit(self.traced("train_step+" + "+".join(sorted(names)), over_runs(fn, in_axes=(0, None, 0, 0, None, None, 0))), donate_argnums=(0,))

        self._instrumented = functools.lru_cache(maxsize=None)(instrumented)
        evaluate = make_evaluate(module, mean=plan.mean, std=plan.std, bn_mode=cfg.eval_bn_mode, loss=cfg.loss)
        self.evaluate = jit(self.traced("evaluate", over_runs(evaluate, in_axes=(0, None, None, None))))
        if cfg.train_eval_mode == "deepobs":
            size = min(len(load(cfg.dataset, "train_eval").labels[: cfg.eval_subset]), len(plan.labels))
            drawn = make_drawn_evaluate(
                module, size=size, batch_size=min(cfg.eval_batch_size, size), mean=plan.mean, std=plan.std,
                bn_mode=cfg.eval_bn_mode, loss=cfg.loss, augment_config=cfg.augment,
            )  # fmt: skip
            # Each run draws with its own seed; the epoch is traced: one compilation.
            self.evaluate_drawn = jit(self.traced("evaluate_drawn", over_runs(drawn, in_axes=(0, None, 0, None))))
        # Observers copy out of the state: the next step donates (invalidates) its buffers.
        # A stateful observer's carry (see jaxnorm.observers.protocol) stays on the device too.
        self._observe = {
            o.name: jit(over_runs(_copying(o), in_axes=(0, 0) if is_stateful(o) else (0,)))
            for o in self.observers if not is_in_step(o)
        }
        self._init_carry = {o.name: jit(over_runs(o.init_carry, in_axes=(0,))) for o in self.observers if is_stateful(o)}
        if plan.shuffle:
            # One device: the module-level jitted permutation, compiled once per process
            # (not once per fit_many call: sweeps run many small programs).
            self.permute = _PERMUTE if rep is None else jit(jax.vmap(epoch_permutation, in_axes=(0, None, None)), static_argnums=(2,))
        elif runs_sh is not None:  # full batch: the stored order every step, placed once
            order = self._place_runs(jnp.broadcast_to(jnp.arange(len(plan.labels), dtype=jnp.int32), (width, len(plan.labels))))
            self.permute = lambda seeds, epoch, n: order
        else:  # full batch: the stored order every step
            self.permute = lambda seeds, epoch, n: jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (len(seeds), n))
        sample = jnp.asarray(plan.images[:1])
        self.states = [create_state(jax.random.PRNGKey(c.seed), module, tx, sample) for c, tx in zip(configs, txs)]
        self.carries: dict = {}

    def put_runs(self, trees: Sequence):
        """Stacks one tree per real run along the run axis, pads it to ``width`` with
        copies of the last (the dummy runs) and places it (sharded over the run devices
        under ``'shard'``)."""
        trees = list(trees)
        return self._place_runs(stack(trees + trees[-1:] * (self.width - len(trees))))

    def seeds(self, configs: Sequence[TrainConfig]):
        """The runs' seeds, ``(width,)`` int32, placed like the state's run axis."""
        seeds = [c.seed for c in configs]
        if self.width == self.num and self._place_runs is self.place:  # not 'shard': as it always was
            return jnp.asarray(seeds, jnp.int32)
        return self._place_runs(jnp.asarray(seeds + seeds[-1:] * (self.width - len(seeds)), jnp.int32))

    def evaluate_split(self, state, arrays, epoch: int):
        """One split's totals: a laid-out split, or (:class:`_Drawn`) the redrawn train_eval set."""
        if isinstance(arrays, _Drawn):
            return self.evaluate_drawn(state, arrays.data, arrays.seeds, jnp.int32(epoch))
        return self.evaluate(state, *arrays)

    def start_carries(self, state) -> None:
        self.carries = {name: init(state) for name, init in self._init_carry.items()}

    def step(self, state, data, perm, seeds, epoch: int, s: int, step: int):
        """One training step from ``step``; with the training-batch observers due at
        ``step`` it is their instrumented step. Returns ``(state, metrics, [(observer,
        record)])``."""
        due = [o for o in self.in_step if step % o.every == 0]
        args = (state, data, perm, seeds, jnp.int32(epoch), jnp.int32(s))
        if not due:
            return (*self.train_step(*args), [])
        names = frozenset(o.name for o in due)
        carries = {o.name: self.carries.get(o.name, ()) for o in due}
        state, m, records, carries = self._instrumented(names)(*args, carries)
        self.carries.update({name: c for name, c in carries.items() if name in self.carries})
        return state, m, [(o, records[o.name]) for o in due]

    def observe(self, o, state):
        if not is_stateful(o):
            return self._observe[o.name](state)
        record, self.carries[o.name] = self._observe[o.name](state, self.carries[o.name])
        return record


@dataclasses.dataclass(frozen=True)
class _Drawn:
    """The inputs of the redrawn train_eval set (``train_eval_mode='deepobs'``): the
    device-resident training data and the runs' seeds."""

    data: tuple
    seeds: jax.Array


def _eval_data(plan: _Plan, place, data=None, seeds=None) -> dict:
    """Each eval split laid out on the device; with ``train_eval_mode='deepobs'`` the
    train_eval entry is a :class:`_Drawn` over the training ``data`` instead."""
    cfg = plan.config
    out = {}
    for split in cfg.eval_splits:
        if split == "train_eval" and cfg.train_eval_mode == "deepobs":
            out[split] = _Drawn(data, seeds)
            continue
        ds = load(cfg.dataset, split)
        images, labels = ds.images[: cfg.eval_subset], ds.labels[: cfg.eval_subset]
        laid = layout_eval(images, labels, min(cfg.eval_batch_size, len(labels)), drop_remainder=cfg.eval_bn_mode == "batch")
        out[split] = place(tuple(jnp.asarray(a) for a in laid))
    return out


def _restore(program: _Program, configs, runs, ckpts, traj, state, resume: bool):
    """Resumes every run from its latest checkpoint (all runs together, or none).

    Returns ``(state, step, start_epoch, initial_losses)``; a fresh start records the
    observers' view of the initial state first."""
    num = program.num
    latest = [c.latest_step() if (c is not None and resume) else None for c in ckpts]
    if not any(s is not None for s in latest):
        program.start_carries(state)
        # Training-batch observers take their step-0 record in the first step.
        before = [o for o in program.observers if not is_in_step(o)]
        initial = jax.device_get({o.name: program.observe(o, state) for o in before})
        for i, (r, t) in enumerate(zip(runs, traj)):
            lines: list[dict] = []
            for o in before:  # the state before the first step
                record(o, _run_slice(initial[o.name], i), 0, t, lines)
            if parallel.is_primary():
                rewrite_jsonl(r.metrics, lines)
        parallel.barrier("jaxnorm.fit: metrics started")  # the others may read them (stop rules)
        return state, 0, 0, [None] * num
    if len(set(latest)) != 1:
        found = {c.name: s for c, s in zip(configs, latest)}
        raise CheckpointError(
            f"runs trained together resume together, from one step; their latest checkpoints are {found}. "
            "Train them under new names, or delete the runs that are ahead or behind."
        )
    template = unstack(state, num)[0]
    restored = [c.restore(template) for c in ckpts]  # an unreadable newest falls back, with a warning
    steps = [int(m["step"]) for _, m in restored]
    if len(set(steps)) != 1:  # some runs fell back: all resume from the step they share
        restored = [c.restore(template, step=min(steps)) if s != min(steps) else r for c, s, r in zip(ckpts, steps, restored)]
    for c in ckpts:
        c.discard_after(min(steps))  # the passed-over ones: this run saves those steps again
    state = program.put_runs([r[0] for r in restored])
    meta = restored[0][1]
    step, start_epoch = int(meta["step"]), int(meta["next_epoch"])
    for r, t in zip(runs, traj):
        if parallel.is_primary():  # the others keep no trajectories (they write none)
            rewrite_jsonl(r.metrics, [m for m in read_jsonl(r.metrics) if m.get("step", 0) <= step])
            load_trajectories(r, t, step)
    parallel.barrier("jaxnorm.fit: metrics rewound")  # the others may read them (stop rules)
    program.start_carries(state)
    program.carries = {
        name: program.put_runs([load_carry(r, name, step, c) for r, c in zip(runs, unstack(carry, num))])
        for name, carry in program.carries.items()
    }
    return state, step, start_epoch, [m[1].get("initial_loss") for m in restored]


def fit(
    config: TrainConfig,
    *,
    observers: Optional[Sequence[Observer]] = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Trains one run; see the module docstring.

    Args:
      config: the run.
      observers: measurements every k steps; default: the γ/β recorder every
        ``config.record_every_steps`` steps. Pass ``[]`` for none.
      resume: continue from the run folder's latest checkpoint if there is one.
      overwrite: delete an existing run folder first.
      progress: show a tqdm progress bar.

    Before anything is written, the data is loaded and checked and the model and
    optimizer are initialized abstractly (``jax.eval_shape``), so a config error leaves
    no folder behind it; then the run's folder is locked (one writer; see
    :mod:`jaxnorm.train.run_folder`) and prepared. ``status.json`` carries a heartbeat
    (step, time, pid, host) rewritten at the host sync points (at most once a second).

    Interrupts: on the main thread, Ctrl-C (SIGINT) and SIGTERM are caught for the
    duration of the call and acted on between steps (never inside a compilation or a
    step): the run's status becomes ``interrupted`` (with the last synced step), the
    checkpointers close, the lock is released, the previous handlers come back and
    ``KeyboardInterrupt`` is raised. A second signal raises at once. A rerun resumes
    from the last checkpoint.

    Several processes (``jax.distributed.initialize()`` first, then the same call in
    every process; :mod:`jaxnorm.train.parallel`): ``num_devices`` counts the devices
    of all processes (a multiple of the process count); the results equal one process
    with as many devices up to float rounding of the all-reduces, and every process
    returns the same state and metrics. Only process 0 locks the folder and writes its
    files (the results directory must be shared); every process takes part in each
    checkpoint. A signal received by any process is acted on at the next host sync, by
    every process at the same step (the local check between steps is skipped).

    Raises:
      RunExistsError: the folder holds a different run (the message names the fields
        that differ; nothing is overwritten), or is not a jaxnorm run.
      RunLockedError: another process is writing the run (pid and host in the message).
      CheckpointError: checkpoints exist but none can be restored (an unreadable newest
        one is passed over with a warning, for the previous one).
      ValueError: a batch size not divisible by the device count, an unknown
        dataset/model/norm, a model that does not fit the data's shape, data holding
        NaN or inf, a batch larger than the training set, or a logger of
        ``config.loggers`` whose package is not installed (``pip install 'jaxnorm[log]'``).
      KeyboardInterrupt: after SIGINT or SIGTERM (see above).
      PrimaryProcessError: on processes other than 0, when process 0 could not lock or
        prepare the run folder (its error in the message).
    """
    return fit_many([config], observers=observers, resume=resume, overwrite=overwrite, progress=progress)[0]


def fit_many(
    configs: Sequence[TrainConfig],
    *,
    strategy: str = "auto",
    observers: Optional[Sequence[Observer]] = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    run_devices: Optional[int] = None,
) -> list[FitResult]:
    """Trains N runs as one compiled program. They may differ in ``seed``, ``name``,
    ``tag``, the hyperparameters held in the optimizer state (``learning_rate``,
    ``weight_decay``, ``momentum`` -- all with momentum or all without) and the ablation
    variant (``norm`` among ``vanilla``, ``bn``, ``bn_gamma``, ``bn_beta``,
    ``bn_gamma_beta``).

    Each run writes its own folder exactly as :func:`fit` would. Runs of one norm equal
    the same run trained alone (bit-for-bit with ``strategy='loop'`` and ``'map'``; up to
    floating-point reassociation with ``'vmap'``). Runs mixing ablation variants train
    as the ``bn_ablation`` superset (:class:`jaxnorm.layers.Norm` with ``maskable``):
    the same functions and gradients as the single variants, except that the vanilla
    and BN runs share one structure, so the layers before a norm keep a bias whose
    gradient is zero up to rounding in the BN runs; their trajectories match the single
    runs to float32 rounding, and their checkpoints hold the superset's variables. A run
    that diverges stops being recorded while the others go on; observers wrapped in
    :class:`~jaxnorm.observers.stopping.StopWhen` end the group before the cap once every
    run has met their rule or diverged. See
    :mod:`jaxnorm.train.multi_run` for the strategies (``'auto'``: vmap on GPU/TPU,
    loop on CPU, ``'shard'`` on two or more GPU/TPU devices per data-parallel group:
    :func:`~jaxnorm.train.multi_run.auto_strategy`).

    ``strategy='shard'`` spreads the runs over ``run_devices`` device rows (default
    None: as few rows of the ``jax.device_count() // num_devices`` available as give each
    the fewest runs, :func:`~jaxnorm.train.multi_run.default_run_devices`), each row
    ``config.num_devices`` devices wide (data parallelism inside a run), so
    ``run_devices * num_devices`` devices are used. Each row trains its runs with vmap,
    without communication between rows; results equal the single runs as ``'vmap'``'s
    do. N not a multiple of ``run_devices`` is padded with copies of the last run,
    trained and discarded (they write nothing). ``status.json``'s ``program`` then also
    records ``run_devices``, ``data_devices`` and ``dummy_runs``. Asking for
    ``run_devices`` > 1 with ``'auto'`` picks ``'shard'``.

    Runs that already ended (``status.json`` finished or diverged, the same config) are
    not trained again: their results are read from their folders (state: the latest
    checkpoint), each with one INFO line on the ``jaxnorm.train`` logger, and the group's
    other runs train on in the same program structure. Every run's folder is locked for
    the call, and validation, heartbeat and interrupts are as in :func:`fit`.

    Raises:
      ValueError: the configs differ in more than the per-run fields above, mix runs
        with and without momentum, or names repeat; ``run_devices`` below 1, with
        ``num_devices`` needing more devices than exist, or given with a strategy other
        than ``'shard'``/``'auto'``; and the errors of :func:`fit`.
    """
    configs = list(configs)
    superset = check_compatible(configs)
    strategy = resolve_strategy(strategy, len(configs), data_devices=configs[0].num_devices or 1, run_devices=run_devices)
    observers = [GammaBetaRecorder(configs[0].record_every_steps)] if observers is None else list(observers)
    names = [o.name for o in observers]
    if len(set(names)) != len(names):
        raise ValueError(f"observer names must be unique, got {names}.")
    plan, module, template = _validate(configs, superset)  # before anything is written
    if strategy == "shard":  # the run mesh fits the machine
        parallel.make_run_mesh(1 if run_devices is None else run_devices, configs[0].num_devices or 1)
    # Signals are deferred from here on (a load or a trace above may be interrupted as usual).
    with InterruptGuard() as guard, contextlib.ExitStack() as locks:

        def prepare():
            runs = []
            for c in configs:
                locks.enter_context(run_lock(run_dir_of(c)))
                runs.append(prepare_run_dir(c, resume, overwrite))
            return runs

        # Several processes: process 0 alone locks and prepares; the others wait for it.
        runs = parallel.on_primary(prepare, "prepare the run folders") or [run_dir_of(c) for c in configs]
        # Runs that already ended (finished or diverged) are read back, not retrained: the
        # others of the group train on, in the group's structure (the superset stays one).
        done = [resume and not overwrite and stored_status(r) in ("finished", "diverged") for r in runs]
        todo = [(c, r) for c, r, d in zip(configs, runs, done) if not d]
        stored = iter(_stored_results([c for c, d in zip(configs, done) if d], [r for r, d in zip(runs, done) if d], template))
        _check(guard)  # several processes: also a collective, so process 0 writes no file before all read
        group = ([c for c, _ in todo], [r for _, r in todo])
        trained = iter(_fit_group(*group, superset, plan, module, strategy, observers, resume, progress, guard, run_devices) if todo else [])
        out = [next(stored) if d else next(trained) for d in done]
        _check(guard)  # a signal during the last steps or the read-back still stops the caller
    return out


def _validate(configs: Sequence[TrainConfig], superset: bool):
    """Everything that can refuse the configs without training, so that an error leaves
    no folder behind: the data (unknown dataset or split, a batch larger than the data,
    non-finite values), the device mesh (the batch divisible by the devices), the model
    and optimizer (unknown model or norm, a model that does not fit the data's shape, a
    frozen pattern matching nothing: traced abstractly by ``jax.eval_shape``, nothing
    compiled or allocated), and the packages of the configs' ``loggers``. Runs of one
    program share their shapes, so the first config's state shapes are every run's.
    Returns ``(plan, module, state_template)``."""
    cfg = configs[0]
    plan = _plan(cfg)
    for split in cfg.eval_splits:
        ds = load(cfg.dataset, split)
        _check_finite(ds.images[: cfg.eval_subset], f"dataset {cfg.dataset!r} split {split!r}")
    parallel.check_batch_divisible(plan.batch_size, parallel.make_mesh(cfg.num_devices or 1))
    check_available({name for c in configs for name in c.loggers})  # an optional package missing
    module = build_model(cfg, plan.num_classes, norm="bn_ablation" if superset else None)
    sample = jax.ShapeDtypeStruct((1,) + plan.images.shape[1:], jnp.asarray(plan.images[:1]).dtype)
    try:
        template = jax.eval_shape(lambda x: create_state(jax.random.PRNGKey(cfg.seed), module, _optimizer(cfg, plan), x), sample)
    except ValueError:
        raise  # the library's own, already saying what is wrong
    except Exception as e:  # e.g. 3C3D on 8x8 digits: a layer of size 0 fails deep in an initializer
        raise ValueError(
            f"model {cfg.model!r} ({dict(cfg.model_kwargs)}) cannot be initialized on {cfg.dataset!r} inputs of shape "
            f"{tuple(plan.images.shape[1:])}: {type(e).__name__}: {e}"
        ) from e
    return plan, module, template


_log = logging.getLogger("jaxnorm.train")


def _stored_results(configs: Sequence[TrainConfig], runs, template) -> list[FitResult]:
    """FitResults of runs that ended earlier, from their folders (one log line each); the
    state is the latest checkpoint's (None if the run kept none, e.g. diverged before
    its first)."""
    out = []
    for c, r in zip(configs, runs):
        status = read_json(r.status)
        _log.info("%s/%s: %s earlier (step %d); read from %s", c.study, c.name, status["status"], int(status["step"]), r.root)
        state = None
        if has_checkpoint(r):
            ckpt = Checkpointer(r.checkpoints)
            try:
                latest = ckpt.latest_step()
                if latest is not None:  # exactly the last state, no fallback to an older one
                    state = ckpt.restore(template, step=latest)[0]
            finally:
                ckpt.close()
        out.append(FitResult(state, status["status"], int(status["step"]), r.root, status.get("divergence"), read_jsonl(r.metrics), {}))
    return out


def _fit_group(configs, runs, superset: bool, plan: _Plan, module, strategy: str, observers, resume: bool, progress: bool, guard, run_devices=None) -> list[FitResult]:
    """Trains the runs (their folders locked and prepared) as one program; see
    :func:`fit_many`."""
    num = len(configs)
    cfg = configs[0]
    primary = parallel.is_primary()  # the one process that writes run files
    program = _Program(plan, configs, module, observers, strategy, run_devices)
    states = program.states
    if superset:
        states = [st.replace(batch_stats=set_ablation_variant(st.batch_stats, c.norm)) for st, c in zip(states, configs)]
    state = program.put_runs(states)
    data = program.place((jnp.asarray(plan.images), jnp.asarray(plan.labels)))
    seeds = program.seeds(configs)
    eval_data = _eval_data(plan, program.place, data, seeds)

    # A run that kept checkpoints resumes from them even if this call saves none (the
    # interval is bookkeeping, not identity).
    ckpts = [Checkpointer(r.checkpoints) if cfg.checkpoint_every_epochs > 0 or has_checkpoint(r) else None for r in runs]
    traj = [{o.name: {"steps": [], "records": []} for o in observers if o.sink == "trajectories"} for _ in runs]
    # In the superset every run has γ and β; record only those its variant learns.
    keep = [learned_filter(c.norm) if superset else (lambda key: True) for c in configs]
    info = {"strategy": strategy, "runs": num, **program.info, **({"superset": "bn_ablation"} if superset else {})}
    loggers = [RunLoggers(c, r, active=primary) for c, r in zip(configs, runs)]  # process 0 writes, as the files
    loop = _Loop(plan, program, runs, traj, guard, primary, loggers)
    bar, failed = None, True
    try:
        # A CheckpointError here leaves the status as it was (the run is what it was).
        state, step, start_epoch, initial_losses = _restore(program, configs, runs, ckpts, traj, state, resume)
        loop.start(step, initial_losses)
        desc = f"{cfg.study}/{cfg.name}" if num == 1 else f"{cfg.study}: {num} runs ({strategy})"
        bar = tqdm(total=plan.total_steps, initial=step, disable=not (progress and primary), desc=desc, leave=False)
        try:
            for epoch in range(start_epoch, plan.last_epoch + 1):
                state, step = loop.epoch(state, data, seeds, epoch, step, bar)
                if all(loop.divergence):
                    break
                _check(guard)
                if loop.evaluates_after(epoch):
                    loop.evaluate(state, eval_data, epoch, step)
                if loop.checkpoints_after(epoch):
                    loop.checkpoint(state, ckpts, keep, epoch, step)
                if loop.ended():
                    break
            for r, t, k in zip(runs, traj, keep):
                if primary:
                    write_trajectories(r, t, k)
            failed = False
        except BaseException as e:
            # A signal the guard caught is an interruption (resumable by design); anything
            # else -- a KeyboardInterrupt raised by other code included -- is a failure.
            interrupted = isinstance(e, KeyboardInterrupt) and guard.received is not None
            for i, r in enumerate(runs):
                if loop.divergence[i] or not primary:
                    continue  # already written as diverged, which it stays
                if interrupted:
                    write_status(r, "interrupted", loop.synced_step, plan.total_steps, reason=str(e))
                else:
                    write_status(r, "failed", loop.synced_step, plan.total_steps, error=f"{type(e).__name__}: {e}")
            raise
    finally:
        if bar is not None:
            bar.close()
        for c in ckpts:
            if c is not None:
                c.close()
        loop.close_loggers(failed)

    results = []
    for i, r in enumerate(runs):
        d = loop.divergence[i]
        if primary:
            write_status(r, "diverged" if d else "finished", d["step"] if d else step, plan.total_steps, program=info, **({"divergence": d} if d else {}))
    parallel.barrier("jaxnorm.fit: run files written")  # before the other processes read them back
    for i, (r, st) in enumerate(zip(runs, unstack(state, num))):
        d = loop.divergence[i]
        results.append(FitResult(st, "diverged" if d else "finished", d["step"] if d else step, r.root, d, read_jsonl(r.metrics), dict(program.traced.counts)))
    return results


class _Loop:
    """The hot loop of one program: dispatches steps and observers, syncs with the host
    every ``log_every_steps`` steps (the only host syncs), evaluates and checkpoints;
    keeps each run's divergence record."""

    #: At most one heartbeat (status.json per run) a second: sync points of a small
    #: model can come every few milliseconds.
    HEARTBEAT_S = 1.0

    def __init__(self, plan: _Plan, program: _Program, runs, traj, guard, primary: bool, loggers: Sequence[RunLoggers]):
        self.plan, self.program, self.runs, self.traj, self.guard = plan, program, runs, traj, guard
        self.primary = primary  # writes the run files (process 0); the others only compute
        # Several processes must stop at the same step: signals are agreed at host syncs.
        self.local_checks = jax.process_count() == 1
        # Each run's metric sinks (jaxnorm.train.metric_loggers), fed the lines at the syncs.
        self.loggers = list(loggers)
        self.divergence: list[Optional[dict]] = [None] * program.num
        self.initial_losses: list = [None] * program.num
        self.pending, self.pending_obs = [], []
        self.synced_step = 0  # the last step whose metrics are on the host (and in the files)
        self._last_beat = -math.inf
        self.stop = GroupStop(program.observers, program.num)  # jaxnorm.observers.stopping.StopWhen rules

    def ended(self) -> bool:
        """Every run diverged or met its StopWhen rules (never without such observers)."""
        return self.stop.ended(self.divergence)

    def start(self, step: int, initial_losses) -> None:
        """The restored (or initial) step: opens the metric sinks, writes the first heartbeat."""
        self.synced_step, self.initial_losses = step, list(initial_losses)
        for lg in self.loggers:
            lg.open(step)
        if self.stop.rules:  # only StopWhen rules need the stored lines
            self.stop.start([read_jsonl(r.metrics) for r in self.runs])
        self.heartbeat(force=True)

    def heartbeat(self, force: bool = False) -> None:
        """Rewrites each running run's ``status.json`` (``running``, synced step, time)."""
        now = time.monotonic()
        if not self.primary or (not force and now - self._last_beat < self.HEARTBEAT_S):
            return
        self._last_beat = now
        for r, d in zip(self.runs, self.divergence):
            if not d:
                write_status(r, "running", self.synced_step, self.plan.total_steps)

    def epoch(self, state, data, seeds, epoch: int, step: int, bar):
        plan, program, cfg = self.plan, self.program, self.plan.config
        perm = program.permute(seeds, epoch, len(plan.labels))
        for s in range(plan.steps_per_epoch):
            if step >= plan.total_steps:
                break
            if self.local_checks:
                self.guard.check()  # a Python flag: no host sync
            state, m, measured = program.step(state, data, perm, seeds, epoch, s, step)
            self.pending.append(m)
            self.pending_obs.extend((o, step, rec) for o, rec in measured)  # filed under θ_step's step
            step += 1
            for o in program.observers:
                if step % o.every == 0 and not is_in_step(o):
                    self.pending_obs.append((o, step, program.observe(o, state)))
            epoch_end = s == plan.steps_per_epoch - 1 and (self.evaluates_after(epoch) or self.checkpoints_after(epoch))
            if step % cfg.log_every_steps == 0 or epoch_end or step == plan.total_steps:
                bar.update(self.sync(step, epoch))
                if not self.local_checks:
                    _check(self.guard)  # several processes: agreed at the host syncs
                if all(self.divergence) or self.ended():
                    break
        return state, step

    # Evaluation and checkpoints follow a host sync; between them, full-batch runs (one
    # step per epoch) sync only every log_every_steps steps.
    def evaluates_after(self, epoch: int) -> bool:
        return (epoch + 1) % self.plan.config.eval_every_epochs == 0 or epoch == self.plan.last_epoch or self.ended()

    def checkpoints_after(self, epoch: int) -> bool:
        k = self.plan.config.checkpoint_every_epochs
        return k > 0 and ((epoch + 1) % k == 0 or epoch == self.plan.last_epoch or self.ended())

    def sync(self, step: int, epoch: int) -> int:
        """Pulls buffered metrics/observations of every run, checks each run's losses for
        divergence, and writes each run's lines (divergence recorded once). Returns the
        number of steps synced."""
        host, obs_values = jax.device_get((self.pending, [v for _, _, v in self.pending_obs]))
        first_step = step - len(host) + 1
        factor = self.plan.config.divergence_factor
        for i, r in enumerate(self.runs):
            if self.divergence[i]:
                continue
            rows = [_run_slice(m, i) for m in host]
            losses = np.array([m["loss"] for m in rows], np.float64)
            if self.initial_losses[i] is None and len(losses) and np.isfinite(losses[0]):
                self.initial_losses[i] = float(losses[0])
            bad = _divergent(losses, self.initial_losses[i], factor)
            lines: list[dict] = []
            if not bad.size:
                mean = lambda k: float(np.mean([m[k] for m in rows]))
                lines.append({"kind": "train", "step": step, "epoch": epoch, "loss": mean("loss"), "ce": mean("ce"), "acc": mean("acc"), "steps": len(rows)})
            for (o, s, _), v in zip(self.pending_obs, obs_values):
                if not bad.size or s < first_step + bad[0]:
                    record(o, _run_slice(v, i), s, self.traj[i], lines)
            if bad.size:
                at, value = int(first_step + bad[0]), losses[bad[0]]
                what = "non-finite loss" if not np.isfinite(value) else f"loss above {factor:g} x its first step's {self.initial_losses[i]:.4g}"
                self.divergence[i] = {"step": at, "reason": f"{what} ({value}) at step {at}"}
                lines.append({"kind": "divergence", "epoch": epoch, **self.divergence[i]})
            else:
                self.stop.see(i, lines)
            if self.primary:
                append_jsonl(r.metrics, lines)
                self.loggers[i].write(lines)
            if self.divergence[i] and self.primary:  # final for this run whatever happens to the others
                write_status(r, "diverged", self.divergence[i]["step"], self.plan.total_steps, divergence=self.divergence[i])
        self.pending, self.pending_obs = [], []
        self.synced_step = step
        self.heartbeat()
        return len(host)

    def evaluate(self, state, eval_data, epoch: int, step: int) -> None:
        totals = jax.device_get({split: self.program.evaluate_split(state, arrays, epoch) for split, arrays in eval_data.items()})
        for i, r in enumerate(self.runs):
            if not self.divergence[i] and self.primary:
                lines = eval_lines(_run_slice(totals, i), epoch, step)
                append_jsonl(r.metrics, lines)
                self.loggers[i].write(lines)

    def close_loggers(self, failed: bool) -> None:
        """Closes (flushes) every run's sinks, all of them even if one raises. After a
        failure or an interruption a sink's own error is only logged (a warning): it must
        not hide the exception that ended the training."""
        errors = []
        for lg in self.loggers:
            try:
                lg.close(failed)
            except Exception as e:  # noqa: BLE001 -- the first is raised once all are closed
                errors.append(e)
        if errors and failed:
            _log.warning("closing the metric loggers failed too: %s", "; ".join(f"{type(e).__name__}: {e}" for e in errors))
        elif errors:
            raise errors[0]

    def checkpoint(self, state, ckpts, keep, epoch: int, step: int) -> None:
        num = self.program.num
        one_state = unstack(state, num)
        one_carry = {name: unstack(jax.device_get(c), num) for name, c in self.program.carries.items()}
        for i, (r, c) in enumerate(zip(self.runs, ckpts)):
            if c is not None and not self.divergence[i]:
                if self.primary:
                    write_trajectories(r, self.traj[i], keep[i])
                    save_carries(r, step, {name: cs[i] for name, cs in one_carry.items()})
                # Every process takes part in the save (orbax: process 0 writes the replicated
                # arrays and the metadata, all wait for it).
                c.save(step, one_state[i], {"step": step, "next_epoch": epoch + 1, "initial_loss": self.initial_losses[i]})
                if self.primary:
                    prune_carries(r, c.steps())


def _check(guard: InterruptGuard) -> None:
    """``guard.check()``; with several processes, agreed first: a signal received by any
    process stops them all here (a host-side collective, so never between two steps)."""
    if jax.process_count() > 1:
        signum = parallel.max_over_processes(guard.received or 0)
        if signum:
            guard.adopt(signum)
    guard.check()


def _divergent(losses: np.ndarray, initial: Optional[float], factor: Optional[float]) -> np.ndarray:
    """Indices of the steps whose loss counts as divergence: non-finite, or (with a
    factor) above ``factor`` times the run's first loss."""
    bad = ~np.isfinite(losses)
    if factor is not None and initial is not None:
        bad |= losses > factor * initial
    return np.flatnonzero(bad)


def _run_slice(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def _copying(obs):
    """The observer with its record copied out of the (soon donated) state buffers."""
    if is_stateful(obs):
        return lambda st, carry: (lambda rc: (jax.tree.map(jnp.copy, rc[0]), rc[1]))(obs(st, carry))
    return lambda st: jax.tree.map(jnp.copy, obs(st))
