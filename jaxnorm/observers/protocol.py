"""The observer protocol: measurements taken every k steps during :func:`jaxnorm.train.fit`.

An observer is called with the current :class:`jaxnorm.train.TrainState` (or anything with its ``step``, ``params``, ``batch_stats``, ``opt_state`` and ``variables``) every
``every`` steps (and once before the first step) and returns a pytree of device arrays.
:func:`fit` keeps the returned arrays on the device and pulls them to the host only at
its sync points, so observing adds no host sync to the hot loop.

Where the records go is the observer's ``sink``:

* ``'metrics'``: each record (a dict of scalars) becomes a ``metrics.jsonl`` line with
  ``kind`` = the observer's name and its ``step``;
* ``'trajectories'``: records (dicts of arrays) are stacked over time into
  ``trajectories.npz`` as ``<name>/<key>``, with ``<name>/steps``.

An observer may add constant ``annotations`` (a dict of JSON values, e.g. the BN mode a
measurement used) to each of its ``metrics.jsonl`` lines.

Stateful observers carry device arrays from one call to the next (e.g. the previous
top eigenvector, to warm-start the next eigenvalue solve): they define
``init_carry(state) -> carry`` and are called as ``observer(state, carry) -> (record,
carry)``. :func:`~jaxnorm.train.fit` keeps the carry on the device, saves it with each
checkpoint (``<run>/observer_state/<step>.npz``) and restores it on resume, so a resumed
run observes exactly what an uninterrupted one does.

Training-batch observers (``in_step = True``) are measured INSIDE the training step, on
the step's own batch, from its own forward and backward pass (as Cockpit measures):
they declare ``statistics`` (the per-example statistics they need, a subset of
:data:`jaxnorm.diagnostics.layerwise.STATISTICS`) and are called as ``observer(view[,
carry])`` with a :class:`jaxnorm.train.step.StepView` (the state before and after the
update, the batch, the gradient, the statistics, the objective as a function). At the
steps t with ``t % every == 0`` (t = 0 included) :func:`~jaxnorm.train.fit` runs a second
compiled step that computes them, and files the record under step t -- the parameters
θ_t the gradients were taken at (the final state is not measured: no batch follows it).
Their per-example gradients need examples that do not interact: a model with BatchNorm
in batch mode raises a ValueError when that step is traced.
"""

from __future__ import annotations

from typing import Any, Protocol



class Observer(Protocol):
    name: str
    every: int
    sink: str  # 'metrics' or 'trajectories'

    def __call__(self, state) -> Any: ...


def is_stateful(observer) -> bool:
    """Whether ``observer`` carries state between calls (defines ``init_carry``)."""
    return callable(getattr(observer, "init_carry", None))


def is_in_step(observer) -> bool:
    """Whether ``observer`` is measured inside the training step (``in_step = True``)."""
    return bool(getattr(observer, "in_step", False))


def compiled(observer):
    """A stateless ``observer`` as one compiled function ``state -> record``: the record
    :func:`~jaxnorm.train.fit` takes at its observation steps, for a measurement outside
    training (e.g. of a run's final state in a study's ``after`` step). Compile it once
    and call it for every state of the same shapes."""
    if is_stateful(observer):
        raise ValueError(f"observer {getattr(observer, 'name', observer)!r} carries state; compiled() takes stateless observers only.")
    if is_in_step(observer):
        raise ValueError(f"observer {observer.name!r} measures inside the training step; compiled() takes state observers only.")
    import jax

    return jax.jit(observer)
