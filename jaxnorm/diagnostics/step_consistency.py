"""Gradient step-consistency: the weight-space condition number κ_W and its companions
(“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, Defs. 2.5-2.7 and 4.1).

Notation: ``ḡ(w) = ∇ L(w; χ)``, the mean gradient of one batch χ at weights w (from a
matrix-free ``loss(params) -> scalar``, e.g.
:func:`~jaxnorm.diagnostics.per_example.batch_loss_fn`); ``ω_k`` small weight
perturbations; ``‖·‖`` the 2-norm of the flattened pytree (every parameter: weights,
biases, γ, β).

* κ_W (Def. 2.5, the approximate best lower bound on the relative condition number of
  the gradient w.r.t. the weights, same batch i = j):
  ``max_k ‖ḡ(w + ω_k) − ḡ(w)‖ · ‖w‖ / (‖ω_k‖ · ‖ḡ(w)‖)``.
  Its η → 0 limit is the directional ``max_k ‖H ω̂_k‖·‖w‖/‖ḡ‖`` (H the Hessian of the
  loss), which for a twice-differentiable loss is <= Def. 2.4's relative condition
  number ``‖H‖₂·‖w‖/‖ḡ‖`` -- the "lower bound" of the definition's title holds *in the
  limit*. At a finite η it need not: third-order terms, and for ReLU nets the gradient
  jumps at activation kinks crossed by the step, can put κ_W above the directional
  value and above ‖H‖₂·‖w‖/‖ḡ‖ (an 11-layer ReLU net on digits: 418 at η = 1e-3
  against a directional 72.3); very small η lose it to float32 round-off instead.
  Check the η before reading κ_W as a condition number:
  :func:`~jaxnorm.diagnostics.hessian_conditioning.kappa_w_sweep` (plateau verdict),
  :func:`~jaxnorm.diagnostics.hessian_conditioning.hessian_condition_number` (Def. 2.4
  and the directional form, from HVPs).
* Def. 4.1, step-consistency forms of the batch-dissonance metrics over the perturbed
  gradients ``ḡ_k = ḡ(w + ω_k)``: the minimum weight-gradient cosine similarity
  ``min_k cos(ḡ_k, ḡ(w))`` (eq. 4.1), the weight-gradient diversity
  ``Σ‖ḡ_k‖² / ‖Σ ḡ_k‖²`` (4.2) and the weight-gradient coherence
  ``Σ<ḡ(w), ḡ_k> / Σ‖ḡ_k‖²`` (4.3).

Perturbation samplers (:func:`weight_perturbations`), each scaled by η (default 0.001):

* ``'targeted'`` (Def. 2.6): ``η ζ g_i / ‖g_i‖`` for n of the batch's per-example
  gradients g_i, ζ uniform in {−1, +1};
* ``'limited_targeted'`` (Def. 2.7): ``±η ḡ / ‖ḡ‖_∞`` (at most two: n ∈ {1, 2}; with
  n = 1 the sign is random) -- what the thesis used for its results;
* ``'random'``: per parameter leaf, Gaussian with the mean and standard deviation of
  that leaf's weights, times η (the thesis's random baseline, §2.3: "elements drawn
  from a normal distribution with the same mean and standard deviation as the weights
  being perturbed"). Its size is relative to each leaf's magnitude
  (``E‖ω_leaf‖² = η²‖w_leaf‖²``), so a leaf whose values are all equal gets no random
  direction at all: zero-initialized biases and BatchNorm's β (mean 0, std 0) are
  *not perturbed* (ω = 0 there), and γ = 1 gets the same constant shift η in every
  sample. At initialization this sampler therefore explores only the kernels.
* ``'random_isotropic'``: one isotropic Gaussian direction over *all* coordinates
  (biases, γ and β included), scaled to ``‖ω‖ = η‖w‖`` -- the norm the ``'random'``
  sampler has in expectation, without its blind spots. Not in the thesis; offered so
  that the random baseline can be read with every parameter moving.

The nearly free in-training estimate (thesis §2.2) -- ω the SGD step itself -- is
:func:`sgd_step_condition_number`; :mod:`jaxnorm.diagnostics.step_tracker` computes
it inside the optimizer at every step.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxnorm._registry import lookup
from jaxnorm.diagnostics.dissonance import gradient_diversity
from jaxnorm.diagnostics._mapping import map_batched
from jaxnorm.diagnostics.masking import GradientMask, flatten

__all__ = [
    "PERTURBATIONS",
    "weight_perturbations",
    "weight_space_metrics",
    "kappa_w",
    "min_cosine_similarity",
    "weight_gradient_diversity",
    "weight_gradient_coherence",
    "sgd_step_condition_number",
]

DEFAULT_ETA = 1e-3


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(l.astype(jnp.float32))) for l in jax.tree.leaves(tree)))


def _targeted(key, params, n, eta, per_example, mean_grad):
    if per_example is None:
        raise ValueError("'targeted' perturbations (Def. 2.6) need the per-example gradients (per_example=...).")
    b = jax.tree.leaves(per_example)[0].shape[0]
    if n > b:
        raise ValueError(f"'targeted' draws n <= b per-example gradients; got n={n}, b={b}.")
    k_pick, k_sign = jax.random.split(key)
    pick = jax.random.permutation(k_pick, b)[:n]
    chosen = jax.tree.map(lambda a: a[pick], per_example)
    norms = jax.vmap(_tree_norm)(chosen)
    sign = jax.random.rademacher(k_sign, (n,), jnp.float32)
    scale = eta * sign / norms
    return jax.tree.map(lambda a: a * scale.reshape((n,) + (1,) * (a.ndim - 1)), chosen)


def _limited_targeted(key, params, n, eta, per_example, mean_grad):
    if mean_grad is None:
        raise ValueError("'limited_targeted' perturbations (Def. 2.7) need the batch gradient (mean_grad=...).")
    if n not in (1, 2):
        raise ValueError(f"'limited_targeted' has at most two directions (±ḡ/‖ḡ‖_∞): n must be 1 or 2, got {n}.")
    inf = jnp.max(jnp.stack([jnp.max(jnp.abs(l)) for l in jax.tree.leaves(mean_grad)]))
    signs = jnp.array([1.0, -1.0]) if n == 2 else jax.random.rademacher(key, (1,), jnp.float32)
    return jax.tree.map(lambda g: (eta * signs / inf).reshape((n,) + (1,) * g.ndim) * g[None], mean_grad)


def _random(key, params, n, eta, per_example, mean_grad):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = [
        eta * (jnp.mean(w) + jnp.std(w) * jax.random.normal(k, (n,) + w.shape, jnp.float32))
        for w, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, out)


def _random_isotropic(key, params, n, eta, per_example, mean_grad):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    z = [jax.random.normal(k, (n,) + w.shape, jnp.float32) for w, k in zip(leaves, keys)]
    z_norm = jnp.sqrt(sum(jnp.sum(jnp.square(a).reshape(n, -1), axis=1) for a in z))
    scale = eta * _tree_norm(params) / z_norm
    return jax.tree.unflatten(treedef, [a * scale.reshape((n,) + (1,) * (a.ndim - 1)) for a in z])


PERTURBATIONS: dict[str, Callable] = {
    "targeted": _targeted,
    "limited_targeted": _limited_targeted,
    "random": _random,
    "random_isotropic": _random_isotropic,
}


def weight_perturbations(
    kind: str,
    key: jax.Array,
    params: Any,
    n: int,
    *,
    eta: float = DEFAULT_ETA,
    per_example: Any = None,
    mean_grad: Any = None,
) -> Any:
    """``n`` weight perturbations ω_k, a params-shaped pytree with a leading ``(n,)`` axis.

    Args:
      kind: ``'targeted'``, ``'limited_targeted'``, ``'random'`` or ``'random_isotropic'``
        (module docstring; ``'random'`` leaves constant leaves such as zero biases and
        β unperturbed).
      key: PRNG key.
      params: the weights w.
      n: number of perturbations.
      eta: the scale η.
      per_example: per-example gradients ``(b, ...)`` (``'targeted'``).
      mean_grad: the batch gradient ḡ (``'limited_targeted'``).

    Raises:
      ValueError: unknown kind, n < 1, η <= 0, or what the kind needs is missing or
        too small (n > b for targeted, n > 2 for limited targeted).
    """
    sampler = lookup(PERTURBATIONS, kind, "weight perturbation")
    if n < 1:
        raise ValueError(f"need n >= 1 perturbations, got {n}.")
    if not eta > 0:
        raise ValueError(f"the perturbation scale eta must be > 0, got {eta}.")
    return sampler(key, params, n, eta, per_example, mean_grad)


# ---------------------------------------------------------------- metrics on flat vectors


def kappa_w(g0: jax.Array, gk: jax.Array, omegas: jax.Array, w: jax.Array) -> jax.Array:
    """κ_W (Def. 2.5) from flat vectors: ``g0 (P,)`` = ḡ(w), ``gk (n, P)`` = ḡ(w + ω_k),
    ``omegas (n, P)``, ``w (P,)``. NaN if ḡ(w) = 0."""
    num = jnp.linalg.norm(gk - g0[None], axis=1) * jnp.linalg.norm(w)
    den = jnp.linalg.norm(omegas, axis=1) * jnp.linalg.norm(g0)
    return jnp.where(jnp.all(den > 0), jnp.max(num / jnp.where(den > 0, den, 1.0)), jnp.nan)


def min_cosine_similarity(g0: jax.Array, gk: jax.Array) -> jax.Array:
    """``min_k cos(ḡ(w + ω_k), ḡ(w))`` (Def. 4.1, eq. 4.1; no clipping at 0)."""
    cos = (gk @ g0) / (jnp.linalg.norm(gk, axis=1) * jnp.linalg.norm(g0))
    return jnp.min(cos)


def weight_gradient_diversity(gk: jax.Array) -> jax.Array:
    """``Σ‖ḡ_k‖² / ‖Σ ḡ_k‖²`` (Def. 4.1, eq. 4.2): gradient diversity over perturbed weights."""
    return gradient_diversity(gk)


def weight_gradient_coherence(g0: jax.Array, gk: jax.Array) -> jax.Array:
    """``Σ_k <ḡ(w), ḡ_k> / Σ_k ‖ḡ_k‖²`` (Def. 4.1, eq. 4.3)."""
    return jnp.sum(gk @ g0) / jnp.sum(jnp.square(gk))


def sgd_step_condition_number(g_before, g_after, params_before, step) -> jax.Array:
    """The in-training κ_W estimate with ω = the optimizer's step (thesis §2.2):
    ``‖ḡ(w + Δw) − ḡ(w)‖ · ‖w‖ / (‖Δw‖ · ‖ḡ(w)‖)``; for plain SGD ``Δw = −lr ḡ(w)``,
    which is the thesis's ``… / (lr ‖ḡ(w)‖²)``. Pytrees or flat vectors.

    With ``g_after`` from the next training batch (i ≠ j) it is the thesis's noted
    approximation: the batch change adds to the gradient change."""
    diff = jax.tree.map(jnp.subtract, g_after, g_before)
    return _tree_norm(diff) * _tree_norm(params_before) / (_tree_norm(step) * _tree_norm(g_before))


# ---------------------------------------------------------------- from a loss function


def weight_space_metrics(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    perturbations: Any,
    *,
    mask: Optional[GradientMask] = None,
    chunk_size: Optional[int] = None,
    per_perturbation: bool = False,
) -> dict[str, jax.Array]:
    """κ_W (Def. 2.5) and the three Def. 4.1 metrics from one set of perturbed gradients.

    Args:
      loss_fn: ``loss(params) -> scalar`` for one fixed batch (same batch i = j).
      params: the weights w.
      perturbations: ω_k with a leading ``(n,)`` axis (:func:`weight_perturbations`).
      mask: compute every norm and inner product on these coordinates only (§1.6).
      chunk_size: perturbed gradients evaluated this many at a time (None: all at once).
      per_perturbation: also return each perturbation's own terms before the max / min
        over k, ``'ratio'`` ``(n,)`` = ``‖ḡ(w + ω_k) − ḡ(w)‖·‖w‖ / (‖ω_k‖·‖ḡ(w)‖)`` and
        ``'cosine'`` ``(n,)`` = ``cos(ḡ(w + ω_k), ḡ(w))``: what a comparison of samplers
        needs (thesis Figs. 2.4 and 4.3 estimate the expected max / min over 16 of 64
        draws by bootstrap).

    Returns:
      ``{'kappa_w', 'min_cosine', 'weight_gradient_diversity',
      'weight_gradient_coherence'}``, float32 scalars (plus ``'ratio'``, ``'cosine'``).
    """
    grad = jax.grad(loss_fn)
    g0 = grad(params)
    gk = map_batched(lambda om: grad(jax.tree.map(jnp.add, params, om)), perturbations, chunk_size)
    f0, fk, om, w = flatten(g0, 0, mask), flatten(gk, 1, mask), flatten(perturbations, 1, mask), flatten(params, 0, mask)
    out = {
        "kappa_w": kappa_w(f0, fk, om, w),
        "min_cosine": min_cosine_similarity(f0, fk),
        "weight_gradient_diversity": weight_gradient_diversity(fk),
        "weight_gradient_coherence": weight_gradient_coherence(f0, fk),
    }
    if per_perturbation:
        n = jnp.linalg.norm
        out["ratio"] = n(fk - f0[None], axis=1) * n(w) / (n(om, axis=1) * n(f0))
        out["cosine"] = (fk @ f0) / (n(fk, axis=1) * n(f0))
    return out

