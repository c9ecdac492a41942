"""Checkpoints of a :class:`~jaxnorm.train.state.TrainState` with orbax-checkpoint.

A checkpoint holds the whole state pytree (step, params, batch_stats, optimizer state,
rng) plus a small JSON of loop counters. Because data order and every random number are
functions of (seed, epoch, step), restoring the state is all a resumed run needs to
continue bit-identically.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the run's state."""


class Checkpointer:
    """Saves and restores states under ``directory`` (keeps the newest ``max_to_keep``).

    Saves are synchronous: when :meth:`save` returns the checkpoint is complete (orbax
    writes to a temporary folder and renames it on success, so a killed save leaves no
    checkpoint that :meth:`restore` would pick up).
    """

    def __init__(self, directory, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The steps of the checkpoints kept."""
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._manager.save(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` at ``step``, or by default from the newest checkpoint
        that can be read: a newest one that cannot (a write cut short outside orbax's
        rename, a damaged disk) is passed over with a ``warnings.warn`` naming its step,
        for the previous one (:meth:`discard_after` then removes it, before a resumed
        run saves that step again).

        Args:
          abstract_state: a state (or ``jax.ShapeDtypeStruct`` tree) with the target's
            structure, shapes, dtypes and shardings.

        Raises:
          CheckpointError: no checkpoint; the given ``step`` cannot be read into that
            structure; or (default) none of the kept checkpoints can.
        """
        if step is not None:
            return self._restore(abstract_state, step)
        steps = sorted(self.steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        errors: list[CheckpointError] = []
        for s in steps:
            try:
                restored = self._restore(abstract_state, s)
            except CheckpointError as e:
                errors.append(e)
                continue
            if errors:
                bad = steps[: len(errors)]
                warnings.warn(
                    f"checkpoint(s) at step {', '.join(map(str, bad))} in {self.directory} could not be restored "
                    f"({errors[0].__cause__!r}); restored the previous intact one, step {s}.",
                    stacklevel=2,
                )
            return restored
        if len(errors) == 1:
            raise errors[0]
        raise CheckpointError(
            f"none of the checkpoints in {self.directory} (steps {steps}) could be restored: "
            + "; ".join(str(e) for e in errors)
        ) from errors[0]

    def _restore(self, abstract_state: Any, step: int) -> tuple[Any, dict]:
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory} (kept: {self.steps()}).")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
        except Exception as e:  # orbax raises many types; all mean "this checkpoint is unusable"
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: {e}). "
                "It may be corrupt or from a different model/optimizer; delete it to start over."
            ) from e
        return restored["state"], dict(restored["meta"])

    def discard_after(self, step: int) -> None:
        """Deletes the checkpoints newer than ``step`` (the unreadable ones a resumed run
        passed over: it is about to save those steps again)."""
        for s in self.steps():
            if s > step:
                self._manager.delete(s)

    def close(self) -> None:
        self._manager.close()
