"""Fully-connected networks: ``'mlp'`` and ``'deep_fc'``.

Both are one dense stack (:func:`dense_stack`), differing in their defaults:

* ``'mlp'`` -- the lecture's network: any depth/width/activation, any initializer, e.g.
  ``kernel_init='scaled_normal', kernel_init_kwargs={'c': 2.0}`` for W ~ N(0, c/n) (CMU lecture “Normalization and Regularization”).
* ``'deep_fc'`` -- the gradient-conditioning study's deep fully-connected nets (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022): orthogonal init with ReLU or CReLU, or the looks-linear net (CReLU with
  mirrored blocks [W, -W], Def. 3.9), depth up to 100+.

Inputs of any shape ``(batch, ...)`` are flattened. ``depth`` counts weight layers,
the output layer included; hidden layers have ``width`` units (CReLU doubles what the
next layer sees).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm.inits import get_init, orthogonal
from jaxnorm.layers import get_activation
from jaxnorm.models._blocks import NO_REPARAM, NormPlan, ReparamPlan, normed_layer, plan_norms, plan_reparam
from jaxnorm.models.registry import register_model


def dense_stack(
    x: jax.Array,
    widths: Sequence[int],
    kernel_inits: Sequence[Callable],
    *,
    activation: Callable,
    plan: NormPlan,
    train: bool,
    norm_options: Mapping,
    dropout_rate: float = 0.0,
    reparam: ReparamPlan = NO_REPARAM,
) -> jax.Array:
    """Dense layers ``dense{i}`` (-> norm -> activation -> dropout) for all but the last,
    which returns the logits; ``reparam`` is the model's resolved
    ``weight_reparam`` plan (``_blocks.plan_reparam``).
    Must be called inside a compact flax method."""
    if x.ndim < 2:
        raise ValueError(f"expected input (batch, ...), got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"expected a floating-point input, got dtype {x.dtype}.")
    x = x.reshape((x.shape[0], -1))
    last = len(widths) - 1
    for i, (width, init) in enumerate(zip(widths, kernel_inits)):
        layer = functools.partial(nn.Dense, width, kernel_init=init, name=f"dense{i + 1}")
        x = normed_layer(
            x,
            i,
            layer,
            plan=plan,
            train=train,
            norm_options=norm_options,
            activation=None if i == last else activation,
            reparam=reparam,
        )
        if i < last and dropout_rate > 0:
            x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return x


def _check_depth(depth: int, model: str) -> None:
    if depth < 1:
        raise ValueError(f"{model}: depth (number of weight layers) must be >= 1, got {depth}.")


@register_model("mlp")
class MLP(nn.Module):
    """A multilayer perceptron.

    Attributes:
      num_classes: output units.
      depth: weight layers, output layer included.
      width: hidden units.
      activation: a name from :data:`jaxnorm.layers.ACTIVATIONS`.
      kernel_init: kernel initializer name (:data:`jaxnorm.inits.INITS`), used for every layer.
      kernel_init_kwargs: its arguments, e.g. ``{'c': 3.0}`` for ``'scaled_normal'``.
      norm, bn_positions, norm_options: as in every model (default: a norm after every
        hidden layer).
      dropout_rate: dropout after every hidden activation (0: none).
      weight_reparam: a name from :data:`jaxnorm.layers.WEIGHT_REPARAMS` (``'none'``,
        ``'weight_norm'``, ``'weight_std'``; every weight layer, ``'weight_std'`` only those a norm follows).
    """

    num_classes: int = 10
    depth: int = 3
    width: int = 128
    activation: str = "relu"
    kernel_init: str = "he_normal"
    kernel_init_kwargs: Optional[Mapping] = None
    norm: str = "vanilla"
    bn_positions: Optional[Sequence[int]] = None
    norm_options: Optional[Mapping] = None
    dropout_rate: float = 0.0
    weight_reparam: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        _check_depth(self.depth, "mlp")
        kernel_init = get_init(self.kernel_init, **dict(self.kernel_init_kwargs or {}))
        plan = plan_norms(self.norm, self.bn_positions, self.depth, "mlp")
        return dense_stack(
            x,
            [self.width] * (self.depth - 1) + [self.num_classes],
            [kernel_init] * self.depth,
            activation=get_activation(self.activation),
            plan=plan,
            train=train,
            norm_options=self.norm_options or {},
            dropout_rate=self.dropout_rate,
            reparam=plan_reparam(self.weight_reparam, plan, "mlp"),
        )


@register_model("deep_fc")
class DeepFC(nn.Module):
    """Deep fully-connected net of the gradient-conditioning study (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022).

    Attributes:
      num_classes: output units.
      depth: weight layers, output layer included (e.g. 4, 11, 26, 40, 100+).
      width: hidden units.
      activation: ``'relu'`` or ``'crelu'``.
      kernel_init: ``'orthogonal'`` (every layer) or ``'looks_linear'`` (needs CReLU: the first
        layer orthogonal, every later layer the mirrored block [[W], [-W]]; without
        normalization the whole net is then exactly linear at initialization).
      norm, bn_positions, norm_options: as in every model.
      weight_reparam: a name from :data:`jaxnorm.layers.WEIGHT_REPARAMS` (``'none'``,
        ``'weight_norm'``, ``'weight_std'``; every weight layer, ``'weight_std'`` only those a norm follows).
    """

    num_classes: int = 10
    depth: int = 11
    width: int = 128
    activation: str = "relu"
    kernel_init: str = "orthogonal"
    norm: str = "vanilla"
    bn_positions: Optional[Sequence[int]] = None
    norm_options: Optional[Mapping] = None
    weight_reparam: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        _check_depth(self.depth, "deep_fc")
        if self.kernel_init not in ("orthogonal", "looks_linear"):
            raise ValueError(f"deep_fc: kernel_init must be 'orthogonal' or 'looks_linear', got {self.kernel_init!r}.")
        if self.kernel_init == "looks_linear" and self.activation != "crelu":
            raise ValueError("deep_fc: kernel_init='looks_linear' needs activation='crelu' (Def. 3.9).")
        rest = get_init(self.kernel_init)
        plan = plan_norms(self.norm, self.bn_positions, self.depth, "deep_fc")
        return dense_stack(
            x,
            [self.width] * (self.depth - 1) + [self.num_classes],
            [orthogonal()] + [rest] * (self.depth - 1),
            activation=get_activation(self.activation),
            plan=plan,
            train=train,
            norm_options=self.norm_options or {},
            reparam=plan_reparam(self.weight_reparam, plan, "deep_fc"),
        )
