"""The Hessian form of the weight condition number, and the step-size sweep that says
whether a finite-difference κ_W measures it.

Source: "Gradient Conditioning in Deep Neural Networks" (master thesis, Brigham Young
University, 2022), Defs. 2.4 and 2.5 (weights) and 3.4 (inputs). Notation as in
:mod:`~jaxnorm.diagnostics.step_consistency`: ``g = ḡ(w) = ∇L(w; χ)`` the gradient of a
``loss(params) -> scalar`` for one fixed batch, ``H`` its Hessian at ``w``, ``‖·‖`` the
2-norm of the flattened pytree (every parameter).

* :func:`hessian_condition_number` -- Def. 2.4, the relative condition number of the
  gradient w.r.t. the weights, ``κ = ‖H‖₂·‖w‖/‖g‖`` (eq. 2.20), ``‖H‖₂ = max|λ(H)|``
  estimated by Lanczos started from ``ĝ = g/‖g‖``; and beside it the *directional* form
  ``‖H ĝ‖·‖w‖/‖g‖``.
* :func:`directional_condition_number` -- ``max_k ‖H d̂_k‖·‖w‖/‖g‖`` for any directions
  ``d_k`` (default ``ĝ``): the η → 0 limit of Def. 2.5's ratio for ω_k = η d_k.
* :func:`kappa_w_sweep` -- Def. 2.5's finite-difference κ_W over a grid of step sizes η
  (absolute, or relative to ‖w‖), its limit, and a plateau verdict
  (:func:`plateau`); :func:`kappa_x_sweep`, the same for κ_X (Def. 3.4, eq. 3.16).

**Which limit the finite difference has.** For ω = η d̂ (unit d̂) and a loss twice
differentiable at w, ``ḡ(w + ηd̂) − ḡ(w) = η H d̂ + r(η)`` with ``‖r(η)‖ = o(η)``, so
Def. 2.5's ratio ``‖ḡ(w + ω) − ḡ(w)‖·‖w‖/(‖ω‖·‖g‖)`` tends to ``‖H d̂‖·‖w‖/‖g‖`` as
η → 0 (for either sign of ω). The thesis's limited-targeted perturbations (Def. 2.7)
``±η ḡ/‖ḡ‖_∞`` are parallel to ḡ, so κ_W with them tends to the directional form
``‖H ĝ‖·‖w‖/‖g‖`` (= ``‖H ḡ‖·‖w‖/‖ḡ‖²``), not to Def. 2.4's value; with n targeted
perturbations (Def. 2.6) it tends to ``max_k ‖H ĝ_k‖·‖w‖/‖g‖`` over the chosen
per-example gradient directions ĝ_k.

**When κ_W is a lower bound of Def. 2.4's value.** ``‖H d̂‖ ≤ ‖H‖₂`` for every unit d̂,
so for a loss twice differentiable at w the limit of κ_W is ≤ κ (Def. 2.4), with
equality only along a top eigenvector: that is Theorem 1.6 / eq. 2.23, "κ + o(ε) ≥ the
ratio". At a *finite* η the o(ε) term is not zero and nothing bounds its sign: the ratio
can exceed the directional limit and even ‖H‖₂·‖w‖/‖g‖ -- always possible for a smooth
loss at large η (third-order terms), and typical for ReLU networks at practical η,
whose gradient is piecewise smooth: once a step crosses an activation kink the
gradient jumps by an amount that does not shrink with η, so the ratio carries a
``jump/η`` term, and the Hessian (almost everywhere that of the activation region w lies
in) does not see the jump at all. Only for η below the distance to the nearest kink
crossing does the ReLU ratio return to the directional value of w's region (if float32
round-off has not taken over first, below). Measured: an 11-layer orthogonal ReLU net
on digits read κ_W = 418 at the thesis's η = 1e-3 against a directional value of 72.3
(issue 14); the 96-parameter ReLU net of the tests reads 15.4 at η = 3e-3 against a
directional 6.16 and a Def. 2.4 value of 14.0, while its tanh twin stays within 1% of
its directional 5.82 from η = 1e-5 to 0.1.

**Round-off.** In float32 (unit roundoff u = 2⁻²⁴ ≈ 6e-8) the computed difference
``fl(ḡ(w + ω)) − fl(ḡ(w))`` carries the rounding errors e_g of the two gradient
computations (about u‖g‖ times a modest constant), and ``w + ω`` itself is rounded by
up to ``u·‖w‖``, which moves the gradient by up to ``u·‖H‖₂·‖w‖``. Divided by the true
difference ``‖ω‖·‖H d̂‖``, the relative error of the ratio is at most about

    ρ = (2 e_g + u ‖H‖₂ ‖w‖) / (‖ω‖ ‖H d̂‖),

so round-off dominates once ‖ω‖ falls below ``(2 e_g + u‖H‖₂‖w‖)/(rtol·‖H d̂‖)`` for an
error rtol. ‖ω‖ is η for unit directions, η‖w‖ with ``relative=True`` and
``η‖ḡ‖₂/‖ḡ‖_∞`` for Def. 2.7's. ρ is a worst case (every rounding aligned with the top
eigenvector): on the tests' tanh net it is 10-100× the measured error, which is about
5% at η = 3e-7 and below 0.2% from η = 1e-5.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnorm._precision import as_working
from jaxnorm.diagnostics._mapping import map_batched
from jaxnorm.diagnostics.hessian import _lanczos_flat, flat_hvp, hvp
from jaxnorm.diagnostics.input_conditioning import input_condition_number, input_perturbations
from jaxnorm.diagnostics.masking import GradientMask, flatten
from jaxnorm.diagnostics.per_example import per_example_grads
from jaxnorm.diagnostics.step_consistency import kappa_w, weight_perturbations

__all__ = [
    "HessianConditioning",
    "hessian_condition_number",
    "directional_condition_number",
    "Plateau",
    "plateau",
    "KappaSweep",
    "kappa_w_sweep",
    "kappa_x_sweep",
]

Loss = Callable[[Any], jax.Array]


def _norm(tree) -> jax.Array:
    flat, _ = ravel_pytree(tree)
    return jnp.linalg.norm(as_working(flat))


def _safe_ratio(num, den):
    # NaN, not inf, where the gradient vanishes: the relative condition number is undefined there.
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


class HessianConditioning(NamedTuple):
    """Scalars in the working precision (float32; float64 for float64 parameters).

    ``kappa``: Def. 2.4, ``‖H‖₂·‖w‖/‖g‖``; ``directional``: ``‖H ĝ‖·‖w‖/‖g‖`` (the η → 0
    limit of κ_W with the Def. 2.7 perturbations); ``hessian_norm``: the estimate of
    ``‖H‖₂ = max|λ(H)|``; ``hg_norm``: ``‖H ĝ‖``; ``grad_norm``: ``‖g‖``; ``param_norm``:
    ``‖w‖``. ``directional <= kappa`` always (the estimate of ‖H‖₂ includes ‖Hĝ‖)."""

    kappa: jax.Array
    directional: jax.Array
    hessian_norm: jax.Array
    hg_norm: jax.Array
    grad_norm: jax.Array
    param_norm: jax.Array


def hessian_condition_number(loss_fn: Loss, params: Any, *, order: int = 20, v0: Any = None) -> HessianConditioning:
    """Def. 2.4 (eq. 2.20), ``κ = ‖H‖₂·‖w‖/‖g‖``, and its directional form ``‖Hĝ‖·‖w‖/‖g‖``.

    ``‖H‖₂`` (H symmetric: the largest |eigenvalue|) is estimated by ``order`` Lanczos
    steps (:mod:`~jaxnorm.diagnostics.hessian`, full reorthogonalization) started from
    ``ĝ`` (or ``v0``) as ``max(max|Ritz value|, ‖Hĝ‖)``. Every term is ‖H v‖ or a Ritz
    value for some unit v, so the estimate is a *lower bound* of ‖H‖₂ that rises with
    ``order`` and is exact at ``order`` = the number of parameters; starting from ĝ makes
    ``‖Hĝ‖ = √(α₁² + β₁²) <= max|Ritz|`` for order >= 2, so the two forms share one
    Krylov space. (Started exactly on an eigenvector, Lanczos stops after one step and
    the estimate is that eigenvalue: pass another ``v0``.)

    Args:
      loss_fn: ``loss(params) -> scalar`` for one fixed batch, e.g.
        :func:`~jaxnorm.diagnostics.hessian.hessian_loss_fn`; differentiable twice
        (almost everywhere, for ReLU nets: then H is the Hessian of the activation region
        w lies in, which the finite-difference κ_W can disagree with; module docstring).
      params: the weights w, any pytree of float arrays.
      order: Lanczos steps (static), in [1, number of parameters]; one HVP each.
      v0: params-shaped start vector (default ĝ).

    Returns:
      :class:`HessianConditioning`; every κ is NaN where ‖g‖ = 0. Jit-able (``order``
      static). Cost: one gradient and ``order + 1`` HVPs.

    Raises:
      ValueError: ``order`` outside [1, number of parameters].
    """
    matvec, flat_w = flat_hvp(loss_fn, params)
    p = flat_w.shape[0]
    if not 1 <= order <= p:
        raise ValueError(f"Lanczos order must lie in [1, {p}] (the number of parameters), got {order}.")
    g, _ = ravel_pytree(jax.grad(loss_fn)(params))
    flat_w = as_working(flat_w)  # the HVP's working dtype: float32, or float64 params' float64
    g = g.astype(flat_w.dtype)
    g_norm = jnp.linalg.norm(g)
    w_norm = jnp.linalg.norm(flat_w)
    g_hat = g / jnp.where(g_norm > 0, g_norm, 1.0)
    hg_norm = jnp.linalg.norm(matvec(g_hat))
    start = g_hat if v0 is None else ravel_pytree(v0)[0].astype(flat_w.dtype)
    start = start / jnp.linalg.norm(start)
    res = _lanczos_flat(matvec, start, order)
    ritz = jnp.linalg.eigvalsh(res.tridiagonal())
    h_norm = jnp.maximum(jnp.max(jnp.abs(ritz)), hg_norm)
    return HessianConditioning(
        kappa=_safe_ratio(h_norm * w_norm, g_norm),
        directional=_safe_ratio(hg_norm * w_norm, g_norm),
        hessian_norm=h_norm,
        hg_norm=hg_norm,
        grad_norm=g_norm,
        param_norm=w_norm,
    )


def directional_condition_number(
    loss_fn: Loss,
    params: Any,
    directions: Any = None,
    *,
    mask: Optional[GradientMask] = None,
    chunk_size: Optional[int] = None,
) -> jax.Array:
    """``max_k ‖H d̂_k‖·‖w‖/‖g‖``: the η → 0 limit of Def. 2.5's κ_W with perturbations
    ``ω_k = η·d_k`` (any scale, either sign; module docstring), <= Def. 2.4's κ.

    Args:
      loss_fn, params: as :func:`hessian_condition_number`.
      directions: params-shaped with a leading ``(n,)`` axis (e.g.
        :func:`~jaxnorm.diagnostics.step_consistency.weight_perturbations`); default
        the gradient itself (n = 1): ``‖H ĝ‖·‖w‖/‖g‖``, the limit for Def. 2.7.
      mask: every norm on these coordinates only (§1.6), as
        :func:`~jaxnorm.diagnostics.step_consistency.weight_space_metrics` takes them:
        ``‖(H d)_M‖·‖w_M‖/(‖d_M‖·‖g_M‖)``, the limit of the masked κ_W.
      chunk_size: HVPs evaluated this many at a time (None: all at once).

    Returns:
      a float32 scalar; NaN where ‖g‖ = 0 or a direction is 0 (on the mask).
    """
    norm = _norm if mask is None else (lambda t: jnp.linalg.norm(flatten(t, 0, mask)))
    g = jax.grad(loss_fn)(params)
    if directions is None:
        directions = jax.tree.map(lambda a: a[None], g)
    hd = map_batched(lambda d: jnp.stack([norm(hvp(loss_fn, params, d)), norm(d)]), directions, chunk_size)
    return jnp.max(_safe_ratio(hd[:, 0], hd[:, 1])) * _safe_ratio(norm(params), norm(g))


class Plateau(NamedTuple):
    """The longest run ``values[start:stop]`` of consecutive grid points whose values are
    finite, > 0 and agree within ``rtol`` (``max <= (1 + rtol)·min`` over the run); the
    first such run in grid order on ties. ``length = stop − start`` (0: no valid value).
    ``contains_limit``: ``length >= 2`` and the run stays within ``rtol`` with ``limit``
    added (False when no limit was given)."""

    start: jax.Array
    stop: jax.Array
    length: jax.Array
    contains_limit: jax.Array


def plateau(values: jax.Array, rtol: float, limit: Optional[jax.Array] = None) -> Plateau:
    """:class:`Plateau` of a ``(G,)`` sequence (e.g. κ over an ascending η grid). O(G³)
    work (G is a grid, tens of points); jit-able.

    Raises:
      ValueError: ``values`` not 1-D or empty; ``rtol`` <= 0.
    """
    values = jnp.asarray(values, jnp.float32)
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(f"plateau expects a non-empty 1-D sequence of values, got shape {values.shape}.")
    if not rtol > 0:
        raise ValueError(f"the plateau tolerance rtol must be > 0, got {rtol}.")
    n = values.shape[0]
    ok = jnp.isfinite(values) & (values > 0)
    i = jnp.arange(n)[:, None, None]
    j = jnp.arange(n)[None, :, None]
    k = jnp.arange(n)[None, None, :]
    inside = (i <= k) & (k <= j)  # (start i, last j, member k)
    v = values[None, None, :]
    hi = jnp.max(jnp.where(inside, v, -jnp.inf), axis=2)
    lo = jnp.min(jnp.where(inside, v, jnp.inf), axis=2)
    all_ok = jnp.all(jnp.where(inside, ok[None, None, :], True), axis=2)
    length = jnp.arange(n)[None, :] - jnp.arange(n)[:, None] + 1
    valid = all_ok & (length >= 1) & (hi <= (1 + rtol) * lo)
    best = jnp.argmax(jnp.where(valid, length, 0).reshape(-1))  # first maximum: earliest start
    start, last = best // n, best % n
    run = jnp.where(valid[start, last], last - start + 1, 0)
    if limit is None:
        contains = jnp.zeros((), bool)
    else:
        limit = jnp.asarray(limit, jnp.float32)
        hi_l, lo_l = jnp.maximum(hi[start, last], limit), jnp.minimum(lo[start, last], limit)
        contains = (run >= 2) & jnp.isfinite(limit) & (limit > 0) & (hi_l <= (1 + rtol) * lo_l)
    return Plateau(start=jnp.where(run > 0, start, 0), stop=jnp.where(run > 0, start + run, 0), length=run, contains_limit=contains)


class KappaSweep(NamedTuple):
    """``etas (G,)`` as given; ``values (G,)``: the finite-difference κ at each η;
    ``limit``: its η → 0 value (κ_W: :func:`directional_condition_number` for the same
    directions; κ_X: None); ``plateau``: :class:`Plateau` of ``values`` against
    ``limit``."""

    etas: jax.Array
    values: jax.Array
    limit: Optional[jax.Array]
    plateau: Plateau


def _check_grid(etas, rtol):
    etas = np.asarray(etas, np.float64)
    if etas.ndim != 1 or etas.size < 1:
        raise ValueError(f"etas must be a non-empty 1-D grid of step sizes, got shape {etas.shape}.")
    if not np.all(etas > 0):
        raise ValueError(f"every step size η must be > 0, got {etas.tolist()}.")
    if not rtol > 0:
        raise ValueError(f"the plateau tolerance rtol must be > 0, got {rtol}.")
    return jnp.asarray(etas, jnp.float32)


def kappa_w_sweep(
    loss_fn: Loss,
    params: Any,
    etas: Sequence[float],
    *,
    directions: Any = None,
    relative: bool = False,
    rtol: float = 0.05,
    mask: Optional[GradientMask] = None,
    chunk_size: Optional[int] = None,
) -> KappaSweep:
    """Def. 2.5's κ_W at every step size of a grid, its η → 0 limit and a plateau verdict.

    The perturbations at η are ``ω_k = η·d_k`` (``relative=False``: every sampler of
    :func:`~jaxnorm.diagnostics.step_consistency.weight_perturbations` is linear in η,
    so ``d_k`` = its output at ``eta=1`` reproduces the study's κ_W at any η with the
    same key) or ``ω_k = η·‖w‖·d_k/‖d_k‖`` (``relative=True``: the perturbation norm is
    η‖w‖, so η is a relative change of the weights). The ratio is invariant to the sign
    and scale of d_k; only the step size matters.

    Read the verdict as: ``plateau.contains_limit`` -- the finite difference has
    converged, over ``plateau.length`` consecutive η, to ``limit`` = the directional
    Hessian value, which is <= Def. 2.4's κ (a valid lower bound); a plateau away from
    the limit, or none -- the η grid has not reached the differentiable regime (ReLU
    kinks, third-order terms) or float32 round-off has taken over below it (the
    module docstring gives the η where it does).

    Args:
      loss_fn, params: as :func:`hessian_condition_number`.
      etas: ``(G,)`` step sizes, each > 0 (concrete values; ascending for a plateau in
        η order).
      directions: params-shaped ``d_k`` with a leading ``(n,)`` axis; default the
        limited-targeted pair ``±ḡ/‖ḡ‖_∞`` (Def. 2.7, what the thesis's results used).
      relative: step sizes relative to ‖w‖ (above).
      rtol: agreement within a plateau (:func:`plateau`).
      mask: the ratio's norms on these coordinates only (§1.6), as the study's κ_W
        with a mask; the perturbations still move every weight (and ``relative``
        scales by the full ‖w‖).
      chunk_size: perturbed gradients evaluated this many at a time.

    Returns:
      :class:`KappaSweep`. Jit-able with ``etas`` closed over. Cost: G·n gradients (one
      batch of G·n rows, ``chunk_size`` at a time) and n HVPs.

    Raises:
      ValueError: ``etas`` empty, not 1-D or not all > 0; ``rtol`` <= 0.
    """
    grid = _check_grid(etas, rtol)
    grad = jax.grad(loss_fn)
    g = grad(params)
    if directions is None:
        directions = weight_perturbations("limited_targeted", jax.random.PRNGKey(0), params, 2, eta=1.0, mean_grad=g)
    fw, unravel = ravel_pytree(params)
    dt = jnp.promote_types(fw.dtype, jnp.float32)  # float64 params (enable_x64) stay float64
    fw, f0 = fw.astype(dt), ravel_pytree(g)[0].astype(dt)
    fd = jax.vmap(lambda d: ravel_pytree(d)[0])(directions).astype(dt)
    if relative:
        fd = fd * (jnp.linalg.norm(fw) / jnp.linalg.norm(fd, axis=1, keepdims=True))

    if mask is None:
        pick = lambda v: v
    else:
        # The mask selects coordinates of the params pytree: back to trees, then masked.
        pick = lambda v: flatten(jax.vmap(unravel)(v), 1, mask) if v.ndim == 2 else flatten(unravel(v), 0, mask)

    # Every (η, d_k) pair in one stacked batch of perturbed gradients (chunked by
    # ``chunk_size``), not one program copy per η: on a CPU an unrolled grid made an
    # 11-point sweep of an 11-layer digits net take minutes to compile.
    omegas = grid.astype(dt)[:, None, None] * fd[None]  # (G, n, P)
    flat_grad = lambda om: ravel_pytree(grad(jax.tree.map(jnp.add, params, unravel(om))))[0]
    gk = map_batched(flat_grad, omegas.reshape((-1, fw.shape[0])), chunk_size).reshape(omegas.shape)
    # Def. 2.5 on the perturbation as built (η·d_k); w + ω is rounded once more inside
    # the loss, which is the u·‖w‖ round-off term of the module docstring.
    values = jax.vmap(lambda om, gg: kappa_w(pick(f0), pick(gg.astype(dt)), pick(om), pick(fw)))(omegas, gk)
    limit = directional_condition_number(loss_fn, params, directions, mask=mask, chunk_size=chunk_size)
    return KappaSweep(grid, values, limit, plateau(values, rtol, limit))


def kappa_x_sweep(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    etas: Sequence[float],
    *,
    key: jax.Array,
    n: int = 8,
    m: Optional[int] = None,
    relative: bool = False,
    rtol: float = 0.05,
    bn_mode: str = "frozen",
    **kwargs,
) -> KappaSweep:
    """The mean κ_X (Def. 3.4, eq. 3.16; :func:`~jaxnorm.diagnostics.input_conditioning.input_condition_number`)
    at every step size of a grid, with one set of targeted directions (Def. 3.5) for the
    whole grid, and a plateau verdict (``limit`` None: no differentiable κ_X here).

    The targeted perturbations have norm exactly η (``η ζ h_X/‖h_X‖``), so
    ``relative=True`` sets the norm to ``η·mean_i ‖x_i‖`` over the m examples averaged
    (the perturbation set Γ_n is shared by the examples, so one scale for all).

    Args:
      module, variables, x, y, key, n, m, bn_mode: as ``input_condition_number``;
        ``kwargs`` go to it too (``mask``, ``chunk_size``, ``weight_decay``).
      etas, relative, rtol: as :func:`kappa_w_sweep`.

    Raises:
      ValueError: as :func:`kappa_w_sweep` for the grid, and the errors of
        ``input_condition_number``.
    """
    grid = _check_grid(etas, rtol)
    hx = per_example_grads(module, variables, x, y, bn_mode=bn_mode, wrt="inputs", chunk_size=kwargs.get("chunk_size"))
    unit = input_perturbations(key, hx, n, eta=1.0)
    mm = x.shape[0] if m is None else m
    scale = jnp.mean(jnp.linalg.norm(x[:mm].reshape(mm, -1), axis=1)) if relative else 1.0
    # The grid mapped as one batched program (the step size a vmapped scale of the shared
    # directions), not one copy of the κ_X computation per η.
    at = lambda s: input_condition_number(module, variables, x, y, key=key, bn_mode=bn_mode, n=n, m=m, perturbations=s * unit, **kwargs)
    values = jax.jit(jax.vmap(at))(grid * scale)
    return KappaSweep(grid, values, None, plateau(values, rtol))
