"""Pieces every model shares: where the norm layers go, and the weight→norm→activation block.

Convention (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023): a normalization layer sits between a weight layer
(conv/dense) and its activation; where the norm's statistics are per feature (batch,
instance) the weight layer's bias is dropped, since the norm would subtract it again.
Norm layers are named ``norm{k}`` after the k-th weight layer (1-based, the numbering
of ``bn_positions``), so ``norm3`` always normalizes the third weight layer's output.

A weight re-parameterization (``weight_reparam=``, :data:`jaxnorm.layers.WEIGHT_REPARAMS`)
is planned per weight layer the same way (:func:`plan_reparam`) and applied through the
flax layer's kernel hook (:func:`jaxnorm.layers.kernel_hook`).
"""

from __future__ import annotations

import functools
from typing import Callable, Collection, Mapping, Optional, Sequence, Union

import jax

import jax.numpy as jnp

from jaxnorm.layers import NormSpec, kernel_hook, norm_from_spec, norm_spec, weight_reparam_spec

NormPlan = tuple[Optional[NormSpec], tuple[bool, ...]]
#: A re-parameterization name and, per weight layer, whether it applies there.
ReparamPlan = tuple[str, tuple[bool, ...]]
NO_REPARAM: ReparamPlan = ("none", ())


def plan_norms(norm: str, bn_positions: Optional[Sequence[int]], num_layers: int, model: str) -> NormPlan:
    """Resolves a model's ``norm`` name and ``bn_positions`` flags.

    Args:
      norm: a name from :data:`jaxnorm.layers.NORMS`.
      bn_positions: one 0/1 flag per weight layer (the last layer included), or None for
        the default: a norm after every weight layer but the last. Validated, then
        ignored for ``'vanilla'``, so one placement can be swept over all ablation variants.
      num_layers: the model's number of weight layers.
      model: the model's name, for error messages.

    Raises:
      ValueError: unknown norm, wrong number of flags, or a flag not 0/1.
    """
    spec = norm_spec(norm)
    if bn_positions is None:
        positions = (True,) * (num_layers - 1) + (False,)
    else:
        flags = tuple(bn_positions)
        if len(flags) != num_layers:
            raise ValueError(
                f"{model}: bn_positions needs one 0/1 flag per weight layer ({num_layers}, "
                f"the last layer included), got {len(flags)}: {flags}."
            )
        if any(f not in (0, 1, True, False) for f in flags):
            raise ValueError(f"{model}: bn_positions flags must be 0 or 1, got {flags}.")
        positions = tuple(bool(f) for f in flags)
    if spec is None:
        positions = (False,) * num_layers
    return spec, positions


def plan_reparam(weight_reparam: str, plan: NormPlan, model: str) -> ReparamPlan:
    """Resolves a model's ``weight_reparam`` name against its norm plan.

    Every weight layer is re-parameterized, except that a ``normed_only``
    re-parameterization (weight standardization) skips the layers no norm follows.

    Raises:
      ValueError: unknown name, or a ``normed_only`` one on a model without any norm layer
        (it would silently change nothing).
    """
    spec = weight_reparam_spec(weight_reparam)
    positions = plan[1]
    if spec is None:
        return weight_reparam, (False,) * len(positions)
    if spec.normed_only:
        if plan[0] is None or not any(positions):
            raise ValueError(
                f"{model}: weight_reparam={weight_reparam!r} applies only to weight layers a norm follows, and "
                "this model has none (norm='vanilla' or no bn_positions set): pick a norm, e.g. 'group'."
            )
        return weight_reparam, positions
    return weight_reparam, (True,) * len(positions)


def _layer_class(layer: Callable) -> Callable:
    """The class a (possibly partial) layer constructor builds."""
    while isinstance(layer, functools.partial):
        layer = layer.func
    return layer


def normed_layer(
    x: jax.Array,
    index: int,
    layer: Callable[..., Callable],
    *,
    plan: NormPlan,
    train: bool,
    activation: Optional[Callable] = None,
    norm_options: Mapping = (),
    reparam: ReparamPlan = NO_REPARAM,
) -> jax.Array:
    """Weight layer ``index`` (0-based) -> its planned norm -> ``activation``.

    Args:
      x: input.
      index: which weight layer this is (0-based position in ``bn_positions``).
      layer: builds the weight layer given ``use_bias=...`` (e.g. a partial of nn.Conv).
      plan: from :func:`plan_norms`.
      train: passed to the norm.
      activation: applied last (None: no activation, e.g. logits).
      norm_options: extra :class:`jaxnorm.layers.Norm` fields (momentum, group_size, ...).
      reparam: from :func:`plan_reparam` (default: none); ``layer`` must then build a
        flax ``Dense`` or ``Conv``.
    """
    spec, positions = plan
    with_norm = spec is not None and positions[index]
    name, reparam_at = reparam
    hook = kernel_hook(_layer_class(layer), name) if reparam_at and reparam_at[index] else {}
    x = layer(use_bias=not (with_norm and spec.absorbs_bias), **hook)(x)
    if with_norm:
        x = norm_from_spec(spec, name=f"norm{index + 1}", **dict(norm_options))(x, train)
    return x if activation is None else activation(x)


#: The layout each input rank means (feature axis last, as everywhere in jaxnorm).
LAYOUTS = {
    2: "(batch, features)",
    3: "(batch, length, channels)",
    4: "(batch, height, width, channels)",
}


def check_input(x: jax.Array, ndim: Union[int, Collection[int]], model: str) -> None:
    """Clear errors for the wrong input rank or dtype (instead of an XLA shape error).

    ``ndim``: the rank the model takes, or a collection of ranks (e.g. ``{3, 4}`` for a
    conv net that runs on sequences and images); the message names each one's layout.
    """
    ranks = sorted({ndim} if isinstance(ndim, int) else set(ndim))
    if x.ndim not in ranks:
        want = " or ".join(LAYOUTS.get(r, f"rank {r}") for r in ranks)
        raise ValueError(f"{model} expects input of shape {want}, got {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{model} expects a floating-point input, got dtype {x.dtype}.")
