"""Thin flax.linen modules over :mod:`jaxnorm.norms`, and the norm/activation names.

One vocabulary of normalization names is used everywhere (model ``norm=`` arguments,
configs, plots, result files):

=================  ==========  ==========  =========================================
name               kind        γ (scale)   β (bias)
=================  ==========  ==========  =========================================
``vanilla``        --          --          no normalization layer at all
``bn``             batch       fixed 1     fixed 0
``bn_gamma``       batch       learned     fixed 0
``bn_beta``        batch       fixed 1     learned
``bn_gamma_beta``  batch       learned     learned (standard BatchNorm)
``layer``          layer       learned     learned
``group``          group       learned     learned
``instance``       instance    learned     learned
``bn_ablation``    batch       switched    switched: any of the five variants, chosen
                                           per run by data (:func:`set_ablation_variant`)
=================  ==========  ==========  =========================================

The first five are the variants of the BatchNorm ablation study (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023,
§3.1.1: Vanilla, BN, BN_γ, BN_β, BN_γ,β).

Variables of :class:`Norm`: ``params/scale`` and ``params/bias`` exist only when they
are learned (an ablated γ or β is not a parameter at all, so it cannot be trained or
decayed by accident); ``batch_stats/mean`` and ``batch_stats/var`` exist for the batch
kind only.

Noise injection (``noise_mean``, ``noise_var`` of :class:`Norm`, e.g. through a model's
``norm_options``): in training mode the layer's output y becomes ``y · s + m`` with
per-channel ``m ~ U(−noise_mean, noise_mean)`` and ``s = √v``, ``v ~ U(1, 1 + noise_var)``,
drawn afresh at every call from the ``'dropout'`` RNG stream: the "non-stationary noise
after BatchNorm" of Santurkar et al. (2018), "How does batch normalization help
optimization?" (Sec. 2.1), which adds internal covariate shift on purpose; see
:func:`norm_noise`.

Weight re-parameterizations (:data:`WEIGHT_REPARAMS`, a model's ``weight_reparam=``)
change how a dense/conv layer's kernel is computed from its parameters instead of adding
a layer: ``'none'``, ``'weight_norm'`` (Salimans & Kingma 2016) and ``'weight_std'``
(Qiao et al. 2019); see :class:`WeightReparam`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import norms
from jaxnorm._registry import lookup

__all__ = [
    "NormSpec",
    "NORMS",
    "ABLATION_VARIANTS",
    "norm_spec",
    "Norm",
    "make_norm",
    "ablation_masks",
    "set_ablation_variant",
    "norm_from_spec",
    "norm_noise",
    "crelu",
    "ACTIVATIONS",
    "get_activation",
    "WeightReparam",
    "WEIGHT_REPARAMS",
    "weight_reparam_spec",
    "ReparamKernel",
    "kernel_hook",
]


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """What a normalization name means.

    Attributes:
      kind: ``'batch'``, ``'layer'``, ``'group'`` or ``'instance'``.
      use_scale: γ is a learned parameter (else fixed at 1).
      use_bias: β is a learned parameter (else fixed at 0).
    """

    kind: str
    use_scale: bool
    use_bias: bool
    maskable: bool = False

    @property
    def absorbs_bias(self) -> bool:
        """True when the statistics are per feature (batch, instance), so a bias added
        to each feature just before the norm is subtracted again: the preceding
        layer's bias is then dropped. (Layer/group norm subtract a mean over
        features, which does not cancel a per-feature bias, so it is kept; the maskable
        superset keeps it for its vanilla runs.)"""
        return self.kind in ("batch", "instance") and not self.maskable


NORMS: dict[str, Optional[NormSpec]] = {
    "vanilla": None,
    "bn": NormSpec("batch", use_scale=False, use_bias=False),
    "bn_gamma": NormSpec("batch", use_scale=True, use_bias=False),
    "bn_beta": NormSpec("batch", use_scale=False, use_bias=True),
    "bn_gamma_beta": NormSpec("batch", use_scale=True, use_bias=True),
    "layer": NormSpec("layer", use_scale=True, use_bias=True),
    "group": NormSpec("group", use_scale=True, use_bias=True),
    "instance": NormSpec("instance", use_scale=True, use_bias=True),
    # All five ablation variants in one structure; which one a run is, is data (see
    # ablation_masks): lets the variants train side by side in one vmapped program.
    "bn_ablation": NormSpec("batch", use_scale=True, use_bias=True, maskable=True),
}

ABLATION_VARIANTS: tuple[str, ...] = ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")


def norm_spec(name: str) -> Optional[NormSpec]:
    """The :class:`NormSpec` for ``name`` (``None`` for ``'vanilla'``).

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    return lookup(NORMS, name, "norm")


def _stateless(kind: str) -> Callable:
    return {
        "layer": lambda m, x, s, b: norms.layer_norm(x, s, b, epsilon=m.epsilon),
        "group": lambda m, x, s, b: norms.group_norm(x, s, b, num_groups=m.num_groups, epsilon=m.epsilon),
        "instance": lambda m, x, s, b: norms.instance_norm(x, s, b, epsilon=m.epsilon),
    }[kind]


class Norm(nn.Module):
    """A normalization layer over the last axis; see :func:`make_norm` for names.

    Call as ``Norm(...)(x, train)``. In the batch kind with ``train=True`` the running
    statistics in ``batch_stats`` are updated (apply with ``mutable=['batch_stats']``),
    except during ``init``, which never moves them. With ``train=False`` they are
    used and left unchanged. The other kinds ignore ``train``.

    Attributes:
      kind: ``'batch'``, ``'layer'``, ``'group'`` or ``'instance'``.
      use_scale, use_bias: learn γ / β (else they are fixed at 1 / 0 and not created).
      momentum, epsilon, group_size, axis_name, unbiased_running_var: passed to
        :func:`jaxnorm.norms.batch_norm` (Flax/TF momentum convention).
      num_groups: for the group kind.
      scale_init, bias_init: initializers of γ and β (default 1 and 0).
      noise_mean, noise_var: noise injection after the normalization (0 and 0: none,
        the default): with ``train=True`` (and not during ``init``) the output y becomes
        ``y · √v + m``, ``m ~ U(−noise_mean, noise_mean)``, ``v ~ U(1, 1 + noise_var)``,
        one draw per channel shared by the batch (and by all positions of a conv
        feature map), from ``self.make_rng('dropout')``: apply with ``rngs={'dropout':
        key}`` -- :func:`jaxnorm.train.fit`'s step passes a key of (seed, epoch, step),
        so the noise is redrawn every step and a resumed run draws the same noise. Each
        layer gets its own draw (flax folds the layer's path into the key). With
        ``train=False`` (running statistics, evaluation) there is no noise. See
        :func:`norm_noise`.
      maskable: batch kind only: γ, β and the normalization itself are switched on or
        off by 0/1 scalars ``use_scale``, ``use_bias``, ``use_norm`` kept in
        ``batch_stats`` (constants: never updated), so one structure computes any of the
        five ablation variants; set them with :func:`set_ablation_variant`. A switched
        off γ/β is exactly 1/0 and gets an exactly zero gradient; with ``use_norm`` off
        the layer is the identity (the vanilla network).
    """

    kind: str = "batch"
    use_scale: bool = True
    use_bias: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    group_size: Optional[int] = None
    axis_name: Optional[str] = None
    unbiased_running_var: bool = True
    num_groups: int = 32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    maskable: bool = False
    noise_mean: float = 0.0
    noise_var: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind not in ("batch", "layer", "group", "instance"):
            raise ValueError(f"unknown norm kind {self.kind!r}; known: batch, layer, group, instance")
        _check_noise(self.noise_mean, self.noise_var)
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32) if self.use_scale else None
        bias = self.param("bias", self.bias_init, (features,), jnp.float32) if self.use_bias else None
        if self.kind != "batch":
            return self._noisy(_stateless(self.kind)(self, x, scale, bias), train)

        mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if self.maskable:
            if scale is None or bias is None:
                raise ValueError("a maskable Norm needs use_scale=True and use_bias=True (the superset).")
            on = {k: self.variable("batch_stats", k, jnp.ones, (), jnp.float32).value for k in _MASK_KEYS}
            # where() rather than a product: a switched-off γ/β is exactly 1/0, grad exactly 0.
            scale = jnp.where(on["use_scale"] > 0, scale, 1.0)
            bias = jnp.where(on["use_bias"] > 0, bias, 0.0)
        y, new = norms.batch_norm(
            x,
            norms.BatchStats(mean.value, var.value),
            scale,
            bias,
            train=train,
            momentum=self.momentum,
            epsilon=self.epsilon,
            group_size=self.group_size,
            axis_name=self.axis_name,
            unbiased_running_var=self.unbiased_running_var,
        )
        if train and not self.is_initializing():
            mean.value, var.value = new.mean, new.var
        y = self._noisy(y, train)
        if self.maskable:
            # After the noise: a switched-off norm (the vanilla network) gets none either.
            y = jnp.where(on["use_norm"] > 0, y, x)
        return y

    def _noisy(self, y: jax.Array, train: bool) -> jax.Array:
        """``y`` with the layer's noise (training mode only; see the class docstring)."""
        if not (train and (self.noise_mean or self.noise_var)) or self.is_initializing():
            return y
        if not self.has_rng("dropout"):
            raise ValueError(
                f"Norm {'/'.join(self.path) or '(top)'} injects noise (noise_mean={self.noise_mean}, "
                f"noise_var={self.noise_var}) in training mode and needs a 'dropout' RNG: apply with "
                "rngs={'dropout': key}."
            )
        scale, shift = norm_noise(self.make_rng("dropout"), y.shape[-1], self.noise_mean, self.noise_var)
        return y * scale.astype(y.dtype) + shift.astype(y.dtype)


def _check_noise(noise_mean, noise_var) -> None:
    for name, v in (("noise_mean", noise_mean), ("noise_var", noise_var)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"Norm.{name} must be a finite number >= 0, got {v!r}.")


def norm_noise(key: jax.Array, features: int, noise_mean: float, noise_var: float) -> tuple[jax.Array, jax.Array]:
    """``(scale, shift)``, each float32 ``(features,)``: one draw of :class:`Norm`'s noise.

    ``shift ~ U(−noise_mean, noise_mean)`` and ``scale = √v``, ``v ~ U(1, 1 + noise_var)``,
    independent per channel (Santurkar et al. 2018, "How does batch normalization help
    optimization?", Sec. 2.1: noise with a non-zero mean and a non-unit variance, drawn
    anew at each step; the paper draws per activation, here one draw per channel is
    shared by the batch: a pure shift of the next layer's input distribution, not a
    per-example regularizer). A pure function of ``key``; magnitudes 0 give exactly
    scale 1 and shift 0.

    Raises:
      ValueError: a negative or non-finite magnitude.
    """
    _check_noise(noise_mean, noise_var)
    k_shift, k_var = jax.random.split(key)
    shift = jax.random.uniform(k_shift, (features,), jnp.float32, minval=-noise_mean, maxval=noise_mean)
    var = jax.random.uniform(k_var, (features,), jnp.float32, minval=1.0, maxval=1.0 + noise_var)
    return jnp.sqrt(var), shift


_MASK_KEYS = ("use_scale", "use_bias", "use_norm")


def ablation_masks(variant: str) -> dict[str, float]:
    """The 0/1 switches of a maskable Norm that make it the ablation ``variant``."""
    if variant not in ABLATION_VARIANTS:
        raise ValueError(f"unknown ablation variant {variant!r}; known: {list(ABLATION_VARIANTS)}")
    spec = NORMS[variant]
    return {
        "use_norm": float(spec is not None),
        "use_scale": float(spec is not None and spec.use_scale),
        "use_bias": float(spec is not None and spec.use_bias),
    }


def set_ablation_variant(batch_stats, variant: str):
    """A copy of a ``bn_ablation`` model's ``batch_stats`` switched to ``variant``.

    Raises:
      ValueError: unknown variant, or no maskable norm layer in ``batch_stats``.
    """
    masks = ablation_masks(variant)
    found = False

    def visit(tree):
        nonlocal found
        if isinstance(tree, Mapping):
            if all(k in tree for k in _MASK_KEYS):
                found = True
                return {**tree, **{k: jnp.asarray(v, jnp.float32) for k, v in masks.items()}}
            return {k: visit(v) for k, v in tree.items()}
        return tree

    out = visit(batch_stats)
    if not found:
        raise ValueError("no maskable norm layer found: build the model with norm='bn_ablation'.")
    return out


def make_norm(name: str, **kwargs) -> Optional[Norm]:
    """A :class:`Norm` configured for the vocabulary name ``name``; ``None`` for ``'vanilla'``.

    ``kwargs`` go to :class:`Norm` (e.g. ``momentum``, ``group_size``, ``name``).
    """
    spec = norm_spec(name)
    return None if spec is None else norm_from_spec(spec, **kwargs)


def norm_from_spec(spec: NormSpec, **kwargs) -> Norm:
    """A :class:`Norm` for a resolved :class:`NormSpec`; ``kwargs`` go to :class:`Norm`."""
    return Norm(kind=spec.kind, use_scale=spec.use_scale, use_bias=spec.use_bias, maskable=spec.maskable, **kwargs)


# --------------------------------------------------------------------------------------
# Activations.


def crelu(x: jax.Array) -> jax.Array:
    """Concatenated ReLU (Shang et al. 2016): ``[relu(x), relu(-x)]`` along the last
    axis, doubling the features. With the looks-linear kernel
    (:func:`jaxnorm.inits.looks_linear`) the next layer is linear at initialization.
    (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022 writes Def. 3.8 with a sign typo; eq. 3.23 shows the intent.)"""
    return jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "crelu": crelu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "linear": lambda x: x,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation registered as ``name``.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    return lookup(ACTIVATIONS, name, "activation")


# --------------------------------------------------------------------------------------
# Weight re-parameterizations.


def _weight_norm_kernel(module: nn.Module, v: jax.Array) -> jax.Array:
    # g starts at ||v|| per output unit, so the layer computes exactly what the plain
    # layer with the same kernel initializer would at initialization: only the
    # parameterization (and so the training dynamics) differs, not the starting network.
    g = module.param("g", lambda _, v: jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1)))), v)
    return norms.weight_norm(v, g)


def _weight_std_kernel(module: nn.Module, w: jax.Array) -> jax.Array:
    return norms.weight_standardize(w)


@dataclasses.dataclass(frozen=True)
class WeightReparam:
    """What a weight re-parameterization name means.

    Attributes:
      kernel: ``(module, stored_kernel) -> kernel used``; may create parameters in
        ``module`` (a :class:`ReparamKernel`). The stored kernel keeps its name
        ``kernel`` (so L2 decay and ``frozen`` patterns see it as before).
      normed_only: apply it only to weight layers that a norm follows. For
        re-parameterizations that fix the kernel's scale with nothing to learn it back
        (weight standardization: unit variance over the fan-in), which only a following
        normalization makes harmless; on the output layer it would set the logits'
        scale to ~√fan_in.
    """

    kernel: Callable[[nn.Module, jax.Array], jax.Array]
    normed_only: bool = False


#: ``weight_norm``: ``w = g · v/‖v‖`` per output unit (:func:`jaxnorm.norms.weight_norm`),
#: parameters ``kernel`` (v) and ``reparam/g`` (``(fan_out,)``, initialized to ‖v‖ so
#: the initial network equals the plain one), on every weight layer. ``weight_std``:
#: ``w = (v − mean)/std`` over each output unit's fan-in
#: (:func:`jaxnorm.norms.weight_standardize`), no new parameter, on the weight layers a
#: norm follows (Qiao et al. pair it with GroupNorm).
WEIGHT_REPARAMS: dict[str, Optional[WeightReparam]] = {
    "none": None,
    "weight_norm": WeightReparam(_weight_norm_kernel),
    "weight_std": WeightReparam(_weight_std_kernel, normed_only=True),
}


def weight_reparam_spec(name: str) -> Optional[WeightReparam]:
    """The :class:`WeightReparam` for ``name`` (``None`` for ``'none'``).

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    return lookup(WEIGHT_REPARAMS, name, "weight_reparam")


class ReparamKernel(nn.Module):
    """The kernel operation of a flax ``Dense``/``Conv`` on a re-parameterized kernel.

    Flax's weight layers call ``op(inputs, kernel, ...)`` (``lax.dot_general`` or
    ``lax.conv_general_dilated``) through an instance of their ``dot_general_cls`` /
    ``conv_general_dilated_cls`` field; this module is that instance (see
    :func:`kernel_hook`): it calls ``op(inputs, reparam(kernel), ...)``, so the layer
    stores the raw kernel as usual and its re-parameterization's own parameters (weight
    norm's ``g``) live in the sub-scope ``<layer>/reparam``.

    Attributes:
      reparam: a name from :data:`WEIGHT_REPARAMS` other than ``'none'``.
      op: the ``lax`` operation the layer would call.
    """

    reparam: str
    op: Callable

    @nn.compact
    def __call__(self, inputs, kernel, *args, **kwargs):
        spec = weight_reparam_spec(self.reparam)
        if spec is None:
            raise ValueError("ReparamKernel needs a re-parameterization, not 'none'.")
        return self.op(inputs, spec.kernel(self, kernel).astype(kernel.dtype), *args, **kwargs)


# The field through which each flax weight layer calls its kernel operation, and that
# operation (flax instantiates the field's class and calls it like the operation).
_KERNEL_HOOKS: dict[type, tuple[str, Callable]] = {
    nn.Dense: ("dot_general_cls", jax.lax.dot_general),
    nn.Conv: ("conv_general_dilated_cls", jax.lax.conv_general_dilated),
}


def kernel_hook(layer_class: type, reparam: str) -> dict:
    """The constructor keywords that make a flax ``layer_class`` (``nn.Dense``, ``nn.Conv``
    or a subclass) use the re-parameterization ``reparam``: ``{}`` for ``'none'``.

    Example: ``nn.Dense(10, **kernel_hook(nn.Dense, 'weight_norm'))``.

    Raises:
      ValueError: unknown ``reparam``, or a layer class without a kernel hook.
    """
    if weight_reparam_spec(reparam) is None:
        return {}
    for cls, (field, op) in _KERNEL_HOOKS.items():
        if isinstance(layer_class, type) and issubclass(layer_class, cls):
            return {field: functools.partial(ReparamKernel, reparam=reparam, op=op, name="reparam")}
    raise ValueError(
        f"weight_reparam={reparam!r}: {getattr(layer_class, '__name__', layer_class)!r} is not a flax "
        f"weight layer with a kernel hook ({', '.join(c.__name__ for c in _KERNEL_HOOKS)})."
    )
