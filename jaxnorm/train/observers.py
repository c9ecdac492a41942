"""Observers: measurements taken every k steps during :func:`~jaxnorm.train.loop.fit`.

An observer is called with the current :class:`~jaxnorm.train.state.TrainState` every
``every`` steps (and once before the first step) and returns a pytree of device arrays.
:func:`fit` keeps the returned arrays on the device and pulls them to the host only at
its sync points, so observing adds no host sync to the hot loop.

Where the records go is the observer's ``sink``:

* ``'metrics'``: each record (a dict of scalars) becomes a ``metrics.jsonl`` line with
  ``kind`` = the observer's name and its ``step``;
* ``'trajectories'``: records (dicts of arrays) are stacked over time into
  ``trajectories.npz`` as ``<name>/<key>``, with ``<name>/steps``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Observer(Protocol):
    name: str
    every: int
    sink: str  # 'metrics' or 'trajectories'

    def __call__(self, state) -> Any: ...


def norm_layers(params) -> dict[str, dict[str, jax.Array]]:
    """The learned γ/β of every norm layer: ``{'norm3': {'gamma': ..., 'beta': ...}}``.

    Norm layers are the params entries named ``norm{k}`` (see :mod:`jaxnorm.models`);
    a variant without γ or β has no such key (nothing to record)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [getattr(p, "key", str(p)) for p in path]
        if len(keys) >= 2 and keys[-2].startswith("norm") and keys[-1] in ("scale", "bias"):
            layer = "/".join(keys[:-1])
            out.setdefault(layer, {})["gamma" if keys[-1] == "scale" else "beta"] = leaf
    return out


class GammaBetaRecorder:
    """Records every norm layer's γ and β every ``every`` steps (source document 001:
    every 5 steps) into ``trajectories.npz`` as ``gamma_beta/<layer>/gamma`` and
    ``gamma_beta/<layer>/beta``, each ``(records, channels)``, with ``gamma_beta/steps``."""

    name = "gamma_beta"
    sink = "trajectories"

    def __init__(self, every: int = 5):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.every = every

    def __call__(self, state) -> dict[str, jax.Array]:
        return {f"{layer}/{k}": v for layer, d in norm_layers(state.params).items() for k, v in d.items()}
