"""A run's folder as the engine reads and writes it: preparing it (refusing to mix two
runs), the one-writer lock, the status with its heartbeat, the observers' records and
trajectories, and the stateful observers' carries saved beside each checkpoint. The file
formats themselves are :mod:`jaxnorm.results`'.

Run identity: a folder holds one run, identified by its config less
:data:`jaxnorm.results.BOOKKEEPING_FIELDS` (where the run is stored and how often it logs, evaluates,
records and checkpoints: nothing that changes a trained parameter). The same run moved,
copied, or named by another path resumes; a config that differs in any other field is
refused with the differing fields named. On resume ``config.json`` is rewritten with the
new call's bookkeeping, so it always says where the run now lives and how it was last
logged (``metrics.jsonl`` records carry their own ``step``/``steps``, so a changed
``log_every_steps`` stays readable).

The lock: ``<run>/.lock``, created with ``O_CREAT | O_EXCL`` (atomic on POSIX file systems,
NFSv3+ included) holding ``{"pid", "host", "time", "token"}``; removed when the writer
ends (every exit path). A lock whose process is gone -- same host, pid not alive -- is
stale and taken over: under an exclusive ``flock`` of the run folder (so that of two
processes that both saw it stale only one replaces it), the lock is read again and, if it
is still the stale one, atomically replaced (``os.replace``) by the new writer's. A lock
from another host cannot be checked and is never taken over; a pid reused by an
unrelated process makes a stale lock look live. Both are reported with the path to delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import tempfile
import time
import uuid
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.results import BOOKKEEPING_FIELDS, RunDir, current_umask, read_json, read_npz, write_json, write_npz
from jaxnorm.train.config import TrainConfig


HOST = socket.gethostname()
_ENDED = ("finished", "diverged")


class RunExistsError(RuntimeError):
    """The run folder already holds a different (or, without resume, any) run."""


class RunLockedError(RunExistsError):
    """Another process (its pid and host are in the message) is writing the run folder."""


def run_dir_of(config: TrainConfig) -> RunDir:
    return RunDir(pathlib.Path(config.results_dir) / config.study / config.name)


def stored_config(run: RunDir) -> Optional[dict]:
    """A run folder's config, with fields newer than the file at their defaults (None if
    it is not a readable TrainConfig)."""
    return _read_config(run)[0]


def _read_config(run: RunDir) -> tuple[Optional[dict], str]:
    try:
        return TrainConfig.from_dict(read_json(run.config)).to_dict(), ""
    except (OSError, TypeError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


def identity_differences(stored: dict, new: dict) -> list[str]:
    """``'field: stored X, new Y'`` for every identifying field in which two config dicts
    differ (bookkeeping ignored)."""
    keys = sorted((set(stored) | set(new)) - set(BOOKKEEPING_FIELDS))
    return [f"{k}: stored {stored.get(k)!r}, new {new.get(k)!r}" for k in keys if stored.get(k) != new.get(k)]


def has_checkpoint(run: RunDir) -> bool:
    """Whether ``checkpoints/`` holds a finished orbax step (a folder named by its step;
    orbax's in-progress folders carry a suffix)."""
    return run.checkpoints.is_dir() and any(p.is_dir() and p.name.isdigit() for p in run.checkpoints.iterdir())


def _clear(run: RunDir) -> None:
    """Deletes the folder's contents but the lock (held by this process)."""
    for p in run.root.iterdir():
        if p.name != run.lock.name:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def prepare_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> RunDir:
    """Makes the run's folder ready for ``config`` (call with its lock held) and writes
    ``config.json``.

    A folder that holds neither a result nor anything to resume from -- a
    ``config.json`` without a checkpoint whose status is not ``finished``/``diverged``
    (never started, failed, interrupted or killed before its first checkpoint) -- is
    replaced: it is what a config error or an early Ctrl-C leaves, and it must not
    block the corrected rerun.

    Raises:
      RunExistsError: the folder is not a jaxnorm run; holds a run whose identifying
        config differs (the message names the fields, stored and new values); or holds
        this run and ``resume`` is False. ``overwrite=True`` deletes it instead.
    """
    run = run_dir_of(config)
    held = [p for p in run.root.iterdir() if p.name != run.lock.name] if run.root.is_dir() else []
    if held:
        status = stored_status(run)
        if overwrite:
            _clear(run)
        elif not run.config.exists():
            raise RunExistsError(f"{run.root} exists and is not a jaxnorm run; refusing to write into it.")
        elif status not in _ENDED and not has_checkpoint(run):
            _clear(run)  # nothing to resume and no result: a start that went wrong
        else:
            stored, why = _read_config(run)
            if stored is None:
                raise RunExistsError(
                    f"{run.config} cannot be read as a TrainConfig ({why}); pass overwrite=True "
                    "(--overwrite on a study's command line) to replace the run, or choose another name."
                )
            diff = identity_differences(stored, config.to_dict())
            if diff:
                raise RunExistsError(
                    f"{run.root} holds a run with a different config ({'; '.join(diff)}); pass overwrite=True "
                    "(--overwrite on a study's command line) to replace it, or choose another name."
                )
            if not resume:
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


def write_status(run: RunDir, status: str, step: int, total_steps: int, **extra) -> None:
    """Writes ``status.json`` with the writer's heartbeat (see :mod:`jaxnorm.results`)."""
    write_json(
        run.status,
        {"status": status, "step": int(step), "total_steps": int(total_steps), "pid": os.getpid(), "host": HOST, "heartbeat": time.time(), **extra},
    )


# ---------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_lock_text(path: pathlib.Path) -> Optional[str]:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


# A lock file without readable JSON is one whose writer died between creating and
# filling it (or is filling it now): stale once it is older than this.
_UNREADABLE_LOCK_GRACE_S = 30.0


def _is_stale(path: pathlib.Path, text: str) -> bool:
    holder = _holder(text)
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    return holder.get("host") == HOST and pid != os.getpid() and not _pid_alive(pid)


def _locked_error(run: RunDir, text: str) -> RunLockedError:
    h = _holder(text)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["time"])) if isinstance(h.get("time"), (int, float)) else "?"
    who = "this process" if h.get("pid") == os.getpid() and h.get("host") == HOST else f"pid {h.get('pid', '?')} on host {h.get('host', '?')}"
    return RunLockedError(
        f"{run.root} is being written by {who} (locked since {since}); wait for it to end, or, if that process "
        f"is gone (another host's cannot be checked from here), delete {run.lock}."
    )


def _write_new_lock(run: RunDir, payload: str) -> bool:
    try:
        fd = os.open(run.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(run: RunDir, stale_text: str, payload: str) -> bool:
    """Replaces the stale lock by ours if it is still the one judged stale (see the
    module docstring for the race this guards against)."""
    import fcntl

    dfd = os.open(run.root, os.O_RDONLY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        if _read_lock_text(run.lock) != stale_text:
            return False  # released, or taken over by another process meanwhile: look again
        fd, tmp = tempfile.mkstemp(dir=run.root, prefix=".lock.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run.lock)
        return True
    finally:
        os.close(dfd)  # releases the flock


@contextlib.contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Holds ``run``'s lock for the block (creating the folder); see the module docstring.

    Raises:
      RunLockedError: another live process holds it (or this one, in another call).
    """
    run.root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    payload = json.dumps({"pid": os.getpid(), "host": HOST, "time": time.time(), "token": token})
    for _ in range(5):  # each retry follows another process's move: a few suffice
        if _write_new_lock(run, payload):
            break
        text = _read_lock_text(run.lock)
        if text is None:
            continue  # released meanwhile
        if not _is_stale(run.lock, text):
            raise _locked_error(run, text)
        if _take_over(run, text, payload):
            break
    else:
        raise _locked_error(run, _read_lock_text(run.lock) or "")
    try:
        yield
    finally:
        if _holder(_read_lock_text(run.lock) or "").get("token") == token:
            run.lock.unlink()


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
