"""Weight norms and the scale-invariant (pre-norm) layers: the probe behind the effective
learning rate of weights that feed a batch norm (van Laarhoven 2017, "L2 regularization
versus batch and weight normalization"; Zhang, Wang, Xu & Grosse 2019, "Three mechanisms
of weight decay regularization").

A weight layer whose output goes through a per-feature norm (batch or instance
statistics) computes the same function for ``W`` and ``cW`` (c > 0), and its gradient
scales as 1/c; so SGD with learning rate η turns the direction ``W/‖W‖`` with an
effective step η/‖W‖². Without weight decay ‖W‖ can only grow (the gradient is
orthogonal to W); weight decay shrinks it, raising the effective learning rate.

The observer records ‖W‖_F only, not η/‖W‖²: the learning rate is the run's config
(``config.json``'s ``learning_rate``), and a reader divides. Reading η from the optimizer
state instead would tie the observers to how the engine injects its hyperparameters, and
would still give the *base* rate (a schedule multiplies the update after the injected
rate), i.e. no more than the config says.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxnorm._tree import key_name
from jaxnorm.objective import is_weight


def _layer(path) -> str:
    return "/".join(key_name(k) for k in path[:-1])


def kernels(params) -> dict[str, jax.Array]:
    """The weight kernels by layer path, ``{'dense1': W1, 'block2/conv1': ...}`` (params
    leaves named ``kernel``, :func:`jaxnorm.objective.is_weight`)."""
    return {_layer(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if is_weight(path)}


def scale_invariant_layers(params) -> list[str]:
    """The layers (sorted paths) whose kernel has no ``bias`` beside it.

    :mod:`jaxnorm.models` drop a weight layer's bias exactly where a per-feature norm
    (batch or instance statistics, :meth:`jaxnorm.layers.NormSpec.absorbs_bias`) follows
    it, so these are the layers that compute the same function for ``W`` and ``cW``
    (c > 0): their weights are scale-invariant. (A model that drops biases elsewhere
    would be misread; layer/group norm keep the bias, so their layers are not listed.)
    Reads the tree structure only: works on abstract params (``jax.eval_shape``) too."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    biased = {_layer(path) for path, _ in leaves if key_name(path[-1]) == "bias"}
    return sorted(layer for layer in kernels(params) if layer not in biased)


def frobenius_norms(params) -> dict[str, jax.Array]:
    """``{layer: ‖W‖_F}`` of every weight kernel, float32 scalars (sum of squares in
    float32: relative rounding ≤ ~size·6e-8)."""
    return {layer: jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)))) for layer, w in kernels(params).items()}


class WeightNorms:
    """An observer (:mod:`jaxnorm.observers.protocol`): ‖W‖_F of every weight kernel every
    ``every`` steps (and at step 0), as ``metrics.jsonl`` lines ``{"kind":
    "weight_norms", "step", "<layer>": ‖W‖_F, ..., "scale_invariant": [layers]}``.

    Args:
      every: the interval in steps (an int >= 1).
      scale_invariant: the layers to annotate as scale-invariant; None (default): found
        from the params' structure (:func:`scale_invariant_layers`) when the observer is
        first traced -- ``fit`` calls it on the initial state before it writes any
        record, so every line carries the annotation.

    The record is a pure function of ``state.params`` (jittable, vmappable over runs).
    The effective learning rate of a listed layer is η/‖W‖² with η the run's
    ``learning_rate`` (for plain SGD; a schedule multiplies η by its factor).

    Raises:
      ValueError: ``every`` is not an int >= 1; a ``scale_invariant`` layer that is not
        one of the params' kernels (at the first call).
    """

    name = "weight_norms"
    sink = "metrics"

    def __init__(self, every: int, scale_invariant: Optional[Sequence[str]] = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        self.every = every
        self._given = None if scale_invariant is None else sorted(scale_invariant)
        self.annotations = {} if scale_invariant is None else {"scale_invariant": self._given}

    def __call__(self, state) -> dict[str, jax.Array]:
        norms = frobenius_norms(state.params)
        if self._given is None:
            # Trace time: the structure is static, so this is the same list at every call.
            self.annotations = {"scale_invariant": scale_invariant_layers(state.params)}
        elif not set(self._given) <= set(norms):
            raise ValueError(f"scale_invariant layers {sorted(set(self._given) - set(norms))} are not kernels of the model; its kernels: {sorted(norms)}.")
        return norms
