"""Discovering finished (or diverged) runs on disk and grouping them.

A run is any folder below a root that holds a ``config.json`` and a non-empty
``metrics.jsonl`` (see :mod:`jaxnorm.results` for the layout). Nothing here
depends on how a study names its folders: a run's variant, learning rate and seed are
read from its ``config.json`` (``norm``, ``learning_rate``, ``seed``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from jaxnorm.results import read_json, read_jsonl, read_npz

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
        """True if ``status.json`` says so or a ``divergence`` line was written."""
        return self.status.get("status") == "diverged" or any(m.get("kind") == "divergence" for m in self.metrics)

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


def load_run(path) -> Run | None:
    """Loads the run in ``path``; None if it has no config or no metric lines."""
    path = pathlib.Path(path)
    if not (path / "config.json").is_file():
        return None
    metrics = read_jsonl(path / "metrics.jsonl")
    if not metrics:
        return None
    status = read_json(path / "status.json") if (path / "status.json").is_file() else {}
    return Run(path=path, config=read_json(path / "config.json"), metrics=metrics,
               trajectories=read_npz(path / "trajectories.npz"), status=status)


def find_runs(root) -> list[Run]:
    """Every run below ``root`` (recursively: any folder with ``config.json``), sorted by
    path; folders without metric lines are skipped."""
    runs = (load_run(p.parent) for p in sorted(pathlib.Path(root).rglob("config.json")))
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
