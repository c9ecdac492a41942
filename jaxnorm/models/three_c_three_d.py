"""DeepOBS 3C3D: three conv layers, three dense layers (cifar10_3c3d, cifar100_3c3d).

Exactly the DeepOBS network (“DeepOBS: A Deep Learning Optimizer Benchmark Suite”, Schneider, Balles & Hennig, ICLR 2019):

    conv 64 5x5 VALID  -> ReLU -> maxpool 3x3/2 SAME     32 -> 28 -> 14
    conv 96 3x3 VALID  -> ReLU -> maxpool 3x3/2 SAME     14 -> 12 -> 6
    conv 128 3x3 SAME  -> ReLU -> maxpool 3x3/2 SAME      6 ->  6 -> 3
    flatten 1152 -> dense 512 ReLU -> dense 256 ReLU -> dense C (logits)

Conv kernels Glorot normal, dense kernels Glorot uniform, biases 0. 895,210 parameters
for C = 10 and 918,340 for C = 100 without normalization. Norm slots (``bn_positions``):
the six weight layers in order; the default puts a norm after the first five (the
thesis's setup), slot 6 is the "BN at the last layer" experiment.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax

from jaxnorm.inits import get_init
from jaxnorm.models._blocks import check_input, normed_layer, plan_norms, plan_reparam
from jaxnorm.models.registry import register_model


@register_model("3c3d")
class ThreeCThreeD(nn.Module):
    """DeepOBS 3C3D.

    Attributes:
      num_classes: C, the number of logits.
      norm: a name from :data:`jaxnorm.layers.NORMS` (``'vanilla'``, ``'bn'``, ...).
      bn_positions: 6 flags, one per weight layer; None = ``(1, 1, 1, 1, 1, 0)``.
      norm_options: extra :class:`jaxnorm.layers.Norm` fields (momentum, group_size, ...).
      conv_init, dense_init: names from :data:`jaxnorm.inits.INITS`. ``glorot_normal``
        is the untruncated (PyTorch DeepOBS) form; ``glorot_truncated_normal`` is TF's.
      weight_reparam: a name from :data:`jaxnorm.layers.WEIGHT_REPARAMS` (``'none'``,
        ``'weight_norm'``, ``'weight_std'``; every weight layer, ``'weight_std'`` only those a norm follows).
    """

    num_classes: int = 10
    norm: str = "vanilla"
    bn_positions: Optional[Sequence[int]] = None
    norm_options: Optional[Mapping] = None
    conv_init: str = "glorot_normal"
    dense_init: str = "glorot_uniform"
    weight_reparam: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input(x, 4, "3c3d")
        plan = plan_norms(self.norm, self.bn_positions, 6, "3c3d")
        reparam = plan_reparam(self.weight_reparam, plan, "3c3d")
        block = functools.partial(normed_layer, plan=plan, train=train, norm_options=self.norm_options or {}, reparam=reparam)
        conv = functools.partial(nn.Conv, kernel_init=get_init(self.conv_init))
        dense = functools.partial(nn.Dense, kernel_init=get_init(self.dense_init))
        pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME")

        x = pool(block(x, 0, functools.partial(conv, 64, (5, 5), padding="VALID", name="conv1"), activation=nn.relu))
        x = pool(block(x, 1, functools.partial(conv, 96, (3, 3), padding="VALID", name="conv2"), activation=nn.relu))
        x = pool(block(x, 2, functools.partial(conv, 128, (3, 3), padding="SAME", name="conv3"), activation=nn.relu))
        x = x.reshape((x.shape[0], -1))
        x = block(x, 3, functools.partial(dense, 512, name="dense1"), activation=nn.relu)
        x = block(x, 4, functools.partial(dense, 256, name="dense2"), activation=nn.relu)
        return block(x, 5, functools.partial(dense, self.num_classes, name="dense3"))
