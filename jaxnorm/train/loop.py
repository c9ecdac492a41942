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
  (the loop's only host syncs), checking there for a non-finite loss;
* evaluates every ``eval_every_epochs`` epochs on each eval split (one compiled call
  per split), checkpoints every ``checkpoint_every_epochs`` epochs.

Divergence (NaN/inf loss) stops the run cleanly: the first bad step and the reason are
written to ``metrics.jsonl`` and ``status.json``, and ``fit`` returns normally (a sweep
goes on). Any other failure marks the run ``failed`` in ``status.json`` and re-raises;
checkpoints and metrics written so far stay.

Resuming: with ``resume=True`` (default) a run whose folder holds a checkpoint continues
from it; its final state is bit-identical to an uninterrupted run's on the same machine.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
from typing import Optional, Sequence

import functools
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxnorm.data import epoch_permutation, load, steps_per_epoch
from jaxnorm.layers import ABLATION_VARIANTS, ablation_masks, set_ablation_variant
from jaxnorm.models import get_model
from jaxnorm.train import parallel
from jaxnorm.train.checkpoint import CheckpointError, Checkpointer
from jaxnorm.train.multi_run import map_over_runs, resolve_strategy, stack, unstack
from jaxnorm.train.config import TrainConfig
from jaxnorm.observers import GammaBetaRecorder, Observer, is_stateful
from jaxnorm.train.optim import make_optimizer
from jaxnorm.results import (
    RunDir,
    append_jsonl,
    read_json,
    read_jsonl,
    read_npz,
    rewrite_jsonl,
    write_json,
    write_npz,
)
from jaxnorm.train.state import TrainState, create_state
from jaxnorm.train.step import layout_eval, make_evaluate, make_train_step


class RunExistsError(RuntimeError):
    """The run folder already holds a different (or, without resume, any) run."""


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


def _stored_config(run: RunDir) -> Optional[dict]:
    """A run folder's config, with fields newer than the file at their defaults (None if
    it is not a readable TrainConfig)."""
    try:
        return TrainConfig.from_dict(read_json(run.config)).to_dict()
    except (TypeError, ValueError):
        return None


def _prepare_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> RunDir:
    run = RunDir(pathlib.Path(config.results_dir) / config.study / config.name)
    if run.root.exists() and any(run.root.iterdir()):
        if overwrite:
            shutil.rmtree(run.root)
        elif not run.config.exists():
            raise RunExistsError(f"{run.root} exists and is not a jaxnorm run; refusing to write into it.")
        elif _stored_config(run) != config.to_dict():
            raise RunExistsError(
                f"{run.root} holds a run with a different config; choose another name or pass overwrite=True."
            )
        elif not resume:
            raise RunExistsError(f"{run.root} already holds this run; pass resume=True or overwrite=True.")
    write_json(run.config, config.to_dict())
    return run


_PER_RUN_FIELDS = ("seed", "name")


def _check_compatible(configs: Sequence[TrainConfig]) -> bool:
    """Validates that the runs can share one program; True if they mix ablation variants
    (then they train as the ``bn_ablation`` superset with per-run switches)."""
    if not configs:
        raise ValueError("fit_many needs at least one config.")
    mixed = len({c.norm for c in configs}) > 1
    if mixed and not all(c.norm in ABLATION_VARIANTS for c in configs):
        raise ValueError(
            f"runs trained together may mix norms only among the ablation variants {ABLATION_VARIANTS}, "
            f"got {sorted({c.norm for c in configs})}."
        )
    per_run = _PER_RUN_FIELDS + (("norm",) if mixed else ())
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k not in per_run}
    base = strip(configs[0])
    for c in configs[1:]:
        diff = sorted(k for k, v in strip(c).items() if base[k] != v)
        if diff:
            raise ValueError(
                f"runs trained together may differ only in {per_run} (norm: among the ablation "
                f"variants); {c.name!r} also differs in {diff}."
            )
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}.")
    return mixed


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

    Raises:
      RunExistsError: the folder holds a different run (nothing is overwritten).
      CheckpointError: a checkpoint exists but cannot be restored.
      ValueError: a batch size not divisible by the device count, an unknown
        dataset/model/norm, or a batch larger than the training set.
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
) -> list[FitResult]:
    """Trains N runs that differ only in ``seed``, ``name`` and the ablation variant
    (``norm`` among ``vanilla``, ``bn``, ``bn_gamma``, ``bn_beta``, ``bn_gamma_beta``) in
    one compiled program.

    Each run writes its own folder exactly as :func:`fit` would. Runs of one norm equal
    the same run trained alone (bit-for-bit with ``strategy='loop'`` and ``'map'``; up to
    floating-point reassociation with ``'vmap'``). Runs mixing ablation variants train
    as the ``bn_ablation`` superset (:class:`jaxnorm.layers.Norm` with ``maskable``):
    the same functions and gradients as the single variants, except that the vanilla
    and BN runs share one structure, so the layers before a norm keep a bias whose
    gradient is zero up to rounding in the BN runs; their trajectories match the single
    runs to float32 rounding, and their checkpoints hold the superset's variables. A run
    that diverges stops being recorded while the others go on. See
    :mod:`jaxnorm.train.multi_run` for the strategies (``'auto'``: vmap on GPU/TPU,
    loop on CPU).

    Raises:
      ValueError: the configs differ in more than seed/name, or names repeat; and the
        errors of :func:`fit`.
    """
    configs = list(configs)
    superset = _check_compatible(configs)
    num = len(configs)
    strategy = resolve_strategy(strategy, num)
    cfg = configs[0]
    runs = [_prepare_run_dir(c, resume, overwrite) for c in configs]
    observers = [GammaBetaRecorder(cfg.record_every_steps)] if observers is None else list(observers)
    names = [o.name for o in observers]
    if len(set(names)) != len(names):
        raise ValueError(f"observer names must be unique, got {names}.")

    train = load(cfg.dataset, cfg.train_split)
    images, labels = train.images, train.labels
    if cfg.train_subset is not None:
        images, labels = images[: cfg.train_subset], labels[: cfg.train_subset]
    n = len(labels)
    if cfg.batch_size > n:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {n} training examples.")
    spe = steps_per_epoch(n, cfg.batch_size)
    total_steps = spe * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, spe * cfg.epochs)
    last_epoch = math.ceil(total_steps / spe) - 1

    n_dev = cfg.num_devices or 1
    mesh = parallel.make_mesh(n_dev)
    parallel.check_batch_divisible(cfg.batch_size, mesh)
    module = build_model(cfg, train.num_classes, norm="bn_ablation" if superset else None)
    tx = make_optimizer(
        cfg.learning_rate,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        schedule=cfg.schedule,
        schedule_kwargs=cfg.schedule_kwargs,
        steps_per_epoch=spe,
        frozen=cfg.frozen,
        track_step_conditioning=cfg.track_step_conditioning,
    )
    sample = jnp.asarray(images[:1])
    states = [create_state(jax.random.PRNGKey(c.seed), module, tx, sample) for c in configs]
    if superset:
        states = [st.replace(batch_stats=set_ablation_variant(st.batch_stats, c.norm)) for st, c in zip(states, configs)]
    state = stack(states)
    # One device: default placement. Several: everything replicated, each batch sharded;
    # outputs pinned to the same placement so no call ever sees new shardings (no retrace).
    rep = parallel.replicated(mesh) if n_dev > 1 else None
    place = (lambda t: parallel.put_replicated(t, mesh)) if n_dev > 1 else jax.device_put
    jit = lambda f, **kw: jax.jit(f, **({"out_shardings": rep} if rep is not None else {}), **kw)
    state = place(state)
    data = place((jnp.asarray(images), jnp.asarray(labels)))
    seeds = jnp.asarray([c.seed for c in configs], jnp.int32)

    step_fn = make_train_step(
        module,
        tx,
        batch_size=cfg.batch_size,
        mean=train.mean,
        std=train.std,
        weight_decay=cfg.weight_decay,
        augment_config=cfg.augment,
        batch_sharding=parallel.batch_sharding(mesh) if n_dev > 1 else None,
    )
    multi_step = map_over_runs(step_fn, strategy, (0, None, 0, 0, None, None), num)
    traced = _TraceCounter()
    train_step = jit(traced("train_step", multi_step), donate_argnums=(0,))
    evaluate = jit(
        traced(
            "evaluate",
            map_over_runs(make_evaluate(module, mean=train.mean, std=train.std, mode=cfg.eval_mode), strategy, (0, None, None, None), num),
        )
    )
    eval_data = {}
    for split in cfg.eval_splits:
        ds = load(cfg.dataset, split)
        ev_images, ev_labels = ds.images[: cfg.eval_subset], ds.labels[: cfg.eval_subset]
        laid = layout_eval(ev_images, ev_labels, min(cfg.eval_batch_size, len(ev_labels)), drop_remainder=cfg.eval_mode == "batch")
        eval_data[split] = place(tuple(jnp.asarray(a) for a in laid))
    # Observers copy out of the state: the next step donates (invalidates) its buffers.
    # A stateful observer's carry (see jaxnorm.observers.protocol) stays on the device too.
    observe = {
        o.name: jit(map_over_runs(_copying(o), strategy, (0, 0) if is_stateful(o) else (0,), num))
        for o in observers
    }
    carries = {o.name: jit(map_over_runs(o.init_carry, strategy, (0,), num))(state) for o in observers if is_stateful(o)}

    def observed(o, st):
        if not is_stateful(o):
            return observe[o.name](st)
        record, carries[o.name] = observe[o.name](st, carries[o.name])
        return record
    permute = jit(jax.vmap(epoch_permutation, in_axes=(0, None, None)), static_argnums=(2,))

    # ---- resume (all runs together, or none)
    ckpts = [Checkpointer(r.checkpoints) if cfg.checkpoint_every_epochs > 0 else None for r in runs]
    traj = [{o.name: {"steps": [], "records": []} for o in observers if o.sink == "trajectories"} for _ in runs]
    step, start_epoch = 0, 0
    latest = [c.latest_step() if (c is not None and resume) else None for c in ckpts]
    if any(s is not None for s in latest):
        if len(set(latest)) != 1:
            found = {c.name: s for c, s in zip(configs, latest)}
            raise CheckpointError(
                f"runs trained together resume together, from one step; their latest checkpoints are {found}. "
                "Train them under new names, or delete the runs that are ahead or behind."
            )
        template = unstack(state, num)[0]
        restored = [c.restore(template) for c in ckpts]
        state = place(stack([r[0] for r in restored]))
        step, start_epoch = int(restored[0][1]["step"]), int(restored[0][1]["next_epoch"])
        for r, t in zip(runs, traj):
            rewrite_jsonl(r.metrics, [m for m in read_jsonl(r.metrics) if m.get("step", 0) <= step])
            _load_trajectories(r, t, step)
        carries = {
            name: place(stack([_load_carry(r, name, step, c) for r, c in zip(runs, unstack(carry, num))]))
            for name, carry in carries.items()
        }
    else:
        initial = jax.device_get({o.name: observed(o, state) for o in observers})
        for i, (r, t) in enumerate(zip(runs, traj)):
            lines: list[dict] = []
            for o in observers:  # the state before the first step
                _record(o, _run_slice(initial[o.name], i), 0, t, lines)
            rewrite_jsonl(r.metrics, lines)
    for r in runs:
        write_json(r.status, {"status": "running", "step": step})

    # In the superset every run has γ and β; record only those its variant learns.
    keep = [_learned_filter(c.norm) if superset else (lambda key: True) for c in configs]
    program = {"strategy": strategy, "runs": num, **({"superset": "bn_ablation"} if superset else {})}
    pending, pending_obs = [], []
    divergence: list[Optional[dict]] = [None] * num
    desc = f"{cfg.study}/{cfg.name}" if num == 1 else f"{cfg.study}: {num} runs ({strategy})"
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=desc, leave=False)
    try:
        for epoch in range(start_epoch, last_epoch + 1):
            perm = permute(seeds, epoch, n)
            for s in range(spe):
                if step >= total_steps:
                    break
                state, m = train_step(state, data, perm, seeds, jnp.int32(epoch), jnp.int32(s))
                pending.append(m)
                step += 1
                for o in observers:
                    if step % o.every == 0:
                        pending_obs.append((o, step, observed(o, state)))
                if step % cfg.log_every_steps == 0 or s == spe - 1 or step == total_steps:
                    _sync(runs, pending, pending_obs, traj, divergence, step, epoch)
                    bar.update(len(pending))
                    pending, pending_obs = [], []
                    if all(divergence):
                        break
            if all(divergence):
                break
            finished_epoch = epoch == last_epoch
            if (epoch + 1) % cfg.eval_every_epochs == 0 or finished_epoch:
                totals = jax.device_get({split: evaluate(state, *arrays) for split, arrays in eval_data.items()})
                for i, r in enumerate(runs):
                    if not divergence[i]:
                        append_jsonl(r.metrics, _eval_lines(_run_slice(totals, i), epoch, step))
            if (epoch + 1) % max(cfg.checkpoint_every_epochs, 1) == 0 or finished_epoch:
                one_state = unstack(state, num)
                one_carry = {name: unstack(jax.device_get(c), num) for name, c in carries.items()}
                for i, (r, c) in enumerate(zip(runs, ckpts)):
                    if c is not None and not divergence[i]:
                        _write_trajectories(r, traj[i], keep[i])
                        _save_carries(r, step, {name: cs[i] for name, cs in one_carry.items()})
                        c.save(step, one_state[i], {"step": step, "next_epoch": epoch + 1})
                        _prune_carries(r, c.steps())
        for r, t, k in zip(runs, traj, keep):
            _write_trajectories(r, t, k)
    except BaseException as e:
        for r in runs:
            write_json(r.status, {"status": "failed", "step": step, "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        bar.close()
        for c in ckpts:
            if c is not None:
                c.close()

    results = []
    for i, (r, st) in enumerate(zip(runs, unstack(state, num))):
        d = divergence[i]
        status = "diverged" if d else "finished"
        last = d["step"] if d else step
        write_json(r.status, {"status": status, "step": last, "program": program, **({"divergence": d} if d else {})})
        results.append(FitResult(st, status, last, r.root, d, read_jsonl(r.metrics), dict(traced.counts)))
    return results


def _run_slice(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def _record(obs, value, step, traj, metric_lines):
    """Files one host-side observer record under its sink."""
    if obs.sink == "trajectories":
        traj[obs.name]["steps"].append(step)
        traj[obs.name]["records"].append(value)
    else:
        annotations = getattr(obs, "annotations", {})
        metric_lines.append({"kind": obs.name, "step": step, **annotations, **{k: float(v) for k, v in value.items()}})


def _copying(obs):
    """The observer with its record copied out of the (soon donated) state buffers."""
    if is_stateful(obs):
        return lambda st, carry: (lambda rc: (jax.tree.map(jnp.copy, rc[0]), rc[1]))(obs(st, carry))
    return lambda st: jax.tree.map(jnp.copy, obs(st))


def _carry_path(run: RunDir, step: int) -> pathlib.Path:
    return run.root / "observer_state" / f"{int(step)}.npz"


def _save_carries(run: RunDir, step: int, carries: dict) -> None:
    """Writes the stateful observers' carries for the checkpoint at ``step`` (before the
    checkpoint itself, so every checkpoint has its carries)."""
    if carries:
        arrays = {f"{name}/{i}": leaf for name, c in carries.items() for i, leaf in enumerate(jax.tree.leaves(c))}
        write_npz(_carry_path(run, step), arrays)


def _prune_carries(run: RunDir, kept_steps) -> None:
    """Deletes carries of checkpoints the checkpointer no longer keeps."""
    kept = {int(s) for s in kept_steps}
    for path in (run.root / "observer_state").glob("*.npz"):
        if path.stem.isdigit() and int(path.stem) not in kept:
            path.unlink()


def _load_carry(run: RunDir, name: str, step: int, template):
    """The carry saved with the checkpoint at ``step``, or ``template`` (a fresh start)
    when there is none (a run checkpointed before the observer was added)."""
    stored = read_npz(_carry_path(run, step))
    leaves, treedef = jax.tree.flatten(template)
    if not all(f"{name}/{i}" in stored for i in range(len(leaves))):
        return template
    return jax.tree.unflatten(treedef, [jnp.asarray(stored[f"{name}/{i}"], l.dtype) for i, l in enumerate(leaves)])


def _sync(runs, pending, pending_obs, traj, divergence, step, epoch) -> None:
    """The host sync: pulls buffered metrics/observations of every run, checks each run's
    losses for non-finite values, and writes each run's lines (divergence recorded once)."""
    host, obs_values = jax.device_get((pending, [v for _, _, v in pending_obs]))
    first_step = step - len(host) + 1
    for i, r in enumerate(runs):
        if divergence[i]:
            continue
        rows = [_run_slice(m, i) for m in host]
        losses = np.array([m["loss"] for m in rows], np.float64)
        bad = np.flatnonzero(~np.isfinite(losses))
        lines: list[dict] = []
        if not bad.size:
            mean = lambda k: float(np.mean([m[k] for m in rows]))
            lines.append({"kind": "train", "step": step, "epoch": epoch, "loss": mean("loss"), "ce": mean("ce"), "acc": mean("acc"), "steps": len(rows)})
        for (o, s, _), v in zip(pending_obs, obs_values):
            if not bad.size or s < first_step + bad[0]:
                _record(o, _run_slice(v, i), s, traj[i], lines)
        if bad.size:
            at = int(first_step + bad[0])
            divergence[i] = {"step": at, "reason": f"non-finite loss ({losses[bad[0]]}) at step {at}"}
            lines.append({"kind": "divergence", "epoch": epoch, **divergence[i]})
        append_jsonl(r.metrics, lines)


def _eval_lines(totals, epoch, step) -> list[dict]:
    out = []
    for split, t in totals.items():
        count = float(t["count"])
        out.append({"kind": "eval", "split": split, "epoch": epoch, "step": step, "loss": float(t["loss_sum"]) / count, "acc": float(t["correct"]) / count, "n": int(count)})
    return out


def _learned_filter(variant: str):
    """Keeps the γ/β recorder keys (``.../gamma``, ``.../beta``) a variant learns."""
    masks = ablation_masks(variant)
    drop = {"gamma"} if not masks["use_scale"] else set()
    drop |= {"beta"} if not masks["use_bias"] else set()
    return lambda key: key.rsplit("/", 1)[-1] not in drop


def _write_trajectories(run: RunDir, traj, keep=lambda key: True) -> None:
    arrays = {}
    for name, t in traj.items():
        arrays[f"{name}/steps"] = np.asarray(t["steps"], np.int64)
        if t["records"]:
            for key in t["records"][0]:
                if keep(key):
                    arrays[f"{name}/{key}"] = np.stack([np.asarray(r[key]) for r in t["records"]])
    if arrays:
        write_npz(run.trajectories, arrays)


def _load_trajectories(run: RunDir, traj, upto_step: int) -> None:
    stored = read_npz(run.trajectories)
    for name, t in traj.items():
        steps = stored.get(f"{name}/steps")
        if steps is None:
            continue
        keep = steps <= upto_step
        keys = [k[len(name) + 1 :] for k in stored if k.startswith(name + "/") and k != f"{name}/steps"]
        t["steps"] = [int(s) for s in steps[keep]]
        t["records"] = [{k: stored[f"{name}/{k}"][i] for k in keys} for i in np.flatnonzero(keep)]
