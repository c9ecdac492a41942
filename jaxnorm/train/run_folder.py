"""A run's folder as the engine reads and writes it: preparing it (refusing to mix two
runs), the observers' records and trajectories, and the stateful observers' carries
saved beside each checkpoint. The file formats themselves are :mod:`jaxnorm.results`'."""

from __future__ import annotations

import pathlib
import shutil
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.results import RunDir, read_json, read_npz, write_json, write_npz
from jaxnorm.train.config import TrainConfig


class RunExistsError(RuntimeError):
    """The run folder already holds a different (or, without resume, any) run."""


def stored_config(run: RunDir) -> Optional[dict]:
    """A run folder's config, with fields newer than the file at their defaults (None if
    it is not a readable TrainConfig)."""
    try:
        return TrainConfig.from_dict(read_json(run.config)).to_dict()
    except (TypeError, ValueError):
        return None


def prepare_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> RunDir:
    run = RunDir(pathlib.Path(config.results_dir) / config.study / config.name)
    if run.root.exists() and any(run.root.iterdir()):
        if overwrite:
            shutil.rmtree(run.root)
        elif not run.config.exists():
            raise RunExistsError(f"{run.root} exists and is not a jaxnorm run; refusing to write into it.")
        elif stored_config(run) != config.to_dict():
            raise RunExistsError(
                f"{run.root} holds a run with a different config; choose another name or pass overwrite=True."
            )
        elif not resume:
            raise RunExistsError(f"{run.root} already holds this run; pass resume=True or overwrite=True.")
    write_json(run.config, config.to_dict())
    return run


def stored_status(run: RunDir) -> Optional[str]:
    """The ``status`` in a run folder's ``status.json`` (None if there is none or it is
    unreadable)."""
    try:
        return read_json(run.status).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def record(obs, value, step, traj, metric_lines):
    """Files one host-side observer record under its sink."""
    if obs.sink == "trajectories":
        traj[obs.name]["steps"].append(step)
        traj[obs.name]["records"].append(value)
    else:
        annotations = getattr(obs, "annotations", {})
        metric_lines.append({"kind": obs.name, "step": step, **annotations, **{k: float(v) for k, v in value.items()}})


def carry_path(run: RunDir, step: int) -> pathlib.Path:
    return run.root / "observer_state" / f"{int(step)}.npz"


def save_carries(run: RunDir, step: int, carries: dict) -> None:
    """Writes the stateful observers' carries for the checkpoint at ``step`` (before the
    checkpoint itself, so every checkpoint has its carries)."""
    if carries:
        arrays = {f"{name}/{i}": leaf for name, c in carries.items() for i, leaf in enumerate(jax.tree.leaves(c))}
        write_npz(carry_path(run, step), arrays)


def prune_carries(run: RunDir, kept_steps) -> None:
    """Deletes carries of checkpoints the checkpointer no longer keeps."""
    kept = {int(s) for s in kept_steps}
    for path in (run.root / "observer_state").glob("*.npz"):
        if path.stem.isdigit() and int(path.stem) not in kept:
            path.unlink()


def load_carry(run: RunDir, name: str, step: int, template):
    """The carry saved with the checkpoint at ``step``, or ``template`` (a fresh start)
    when there is none (a run checkpointed before the observer was added)."""
    stored = read_npz(carry_path(run, step))
    leaves, treedef = jax.tree.flatten(template)
    if not all(f"{name}/{i}" in stored for i in range(len(leaves))):
        return template
    return jax.tree.unflatten(treedef, [jnp.asarray(stored[f"{name}/{i}"], l.dtype) for i, l in enumerate(leaves)])


def eval_lines(totals, epoch, step) -> list[dict]:
    out = []
    for split, t in totals.items():
        count = float(t["count"])
        out.append({"kind": "eval", "split": split, "epoch": epoch, "step": step, "loss": float(t["loss_sum"]) / count, "acc": float(t["correct"]) / count, "n": int(count)})
    return out


def write_trajectories(run: RunDir, traj, keep=lambda key: True) -> None:
    arrays = {}
    for name, t in traj.items():
        arrays[f"{name}/steps"] = np.asarray(t["steps"], np.int64)
        if t["records"]:
            for key in t["records"][0]:
                if keep(key):
                    arrays[f"{name}/{key}"] = np.stack([np.asarray(r[key]) for r in t["records"]])
    if arrays:
        write_npz(run.trajectories, arrays)


def load_trajectories(run: RunDir, traj, upto_step: int) -> None:
    stored = read_npz(run.trajectories)
    for name, t in traj.items():
        steps = stored.get(f"{name}/steps")
        if steps is None:
            continue
        keep = steps <= upto_step
        keys = [k[len(name) + 1 :] for k in stored if k.startswith(name + "/") and k != f"{name}/steps"]
        t["steps"] = [int(s) for s in steps[keep]]
        t["records"] = [{k: stored[f"{name}/{k}"][i] for k in keys} for i in np.flatnonzero(keep)]
