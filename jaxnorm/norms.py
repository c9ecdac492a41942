"""Pure-function normalization with explicit state.

Every function here is a pure map from arrays to arrays; nothing is stored
between calls. The only state, BatchNorm's running statistics, goes in as a
:class:`BatchStats` pytree and comes out as a new one, so it can live in a
flax ``batch_stats`` collection, a ``TrainState`` or anywhere the caller likes.

Conventions shared by all functions
-----------------------------------
* The **feature axis is the last axis** (NHWC for images, NC for vectors).
* ``scale=None`` means γ is *ablated* (fixed at 1) and ``bias=None`` means β is
  ablated (fixed at 0). The five variants of the BatchNorm ablation study
  (Vanilla, BN, BN_γ, BN_β, BN_γ,β) are therefore just which of the two are
  passed (Vanilla: no normalization call at all).
* Statistics are computed by one private kernel, :func:`_moments`, in at least
  float32 (float64 inputs stay float64), with a two-pass variance clamped at
  ``>= 0``. Outputs have the dtype of ``x``.
* Bad input raises a ``TypeError``/``ValueError`` at trace time with a message
  that names the problem, instead of producing NaNs inside XLA.

References:
  Ioffe & Szegedy (2015), Batch Normalization, arXiv:1502.03167.
  Hoffer, Hubara & Soudry (2017), ghost batch normalization, arXiv:1705.08741.
  Ba, Kiros & Hinton (2016), Layer Normalization, arXiv:1607.06450.
  Wu & He (2018), Group Normalization, arXiv:1803.08494.
  Ulyanov, Vedaldi & Lempitsky (2016), Instance Normalization, arXiv:1607.08022.
  Salimans & Kingma (2016), Weight Normalization, arXiv:1602.07868.
  Qiao et al. (2019), Weight Standardization, arXiv:1903.10520.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "BatchStats",
    "as_batch_stats",
    "batch_moments",
    "batch_norm",
    "torch_momentum_to_flax",
    "flax_momentum_to_torch",
    "PopulationAccumulator",
    "population_stats",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "weight_norm",
    "weight_standardize",
]


class BatchStats(NamedTuple):
    """Running statistics of one BatchNorm layer (a pytree).

    Attributes:
      mean: ``(features,)`` running mean.
      var: ``(features,)`` running variance.
    """

    mean: Array
    var: Array

    @classmethod
    def init(cls, num_features: int, dtype=jnp.float32) -> "BatchStats":
        """The neutral starting statistics: mean 0, variance 1 (PyTorch, Flax and TF agree)."""
        return cls(jnp.zeros((num_features,), dtype), jnp.ones((num_features,), dtype))


def as_batch_stats(stats) -> BatchStats:
    """``stats`` as a :class:`BatchStats`: one already, a ``(mean, var)`` pair, or a
    mapping with exactly the keys ``'mean'`` and ``'var'`` (what a flax ``batch_stats``
    collection holds for one BatchNorm layer).

    Raises:
      TypeError: anything else (a mapping with other keys, a sequence not of two).
    """
    if isinstance(stats, BatchStats):
        return stats
    if isinstance(stats, Mapping):
        # Unpacking a mapping positionally gives its keys: the strings 'mean' and 'var'.
        if set(stats) != {"mean", "var"}:
            raise TypeError(f"BatchStats from a mapping needs exactly the keys 'mean' and 'var', got {sorted(map(str, stats))}.")
        return BatchStats(mean=stats["mean"], var=stats["var"])
    if isinstance(stats, (tuple, list)) and len(stats) == 2 and not any(isinstance(s, str) for s in stats):
        return BatchStats(*stats)
    raise TypeError(
        f"stats must be a BatchStats, a (mean, var) pair or a mapping with keys 'mean' and 'var', got {type(stats).__name__}."
    )


# --------------------------------------------------------------------------------------
# Input checks (trace time: shapes and dtypes are static).


def _check_floating(x, what: str = "x") -> None:
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        raise TypeError(
            f"{what} must be a floating-point array, got dtype {jnp.asarray(x).dtype}; "
            f"cast it first, e.g. {what}.astype(jnp.float32)."
        )


def _check_features(param, num_features: int, name: str) -> None:
    if param is None:
        return
    _check_floating(param, name)
    if jnp.shape(param) != (num_features,):
        raise ValueError(
            f"{name} must have shape ({num_features},) to match the last (feature) axis "
            f"of x, got {jnp.shape(param)}."
        )


def _compute_dtype(dtype) -> jnp.dtype:
    """Reductions run in at least float32 (bf16/fp16 inputs are upcast)."""
    return jnp.promote_types(dtype, jnp.float32)


def _axis_size(axis_name) -> int:
    """Size of a named mapped axis (static: psum of a Python constant)."""
    return int(jax.lax.psum(1, axis_name))


# --------------------------------------------------------------------------------------
# The one statistics kernel.


def _moments(
    x: Array,
    axes: Sequence[int],
    *,
    axis_name: Optional[str] = None,
    mask: Optional[Array] = None,
) -> tuple[Array, Array]:
    """Mean and biased variance of ``x`` over ``axes`` (kept as size-1 dims).

    Two-pass (``E[(x - E[x])^2]``) rather than ``E[x^2] - E[x]^2``: it does not
    lose precision when ``|mean| >> std``; the result is still clamped at 0 so
    no later ``rsqrt`` can see a negative number. Runs in at least float32.

    Args:
      x: input array.
      axes: axes to reduce over.
      axis_name: if given, the statistics are averaged over this named mapped axis
        (``shard_map``/``vmap``); every shard must hold the same number of values.
      mask: optional array broadcastable to ``x``; entries with mask 0 are ignored.

    Returns:
      ``(mean, var)``, each with ``x``'s rank (reduced axes have size 1), in the
      compute dtype.
    """
    axes = tuple(a % x.ndim for a in axes)
    x = x.astype(_compute_dtype(x.dtype))

    def _mean(v):
        if mask is None:
            m = jnp.mean(v, axis=axes, keepdims=True)
            return m if axis_name is None else jax.lax.pmean(m, axis_name)
        w = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
        num = jnp.sum(v * w, axis=axes, keepdims=True)
        den = jnp.sum(w, axis=axes, keepdims=True)
        if axis_name is not None:
            num, den = jax.lax.psum((num, den), axis_name)
        return num / jnp.maximum(den, 1)

    mean = _mean(x)
    var = jnp.maximum(_mean(jnp.square(x - mean)), 0.0)
    return mean, var


def _normalize(x: Array, mean, var, scale, bias, epsilon: float) -> Array:
    """``(x - mean) * rsqrt(var + eps) * scale + bias`` in the compute dtype, cast back to x's dtype."""
    cdt = _compute_dtype(x.dtype)
    mul = jax.lax.rsqrt(var.astype(cdt) + epsilon)
    if scale is not None:
        mul = mul * scale.astype(cdt)
    y = (x.astype(cdt) - mean.astype(cdt)) * mul
    if bias is not None:
        y = y + bias.astype(cdt)
    return y.astype(x.dtype)


# --------------------------------------------------------------------------------------
# BatchNorm.


def torch_momentum_to_flax(momentum: float) -> float:
    """Converts a PyTorch BatchNorm momentum to the Flax/TF convention used here.

    PyTorch: ``new = (1 - m) * old + m * batch`` (default m = 0.1).
    Flax/TF/jaxnorm: ``new = m * old + (1 - m) * batch`` (PyTorch's 0.1 is our 0.9).
    The map ``m -> 1 - m`` is its own inverse.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}.")
    return 1.0 - momentum


def flax_momentum_to_torch(momentum: float) -> float:
    """Inverse of :func:`torch_momentum_to_flax` (the same map, m -> 1 - m)."""
    return torch_momentum_to_flax(momentum)


def _grouped(x: Array, group_size: Optional[int]) -> tuple[Array, tuple[int, ...], int]:
    """``x`` with the batch axis split into ghost groups (if ``group_size``), the axes the
    batch statistics reduce over, and the number of values behind each statistic."""
    xg = x
    if group_size is not None:
        batch = x.shape[0]
        if group_size < 1 or batch % group_size:
            raise ValueError(
                f"group_size={group_size} must be a positive divisor of the batch size {batch}."
            )
        xg = x.reshape((batch // group_size, group_size) + x.shape[1:])
    # Reduce over everything but the feature axis (and the group axis, if any).
    first = 0 if group_size is None else 1
    axes = tuple(range(first, xg.ndim - 1))
    return xg, axes, math.prod(xg.shape[a] for a in axes)


def batch_moments(x: Array, *, group_size: Optional[int] = None) -> tuple[Array, Array]:
    """The statistics :func:`batch_norm` normalizes with in training mode.

    Args:
      x: ``(batch, ..., features)`` floating array.
      group_size: ghost-group size, as in :func:`batch_norm`.

    Returns:
      ``(mean, var)``, each ``(groups, features)`` (``groups = batch // group_size``, 1
      without ghost groups): per-group mean and *biased* variance, from the same
      two-pass kernel as :func:`batch_norm`. Example ``i`` is normalized by row
      ``i // group_size``. Used by the ``frozen`` per-example gradients
      (:mod:`jaxnorm.diagnostics.per_example`).

    Raises:
      TypeError: ``x`` is not floating point.
      ValueError: rank < 2, or ``group_size`` does not divide the batch.
    """
    _check_floating(x)
    if x.ndim < 2:
        raise ValueError(f"batch_moments expects x of shape (batch, ..., features), got {x.shape}.")
    xg, axes, _ = _grouped(x, group_size)
    mean, var = _moments(xg, axes)
    c = x.shape[-1]
    return mean.reshape(-1, c), var.reshape(-1, c)


def batch_norm(
    x: Array,
    stats: BatchStats,
    scale: Optional[Array] = None,
    bias: Optional[Array] = None,
    *,
    train: bool,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    group_size: Optional[int] = None,
    axis_name: Optional[str] = None,
    unbiased_running_var: bool = True,
) -> tuple[Array, BatchStats]:
    """Batch normalization as a pure function: ``(y, new_stats) = batch_norm(x, stats, ...)``.

    ``y = scale * (x - mu) / sqrt(var + epsilon) + bias`` with per-feature statistics
    taken over every axis but the last.

    Modes:
      * ``train=True``: ``mu``/``var`` are the batch's (biased) statistics; the running
        statistics are updated by an exponential moving average and returned.
      * ``train=False``: ``mu``/``var`` are ``stats``; ``stats`` is returned unchanged.

    Running-statistics convention (Flax/TF): ``new = momentum * old + (1 - momentum) *
    batch`` (the default 0.9 equals PyTorch's ``momentum=0.1``; see
    :func:`torch_momentum_to_flax`).

    Running variance: by default (``unbiased_running_var=True``) the batch variance
    enters the average with Bessel's correction ``m / (m - 1)``, where ``m`` is the
    number of values behind each feature's statistic (batch x spatial positions: of one
    ghost group if ``group_size`` is set, else over all shards if ``axis_name`` is set). This
    is the BatchNorm paper's inference estimate (Ioffe & Szegedy 2015, Alg. 2; the BatchNorm ablation thesis (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen 2023) eq. 2.27) and what PyTorch does, which ran the ablation study being
    reproduced. ``unbiased_running_var=False`` gives Flax's biased running variance.
    Normalization during training always uses the biased batch variance.

    Non-finite inputs are not checked (a check on values inside ``jit`` would need a
    host sync or ``checkify``): a NaN in ``x`` makes ``y`` and the new running statistics
    NaN, as IEEE arithmetic does. The training engine refuses non-finite data when it
    loads it and stops a run whose loss is not finite (divergence), so no NaN reaches a
    run's statistics unreported there.

    Args:
      x: ``(batch, ..., features)`` floating array.
      stats: running statistics, each ``(features,)``: a :class:`BatchStats`, a
        ``(mean, var)`` pair or a flax-style ``{'mean': ..., 'var': ...}`` mapping
        (:func:`as_batch_stats`).
      scale: γ, ``(features,)``; ``None`` ablates it (fixed 1).
      bias: β, ``(features,)``; ``None`` ablates it (fixed 0).
      train: batch statistics (True) or running statistics (False). Static.
      momentum: EMA coefficient in the Flax/TF convention, in [0, 1].
      epsilon: added to the variance before the square root.
      group_size: ghost/virtual batch norm (training mode): split the batch axis into
        groups of this many examples and normalize each group by its own statistics
        (Hoffer et al. 2017). The running statistics are the averages of the group
        statistics. The semantics depend only on ``group_size``, never on the device
        count: with ``axis_name`` too, groups stay local to their shard and only the
        running-statistics update is averaged over the shards.
      axis_name: average the statistics over this named mapped axis (``shard_map``),
        i.e. synchronized BatchNorm across shards (every shard must hold the same number
        of examples). Not needed under plain ``jit`` with a sharded batch: the
        statistics of a global array are already global.
      unbiased_running_var: see above.

    Returns:
      ``(y, new_stats)``: ``y`` with the shape and dtype of ``x``; ``new_stats`` a
      :class:`BatchStats` (``stats`` itself when ``train=False``).

    Raises:
      TypeError: ``x`` (or stats/scale/bias) is not floating point; ``stats`` of
        another form (a mapping with other keys than ``mean``/``var``).
      ValueError: stats/scale/bias do not match the feature axis; ``x`` has rank < 2;
        ``group_size`` does not divide the batch; in training mode, fewer than 2 values
        per feature (per group) -- e.g. a dense layer on a batch of one -- for which
        the batch variance is undefined; ``momentum`` outside [0, 1].
    """
    _check_floating(x)
    if x.ndim < 2:
        raise ValueError(
            f"batch_norm expects x of shape (batch, ..., features) with rank >= 2, got {x.shape}."
        )
    num_features = x.shape[-1]
    stats = as_batch_stats(stats)
    _check_features(stats.mean, num_features, "stats.mean")
    _check_features(stats.var, num_features, "stats.var")
    _check_features(scale, num_features, "scale")
    _check_features(bias, num_features, "bias")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1] (Flax/TF convention), got {momentum}.")

    if not train:
        return _normalize(x, stats.mean, stats.var, scale, bias, epsilon), stats

    xg, axes, count = _grouped(x, group_size)
    # Ghost groups are local to a shard; otherwise the statistics are synchronized.
    sync_axis = axis_name if group_size is None else None
    if sync_axis is not None:
        count *= _axis_size(sync_axis)
    if count < 2:
        raise ValueError(
            "batch_norm in training mode needs at least 2 values per feature to estimate "
            f"a variance, got {count} (x.shape={x.shape}, group_size={group_size}). "
            "Use a larger batch, or train=False to normalize with the running statistics."
        )

    mean, var = _moments(xg, axes, axis_name=sync_axis)
    y = _normalize(xg, mean, var, scale, bias, epsilon).reshape(x.shape)

    batch_mean = mean.reshape(-1, num_features).mean(axis=0)
    batch_var = var.reshape(-1, num_features).mean(axis=0)
    if group_size is not None and axis_name is not None:
        # Every shard keeps the same running statistics: average the group means over shards.
        batch_mean, batch_var = jax.lax.pmean((batch_mean, batch_var), axis_name)
    if unbiased_running_var:
        batch_var = batch_var * (count / (count - 1))
    sdt = stats.mean.dtype
    new_stats = BatchStats(
        mean=(momentum * stats.mean + (1.0 - momentum) * batch_mean).astype(sdt),
        var=(momentum * stats.var + (1.0 - momentum) * batch_var).astype(stats.var.dtype),
    )
    return y, new_stats


# --------------------------------------------------------------------------------------
# Population statistics (eq. 2.26-2.27 of the BatchNorm ablation thesis (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen 2023); Ioffe & Szegedy Alg. 2).


class PopulationAccumulator(NamedTuple):
    """Running sums for :func:`population_stats` (a pytree; jit/scan friendly).

    For each batch b with ``n_b`` values per feature, mean ``mu_b`` and biased variance
    ``s2_b`` it accumulates ``sum n_b``, ``sum n_b * mu_b``, ``sum n_b * s2_b`` and
    ``sum (n_b - 1)``.
    """

    count: Array
    weighted_mean_sum: Array
    weighted_var_sum: Array
    dof: Array

    @classmethod
    def init(cls, num_features: int, dtype=jnp.float32) -> "PopulationAccumulator":
        z = jnp.zeros((num_features,), dtype)
        return cls(jnp.zeros((), dtype), z, z, jnp.zeros((), dtype))

    def update(self, x: Array) -> "PopulationAccumulator":
        """Adds one batch ``x`` of shape ``(batch, ..., features)``."""
        _check_floating(x)
        if x.ndim < 2 or x.shape[-1] != self.weighted_mean_sum.shape[0]:
            raise ValueError(
                f"expected x of shape (batch, ..., {self.weighted_mean_sum.shape[0]}), got {x.shape}."
            )
        axes = tuple(range(x.ndim - 1))
        n = math.prod(x.shape[:-1])
        if n < 2:
            raise ValueError(f"each batch needs at least 2 values per feature, got x.shape={x.shape}.")
        mean, var = _moments(x, axes)
        dt = self.weighted_mean_sum.dtype
        return PopulationAccumulator(
            self.count + n,
            self.weighted_mean_sum + n * mean.reshape(-1).astype(dt),
            self.weighted_var_sum + n * var.reshape(-1).astype(dt),
            self.dof + (n - 1),
        )

    def result(self) -> BatchStats:
        """The population statistics (mean, Bessel-corrected pooled variance)."""
        return BatchStats(
            mean=self.weighted_mean_sum / self.count,
            var=self.weighted_var_sum / self.dof,
        )


def population_stats(batches: Iterable[Array]) -> BatchStats:
    """Inference statistics from a stream of training batches (Ioffe & Szegedy 2015).

    ``mean = E_B[mu_B]`` and ``var = m / (m - 1) * E_B[sigma^2_B]`` (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023, eq. 2.26-2.27), where ``sigma^2_B`` is the biased variance of batch B and m its
    number of values per feature. The mean is the exact mean of all values seen. With
    unequal batch sizes the natural generalization is used: batches are weighted by
    size and the variance is the pooled within-batch variance
    ``sum n_B sigma^2_B / sum (n_B - 1)``, which equals eq. 2.27 for equal sizes.

    Note: this is the variance BatchNorm *normalizes with* (within-batch), not the
    variance of the whole data set, which adds the spread of the batch means.

    Args:
      batches: iterable of ``(batch, ..., features)`` arrays (e.g. a layer's inputs).

    Returns:
      :class:`BatchStats`, to compare with (or replace) the running averages.

    Raises:
      ValueError: the iterable is empty, a batch has < 2 values per feature, or the
        feature sizes differ.
    """
    acc = None
    for x in batches:
        x = jnp.asarray(x)
        if acc is None:
            _check_floating(x)
            if x.ndim < 2:
                raise ValueError(f"population_stats expects batches (batch, ..., features), got shape {x.shape}.")
            acc = PopulationAccumulator.init(x.shape[-1], _compute_dtype(x.dtype))
        acc = acc.update(x)
    if acc is None:
        raise ValueError("population_stats needs at least one batch.")
    return acc.result()


# --------------------------------------------------------------------------------------
# Per-example normalizations (no state).


def _per_example_norm(x, scale, bias, *, groups: int, epsilon: float, spatial_only: bool) -> Array:
    """Shared body of layer/group/instance norm: statistics per example and channel group."""
    _check_floating(x)
    if x.ndim < 2:
        raise ValueError(f"expected x of shape (batch, ..., features), got {x.shape}.")
    c = x.shape[-1]
    _check_features(scale, c, "scale")
    _check_features(bias, c, "bias")
    if groups < 1 or c % groups:
        raise ValueError(f"num_groups={groups} must be a positive divisor of the {c} features.")
    xg = x.reshape(x.shape[:-1] + (groups, c // groups))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    count = math.prod(xg.shape[a] for a in axes)
    if count < 2:
        what = "spatial axes" if spatial_only else "features per group"
        raise ValueError(
            f"need at least 2 values per statistic, got {count} for x.shape={x.shape} "
            f"(no {what} to normalize over)."
        )
    mean, var = _moments(xg, axes)
    # Per-feature γ/β reshaped to (groups, channels per group) broadcast against xg.
    split = lambda p: None if p is None else p.reshape(groups, c // groups)
    return _normalize(xg, mean, var, split(scale), split(bias), epsilon).reshape(x.shape)


def layer_norm(x: Array, scale=None, bias=None, *, epsilon: float = 1e-5) -> Array:
    """Layer normalization (Ba et al. 2016): per example over all non-batch axes.

    For ``(N, C)`` that is the row-wise normalization of the lecture; for images
    ``(N, H, W, C)`` it normalizes each example over H, W and C. γ/β are per feature
    (last axis); ``None`` ablates them.
    """
    return _per_example_norm(x, scale, bias, groups=1, epsilon=epsilon, spatial_only=False)


def group_norm(x: Array, scale=None, bias=None, *, num_groups: int = 32, epsilon: float = 1e-5) -> Array:
    """Group normalization (Wu & He 2018): per example over spatial axes and each of
    ``num_groups`` contiguous channel groups. ``num_groups`` must divide the channels."""
    return _per_example_norm(x, scale, bias, groups=num_groups, epsilon=epsilon, spatial_only=False)


def instance_norm(x: Array, scale=None, bias=None, *, epsilon: float = 1e-5) -> Array:
    """Instance normalization (Ulyanov et al. 2016): per example and channel over the
    spatial axes. Needs at least one spatial axis with more than one position."""
    c = jnp.shape(x)[-1] if jnp.ndim(x) else 1
    return _per_example_norm(x, scale, bias, groups=c, epsilon=epsilon, spatial_only=True)


# --------------------------------------------------------------------------------------
# Weight re-parameterizations (applied to a kernel before it is used).


def _fan_in_axes(w: Array) -> tuple[int, ...]:
    """Every axis but the last (output) axis of a flax kernel ``(..., in, out)``."""
    if w.ndim < 2:
        raise ValueError(f"expected a kernel of shape (..., fan_in, fan_out), got {w.shape}.")
    return tuple(range(w.ndim - 1))


def weight_norm(v: Array, g: Optional[Array] = None, *, epsilon: float = 0.0) -> Array:
    """Weight normalization (Salimans & Kingma 2016): ``w = g * v / ||v||``.

    The norm is taken per output unit, over every axis but the last of a flax kernel
    ``(..., fan_in, fan_out)``. ``g`` is ``(fan_out,)``; ``None`` gives unit-norm columns.
    ``epsilon`` guards an all-zero column (0 reproduces the paper exactly).
    """
    _check_floating(v, "v")
    axes = _fan_in_axes(v)
    _check_features(g, v.shape[-1], "g")
    cdt = _compute_dtype(v.dtype)
    vc = v.astype(cdt)
    norm = jnp.sqrt(jnp.sum(jnp.square(vc), axis=axes, keepdims=True) + epsilon)
    w = vc / norm
    if g is not None:
        w = w * g.astype(cdt)
    return w.astype(v.dtype)


def weight_standardize(w: Array, *, epsilon: float = 1e-5) -> Array:
    """Weight standardization (Qiao et al. 2019): each output unit's weights get mean 0
    and variance 1 over its fan-in (every axis but the last of a flax kernel)."""
    _check_floating(w, "w")
    axes = _fan_in_axes(w)
    mean, var = _moments(w, axes)
    return _normalize(w, mean, var, None, None, epsilon)
