"""Discovering runs on disk, what state they are in, and grouping them.

A run is any folder below a root that holds a ``config.json`` (see
:mod:`jaxnorm.results` for the layout); :func:`find_runs` skips those without metric
lines unless asked for them (``include_empty``: reports list them as "no records").
Its status comes from :func:`jaxnorm.results.read_status`, so a ``running`` run whose
process is gone reads as ``interrupted``; :attr:`Run.state` and :attr:`Run.state_note`
are what every report prints, so that the numbers of a run that did not finish are
never presented as final. Nothing here
depends on how a study names its folders: a run's variant, learning rate and seed are
read from its ``config.json`` (``norm``, ``learning_rate``, ``seed``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from jaxnorm.results import read_json, read_jsonl, read_npz, read_status

#: Ablation variants in plotting/table order.
VARIANTS = ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")


@dataclasses.dataclass
class Run:
    """One run folder, fully loaded."""

    path: pathlib.Path
    config: dict
    metrics: list
    trajectories: dict
    status: dict

    @property
    def variant(self) -> str:
        """The config's ``norm``, plus ``+<tag>`` when the config has a non-empty ``tag``
        (e.g. ``bn_gamma_beta+bn_only``)."""
        tag = self.config.get("tag")
        return str(self.config.get("norm", "?")) + (f"+{tag}" if tag else "")

    @property
    def base_variant(self) -> str:
        """The ablation variant alone (``norm``), without the tag."""
        return str(self.config.get("norm", "?"))

    @property
    def tag(self) -> str:
        return str(self.config.get("tag") or "")

    @property
    def lr(self):
        return self.config.get("learning_rate")

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def diverged(self) -> bool:
        """True if ``status.json`` says so, a ``divergence`` line was written, or a
        ``train`` or ``eval`` line holds a non-finite loss (a net broken by NaNs that the
        engine's divergence rule did not stop: it evaluates at chance, and its numbers
        must not read as a finished run's)."""
        return (self.status.get("status") == "diverged" or any(m.get("kind") == "divergence" for m in self.metrics)
                or any(m.get("kind") in ("train", "eval") and _nonfinite(m.get("loss")) for m in self.metrics))

    @property
    def divergence(self) -> dict | None:
        """The first ``divergence`` line, or None."""
        return next((m for m in self.metrics if m.get("kind") == "divergence"), None)

    def eval_series(self, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of ``key`` in the ``eval`` lines of ``split``, sorted by
        epoch (0-based, as written by the trainer); a repeated epoch keeps its last line."""
        by_epoch = {}
        for m in self.metrics:
            if m.get("kind") == "eval" and m.get("split") == split and key in m:
                by_epoch[int(m["epoch"])] = float(m[key])
        epochs = np.array(sorted(by_epoch), dtype=np.int64)
        return epochs, np.array([by_epoch[e] for e in epochs], dtype=np.float64)


    @property
    def state(self) -> str:
        """What became of the run, one of :data:`STATES`: ``no records`` (no metric line),
        ``diverged`` (:attr:`diverged`), else the status of :func:`read_status`
        (``finished``, ``interrupted``, ``running``, ``failed``), ``unknown`` without one."""
        if not self.metrics:
            return "no records"
        if self.diverged:
            return "diverged"
        return str(self.status.get("status") or "unknown")

    @property
    def finished(self) -> bool:
        """Whether the run trained to its end (its last values are final)."""
        return self.state == "finished"

    @property
    def last_step(self) -> int | None:
        """The status's ``step``, else the largest ``step`` of a metric line (None if neither)."""
        step = self.status.get("step")
        if step is None:
            steps = [m["step"] for m in self.metrics if isinstance(m.get("step"), (int, float))]
            step = max(steps) if steps else None
        return None if step is None else int(step)

    @property
    def total_steps(self) -> int | None:
        """The status's ``total_steps``, else the config's ``max_steps`` (None if neither)."""
        total = self.status.get("total_steps") or self.config.get("max_steps")
        return None if total is None else int(total)

    @property
    def state_note(self) -> str:
        """:attr:`state` in words, with where a run that did not finish stopped:
        ``finished``, ``interrupted at step 120 of 600`` (``..., after epoch 4 of 20``
        when the total of steps is not stored), ``diverged at step 13``, ``no records``."""
        state = self.state
        if state in ("finished", "no records"):
            return state
        step = self.divergence.get("step") if state == "diverged" and self.divergence else self.last_step
        if step is None:
            return state
        note, total = f"{state} at step {int(step)}", self.total_steps
        if state == "diverged":
            return note
        if total:
            return f"{note} of {total}"
        epochs, evaluated = self.config.get("epochs"), {int(m["epoch"]) for m in self.metrics if m.get("kind") == "eval" and "epoch" in m}
        return note + (f", after epoch {max(evaluated) + 1} of {epochs}" if epochs and evaluated else "")


#: The values of :attr:`Run.state`.
STATES = ("finished", "diverged", "interrupted", "running", "failed", "unknown", "no records")


def _nonfinite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)


def load_run(path, include_empty: bool = False) -> Run | None:
    """Loads the run in ``path``; None if it has no config, or (unless ``include_empty``)
    no metric lines. Its ``status`` is :func:`~jaxnorm.results.read_status`'s."""
    path = pathlib.Path(path)
    if not (path / "config.json").is_file():
        return None
    metrics = read_jsonl(path / "metrics.jsonl")
    if not metrics and not include_empty:
        return None
    status = read_status(path)
    return Run(path=path, config=read_json(path / "config.json"), metrics=metrics,
               trajectories=read_npz(path / "trajectories.npz"), status=status)


def find_runs(root, include_empty: bool = False) -> list[Run]:
    """Every run below ``root`` (recursively: any folder with ``config.json``), sorted by
    path; folders without metric lines are skipped unless ``include_empty``."""
    runs = (load_run(p.parent, include_empty) for p in sorted(pathlib.Path(root).rglob("config.json")))
    return [r for r in runs if r is not None]


def _sort_key(v: Any):
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0.0, str(v))


def group_key(run: Run, by: Sequence[str]) -> tuple:
    """The values of the config fields ``by`` for ``run`` (lists made hashable)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in (run.config.get(k) for k in by))


def group_runs(runs: Iterable[Run], by: Sequence[str] = ("learning_rate",)) -> dict[tuple, list[Run]]:
    """Runs grouped by the config fields ``by``: ``{(value, ...): [runs]}``, keys sorted
    (numbers numerically), runs in their given order. Keys are always tuples."""
    by = tuple(by)
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(group_key(r, by), []).append(r)
    return {k: groups[k] for k in sorted(groups, key=lambda k: tuple(_sort_key(v) for v in k))}


def variant_order(names: Iterable[str]) -> list[str]:
    """``names`` deduplicated, known variants first in :data:`VARIANTS` order, then others sorted."""
    names = set(names)
    return [v for v in VARIANTS if v in names] + sorted(names - set(VARIANTS))


def fmt_value(v) -> str:
    """A compact string for a config value in captions and file names (0.022 -> '0.022')."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:g}"
    return str(v)
