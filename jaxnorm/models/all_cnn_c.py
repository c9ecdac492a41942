"""DeepOBS All-CNN-C (cifar100_allcnnc; Springenberg et al. 2015, arXiv:1412.6806).

Exactly the DeepOBS network (“DeepOBS: A Deep Learning Optimizer Benchmark Suite”, Schneider, Balles & Hennig, ICLR 2019):

    dropout 0.2 (on the input)
    conv 96 3x3 SAME, conv 96 3x3 SAME, conv 96 3x3 stride 2 SAME       32 -> 16
    dropout 0.5
    conv 192 3x3 SAME, conv 192 3x3 SAME, conv 192 3x3 stride 2 SAME    16 -> 8
    dropout 0.5
    conv 192 3x3 VALID (8 -> 6), conv 192 1x1, conv C 1x1
    ReLU after every conv (conv9 included), then the spatial mean -> logits

Glorot normal kernels; biases 0 (the thesis's choice, so that β is compared with a
zero shift; DeepOBS uses 0.1: ``bias_init=0.1``). 'SAME' is XLA/TF padding
(asymmetric for stride 2 on even inputs). 1,387,108 parameters for C = 100 without
normalization. Norm slots: the nine convs; default a norm after conv1..conv8, slot 9
is the "BN at the last layer" experiment. Dropout is active only with ``train=True``
and then needs ``rngs={'dropout': key}``.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm.inits import get_init
from jaxnorm.models._blocks import check_input, normed_layer, plan_norms, plan_reparam
from jaxnorm.models.registry import register_model


@register_model("allcnnc")
class AllCNNC(nn.Module):
    """DeepOBS All-CNN-C.

    Attributes:
      num_classes: C (100 for cifar100_allcnnc).
      norm: a name from :data:`jaxnorm.layers.NORMS`.
      bn_positions: 9 flags, one per conv; None = ``(1,) * 8 + (0,)``.
      norm_options: extra :class:`jaxnorm.layers.Norm` fields.
      conv_init: a name from :data:`jaxnorm.inits.INITS` (default untruncated Glorot normal).
      bias_init: constant bias of the convs that keep one (0 thesis, 0.1 DeepOBS).
      input_dropout, hidden_dropout: the dropout rates (0.2, 0.5).
      weight_reparam: a name from :data:`jaxnorm.layers.WEIGHT_REPARAMS` (``'none'``,
        ``'weight_norm'``, ``'weight_std'``; every weight layer, ``'weight_std'`` only those a norm follows).

    ``rectifies_output`` (a class constant, not an option): a ReLU follows the output
    layer too (conv9, before the spatial mean), so a ``norm9`` feeds a ReLU like every
    other norm slot; models without it feed their last layer straight to the logits.
    """

    rectifies_output = True  # unannotated: a class constant, not a dataclass field

    num_classes: int = 100
    norm: str = "vanilla"
    bn_positions: Optional[Sequence[int]] = None
    norm_options: Optional[Mapping] = None
    conv_init: str = "glorot_normal"
    bias_init: float = 0.0
    input_dropout: float = 0.2
    hidden_dropout: float = 0.5
    weight_reparam: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input(x, 4, "allcnnc")
        plan = plan_norms(self.norm, self.bn_positions, 9, "allcnnc")
        reparam = plan_reparam(self.weight_reparam, plan, "allcnnc")
        block = functools.partial(
            normed_layer, plan=plan, train=train, norm_options=self.norm_options or {}, activation=nn.relu, reparam=reparam
        )
        conv = functools.partial(
            nn.Conv, kernel_init=get_init(self.conv_init), bias_init=nn.initializers.constant(self.bias_init)
        )
        layers = [
            (96, (3, 3), 1, "SAME"),
            (96, (3, 3), 1, "SAME"),
            (96, (3, 3), 2, "SAME"),
            (192, (3, 3), 1, "SAME"),
            (192, (3, 3), 1, "SAME"),
            (192, (3, 3), 2, "SAME"),
            (192, (3, 3), 1, "VALID"),
            (192, (1, 1), 1, "VALID"),
            (self.num_classes, (1, 1), 1, "VALID"),
        ]
        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        for i, (features, kernel, stride, padding) in enumerate(layers):
            layer = functools.partial(conv, features, kernel, strides=stride, padding=padding, name=f"conv{i + 1}")
            x = block(x, i, layer)
            if i in (2, 5):  # after each stride-2 conv
                x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
        return jnp.mean(x, axis=(1, 2))
