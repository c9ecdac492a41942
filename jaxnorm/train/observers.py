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

An observer may add constant ``annotations`` (a dict of JSON values, e.g. the BN mode a
measurement used) to each of its ``metrics.jsonl`` lines.

Stateful observers carry device arrays from one call to the next (e.g. the previous
top eigenvector, to warm-start the next eigenvalue solve): they define
``init_carry(state) -> carry`` and are called as ``observer(state, carry) -> (record,
carry)``. :func:`~jaxnorm.train.fit` keeps the carry on the device, saves it with each
checkpoint (``<run>/observer_state/<step>.npz``) and restores it on resume, so a resumed
run observes exactly what an uninterrupted one does.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Observer(Protocol):
    name: str
    every: int
    sink: str  # 'metrics' or 'trajectories'

    def __call__(self, state) -> Any: ...


def is_stateful(observer) -> bool:
    """Whether ``observer`` carries state between calls (defines ``init_carry``)."""
    return callable(getattr(observer, "init_carry", None))


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


class ReluSparsity:
    """The fraction of each norm layer's outputs that a following ReLU zeroes (``<= 0``).

    Measured on a fixed probe batch in training mode (the batch statistics the ReLU sees
    during training; running statistics are not touched), every ``every`` steps, into
    ``metrics.jsonl`` lines ``{"kind": "relu_sparsity", "step": s, "norm1": f1, ...}``.
    The thesis asks (source document 001, §5) whether β changes this sparsity. With the
    ``bn_ablation`` superset a vanilla run's (switched-off) norm layers are the identity,
    so its entry is the sparsity of the raw weight-layer output at the same slot; a
    single vanilla run has no norm layers and records nothing.

    Args:
      module: the model as trained (for :func:`~jaxnorm.train.fit_many` over mixed
        variants: ``build_model(config, classes, norm='bn_ablation')``).
      probe: ``(batch, ...)`` normalized inputs, the same every time.
      every: the interval in steps.
      skip: norm layer names not followed by a ReLU (e.g. the output layer's, ``'norm6'``).
    """

    name = "relu_sparsity"
    sink = "metrics"

    def __init__(self, module, probe, every: int = 50, skip=()):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.module, self.probe, self.every, self.skip = module, probe, every, frozenset(skip)

    def __call__(self, state) -> dict[str, jax.Array]:
        from jaxnorm.layers import Norm

        _, captured = self.module.apply(
            state.variables,
            self.probe,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda mdl, method: isinstance(mdl, Norm) and method == "__call__",
            rngs={"dropout": jax.random.PRNGKey(0)},
        )
        out = {}
        for path, value in jax.tree_util.tree_leaves_with_path(captured.get("intermediates", {})):
            layer = getattr(path[0], "key", str(path[0]))
            if layer not in self.skip:
                out[layer] = jax.numpy.mean((value <= 0).astype(jax.numpy.float32))
        return out
