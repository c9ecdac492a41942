"""Weight initializers, named and documented.

Each entry is a factory returning a JAX initializer ``init(key, shape, dtype) -> Array``
for flax kernels: dense ``(fan_in, fan_out)``, conv ``(*window, in, out)``. Fans count
the receptive field, as PyTorch and TF do: ``fan_in = prod(window) * in``.

Truncated or not: TF/Keras ``glorot_normal`` draws from a normal truncated at two
standard deviations (rescaled so the variance is still ``2 / (fan_in + fan_out)``);
PyTorch ``xavier_normal_`` does not truncate. The DeepOBS PyTorch code that the
BatchNorm ablation study ran used the untruncated form, so :func:`glorot_normal`
defaults to ``truncated=False``; both are available by name.

Use :func:`get_init` to look one up by the names used in configs.

Biases: flax calls a bias initializer with the bias's shape only, so an initializer
that depends on the layer's fan-in (PyTorch's default, ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``) is built per layer from the fan-in the model knows:
:data:`BIAS_INITS` maps a name to a factory ``fan_in -> init``; :func:`get_bias_init`
looks one up. Most of the zoo keeps flax's zero biases and does not use it.

References:
  Glorot & Bengio (2010); He et al. (2015), arXiv:1502.01852; Saxe et al. (2014),
  arXiv:1312.6120 (orthogonal); Balduzzi et al. (2017), arXiv:1702.08591 and the gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022), Def. 3.9 (looks-linear).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.nn import initializers as _jinit

from jaxnorm._registry import lookup

Initializer = Callable[..., jax.Array]

__all__ = [
    "glorot_normal",
    "glorot_truncated_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "scaled_normal",
    "looks_linear",
    "torch_default",
    "symmetric_uniform",
    "get_init",
    "INITS",
    "BIAS_INITS",
    "get_bias_init",
]


def glorot_normal(truncated: bool = False) -> Initializer:
    """Glorot/Xavier normal, variance ``2 / (fan_in + fan_out)``.

    ``truncated=False`` (default) is PyTorch's ``xavier_normal_``; ``truncated=True`` is
    TF's ``glorot_normal`` (two-sigma truncation, variance preserved).
    """
    return _jinit.variance_scaling(1.0, "fan_avg", "truncated_normal" if truncated else "normal")


def glorot_truncated_normal() -> Initializer:
    """TF/Keras ``glorot_normal``: :func:`glorot_normal` with ``truncated=True``."""
    return glorot_normal(truncated=True)


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform on ``[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    return _jinit.variance_scaling(1.0, "fan_avg", "uniform")


def he_normal() -> Initializer:
    """He/Kaiming normal (fan-in mode, untruncated), variance ``2 / fan_in``."""
    return _jinit.variance_scaling(2.0, "fan_in", "normal")


def he_uniform() -> Initializer:
    """He/Kaiming uniform (fan-in mode), variance ``2 / fan_in``."""
    return _jinit.variance_scaling(2.0, "fan_in", "uniform")


def scaled_normal(c: float = 2.0) -> Initializer:
    """``W ~ N(0, c / n)`` with ``n = fan_in`` (the lecture's initialization-scale study:
    for a deep ReLU MLP c = 1 shrinks, c = 2 preserves, c = 3 explodes the activations)."""
    if c <= 0:
        raise ValueError(f"scaled_normal needs c > 0, got {c}.")
    return _jinit.variance_scaling(float(c), "fan_in", "normal")


def orthogonal(scale: float = 1.0) -> Initializer:
    """(Semi-)orthogonal kernel (Saxe et al. 2014): the ``(fan_in, fan_out)`` matrix of
    the kernel (conv windows folded into fan-in) has orthonormal rows or columns."""
    return _jinit.orthogonal(scale=scale, column_axis=-1)


def looks_linear(scale: float = 1.0) -> Initializer:
    """Looks-linear (mirrored block) kernel for a dense layer fed by CReLU.

    CReLU maps ``x`` (n features) to ``[relu(x), relu(-x)]`` (2n features). With the
    kernel ``[[W], [-W]]`` of shape ``(2n, m)`` and ``W`` orthogonal ``(n, m)``, the
    layer computes ``relu(x) W - relu(-x) W = x W``: exactly linear at initialization
    (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, Def. 3.9 and eq. 3.23, written there as ``[W -W]`` in the
    ``out x in`` convention).

    Raises:
      ValueError: the kernel is not 2-D or its fan-in is odd.
    """
    base = orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        if len(shape) != 2 or shape[0] % 2:
            raise ValueError(
                "looks_linear needs a dense kernel (2n, m) whose input is a CReLU output "
                f"(even fan-in), got shape {tuple(shape)}."
            )
        w = base(key, (shape[0] // 2, shape[1]), dtype)
        return jnp.concatenate([w, -w], axis=0)

    return init


def symmetric_uniform(bound: float) -> Initializer:
    """``U(-bound, bound)`` for any shape (variance ``bound² / 3``), whatever the fans.

    Raises:
      ValueError: ``bound <= 0``.
    """
    if not bound > 0:
        raise ValueError(f"symmetric_uniform needs bound > 0, got {bound}.")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default() -> Initializer:
    """PyTorch's default ``nn.Linear``/``nn.Conv*`` kernel init: ``kaiming_uniform_`` with
    ``a = sqrt(5)``, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, variance ``1 / (3 fan_in)``.

    (gain ``sqrt(2 / (1 + a²)) = sqrt(1/3)``, bound ``gain · sqrt(3 / fan_in)``; the
    fan-in counts the receptive field, as in PyTorch.) Its bias companion is
    ``get_bias_init('torch_default', fan_in)``.
    """
    return _jinit.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _zeros_bias(fan_in: int) -> Initializer:
    """Zero biases (flax's default); the fan-in is not used."""
    return _jinit.zeros


def _torch_default_bias(fan_in: int) -> Initializer:
    """PyTorch's default bias of ``nn.Linear``/``nn.Conv*``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    if fan_in < 1:
        raise ValueError(f"a bias initializer needs the layer's fan-in >= 1, got {fan_in}.")
    return symmetric_uniform(1.0 / math.sqrt(fan_in))


# Names used in configs and model arguments -> factories.
INITS: dict[str, Callable[..., Initializer]] = {
    "glorot_normal": glorot_normal,
    "glorot_truncated_normal": glorot_truncated_normal,
    "glorot_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "orthogonal": orthogonal,
    "scaled_normal": scaled_normal,
    "looks_linear": looks_linear,
    "torch_default": torch_default,
}

#: Bias initializers by name -> factory ``fan_in -> init`` (module docstring).
BIAS_INITS: dict[str, Callable[[int], Initializer]] = {
    "zeros": _zeros_bias,
    "torch_default": _torch_default_bias,
}


def get_init(name: str, **kwargs) -> Initializer:
    """The initializer registered as ``name``, built with ``kwargs`` (e.g. ``c=2.0``).

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    return lookup(INITS, name, "initializer")(**kwargs)


def get_bias_init(name: str, fan_in: int) -> Initializer:
    """The bias initializer registered as ``name`` for a layer with ``fan_in`` inputs
    (``prod(window) · in_channels`` for a conv).

    Raises:
      ValueError: unknown name (the message lists the known ones), or ``fan_in < 1``.
    """
    return lookup(BIAS_INITS, name, "bias initializer")(fan_in)
