"""``'convnet'``: a plain or residual ConvNet of configurable depth (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022).

Layout, with ``depth`` weight layers in all (``bn_positions`` has ``depth`` flags):

    stem   conv 3x3, width                      (layer 1)
    body   depth - 2 conv 3x3 layers, width, in ``stages`` stages with a 2x2 average
           pool before each non-empty stage after the first (parameter-free, so identity
           skips fit everywhere)
    head   global spatial mean -> dense num_classes (layer ``depth``)

Images ``(batch, height, width, channels)`` or sequences ``(batch, length, channels)``
(e.g. MNIST-1D): on a sequence every 3x3 conv is a width-3 conv (kernel ``(3, c_in,
c_out)``), every 2x2 pool a width-2 pool and the global mean runs over the length; the
layer names, the norm slots and ``bn_positions`` are the same (a BatchNorm normalizes
each channel over batch and length). Pooling stops once an axis would drop below 1.

With ``residual=True`` the body layers of a stage pair up into residual blocks
``x <- act(x + norm(conv(act(norm(conv(x))))))`` (He et al. 2016, post-activation);
a stage with an odd number of layers starts with one plain layer. Without it, the
same layers are simply stacked, so the two differ only by the skip connections.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm.inits import get_init
from jaxnorm.layers import get_activation
from jaxnorm.models._blocks import check_input, normed_layer, plan_norms, plan_reparam
from jaxnorm.models.registry import register_model


def _stage_sizes(num_layers: int, stages: int) -> list[int]:
    """Splits ``num_layers`` body layers into ``stages`` near-equal stages (earlier ones larger)."""
    base, extra = divmod(num_layers, stages)
    return [base + (i < extra) for i in range(stages)]


@register_model("convnet")
class ConvNet(nn.Module):
    """Plain or residual ConvNet.

    Attributes:
      num_classes: output units.
      depth: weight layers in all (>= 2: stem and head).
      width: channels of every conv.
      residual: add identity skip connections around pairs of body layers.
      stages: number of resolution stages in the body (pooling between them).
      activation: a name from :data:`jaxnorm.layers.ACTIVATIONS` (not ``'crelu'`` with
        ``residual=True``: it would change the width of the residual stream).
      kernel_init: conv/dense kernel initializer name (default He normal).
      norm, bn_positions, norm_options: as in every model.
      weight_reparam: a name from :data:`jaxnorm.layers.WEIGHT_REPARAMS` (``'none'``,
        ``'weight_norm'``, ``'weight_std'``; every weight layer, ``'weight_std'`` only those a norm follows).
    """

    num_classes: int = 10
    depth: int = 11
    width: int = 32
    residual: bool = False
    stages: int = 3
    activation: str = "relu"
    kernel_init: str = "he_normal"
    norm: str = "vanilla"
    bn_positions: Optional[Sequence[int]] = None
    norm_options: Optional[Mapping] = None
    weight_reparam: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input(x, {3, 4}, "convnet")
        if self.depth < 2:
            raise ValueError(f"convnet: depth must be >= 2 (stem conv and dense head), got {self.depth}.")
        if self.residual and self.activation == "crelu":
            raise ValueError("convnet: activation='crelu' doubles the channels and cannot feed a residual sum.")
        if self.stages < 1:
            raise ValueError(f"convnet: stages must be >= 1, got {self.stages}.")
        act = get_activation(self.activation)
        init = get_init(self.kernel_init)
        plan = plan_norms(self.norm, self.bn_positions, self.depth, "convnet")
        reparam = plan_reparam(self.weight_reparam, plan, "convnet")
        block = functools.partial(normed_layer, plan=plan, train=train, norm_options=self.norm_options or {}, reparam=reparam)

        spatial = x.ndim - 2  # 1: sequence, 2: image
        window, axes = (3,) * spatial, tuple(range(1, 1 + spatial))

        def conv(i):
            return functools.partial(nn.Conv, self.width, window, padding="SAME", kernel_init=init, name=f"conv{i + 1}")

        x = block(x, 0, conv(0), activation=act)
        i = 1
        for s, size in enumerate(_stage_sizes(self.depth - 2, self.stages)):
            if s > 0 and size > 0 and min(x.shape[1:-1]) >= 2:
                x = nn.avg_pool(x, (2,) * spatial, strides=(2,) * spatial)
            if self.residual and size % 2:
                x, i, size = block(x, i, conv(i), activation=act), i + 1, size - 1
            for _ in range(size // 2 if self.residual else size):
                if self.residual:
                    h = block(x, i, conv(i), activation=act)
                    h = block(h, i + 1, conv(i + 1))
                    x, i = act(x + h), i + 2
                else:
                    x, i = block(x, i, conv(i), activation=act), i + 1
        x = jnp.mean(x, axis=axes)
        return block(x, i, functools.partial(nn.Dense, self.num_classes, kernel_init=init, name=f"dense{i + 1}"))
