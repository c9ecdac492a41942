"""Checkpoints of a :class:`~jaxnorm.train.state.TrainState` with orbax-checkpoint.

A checkpoint holds the whole state pytree (step, params, batch_stats, optimizer state,
rng) plus a small JSON of loop counters. Because data order and every random number are
functions of (seed, epoch, step), restoring the state is all a resumed run needs to
continue bit-identically.
"""

from __future__ import annotations

import pathlib
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
        """Restores ``(state, meta)`` at ``step`` (default: the latest).

        Args:
          abstract_state: a state (or ``jax.ShapeDtypeStruct`` tree) with the target's
            structure, shapes, dtypes and shardings.

        Raises:
          CheckpointError: no checkpoint, or one that cannot be read into that structure.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
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

    def close(self) -> None:
        self._manager.close()
