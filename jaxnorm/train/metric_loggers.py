"""Opt-in metric sinks beside ``metrics.jsonl``: TensorBoard event files and Weights &
Biases runs, chosen by ``TrainConfig.loggers`` (``--log`` on a study's command line).

The registry :data:`LOGGERS`:

* ``'tensorboard'`` -- event files in ``<run>/tensorboard/``, written by ``tensorboardX``
  (``tensorboard --logdir results/`` shows every run of every study);
* ``'wandb'`` -- one W&B run per jaxnorm run (project ``$WANDB_PROJECT``, else
  ``'jaxnorm'``; display name ``<study>/<name>``, group ``<study>``; its files in
  ``<run>/wandb/``; the config as the W&B config). ``WANDB_MODE`` and the other ``WANDB_*``
  variables are left to wandb itself (``WANDB_MODE=offline`` logs without a network).
  The W&B run id is drawn once and kept in ``<run>/wandb_id.json``, so a resumed run --
  moved or not -- continues its W&B run (``resume='allow'``); a run that is started over
  (``overwrite``, or a start without a checkpoint) gets a new id. Why not an id derived
  from the folder's path: two machines with the same path (``/content/results`` on every
  Colab) would write into one W&B run.

Both packages are optional (``pip install 'jaxnorm[log]'``); :func:`check_available` is
what refuses a config naming a missing one, called by the engine before any file is
written.

What a sink receives: exactly the lines the engine writes to ``metrics.jsonl``, at the
moment it writes them (its host sync points: training metrics every ``log_every_steps``,
each evaluation, the observers' records, a divergence), so logging adds no device sync.
A line becomes scalars at its ``step`` (:func:`scalars_of`): its ``float`` values, tagged
``train/<key>`` (loss, ce, acc), ``eval/<split>/<key>`` (loss, acc) and, for an
observer's line, ``<observer>/<key>``. Counts and constants -- ``step``, ``epoch``,
``steps``, ``n``, observers' integer or string annotations -- are not metrics and are
skipped, as are lists and strings. A divergence line becomes the text ``divergence``
(its reason; a TensorBoard text summary, a W&B summary field).

Resuming: a sink that starts empty (no event file yet in ``tensorboard/``; a W&B id drawn
now) is first given every line already in ``metrics.jsonl``, so logging switched on for a
resumed run still shows its whole history (``loggers`` is bookkeeping, not identity). A
sink that already holds the run continues: TensorBoard is told to hide its events after
the resumed checkpoint's step (``purge_step``, as ``metrics.jsonl`` is truncated there);
W&B keeps the steps it has (a resumed run repeats them bit-identically on the same
machine) and ignores, with its own warning, lines at steps below its last one.

Runs that ended earlier and are read back by ``fit_many`` (not trained) log nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import time
import uuid
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from jaxnorm.results import RunDir, read_json, read_jsonl, write_json

#: How to install the optional packages the sinks need.
INSTALL_HINT = "pip install 'jaxnorm[log]'"

#: Keys of a metrics line that are bookkeeping, never logged as scalars.
_NOT_METRICS = frozenset({"kind", "step", "epoch", "steps", "split", "n"})


class MetricSink(Protocol):
    """One open sink of one run.

    Attributes:
      fresh: whether it started empty (it is then given the lines already stored).
    """

    fresh: bool

    def write(self, step: int, scalars: dict, texts: dict) -> None:
        """Records ``{tag: float}`` and ``{tag: str}`` at ``step`` (called in step order)."""

    def close(self, failed: bool) -> None:
        """Flushes and closes; ``failed``: the training ended by an exception."""


@dataclasses.dataclass(frozen=True)
class _Kind:
    """A registry entry: the module the sink imports, the distribution that provides it,
    and the sink's constructor ``(module, config, run, step) -> MetricSink``."""

    module: str
    distribution: str
    open: Callable[[Any, Any, RunDir, int], MetricSink]


def scalars_of(line: dict) -> tuple[int, dict, dict]:
    """A ``metrics.jsonl`` line as ``(step, {tag: float}, {tag: text})`` (see the module
    docstring for the tags). Lines without a ``step`` are filed under step 0."""
    step = int(line.get("step", 0))
    kind = str(line.get("kind", ""))
    if kind == "divergence":
        return step, {}, {"divergence": str(line.get("reason", ""))}
    prefix = f"eval/{line.get('split', '')}" if kind == "eval" else kind
    scalars = {
        f"{prefix}/{k}": v
        for k, v in line.items()
        if k not in _NOT_METRICS and isinstance(v, float)  # record() makes every measured value a float
    }
    return step, scalars, {}


class _TensorBoard:
    """Event files in ``<run>/tensorboard/`` (tensorboardX's ``SummaryWriter``)."""

    FLUSH_SECS = 30  # the writer's own thread flushes; close() flushes the rest

    def __init__(self, tbx, config, run: RunDir, step: int):
        logdir = run.root / "tensorboard"
        self.fresh = not any(logdir.glob("*tfevents*")) if logdir.is_dir() else True
        # Events after the resumed checkpoint's step belong to the interrupted attempt: hidden
        # by TensorBoard, as metrics.jsonl drops those lines. The suffix: tensorboardX names
        # the file by the second and the host only and opens it with 'wb' (a resume within
        # the second would overwrite it), and TensorBoard reads a folder's files in name
        # order, so the nanosecond time keeps them in the order they were written.
        self.writer = tbx.SummaryWriter(
            logdir=str(logdir),
            purge_step=None if self.fresh or step == 0 else step + 1,
            flush_secs=self.FLUSH_SECS,
            filename_suffix=f".{time.time_ns():020d}.{os.getpid()}",
        )

    def write(self, step: int, scalars: dict, texts: dict) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        for tag, text in texts.items():
            self.writer.add_text(tag, text, global_step=step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _WandB:
    """One W&B run per jaxnorm run (see the module docstring)."""

    ID_FILE = "wandb_id.json"

    def __init__(self, wandb, config, run: RunDir, step: int):
        id_path = run.root / self.ID_FILE
        stored = read_json(id_path) if id_path.is_file() else {}
        run_id = stored.get("id") if isinstance(stored, dict) else None
        self.fresh = not isinstance(run_id, str) or not run_id
        if self.fresh:
            run_id = uuid.uuid4().hex[:16]
        # reinit='create_new' (wandb >= 0.19.10): fit_many trains several runs at once, each
        # holding its own W&B run; none becomes the global wandb.run.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "jaxnorm",
            id=run_id,
            resume="allow",
            dir=str(run.root),
            name=f"{config.study}/{config.name}",
            group=config.study,
            config=config.to_dict(),
            reinit="create_new",
        )
        if self.fresh:  # kept only once the W&B run exists: a failed init draws again
            write_json(id_path, {"id": run_id})

    def write(self, step: int, scalars: dict, texts: dict) -> None:
        if scalars:
            self.run.log(scalars, step=step)
        for tag, text in texts.items():
            self.run.summary[tag] = text

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


#: The sinks ``TrainConfig.loggers`` may name.
LOGGERS: dict[str, _Kind] = {
    "tensorboard": _Kind("tensorboardX", "tensorboardX", _TensorBoard),
    "wandb": _Kind("wandb", "wandb", _WandB),
}


def check_logger_names(value: Any) -> tuple[str, ...]:
    """``TrainConfig.loggers`` as a tuple of known, distinct names.

    Raises:
      ValueError: not a list or tuple of strings (a bare string included), an unknown
        name (the message lists :data:`LOGGERS`), or a name given twice.
    """
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"TrainConfig.loggers must be a tuple of names from {sorted(LOGGERS)}, e.g. ('tensorboard',); got {value!r}.")
    for v in value:
        if v not in LOGGERS:
            raise ValueError(f"TrainConfig.loggers: unknown logger {v!r}; known: {sorted(LOGGERS)}.")
    if len(set(value)) != len(value):
        raise ValueError(f"TrainConfig.loggers names a logger twice: {list(value)}.")
    return tuple(value)


def _import(name: str):
    kind = LOGGERS[name]
    try:
        return importlib.import_module(kind.module)
    except ImportError as e:
        raise ValueError(
            f"TrainConfig.loggers: {name!r} needs the {kind.distribution} package, which cannot be imported ({e}); "
            f"install it with {INSTALL_HINT}."
        ) from None


def check_available(names: Iterable[str]) -> None:
    """Imports the package of every named sink.

    Raises:
      ValueError: a package is missing (the message names it and :data:`INSTALL_HINT`).
    """
    for name in names:
        _import(name)


class RunLoggers:
    """The sinks of one run, opened by :meth:`open` and closed by :meth:`close`; with
    ``config.loggers == ()``, or ``active=False`` (a process other than 0 of a
    multi-process run: process 0 writes the run's files), every method does nothing (no
    file is read or written).

    Lines passed to :meth:`write` go to every sink in step order, the lines of one
    step merged (W&B takes one row per step, and the engine writes a sync's training
    line before the observer records of the earlier steps it covers)."""

    def __init__(self, config, run: RunDir, active: bool = True):
        self.config, self.run, self.active = config, run, active
        self.sinks: list[MetricSink] = []

    def open(self, step: int) -> None:
        """Opens the sinks for a run at ``step`` (0: a fresh start; else the resumed
        checkpoint's step, ``metrics.jsonl`` already truncated there); a sink that starts
        empty is given the lines already in ``metrics.jsonl``."""
        if not self.active:
            return
        for name in self.config.loggers:
            self.sinks.append(LOGGERS[name].open(_import(name), self.config, self.run, step))
        fresh = [s for s in self.sinks if s.fresh]
        if fresh:
            _dispatch(fresh, read_jsonl(self.run.metrics))

    def write(self, lines: Sequence[dict]) -> None:
        if self.sinks:
            _dispatch(self.sinks, lines)

    def close(self, failed: bool = False) -> None:
        """Closes every sink (each one, even if another's close raises; the first error
        is raised after)."""
        error: Optional[BaseException] = None
        for s in self.sinks:
            try:
                s.close(failed)
            except Exception as e:  # noqa: BLE001 -- re-raised below, once all are closed
                error = error or e
        self.sinks = []
        if error is not None:
            raise error


def _dispatch(sinks: Sequence[MetricSink], lines: Sequence[dict]) -> None:
    converted = sorted((scalars_of(line) for line in lines), key=lambda t: t[0])  # stable
    for step, group in itertools.groupby(converted, key=lambda t: t[0]):
        scalars, texts = {}, {}
        for _, s, t in group:
            scalars.update(s)
            texts.update(t)
        if scalars or texts:
            for sink in sinks:
                sink.write(step, scalars, texts)
