"""Pieces every model shares: where the norm layers go, and the weight→norm→activation block.

Convention (source document 001): a normalization layer sits between a weight layer
(conv/dense) and its activation; where the norm's statistics are per feature (batch,
instance) the weight layer's bias is dropped, since the norm would subtract it again.
Norm layers are named ``norm{k}`` after the k-th weight layer (1-based, the numbering
of ``bn_positions``), so ``norm3`` always normalizes the third weight layer's output.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax

import jax.numpy as jnp

from jaxnorm.layers import NormSpec, norm_from_spec, norm_spec

NormPlan = tuple[Optional[NormSpec], tuple[bool, ...]]


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


def normed_layer(
    x: jax.Array,
    index: int,
    layer: Callable[..., Callable],
    *,
    plan: NormPlan,
    train: bool,
    activation: Optional[Callable] = None,
    norm_options: Mapping = (),
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
    """
    spec, positions = plan
    with_norm = spec is not None and positions[index]
    x = layer(use_bias=not (with_norm and spec.absorbs_bias))(x)
    if with_norm:
        x = norm_from_spec(spec, name=f"norm{index + 1}", **dict(norm_options))(x, train)
    return x if activation is None else activation(x)


def check_input(x: jax.Array, ndim: int, model: str) -> None:
    """Clear errors for the wrong input rank or dtype (instead of an XLA shape error)."""
    if x.ndim != ndim:
        want = "(batch, height, width, channels)" if ndim == 4 else "(batch, features)"
        raise ValueError(f"{model} expects input of shape {want}, got {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{model} expects a floating-point input, got dtype {x.dtype}.")
