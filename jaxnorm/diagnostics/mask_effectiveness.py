"""How well random gradient masks preserve each metric (“Gradient Conditioning in Deep
Neural Networks”, BYU thesis 2022, §1.6; mask-effectiveness Figs. 2.3, 3.1, 3.6, 3.14,
3.15, 3.18, 4.1, 4.2).

A mask (:func:`~jaxnorm.diagnostics.masking.random_mask`) keeps a random fraction p of
every parameter leaf's coordinates, and every metric computed with ``mask=`` takes its
norms and inner products on those coordinates only. Its error is therefore a function
of *which coordinates* are kept, not of the gradients' randomness: with the gradients
fixed, ``metric(mask) = metric(full vectors restricted to the mask's coordinates)``.
:func:`mask_parts` computes, once, every full flat vector the metrics need; and
:func:`metrics_on` evaluates every metric on a coordinate subset of them, so that many
masks of many fractions cost a column selection each instead of a new gradient
computation. The same sets of draws (batches, perturbations) are used for every mask,
so the error is the mask's alone.

Metrics (names as in :data:`jaxnorm.observers.METRICS`): ``kappa_w`` (Def. 2.5) and the
Def. 4.1 forms ``min_cosine``, ``weight_gradient_diversity``,
``weight_gradient_coherence`` (limited-targeted draws ±ḡ/‖ḡ‖_∞, training's batch
gradients); ``weight_rank`` (Def. 3.7) and ``coherence`` (Def. 3.13) of one batch's
per-example gradients (BatchNorm statistics frozen); ``confusion`` (Def. 3.11) and
``diversity`` (Def. 3.12) over ``num_batches`` batch gradients; ``kappa_x`` (eq. 3.16,
targeted draws, Def. 3.5). κ_X uses BatchNorm's *running* statistics here (each example
independent of the others, so the perturbed examples' gradients are one per-example
pass); the conditioning study's κ_X uses the frozen batch statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.diagnostics.dissonance import confusion_from_gram, gradient_coherence, gradient_diversity
from jaxnorm.diagnostics.effective_rank import relative_gradient_rank
from jaxnorm.diagnostics.input_conditioning import input_perturbations
from jaxnorm.diagnostics.masking import GradientMask, flatten
from jaxnorm.diagnostics.per_example import batch_loss_fn, per_example_grads
from jaxnorm.diagnostics.step_consistency import (
    DEFAULT_ETA,
    kappa_w,
    min_cosine_similarity,
    weight_gradient_coherence,
    weight_gradient_diversity,
    weight_perturbations,
)

__all__ = ["MASKED_METRICS", "MaskParts", "flat_indices", "mask_parts", "metrics_on", "relative_errors"]

MASKED_METRICS = ("kappa_w", "min_cosine", "weight_gradient_diversity", "weight_gradient_coherence", "weight_rank",
                  "coherence", "confusion", "diversity", "kappa_x")  # fmt: skip


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MaskParts:
    """Full flat vectors (length P, the number of parameters) behind every metric.

    Attributes:
      w: the weights; g0: the batch gradient; gk, omegas: the gradients at the ``(n_w, P)``
        weight perturbations and the perturbations; per_example: ``(b, P)`` per-example
        gradients; batch_grads: ``(num_batches, P)``; hx0: ``(m, P)`` per-example gradients
        of κ_X's examples, hxk: ``(n_x, m, P)`` at the perturbed inputs; x_norm: ``(m,)``
        ‖x_i‖; delta_norm: ``(n_x,)`` ‖δ_k‖.
    """

    w: jax.Array
    g0: jax.Array
    gk: jax.Array
    omegas: jax.Array
    per_example: jax.Array
    batch_grads: jax.Array
    hx0: jax.Array
    hxk: jax.Array
    x_norm: jax.Array
    delta_norm: jax.Array


def flat_indices(mask: GradientMask) -> np.ndarray:
    """The mask's coordinates as indices into :func:`flatten`'s unmasked vector (leaf
    offsets added): ``flatten(t, mask=mask) == flatten(t)[..., flat_indices(mask)]``."""
    offsets = np.concatenate([[0], np.cumsum(mask.sizes)[:-1]]).astype(np.int64)
    return np.concatenate([o + i for o, i in zip(offsets, mask.indices)]).astype(np.int32)


def mask_parts(module, variables, xs, ys, *, key, n_x: int = 8, m: int = 16, eta: float = DEFAULT_ETA) -> MaskParts:
    """Every full vector of the module docstring on the batches ``xs (num_batches, b, ...)``
    (network inputs), ``ys (num_batches, b)``: batch 0 for κ_W, Def. 4.1, the per-example
    metrics and κ_X, all batches for confusion and diversity.

    Raises:
      ValueError: fewer than two batches, or m / n_x outside [1, b].
    """
    xs, ys = jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.int32)
    nb, b = ys.shape
    if nb < 2 or not (1 <= m <= b and 1 <= n_x <= b):
        raise ValueError(f"need >= 2 batches and 1 <= m, n_x <= b={b}; got {nb} batches, m={m}, n_x={n_x}.")
    # One compiled program for every vector (compiled once per module and sizes; inside a
    # caller's jit it is inlined): op by op, the per-example and perturbed gradients of a
    # trained network would compile each of their ops.
    return _mask_parts(module, variables, xs, ys, key, n_x, m, eta)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _mask_parts(module, variables, xs, ys, key, n_x, m, eta) -> MaskParts:
    x, y, params = xs[0], ys[0], variables["params"]
    k_w, k_x = jax.random.split(key)
    loss = batch_loss_fn(module, variables, x, y, bn_mode="batch")
    grad = jax.grad(loss)
    g0 = grad(params)
    omegas = weight_perturbations("limited_targeted", k_w, params, 2, eta=eta, mean_grad=g0)
    gk = jax.vmap(lambda om: grad(jax.tree.map(jnp.add, params, om)))(omegas)
    per_example = flatten(per_example_grads(module, variables, x, y, bn_mode="frozen"), 1)
    batch_grads = flatten(jax.vmap(lambda a, t: jax.grad(batch_loss_fn(module, variables, a, t, bn_mode="batch"))(params))(xs, ys), 1)
    gp_x, gx = per_example_grads(module, variables, x, y, bn_mode="running", wrt="both")
    deltas = input_perturbations(k_x, gx, n_x, eta=eta)
    xk = (x[:m][None] + deltas[:, None]).reshape((n_x * m,) + x.shape[1:])
    hxk = flatten(per_example_grads(module, variables, xk, jnp.tile(y[:m], n_x), bn_mode="running"), 1)
    return MaskParts(
        w=flatten(params), g0=flatten(g0), gk=flatten(gk, 1), omegas=flatten(omegas, 1), per_example=per_example,
        batch_grads=batch_grads, hx0=flatten(gp_x, 1)[:m], hxk=hxk.reshape(n_x, m, -1),
        x_norm=jnp.linalg.norm(x[:m].reshape(m, -1), axis=1), delta_norm=jnp.linalg.norm(deltas.reshape(n_x, -1), axis=1),
    )  # fmt: skip


def metrics_on(parts: MaskParts, idx=None) -> dict[str, jax.Array]:
    """Every metric of :data:`MASKED_METRICS` on the coordinates ``idx`` of the parts
    (None: all): what the library computes with a mask of those coordinates."""
    sel = (lambda a: a) if idx is None else (lambda a: jnp.take(a, jnp.asarray(idx), axis=-1))
    g0, gk, g = sel(parts.g0), sel(parts.gk), sel(parts.per_example)
    bg, hx0, hxk = sel(parts.batch_grads), sel(parts.hx0), sel(parts.hxk)
    norm = jnp.linalg.norm
    kx = norm(hxk - hx0[None], axis=-1) * parts.x_norm[None] / (parts.delta_norm[:, None] * norm(hx0, axis=-1)[None])
    return {
        "kappa_w": kappa_w(g0, gk, sel(parts.omegas), sel(parts.w)),
        "min_cosine": min_cosine_similarity(g0, gk),
        "weight_gradient_diversity": weight_gradient_diversity(gk),
        "weight_gradient_coherence": weight_gradient_coherence(g0, gk),
        "weight_rank": relative_gradient_rank(g),
        "coherence": gradient_coherence(g),
        "confusion": confusion_from_gram(bg @ bg.T),
        "diversity": gradient_diversity(bg),
        "kappa_x": jnp.mean(jnp.max(kx, axis=0)),
    }


def relative_errors(parts: MaskParts, masks: Sequence[GradientMask]) -> tuple[dict[str, np.ndarray], list[str]]:
    """``|metric(mask) − metric(all)| / |metric(all)|`` per metric, one value per mask
    (``(len(masks),)`` each; masks of one size share a compiled evaluation), and the
    metrics whose unmasked value is exactly 0 (confusion when no pair of batch gradients
    points apart), for which the error is absolute instead."""
    run = jax.jit(metrics_on)
    full = {k: float(v) for k, v in run(parts).items()}
    absolute = [k for k, v in full.items() if v == 0]
    errs = {k: [] for k in full}
    for mask in masks:
        got = run(parts, flat_indices(mask))
        for k in full:
            errs[k].append(abs(float(got[k]) - full[k]) / (1.0 if k in absolute else abs(full[k])))
    return {k: np.asarray(v) for k, v in errs.items()}, absolute
