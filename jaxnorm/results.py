"""The on-disk layout of a run, with atomic writes.

``results/<study>/<run>/`` holds:

* ``config.json`` -- the :class:`~jaxnorm.train.config.TrainConfig` as a dict;
* ``metrics.jsonl`` -- one JSON object per line, each with a ``kind``: ``train``
  (mean training loss/accuracy over the last ``log_every_steps`` steps), ``eval`` (one
  split after an epoch), ``divergence`` (where and why a run stopped), or an
  observer's name;
* ``trajectories.npz`` -- arrays recorded by observers (the γ/β recorder's
  ``gamma_beta/steps``, ``gamma_beta/norm3/gamma``, ...);
* ``status.json`` -- the run's state (below);
* ``checkpoints/`` -- orbax checkpoints (the newest two);
* ``observer_state/`` -- stateful observers' carries beside each checkpoint;
* ``.lock`` -- present while a process writes the run (JSON ``pid``, ``host``,
  ``time``; see :mod:`jaxnorm.train.run_folder`): one writer per folder.

``status.json`` holds ``status``, ``step`` (the last step synced to the host),
``total_steps``, ``pid``, ``host`` and ``heartbeat`` (``time.time()`` of the write). The
engine writes it at the start and at every host sync point (at most once a second), so a
``running`` status whose heartbeat stops moving belongs to a process that is gone
(``read_status`` tells that apart). ``status`` is one of:

* ``running`` -- a process is (or was, if it died without a word) training the run;
* ``finished`` -- every step taken; ``program`` describes how it was trained;
* ``diverged`` -- stopped at the first bad step; ``divergence`` is ``{step, reason}``;
* ``interrupted`` -- stopped by Ctrl-C (SIGINT) or SIGTERM between steps; a rerun
  resumes from the last checkpoint;
* ``failed`` -- stopped by an error; ``error`` names it (checkpoints and metrics
  written so far stay).

Atomicity: whole files are written to a temporary name in the same folder and renamed
over the target (``os.replace`` is atomic on POSIX), so a killed run leaves either the
old or the new file. Modes: every file is created as ``open()`` would create it, ``0o666``
less the process umask (a temporary file is ``0600``; it is chmod-ed before the rename),
so colleagues read the runs as they read the user's other files. ``metrics.jsonl`` is appended line by line; a reader ignores a
final line that is not complete JSON (a write cut short), and a resumed run rewrites the
file up to its checkpoint first.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import tempfile
import time
import warnings
from typing import Iterable, Mapping

import numpy as np


#: Config fields that say where a run is stored and how often it is looked at, not what
#: is trained: ``results_dir``/``study``/``name`` (the folder: a moved or copied run is the
#: same run), ``tag`` (a report label), ``log_every_steps`` (when metrics are pulled to
#: the host; the divergence step is exact whatever the interval), ``eval_every_epochs``
#: (evaluation reads the state, never changes it), ``record_every_steps`` (the default
#: observer's interval; observers are not part of a run's identity either) and
#: ``checkpoint_every_epochs`` (a checkpoint restores bit-identically) and ``loggers`` (the
#: sinks that also receive the metrics lines: :mod:`jaxnorm.train.metric_loggers`). Every other field
#: can change the numbers (``eval_batch_size`` too: with ``eval_bn_mode='batch'`` it is
#: the statistics' batch) and so identifies the run. Kept here, with the file formats:
#: :mod:`jaxnorm.train.run_folder` leaves them out of a run's identity, and the readers of
#: :mod:`jaxnorm.analysis` (which never import ``train``) out of a listing's differences.
BOOKKEEPING_FIELDS = (
    "results_dir", "study", "name", "tag",
    "log_every_steps", "eval_every_epochs", "record_every_steps", "checkpoint_every_epochs", "loggers",
)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``): the
    portable ``os.umask(0); os.umask(old)`` pair briefly clears it for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a run's files should be as readable as any open()-ed file.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    """Atomically writes ``obj`` as indented JSON."""
    _atomic_write_bytes(pathlib.Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def append_jsonl(path, records: Iterable[Mapping]) -> None:
    """Appends one line per record (flushed; a cut-short last line is ignored by readers)."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not lines:
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(lines)
        f.flush()


def read_jsonl(path) -> list[dict]:
    """Every complete record of a JSON-lines file ([] if it does not exist).

    A malformed line is skipped with a :class:`UserWarning` naming the file and the
    1-based line number, and reading goes on: one damaged line must not silently drop
    every record after it. Only a cut-short *last* line (no trailing newline: the write
    of a killed run) is normal and ignored without a word; a last line that ends in a
    newline but is not JSON is damage like any other and warned about. Blank lines are
    passed over.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    # After a final newline split() leaves "", so lines[-1] is the cut-short tail if any.
    cut_short = len(lines) - 1 if lines[-1] else None
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i != cut_short:
                warnings.warn(f"{path}: line {i + 1} is not valid JSON ({e.msg}); skipped.", stacklevel=2)
            continue
        if not isinstance(record, dict):
            warnings.warn(f"{path}: line {i + 1} is not a JSON object; skipped.", stacklevel=2)
            continue
        out.append(record)
    return out


#: A ``running`` status whose heartbeat (or, in files written before heartbeats,
#: whose newest file) is older than this many seconds, from a writer :func:`read_status`
#: cannot check (another host, or no pid), reads as ``interrupted``. An hour: far above
#: the engine's heartbeat interval (every sync point) on any setup here, so a live run
#: on another node is not called dead; a dead one is recognised within the hour.
STALE_AFTER_S = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists under another user (PermissionError): alive as far as we can tell
    return True


def read_status(run_or_path, *, stale_after: float = STALE_AFTER_S, now: float | None = None) -> dict:
    """A run's ``status.json`` as stored ({} if there is none or it is unreadable), with
    ``status`` corrected to ``interrupted`` for a ``running`` run whose writer is gone.

    ``run_or_path``: a :class:`RunDir`, a run folder (or an object whose ``path`` is
    one), or the ``status.json`` itself.
    The writer of a ``running`` run counts as gone when

    * it ran on this host (``host`` equals :func:`socket.gethostname`) and its ``pid`` is
      not a live process (``os.kill(pid, 0)`` raises ProcessLookupError);
    * it ran on another host, or the file has no ``pid`` (written before the engine
      stored one), and its ``heartbeat`` -- for an old file without one, the newest
      modification time of the folder's ``status.json`` and ``metrics.jsonl``, which
      the old engine appended to while training -- is more than ``stale_after``
      seconds (:data:`STALE_AFTER_S`) before ``now``.

    A corrected dict keeps what was stored and adds ``stored_status: "running"`` and
    ``writer_gone`` (why, in words). Other statuses are returned as stored.
    """
    if isinstance(run_or_path, RunDir):
        path = run_or_path.status
    else:  # a folder or file; or an object with the folder as ``path`` (jaxnorm.analysis.runs.Run)
        path = pathlib.Path(getattr(run_or_path, "path", run_or_path))
    if path.is_dir():
        path = path / "status.json"
    try:
        status = read_json(path) if path.is_file() else {}
    except (ValueError, OSError):
        warnings.warn(f"{path} is not readable JSON; the run's status is unknown.", stacklevel=2)
        return {}
    if not isinstance(status, dict) or status.get("status") != "running":
        return status if isinstance(status, dict) else {}
    now = time.time() if now is None else now
    pid, host = status.get("pid"), status.get("host")
    gone = None
    if pid is not None and host == socket.gethostname():
        if not _pid_alive(int(pid)):
            gone = f"process {pid} on this host is gone"
    else:
        beat = status.get("heartbeat")
        if beat is None:
            files = [p for p in (path, path.parent / "metrics.jsonl") if p.is_file()]
            beat = max((p.stat().st_mtime for p in files), default=None)
        if beat is not None and now - float(beat) > stale_after:
            where = f"on {host}" if host else "(no pid stored)"
            gone = f"writer {where} silent for {now - float(beat):.0f} s (> {stale_after:g} s)"
    if gone is None:
        return status
    return {**status, "status": "interrupted", "stored_status": "running", "writer_gone": gone}


def rewrite_jsonl(path, records: Iterable[Mapping]) -> None:
    """Atomically replaces a JSON-lines file by ``records``."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    _atomic_write_bytes(pathlib.Path(path), data.encode())


def write_npz(path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically writes a ``.npz`` of named arrays."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    _atomic_write_bytes(pathlib.Path(path), buf.getvalue())


def read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` ({} if it does not exist)."""
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


class RunDir:
    """Paths of one run's folder (created on first write)."""

    def __init__(self, root):
        self.root = pathlib.Path(root)

    config = property(lambda self: self.root / "config.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    trajectories = property(lambda self: self.root / "trajectories.npz")
    status = property(lambda self: self.root / "status.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    #: the final state's logits on the training-loss set (``jaxnorm.train.predict.save_final_logits``)
    final_logits = property(lambda self: self.root / "final_logits.npz")
    lock = property(lambda self: self.root / ".lock")
