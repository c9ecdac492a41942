"""The four MNIST-1D baselines: ``'mnist1d_linear'``, ``'mnist1d_mlp'``, ``'mnist1d_cnn'``, ``'mnist1d_gru'``.

From “Scaling Down Deep Learning with MNIST-1D” (Greydanus & Kobak, ICML 2024), whose
PyTorch models live in the mnist1d repository (``notebooks/models.py``); re-implemented
here in flax, with the paper's PyTorch default initialization (``kernel_init`` /
``bias_init`` ``'torch_default'``: :func:`jaxnorm.inits.torch_default`, biases
``U(±1/sqrt(fan_in))``).

Input: sequences ``(batch, length, channels)`` (feature axis last, as everywhere in
jaxnorm; MNIST-1D has length 40, one channel), or ``(batch, length)``, which gets the
channel axis added. The parameter counts below are for length 40, one channel and 10
classes, without normalization:

=================  ==============================================================  ======
name               layers                                                          params
=================  ==============================================================  ======
mnist1d_linear     flatten 40 -> dense 10 (logistic regression)                       410
mnist1d_mlp        dense 100, ReLU; h + ReLU(dense 100 (h)); dense 10              15,210
mnist1d_cnn        conv 25 k5 s2 p1, ReLU; 2 x (conv 25 k3 s2 p1, ReLU);            5,210
                   flatten 5 x 25 -> dense 10 (lengths 40 -> 19 -> 10 -> 5)
mnist1d_gru        bidirectional GRU, 6 units each way, over the 40 steps;          5,110
                   every step's output, flattened (40 x 12 = 480) -> dense 10
=================  ==============================================================  ======

Norm slots (``norm``, ``bn_positions``, ``norm_options``, as in every model; a norm sits
between a weight layer and its activation, and a per-feature norm drops that layer's
bias): one per weight layer, the last included, default a norm after all but the last.

* ``mnist1d_linear`` has one weight layer and no hidden one: by default no norm at all,
  whatever ``norm`` says; ``bn_positions=(1,)`` puts one on its logits.
* ``mnist1d_mlp``: 3 slots (dense1, the residual branch's dense2, the head).
* ``mnist1d_cnn``: 4 slots (three convs, the head); a BatchNorm after a conv normalizes
  each channel over batch and length.
* ``mnist1d_gru``: 2 slots, the GRU and the head. Slot 1 normalizes the GRU's output
  sequence (each of its 12 features over batch and time for BatchNorm) before the
  flatten -- outside the recurrence, so the GRU keeps all its biases (they act before
  its gates' nonlinearities; no norm of its output could absorb them). This is not the
  recurrent BatchNorm of Cooijmans et al. (2017), which normalizes inside the cell.

Flatten order: PyTorch flattens the CNN's ``(batch, channels, length)`` maps and the
GRU's ``(batch, time, features)`` outputs; here the maps are ``(batch, length,
channels)``, so the CNN head sees the same 125 numbers in another order -- a fixed
permutation of its kernel's rows, the same function class.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers as _jinit

from jaxnorm._registry import lookup
from jaxnorm.inits import get_bias_init, get_init, symmetric_uniform
from jaxnorm.models._blocks import check_input, normed_layer, plan_norms
from jaxnorm.models.registry import register_model

__all__ = ["MNIST1DLinear", "MNIST1DMLP", "MNIST1DCNN", "MNIST1DGRU", "GRU_INITS"]


def as_sequence(x: jax.Array, model: str) -> jax.Array:
    """``x`` as ``(batch, length, channels)``: a ``(batch, length)`` input gets one channel.

    Raises:
      ValueError: any other rank. TypeError: a non-float dtype.
    """
    if x.ndim not in (2, 3):
        raise ValueError(
            f"{model} expects input of shape (batch, length, channels), or (batch, length) for one channel; "
            f"got {x.shape}."
        )
    x = x[..., None] if x.ndim == 2 else x
    check_input(x, 3, model)
    return x


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class _Baseline(nn.Module):
    """The fields and the start of every MNIST-1D baseline.

    Attributes:
      num_classes: output units.
      kernel_init, bias_init: names from :data:`jaxnorm.inits.INITS` /
        :data:`jaxnorm.inits.BIAS_INITS` of the dense/conv layers (default PyTorch's,
        ``U(±1/sqrt(fan_in))`` for both; the fan-in counts a conv's window).
      norm, bn_positions, norm_options: as in every model; the slots are each model's
        (module docstring).
    """

    num_classes: int = 10
    kernel_init: str = "torch_default"
    bias_init: str = "torch_default"
    norm: str = "vanilla"
    bn_positions: Optional[Sequence[int]] = None
    norm_options: Optional[Mapping] = None

    def _start(self, x: jax.Array, train: bool, slots: int, model: str) -> tuple[jax.Array, Callable]:
        """The checked ``(batch, length, channels)`` input and the block builder
        (:func:`jaxnorm.models._blocks.normed_layer` with this model's norm plan)."""
        x = as_sequence(x, model)
        plan = plan_norms(self.norm, self.bn_positions, slots, model)
        return x, functools.partial(normed_layer, plan=plan, train=train, norm_options=self.norm_options or {})

    def _layer(self, cls: Callable, features: int, fan_in: int, name: str, **kw) -> Callable:
        """A flax ``Dense``/``Conv`` constructor (awaiting ``use_bias=``) with the named
        inits; the bias init needs the layer's fan-in (:func:`jaxnorm.inits.get_bias_init`)."""
        return functools.partial(
            cls, features, kernel_init=get_init(self.kernel_init), bias_init=get_bias_init(self.bias_init, fan_in),
            name=name, **kw,
        )  # fmt: skip


@register_model("mnist1d_linear")
class MNIST1DLinear(_Baseline):
    """Logistic regression on the flattened sequence: one dense layer ``L·C -> num_classes``
    (410 parameters on MNIST-1D). Output: logits ``(batch, num_classes)``.

    Attributes: those of every baseline (``num_classes``, ``kernel_init``, ``bias_init``,
    ``norm``, ``bn_positions``, ``norm_options``); one norm slot, the logits, empty by
    default (there is no hidden layer): ``bn_positions=(1,)`` fills it.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x, block = self._start(x, train, 1, "mnist1d_linear")
        x = _flatten(x)
        return block(x, 0, self._layer(nn.Dense, self.num_classes, x.shape[-1], "dense1"))


@register_model("mnist1d_mlp")
class MNIST1DMLP(_Baseline):
    """The paper's MLP: ``h = relu(dense1(x))``, ``h = h + relu(dense2(h))`` (a residual
    second layer, as in the reference code), logits ``dense3(h)``. 15,210 parameters on
    MNIST-1D (``40·100+100 + 100·100+100 + 100·10+10``). Output ``(batch, num_classes)``.

    Attributes: those of every baseline, and
      width: hidden units (100 in the paper).
    Norm slots: 3; default a norm after dense1 and after dense2 (inside the residual
    branch, before its ReLU).
    """

    width: int = 100

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x, block = self._start(x, train, 3, "mnist1d_mlp")
        x = _flatten(x)
        h = block(x, 0, self._layer(nn.Dense, self.width, x.shape[-1], "dense1"), activation=nn.relu)
        h = h + block(h, 1, self._layer(nn.Dense, self.width, self.width, "dense2"), activation=nn.relu)
        return block(h, 2, self._layer(nn.Dense, self.num_classes, self.width, "dense3"))


@register_model("mnist1d_cnn")
class MNIST1DCNN(_Baseline):
    """The paper's CNN: three stride-2 convs with ReLU, then a dense head on the flattened maps.

    conv1 ``channels`` kernel 5, conv2 and conv3 ``channels`` kernel 3, all stride 2 and
    zero padding 1 on each side (explicit, so the lengths are PyTorch's: 40 -> 19 -> 10
    -> 5), flatten ``5·channels`` -> dense ``num_classes``. 5,210 parameters on MNIST-1D
    (``1·25·5+25 + 25·25·3+25 + 25·25·3+25 + 125·10+10``). Output ``(batch, num_classes)``.

    Attributes: those of every baseline, and
      channels: channels of every conv (25 in the paper).
    Norm slots: 4 (three convs, the head); default a norm after every conv.
    """

    channels: int = 25

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x, block = self._start(x, train, 4, "mnist1d_cnn")
        for i, k in enumerate((5, 3, 3)):
            conv = self._layer(
                nn.Conv, self.channels, k * x.shape[-1], f"conv{i + 1}", kernel_size=(k,), strides=(2,), padding=((1, 1),)
            )
            x = block(x, i, conv, activation=nn.relu)
        x = _flatten(x)
        return block(x, 3, self._layer(nn.Dense, self.num_classes, x.shape[-1], "dense4"))


def _torch_gru(hidden: int) -> tuple[Callable, Callable, Callable]:
    """PyTorch's ``nn.GRU`` default: every weight and bias ``U(±1/sqrt(hidden))``."""
    u = symmetric_uniform(1.0 / math.sqrt(hidden))
    return u, u, u


def _flax_gru(hidden: int) -> tuple[Callable, Callable, Callable]:
    """flax's ``GRUCell`` default: LeCun normal input kernels, orthogonal recurrent kernels, zero biases."""
    return _jinit.lecun_normal(), _jinit.orthogonal(), _jinit.zeros


#: GRU initializations by name -> ``hidden -> (kernel_init, recurrent_kernel_init, bias_init)``.
GRU_INITS: dict[str, Callable[[int], tuple[Callable, Callable, Callable]]] = {
    "torch_default": _torch_gru,
    "flax_default": _flax_gru,
}


@register_model("mnist1d_gru")
class MNIST1DGRU(_Baseline):
    """The paper's GRU: a bidirectional GRU over the time steps, every step's output into a dense head.

    A flax ``GRUCell`` of ``hidden`` units runs forward and another one backward over the
    ``length`` steps of the ``(batch, length, channels)`` input (``nn.Bidirectional``;
    the backward outputs are put back in time order, as PyTorch's ``bidirectional=True``
    does), the two ``(batch, length, hidden)`` outputs are concatenated to ``(batch,
    length, 2·hidden)`` and flattened (480 on MNIST-1D) -> dense ``num_classes``.

    Gate equations (flax's, which are PyTorch's): ``r = σ(W_ir x + b_ir + W_hr h)``,
    ``z = σ(W_iz x + b_iz + W_hz h)``, ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
    ``h' = (1 - z) ⊙ n + z ⊙ h``, from ``h = 0``. PyTorch keeps two bias vectors per
    gate (``b_ih`` and ``b_hh``); flax drops ``b_hr`` and ``b_hz``, which only add to
    ``b_ir`` and ``b_iz``: the same function class with fewer parameters. Per direction,
    with C input channels and H units, PyTorch has ``3·(H·C + H·H + H + H)`` = 162 for
    C = 1, H = 6, flax ``3·(H·C + H) + 3·H·H + H`` = 150; with the head (``480·10+10``)
    5,134 parameters in PyTorch, 5,110 here.

    Attributes: those of every baseline (``kernel_init``, ``bias_init``: the dense head's), and
      hidden: GRU units per direction (6 in the paper).
      gru_init: a name from :data:`GRU_INITS` (default PyTorch's: every GRU weight and
        bias ``U(±1/sqrt(hidden))``, the paper's setting).
    Norm slots: 2, the GRU's output sequence (outside the recurrence, module docstring;
    default filled) and the logits.
    """

    hidden: int = 6
    gru_init: str = "torch_default"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x, block = self._start(x, train, 2, "mnist1d_gru")
        kernel, recurrent, bias = lookup(GRU_INITS, self.gru_init, "GRU initializer")(self.hidden)
        cell = functools.partial(
            nn.GRUCell, self.hidden, kernel_init=kernel, recurrent_kernel_init=recurrent, bias_init=bias
        )

        # h = 0 in the input's precision (flax's default carry is float32 whatever the input).
        h0 = jnp.zeros((x.shape[0], self.hidden), jnp.result_type(x.dtype, jnp.float32))

        def gru(use_bias: bool) -> Callable[[jax.Array], jax.Array]:
            # A norm of the output cannot absorb the GRU's biases (they act inside its gates).
            del use_bias
            rnn = nn.Bidirectional(nn.RNN(cell(name="gru_forward")), nn.RNN(cell(name="gru_backward")), name="gru")
            return lambda x: rnn(x, initial_carry=(h0, h0))

        h = _flatten(block(x, 0, gru))
        return block(h, 1, self._layer(nn.Dense, self.num_classes, h.shape[-1], "dense2"))
