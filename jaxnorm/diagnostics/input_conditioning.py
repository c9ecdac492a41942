"""κ_X: the condition number of the per-example weight gradient w.r.t. the input
(“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, Defs. 3.4, 3.5 and eq. 3.16).

Per example ``(x, t)`` and perturbations δ_k of the input:

    κ_X(x) = max_k ‖h_W(w, x + δ_k, t) − h_W(w, x, t)‖ · ‖x‖ / (‖δ_k‖ · ‖h_W(w, x, t)‖)

averaged over the first ``m`` examples of the batch (eq. 3.16), with one shared set
Γ_n of n perturbations for every example (as the thesis computes it), or, for a
sampler whose directions depend on the example (interpolation), one set per example.

Input perturbation samplers (:data:`INPUT_PERTURBATIONS`,
:func:`input_perturbation_samples`), each scaled by η (default 0.001), the three the
thesis compares in Fig. 3.2 (§3.3):

* ``'targeted'`` (Def. 3.5): ``η ζ h_X(x_i) / ‖h_X(x_i)‖`` for n of the batch's input
  gradients, ζ uniform in {−1, +1}: norm η each; shared by every example;
* ``'uniform'``: every element drawn from the uniform distribution with the mean μ and
  standard deviation σ of the elements of the batch (``U(μ − √3σ, μ + √3σ)``), times η;
  shared by every example; norm ≈ η·√(D(μ² + σ²)) for D input elements;
* ``'interpolation'``: per example i and draw k, ``η (x_j − x_i)`` toward another
  element j ≠ i of the batch chosen uniformly (the point ``(1 − η) x_i + η x_j`` of the
  segment between them); one set per example, shape ``(n, m, ...)``.

The ratio of eq. 3.16 divides by ‖δ‖, so the samplers' different norms matter only
through the loss's nonlinearity at that scale. ``x`` is the network input (after
normalization); ``h_W`` the per-example weight gradient of
:mod:`jaxnorm.diagnostics.per_example` in ``'running'`` or ``'frozen'`` mode -- in
``'frozen'`` mode the batch statistics stay those of the unperturbed batch, so each
example's perturbation changes only its own gradient. (``'batch'``, the coupled definition, is not offered:
moving one input would move every example's statistics, which the definition does
not describe.)

Like κ_W, κ_X is a finite-difference ratio: for a loss twice differentiable in x its
δ → 0 limit is ``‖J δ̂‖·‖x‖/‖h_W‖`` (J = ∂h_W/∂x), <= the relative condition number
w.r.t. the input (Def. 3.3, ``‖J‖·‖x‖/‖h_W‖``), so it is a lower bound only in that
limit. At a finite η ReLU kinks crossed by the perturbation can put it above (the
BN/no-BN κ_X ratio of the conditioning study moved from 8.4× at η = 1e-5 to 33× at
1e-3 and 3.8× at 0.1, issue 14), and tiny η lose it to float32 round-off:
:func:`~jaxnorm.diagnostics.hessian_conditioning.kappa_x_sweep` evaluates it over an η
grid with a plateau verdict.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxnorm._registry import lookup
from jaxnorm.diagnostics._mapping import map_chunks
from jaxnorm.diagnostics.masking import GradientMask, flatten
from jaxnorm.diagnostics.per_example import _check, _chunks, _make_rows
from jaxnorm.diagnostics.step_consistency import DEFAULT_ETA

__all__ = [
    "INPUT_PERTURBATIONS",
    "input_perturbations",
    "input_perturbation_samples",
    "input_condition_number",
]


def input_perturbations(key: jax.Array, input_grads: jax.Array, n: int, *, eta: float = DEFAULT_ETA) -> jax.Array:
    """Def. 3.5: ``(n, ...)`` perturbations ``η ζ h_X(x_i)/‖h_X(x_i)‖`` for n randomly chosen
    examples of the batch's ``(b, ...)`` input gradients.

    Raises:
      ValueError: n < 1 or n > b, or η <= 0.
    """
    b = input_grads.shape[0]
    if not 1 <= n <= b:
        raise ValueError(f"need 1 <= n <= b input perturbations; got n={n}, b={b}.")
    if not eta > 0:
        raise ValueError(f"the perturbation scale eta must be > 0, got {eta}.")
    k_pick, k_sign = jax.random.split(key)
    chosen = input_grads[jax.random.permutation(k_pick, b)[:n]]
    flat = chosen.reshape(n, -1)
    scale = eta * jax.random.rademacher(k_sign, (n,), jnp.float32) / jnp.linalg.norm(flat, axis=1)
    return chosen * scale.reshape((n,) + (1,) * (chosen.ndim - 1))


def _targeted(key, x, n, m, eta, input_grads):
    if input_grads is None:
        raise ValueError("'targeted' input perturbations (Def. 3.5) need the input gradients (input_grads=...).")
    return input_perturbations(key, input_grads, n, eta=eta)


def _uniform(key, x, n, m, eta, input_grads):
    mu, sigma = jnp.mean(x), jnp.std(x)
    half = jnp.sqrt(3.0) * sigma  # U(μ − a, μ + a) has standard deviation a/√3
    return eta * jax.random.uniform(key, (n,) + x.shape[1:], jnp.float32, mu - half, mu + half)


def _interpolation(key, x, n, m, eta, input_grads):
    b = x.shape[0]
    if b < 2:
        raise ValueError("'interpolation' needs a batch of at least two examples.")
    # j = i + s (mod b) with s uniform in [1, b − 1]: uniform over the other examples.
    shift = jax.random.randint(key, (n, m), 1, b)
    j = (jnp.arange(m)[None] + shift) % b
    return eta * (x[j] - x[:m][None])


#: name -> sampler(key, x, n, m, eta, input_grads); see the module docstring.
INPUT_PERTURBATIONS: dict[str, Callable] = {
    "targeted": _targeted,
    "uniform": _uniform,
    "interpolation": _interpolation,
}
#: Samplers whose draws depend on the example: ``(n, m, ...)`` instead of ``(n, ...)``.
PER_EXAMPLE_SAMPLERS = ("interpolation",)


def input_perturbation_samples(
    kind: str,
    key: jax.Array,
    x: jax.Array,
    n: int,
    *,
    eta: float = DEFAULT_ETA,
    m: Optional[int] = None,
    input_grads: Optional[jax.Array] = None,
) -> jax.Array:
    """``n`` input perturbations of the batch ``x (b, ...)`` by the sampler ``kind``.

    Args:
      kind: ``'targeted'``, ``'uniform'`` or ``'interpolation'`` (module docstring).
      key: PRNG key.
      x: the batch (network inputs after normalization).
      n: number of draws.
      eta: the scale η.
      m: examples perturbed (``'interpolation'`` only; default the whole batch).
      input_grads: the batch's input gradients ``(b, ...)`` (``'targeted'``).

    Returns:
      ``(n, *x.shape[1:])``, shared by every example, or ``(n, m, *x.shape[1:])`` for
      ``'interpolation'`` -- both accepted by :func:`input_condition_number`.

    Raises:
      ValueError: unknown kind, n < 1 (or n > b for targeted), η <= 0, m outside
        [1, b], or what the kind needs is missing.
    """
    sampler = lookup(INPUT_PERTURBATIONS, kind, "input perturbation")
    b = x.shape[0]
    m = b if m is None else m
    if n < 1:
        raise ValueError(f"need n >= 1 input perturbations, got {n}.")
    if not eta > 0:
        raise ValueError(f"the perturbation scale eta must be > 0, got {eta}.")
    if not 1 <= m <= b:
        raise ValueError(f"m must lie in [1, {b}], got {m}.")
    return sampler(key, x, n, m, eta, input_grads)


def input_condition_number(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    bn_mode: str = "frozen",
    n: int = 8,
    m: Optional[int] = None,
    eta: float = DEFAULT_ETA,
    perturbations: Optional[jax.Array] = None,
    mask: Optional[GradientMask] = None,
    chunk_size: Optional[int] = None,
    weight_decay: float = 0.0,
    per_example: bool = False,
    ratios: bool = False,
):
    """Mean κ_X (eq. 3.16) over the first ``m`` examples of the batch.

    Args:
      module, variables, x, y: as :func:`~jaxnorm.diagnostics.per_example.per_example_grads`.
      key: draws the targeted perturbations (unused if ``perturbations`` is given).
      bn_mode: ``'running'`` or ``'frozen'`` (:mod:`jaxnorm.modes`).
      n: number of perturbations in Γ_n (<= b).
      m: examples averaged over (default: the whole batch).
      eta: perturbation scale η.
      perturbations: ``(n, *x.shape[1:])`` (one set shared by every example) or
        ``(n, m, *x.shape[1:])`` (one set per example, e.g. ``'interpolation'`` of
        :func:`input_perturbation_samples`) to use instead of the targeted ones.
      mask: gradient coordinates the norms are taken on (§1.6).
      chunk_size: examples per vectorized chunk.
      weight_decay: as in :func:`per_example_grads` (changes ``h_W`` by λW).
      per_example: also return the ``(m,)`` per-example values.
      ratios: return every term of eq. 3.16 instead, before the max over δ and the mean
        over examples: ``(n, m)`` ratios ``‖h_W(x_i + δ_k) − h_W(x_i)‖·‖x_i‖ /
        (‖δ_k‖·‖h_W(x_i)‖)`` (δ_k the k-th shared draw, or example i's own k-th draw);
        a comparison of samplers (thesis Fig. 3.2) bootstraps the expected max over
        subsets of the draws from them.

    Returns:
      the mean κ_X (float32 scalar), ``(mean, per_example_values)``, or with ``ratios``
      the ``(n, m)`` terms.

    Raises:
      ValueError: bn_mode ``'batch'`` or unknown; m outside [1, b]; a perturbation
        array of the wrong shape; and the errors of :func:`input_perturbations`.
    """
    terms = _ratios(module, variables, x, y, key, bn_mode, n, m, eta, perturbations, mask, chunk_size, weight_decay)
    if ratios:
        return terms
    per = jnp.max(terms, axis=0)
    mean = jnp.mean(per)
    return (mean, per) if per_example else mean


def _ratios(module, variables, x, y, key, bn_mode, n, m, eta, perturbations, mask, chunk_size, weight_decay):
    """The ``(n, m)`` terms of eq. 3.16 (see :func:`input_condition_number`'s ``ratios``)."""
    _check(variables, x, y, bn_mode, "both", chunk_size)
    if bn_mode == "batch":
        raise ValueError("κ_X is defined per example: use bn_mode='frozen' (training statistics held fixed) or 'running'.")
    b = x.shape[0]
    m = b if m is None else m
    if not 1 <= m <= b:
        raise ValueError(f"m must lie in [1, {b}], got {m}.")
    rows = _make_rows(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, rng=None)
    idx = _chunks(m, chunk_size)

    def grads_at(xs=None):
        def chunk(i):
            gp, gx = rows.fn(i, xs)
            return flatten(gp, 1, mask), gx

        if idx.shape[0] == 1:
            return chunk(idx[0])
        out = map_chunks(chunk, idx)
        return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:m], out)

    g0, hx = grads_at()
    if perturbations is None:
        # The targeted directions come from the input gradients of the whole batch.
        hx_all = hx if m == b else rows.fn(jnp.arange(b))[1]
        perturbations = input_perturbations(key, hx_all, n, eta=eta)
    shared = perturbations.shape[1:] == x.shape[1:]
    if not shared and perturbations.shape[1:] != (m,) + x.shape[1:]:
        dims = ", ".join(map(str, x.shape[1:]))
        raise ValueError(f"perturbations must be (n, {dims}) or (n, m={m}, {dims}), got {perturbations.shape}.")
    xm = x[:m]
    x_norm = jnp.linalg.norm(xm.reshape(m, -1), axis=1)
    g0_norm = jnp.linalg.norm(g0, axis=1)

    def ratio(delta):
        d = jnp.broadcast_to(delta, (m,) + x.shape[1:])
        gk, _ = grads_at(x.at[:m].add(d))
        return jnp.linalg.norm(gk - g0, axis=1) * x_norm / (jnp.linalg.norm(d.reshape(m, -1), axis=1) * g0_norm)

    return map_chunks(ratio, perturbations)
