"""Curvature matrix-vector products: the Hessian, the generalized Gauss-Newton matrix, the
empirical Fisher -- one registry, one flat boundary for the iterative solvers.

For a loss of the split form ``L(θ) = (1/N) Σ_i ℓ_i(f(θ)) + R(θ)`` -- network outputs
``z = f(θ)`` (the logits of every example, ``(N, C)`` or ``(n, b, C)``), a per-example loss
vector ``ℓ(z)`` with N entries and an optional regularizer R (the L2 term) -- the three
curvatures (:data:`CURVATURES`) are, as P×P matrices applied to a params-shaped ``v``:

``'hessian'``
    ``H v = ∇²L(θ) v``, forward-over-reverse (Pearlmutter, "Fast Exact Multiplication by
    the Hessian", 1994). Needs only ``loss_fn(params) -> scalar``.
``'ggn'``
    The generalized Gauss-Newton matrix ``G v = Jᵀ H_z J v + ∇²R v`` (Schraudolph, "Fast
    Curvature Matrix-Vector Products for Second-Order Gradient Descent", 2002; Martens,
    "New Insights and Perspectives on the Natural Gradient Method", 2020), J the Jacobian
    of all outputs z w.r.t. θ and ``H_z = ∇²_z (1/N) Σ_i ℓ_i(z)`` the Hessian of the mean
    loss w.r.t. the outputs: for softmax cross-entropy the block diagonal
    ``(diag(p_i) − p_i p_iᵀ) / N`` (``p_i`` example i's softmax), for ``'mse'`` (``½‖z_i −
    onehot‖²``) ``I / N``. It drops the Hessian's term ``Σ_k (∂L/∂z_k) ∇²z_k`` (the
    network's own curvature weighted by the residuals), so it is positive semi-definite
    for a convex ℓ, and equals the Hessian when f is linear in θ. Computed as ``J v`` (a
    ``jvp``), ``H_z`` times that (a ``jvp`` of ``∇_z``), then ``Jᵀ`` (a ``vjp``); H_z is
    exact for any ``per_example`` loss, not a closed form. For cross-entropy this is
    curvlinops' ``GGNLinearOperator`` with mean reduction (PyTorch's ``MSELoss`` with mean
    reduction also averages over the C outputs, so for ``'mse'`` theirs is ours / C).
``'fisher'``
    The empirical Fisher, the uncentered covariance of the per-example gradients,
    ``F v = (1/N) Σ_i g_i (g_iᵀ v) + ∇²R v`` with ``g_i = ∇_θ ℓ_i`` the gradient of example
    i's (unscaled) loss term. The normalization is 1/N, the one of curvlinops'
    ``EFLinearOperator`` for a mean-reduced loss (``c Σ_n ∇ℓ_n ∇ℓ_nᵀ``, c = 1/N), so that
    ``F`` is on the scale of H and G. Never materializes the g_i: with ``ℓ(θ)`` the
    N-vector of per-example losses, ``u = J_ℓ v`` (one ``jvp``: ``u_i = g_iᵀ v``) and
    ``F v = J_ℓᵀ u / N`` (one ``vjp``). Under BatchNorm in ``'batch'`` mode the ``g_i`` are
    the *coupled* per-example gradients of :mod:`jaxnorm.diagnostics.per_example` (each
    ℓ_i depends on the whole batch through its statistics); in ``'running'`` mode the
    independent ones.

The regularizer R (``0.5 λ Σ‖W‖²``) is quadratic, so its exact Hessian (λ on the decayed
coordinates) is added to all three: they approximate the curvature of the same objective.

Which split: :func:`jaxnorm.diagnostics.hessian_loss_fn` returns a :class:`SplitLoss`,
callable as the plain loss (so every solver takes it with ``curvature='hessian'`` exactly
as before) and carrying ``outputs``, ``per_example`` and ``penalty`` for ``'ggn'`` and
``'fisher'``. Any ``SplitLoss`` built by hand works too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnorm._registry import lookup

__all__ = [
    "CURVATURES",
    "SplitLoss",
    "curvature_vp",
    "curvature_matvec",
    "ggn_vp",
    "fisher_vp",
    "flat_dtype",
]


class SplitLoss:
    """``loss(params) = mean(per_example(outputs(params))) + penalty(params)``.

    Args:
      outputs: ``params -> z``, the network outputs of every example (e.g. logits
        ``(b, C)`` or ``(n, b, C)``), labels and data closed over.
      per_example: ``z -> ℓ``, the per-example losses, one entry per example (``(b,)`` or
        ``(n, b)``); the loss is their mean.
      penalty: ``params -> scalar`` (the L2 term) or None.
      loss: a callable computing the same scalar another way (``hessian_loss_fn`` passes
        the very function it returned before, so the Hessian is unchanged to the last
        bit); None: the composition above.
    """

    def __init__(self, outputs: Callable, per_example: Callable, penalty: Optional[Callable] = None, loss: Optional[Callable] = None):
        self.outputs, self.per_example, self.penalty, self._loss = outputs, per_example, penalty, loss

    def data_loss(self, z) -> jax.Array:
        """The mean per-example loss at outputs ``z`` (no penalty)."""
        return jnp.mean(self.per_example(z))

    def __call__(self, params) -> jax.Array:
        if self._loss is not None:
            return self._loss(params)
        value = self.data_loss(self.outputs(params))
        return value if self.penalty is None else value + self.penalty(params)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _with_penalty(loss: SplitLoss, params, mvp):
    if loss.penalty is None:
        return mvp
    pen = jax.grad(loss.penalty)
    return lambda v: _add(mvp(v), jax.jvp(pen, (params,), (v,))[1])


def _split(loss_fn, curvature: str) -> SplitLoss:
    if not isinstance(loss_fn, SplitLoss):
        raise TypeError(
            f"curvature {curvature!r} needs the loss split into network outputs and a per-example loss: pass a "
            f"jaxnorm.diagnostics.SplitLoss (hessian_loss_fn returns one), got {type(loss_fn).__name__}."
        )
    return loss_fn


def _hessian_vp(loss_fn, params):
    g = jax.grad(loss_fn)
    return lambda v: jax.jvp(g, (params,), (v,))[1]


def ggn_vp(loss: SplitLoss, params) -> Callable[[Any], Any]:
    """``v -> G v`` (params-shaped in and out), the generalized Gauss-Newton product of
    the module docstring. The forward pass and its ``vjp`` residuals are computed once,
    when this is called (inside a jitted solver: once before its loop)."""
    loss = _split(loss, "ggn")
    z, back = jax.vjp(loss.outputs, params)
    gz = jax.grad(loss.data_loss)

    def mvp(v):
        jv = jax.jvp(loss.outputs, (params,), (v,))[1]
        hjv = jax.jvp(gz, (z,), (jv,))[1]
        return back(hjv)[0]

    return _with_penalty(loss, params, mvp)


def fisher_vp(loss: SplitLoss, params) -> Callable[[Any], Any]:
    """``v -> F v`` (params-shaped in and out), the empirical Fisher ``(1/N) Σ_i g_i g_iᵀ v``
    of the module docstring (a ``jvp`` and a ``vjp`` of the per-example loss vector)."""
    loss = _split(loss, "fisher")
    per = lambda p: jnp.ravel(loss.per_example(loss.outputs(p)))
    losses, back = jax.vjp(per, params)
    n = losses.shape[0]

    def mvp(v):
        u = jax.jvp(per, (params,), (v,))[1]
        return back(u / n)[0]

    return _with_penalty(loss, params, mvp)


#: name -> ``(loss_fn, params) -> (v -> C v)`` (params-shaped): the curvature matrices.
CURVATURES: dict[str, Callable] = {"hessian": _hessian_vp, "ggn": ggn_vp, "fisher": fisher_vp}


def check_curvature(curvature: str) -> Callable:
    """The builder of :data:`CURVATURES` named ``curvature``; a ValueError listing the
    known names otherwise."""
    return lookup(CURVATURES, curvature, "curvature")


def curvature_vp(loss_fn, params, curvature: str = "hessian") -> Callable[[Any], Any]:
    """``v -> C v`` for the curvature matrix ``C`` named ``curvature`` (:data:`CURVATURES`)
    of ``loss_fn`` at ``params``; params-shaped in and out.

    Raises:
      ValueError: an unknown curvature name (the message lists the known ones).
      TypeError: ``'ggn'`` or ``'fisher'`` with a plain callable instead of a
        :class:`SplitLoss`.
    """
    return check_curvature(curvature)(loss_fn, params)


def flat_dtype(flat: jax.Array):
    """The dtype of the solvers' flat vectors: the parameters' own, at least float32
    (float64 stays float64 under ``jax_enable_x64``; bfloat16 parameters get float32)."""
    return jnp.promote_types(flat.dtype, jnp.float32)


def curvature_matvec(loss_fn, params, curvature: str = "hessian") -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """``(matvec, flat_params)``: :func:`curvature_vp` on flat vectors (``ravel_pytree``)
    of dtype :func:`flat_dtype`, the boundary of the iterative solvers. ``matvec``
    maps ``(P,)`` to ``(P,)``; ``jax.vmap`` it for several vectors at once."""
    flat, unravel = ravel_pytree(params)
    mvp = curvature_vp(loss_fn, params, curvature)
    dtype = flat_dtype(flat)

    def matvec(u):
        out, _ = ravel_pytree(mvp(unravel(u.astype(flat.dtype))))
        return out.astype(dtype)

    return matvec, flat
