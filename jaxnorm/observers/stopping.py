"""``StopWhen``: an observer that also ends its run group once a rule on its records holds.

A study that trains "until something has happened" (e.g. the edge-of-stability study:
until the sharpness has reached 2/η and stayed there for a window, or a step cap) wraps
the observer whose records decide it::

    StopWhen(Sharpness(...), rule=lambda records: ...)   # records: that run's lines so far

The wrapper records exactly what the wrapped observer records (same ``name``, ``every``,
``sink``, annotations, carry). In addition, at every host sync of
:func:`jaxnorm.train.fit_many` (every ``log_every_steps`` steps) the loop hands each
run's new metric lines to :class:`GroupStop`, which keeps each run's history of the
wrapped observer's lines and calls ``rule(history)`` (a host-side function of the list of
line dicts, in step order; it must depend on those lines only). When the rule first holds
for a run, a line ``{"kind": "stop_rule", "step", "observer"}`` is written to that run's
``metrics.jsonl``. The group stops once every run has met its rule or diverged: its runs
then get their last evaluation (and checkpoint, where they keep checkpoints) at that
step and end ``finished`` (their
``status.json`` step below ``total_steps``); until then a run that met its rule trains
and records on like the others (the runs of one program step together, so stopping one
alone would save nothing). ``TrainConfig.epochs``/``max_steps`` remain the cap.

Resuming: the histories are rebuilt from the run folders' ``metrics.jsonl`` (cut back to
the checkpoint's step by the loop), so a resumed group stops at the step an uninterrupted
one does. Only ``sink='metrics'`` observers can be wrapped (a rule reads metric lines).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["GroupStop", "StopWhen"]


class StopWhen:
    """The observer ``observer``, plus ``rule(records) -> bool`` on each run's records of it.

    Raises:
      ValueError: ``observer`` writes trajectories, not metric lines, or ``rule`` is not
        callable.
    """

    def __init__(self, observer, rule: Callable[[list[dict]], bool]):
        if getattr(observer, "sink", None) != "metrics":
            raise ValueError(f"StopWhen needs an observer that writes metric lines (sink 'metrics'), got sink {getattr(observer, 'sink', None)!r}.")
        if not callable(rule):
            raise ValueError(f"StopWhen's rule must be callable, got {rule!r}.")
        self.observer, self.rule = observer, rule
        self.name, self.every, self.sink = observer.name, observer.every, observer.sink
        self.annotations = getattr(observer, "annotations", {})
        if callable(getattr(observer, "init_carry", None)):  # stateful exactly when the wrapped one is
            self.init_carry = observer.init_carry

    def __call__(self, *args) -> Any:
        return self.observer(*args)


class GroupStop:
    """The loop's view of the :class:`StopWhen` observers of one program of ``num`` runs:
    ``done[i]`` once run i's rules all held (at least one rule; none: never done)."""

    def __init__(self, observers: Sequence, num: int):
        self.rules = [o for o in observers if isinstance(o, StopWhen)]
        self.done = [False] * num
        self.history: list[dict[str, list[dict]]] = [{o.name: [] for o in self.rules} for _ in range(num)]

    def start(self, stored: Sequence[list[dict]]) -> None:
        """Rebuilds each run's history from its stored metric lines (a fresh start: the
        step-0 records; a resume: the lines up to the checkpoint); a run is done when a
        ``stop_rule`` line is among them. Otherwise its rules are next consulted at the
        next sync, on the same history an uninterrupted run had there."""
        for i, lines in enumerate(stored):
            self.history[i] = {o.name: [m for m in lines if m.get("kind") == o.name] for o in self.rules}
            self.done[i] = any(m.get("kind") == "stop_rule" for m in lines)

    def see(self, i: int, lines: list[dict]) -> None:
        """Adds run i's new ``lines`` to its history; the first time every rule holds,
        marks it done and appends the ``stop_rule`` line to ``lines`` (at the step of the
        latest record the rules saw)."""
        if not self.rules:
            return
        for m in lines:
            if m.get("kind") in self.history[i]:
                self.history[i][m["kind"]].append(m)
        if self.done[i] or not all(o.rule(self.history[i][o.name]) for o in self.rules):
            return
        self.done[i] = True
        step = max((m["step"] for o in self.rules for m in self.history[i][o.name][-1:]), default=0)
        lines.append({"kind": "stop_rule", "step": int(step), "observer": ", ".join(o.name for o in self.rules)})

    def ended(self, divergence: Sequence) -> bool:
        """Whether every run has met its rules or diverged (False without rules)."""
        return bool(self.rules) and all(d or s for d, s in zip(divergence, self.done))
