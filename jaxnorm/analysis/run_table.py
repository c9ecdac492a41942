"""A listing of the runs below a folder: what became of each, how far it got, its last
numbers and how its config differs from the others' (``jaxnorm runs``).

:func:`run_rows` reads every run folder below ``root`` (any folder with a
``config.json``, :func:`~jaxnorm.analysis.runs.find_runs`' rule, runs without metric
lines included) into one :class:`RunRow` each, sorted by path; :func:`format_table`
prints them as an aligned text table and :func:`rows_json` as JSON-ready dicts.

Per run:

* ``run`` -- its folder relative to ``root`` (``.`` when ``root`` is the run itself);
* ``state`` -- :attr:`~jaxnorm.analysis.runs.Run.state` (``finished``, ``diverged``,
  ``interrupted``, ``running``, ``failed``, ``unknown``, ``no records``; a ``running``
  status whose writer is gone reads ``interrupted``, :func:`jaxnorm.results.read_status`),
  or ``unreadable`` for a folder whose ``config.json`` is not a JSON object (the reason
  is the row's ``note``; the listing goes on);
* ``step`` / ``total_steps`` -- :attr:`~jaxnorm.analysis.runs.Run.last_step` and
  :attr:`~jaxnorm.analysis.runs.Run.total_steps` (None where not stored);
* ``train`` -- the last ``train`` line's ``loss`` and ``acc`` (and its ``step``);
* ``eval`` -- per split, the last ``eval`` line of that split in the file (a resumed run
  has rewritten the file up to its checkpoint, so the last line is the latest);
* ``differences`` -- ``{field: value}`` for every config field whose value is not the
  same in all the listed runs, :data:`jaxnorm.results.BOOKKEEPING_FIELDS` left out
  (where a run is stored and how often it logs are not what tells runs apart); a run
  whose config lacks a field that others have gets ``None`` for it;
* ``note`` -- :attr:`~jaxnorm.analysis.runs.Run.state_note` (e.g. ``diverged at step
  13``, ``interrupted at step 120 of 600``), plus why a stale ``running`` status was
  read as ``interrupted``.

Nothing here writes a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Iterable, Sequence

from jaxnorm.analysis.runs import STATES, Run
from jaxnorm.results import BOOKKEEPING_FIELDS, read_json, read_jsonl, read_status

#: The states a row can have: :data:`~jaxnorm.analysis.runs.STATES` and ``unreadable``.
ROW_STATES = STATES + ("unreadable",)

_HEADER = ("run", "state", "step", "train loss", "train acc", "eval", "config")


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One run of the listing (module docstring)."""

    run: str
    state: str
    step: int | None
    total_steps: int | None
    train: dict
    eval: dict
    differences: dict
    note: str
    #: the stored config (empty for an ``unreadable`` run)
    config: dict = dataclasses.field(repr=False, default_factory=dict)


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel or "."


def _last_lines(run: Run) -> tuple[dict, dict]:
    train, evals = {}, {}
    for m in run.metrics:
        if m.get("kind") == "train":
            train = {k: m[k] for k in ("step", "loss", "acc") if k in m}
        elif m.get("kind") == "eval":
            split = str(m.get("split", "?"))
            evals[split] = {k: m[k] for k in ("epoch", "step", "loss", "acc") if k in m}
    return train, evals


def _row(path: pathlib.Path, root: pathlib.Path) -> RunRow:
    rel = _relative(path, root)
    try:
        config = read_json(path / "config.json")
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
        reason = " ".join(str(e).split()) or type(e).__name__
        return RunRow(rel, "unreadable", None, None, {}, {}, {}, f"config.json unreadable: {reason}")
    # Not load_run: a listing needs no trajectories (a study's can be large).
    run = Run(path=path, config=config, metrics=read_jsonl(path / "metrics.jsonl"), trajectories={}, status=read_status(path))
    train, evals = _last_lines(run)
    note = run.state_note
    if run.status.get("writer_gone"):
        note += f" ({run.status['writer_gone']})"
    return RunRow(rel, run.state, run.last_step, run.total_steps, train, evals, {}, note, config)


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def config_differences(configs: Sequence[dict], ignore: Iterable[str] = BOOKKEEPING_FIELDS) -> list[str]:
    """The fields (sorted) whose values are not the same in every one of ``configs``
    (a field missing from some counts as differing), ``ignore`` left out. Values are
    compared as canonical JSON (a tuple and a list of the same items are equal)."""
    ignore = set(ignore)
    keys = sorted(set().union(*configs) - ignore) if configs else []
    return [k for k in keys if len({_canonical(c.get(k)) if k in c else None for c in configs}) > 1]


def run_rows(root, states: Sequence[str] | None = None) -> list[RunRow]:
    """The rows of the runs below ``root`` (module docstring), sorted by path; with
    ``states``, only the runs in those states, and the differences are taken among them.

    Raises:
      FileNotFoundError: ``root`` is not a folder.
      ValueError: a state in ``states`` that is not one of :data:`ROW_STATES`.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder.")
    if states is not None:
        bad = sorted(set(states) - set(ROW_STATES))
        if bad:
            raise ValueError(f"unknown state(s) {bad}; known: {list(ROW_STATES)}.")
    rows = [_row(p.parent, root) for p in sorted(root.rglob("config.json"))]
    if states is not None:
        rows = [r for r in rows if r.state in states]
    fields = config_differences([r.config for r in rows if r.state != "unreadable"])
    return [r if r.state == "unreadable" else dataclasses.replace(r, differences={k: r.config.get(k) for k in fields}) for r in rows]


def _num(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    return f"{v:.4g}" if math.isfinite(v) else str(float(v))


def _value(v) -> str:
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def _cells(r: RunRow) -> tuple[str, ...]:
    step = "-" if r.step is None else str(r.step)
    if r.total_steps is not None:
        step += f"/{r.total_steps}"
    evals = " ".join(f"{split}:{_num(e.get('loss'))}/{_num(e.get('acc'))}" for split, e in sorted(r.eval.items())) or "-"
    config = " ".join(f"{k}={_value(v)}" for k, v in r.differences.items()) or "-"
    if r.state == "unreadable":
        config = r.note
    return (r.run, r.state, step, _num(r.train.get("loss")), _num(r.train.get("acc")), evals, config)


def format_table(rows: Sequence[RunRow]) -> str:
    """The rows as a plain text table, one line per run under a header, columns
    left-aligned and separated by two spaces (the last, the config differences, not
    padded). ``eval`` holds ``split:loss/acc`` per split; numbers have 4 significant
    digits; ``-`` marks what is not stored."""
    table = [_HEADER] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADER) - 1)]
    return "\n".join("  ".join([c.ljust(w) for c, w in zip(line, widths)] + [line[-1]]).rstrip() for line in table) + "\n"


def _jsonable(v):
    """Non-finite floats as the strings ``'nan'``, ``'inf'``, ``'-inf'`` (strict JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def rows_json(rows: Sequence[RunRow]) -> list[dict]:
    """The rows as dicts (``run``, ``state``, ``step``, ``total_steps``, ``train``,
    ``eval``, ``differences``, ``note``) that ``json.dumps(..., allow_nan=False)`` takes:
    non-finite numbers (a diverged run's loss) become the strings ``'nan'``/``'inf'``/``'-inf'``."""
    keys = ("run", "state", "step", "total_steps", "train", "eval", "differences", "note")
    return [_jsonable({k: getattr(r, k) for k in keys}) for r in rows]
