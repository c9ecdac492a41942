"""Curvature of a loss, matrix-free: HVPs, power iteration, Lanczos, Hutchinson and
Hutch++ traces, stochastic Lanczos quadrature (spectral density), per-block spectra.

Everything takes a ``loss(params) -> scalar`` (e.g. :func:`hessian_loss_fn`, which makes
the BatchNorm mode explicit) and never forms a P×P matrix:

* :func:`hvp` -- forward-over-reverse ``jvp`` of ``grad`` (Pearlmutter 1994): pytree in,
  pytree out, about the cost of 2-3 gradients.
* :func:`power_iteration` -- top eigenvalue by magnitude, with a relative tolerance and
  an iteration cap (run-time values: changing them does not recompile).
* :func:`lanczos` -- ``order`` steps with full reorthogonalization (Ghorbani et al.
  2019; 80-90 steps suffice for the spectrum's edges); returns the tridiagonal matrix,
  whose eigenvalues (Ritz values) approximate the extreme eigenvalues;
  :func:`top_eigenpairs` turns it into the top-k eigenvalues and vectors.
* :func:`hutchinson_trace` -- ``E[vᵀCv]`` over Rademacher v (Hutchinson 1989), with its
  standard error; :func:`hutchpp_trace` -- Hutch++ (Meyer, Musco, Musco and Woodruff,
  "Hutch++: Optimal Stochastic Trace Estimation", 2021), exact on a low-rank sketch plus
  Hutchinson on the rest: error O(1/m) instead of O(1/√m) in m matvecs for a PSD matrix.
* :func:`spectral_density` -- stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et
  al. 2019): Gaussian-smoothed density from several random start vectors; it
  integrates to 1 over a grid that covers the spectrum.
* :func:`block_loss_fn` -- the loss as a function of one parameter block (per-layer
  spectra: the Hessian's diagonal block).

Every solver takes the same four options, and records them in its result
(:class:`SolverInfo`, the field ``info``):

``curvature``
    ``'hessian'`` (default), ``'ggn'`` (generalized Gauss-Newton) or ``'fisher'``
    (empirical Fisher): the registry :data:`jaxnorm.diagnostics.curvature.CURVATURES`.
    ``'ggn'``/``'fisher'`` need a :class:`~jaxnorm.diagnostics.curvature.SplitLoss`
    (what :func:`hessian_loss_fn` returns).
``loop``
    ``'lax'``: one ``lax`` loop (``while_loop``/``fori_loop``/``lax.map``), one compiled
    program, no host sync, compile time independent of the iteration count -- the
    choice on GPU/TPU. ``'host'``: a Python loop over jitted chunks of
    :data:`HOST_CHUNK` unrolled iterations (the products plus their vector updates;
    unrolled, the products share one primal pass), the convergence test on the host
    after each chunk -- the choice on a CPU backend, where XLA:CPU runs convolutions
    inside a ``while`` loop body several times slower than outside one (BENCHMARKS.md:
    20 power iterations of 3C3D took 14.6 s in a ``while_loop`` against 20 × 0.13 s of
    jitted HVPs). ``'auto'`` (default): ``'host'`` on a CPU backend (the params' device
    platform), ``'lax'`` elsewhere, and ``'lax'`` whenever the call is being traced
    (inside ``jax.jit``, ``vmap``...: a Python loop cannot run there). ``'unroll'``: every
    iteration unrolled into the caller's program (also under ``jax.jit``); the iteration
    count must be a Python int, compile time grows with it, and a convergence tolerance
    only masks the iterations after convergence -- for a few iterations inside a jitted
    CPU program (the ``Instruments`` observer). All loops run the same iteration function,
    so they agree to rounding.
``precision``
    The matmul/convolution precision of the curvature products (a value of
    ``jax.default_matmul_precision``): ``'highest'`` by default, full float32 on every
    backend (a GPU otherwise runs float32 matmuls and convolutions with TF32, 10
    mantissa bits); None leaves JAX's ambient default.
``linearize``
    False (default): every product recomputes the forward and backward pass at θ
    (``jvp`` of ``grad``). True: ``jax.linearize`` once, then apply the linear map: the
    primal pass and its residuals are computed once per solve and kept in memory
    (about the activations of a backward pass, several times the parameters' size),
    each product then costs only the tangent pass. The reuse lives inside one compiled
    program, so ``linearize=True`` runs the ``'lax'`` loop (``'auto'`` picks it;
    ``'host'`` with it is an error). (Handing the residuals from one jitted call to the
    next was tried: ``jax.closure_convert`` left them as constants of the program, which
    XLA then constant-folded for minutes; the ``vjp`` of the product, whose residuals
    are a pytree, made each product 2x slower on XLA:CPU.)

The host loop compiles its iteration once per loss function and solver kind (a weak
cache: calling a solver again with the same ``loss_fn`` object does not recompile; a
new loss, e.g. a new :func:`hessian_loss_fn` at every observer call, compiles again,
as the ``'lax'`` loop called outside ``jax.jit`` does).

dtype: the flat vectors keep the parameters' dtype (float64 stays float64 under
``jax_enable_x64``; low-precision parameters are promoted to float32).

BatchNorm: train mode (batch statistics, differentiated through -- the Hessian of the
training objective; init2winit's choice) is the default of :func:`hessian_loss_fn`;
eval mode (running statistics, as PyHessian does) is an option; results of the
convenience functions carry the mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import weakref
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnorm._tree import param_paths
from jaxnorm.diagnostics._mapping import map_chunks
from jaxnorm.diagnostics.curvature import SplitLoss, check_curvature, curvature_matvec, flat_dtype
from jaxnorm.diagnostics.per_example import batch_loss_fn
from jaxnorm.modes import apply, check_bn_mode
from jaxnorm.objective import get_loss, l2_penalty

__all__ = [
    "BN_MODES",
    "LOOPS",
    "hvp",
    "flat_hvp",
    "hessian_loss_fn",
    "power_iteration",
    "lanczos",
    "top_eigenpairs",
    "hutchinson_trace",
    "hutchpp_trace",
    "spectral_density",
    "outlier_ratio",
    "block_loss_fn",
    "PowerIterationResult",
    "LanczosResult",
    "TraceResult",
    "SolverInfo",
]

BN_MODES = ("batch", "running")  # jaxnorm.modes: batch statistics (train mode) or running ones (eval)
LOOPS = ("auto", "lax", "host", "unroll")
Loss = Callable[[Any], jax.Array]


def _precision_context(precision: Optional[str]):
    return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)


def _precision_name(precision: Optional[str]) -> str:
    if precision is not None:
        return str(precision)
    ambient = jax.config.jax_default_matmul_precision
    return "default" if ambient is None else str(ambient)


def hvp(loss_fn: Loss, params: Any, v: Any, *, precision: Optional[str] = "highest") -> Any:
    """``H v``, with H the Hessian of ``loss_fn`` at ``params`` (forward-over-reverse).

    ``v`` has the structure of ``params``; so has the result. ``precision``: the
    matmul precision (module docstring; None: JAX's ambient default)."""
    with _precision_context(precision):
        return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def flat_hvp(loss_fn: Loss, params: Any, *, curvature: str = "hessian", precision: Optional[str] = "highest") -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """``(matvec, flat_params)``: the curvature product on flat vectors (``ravel_pytree``),
    the boundary of the iterative solvers. The vectors keep the parameters' dtype (at
    least float32); ``curvature`` names a matrix of
    :data:`~jaxnorm.diagnostics.curvature.CURVATURES` (default: the Hessian).

    Raises:
      ValueError: an unknown curvature name; TypeError: ``'ggn'``/``'fisher'`` without a
        :class:`~jaxnorm.diagnostics.curvature.SplitLoss`.
    """
    matvec, flat = curvature_matvec(loss_fn, params, curvature)

    def with_precision(u):
        with _precision_context(precision):
            return matvec(u)

    return with_precision, flat


def hessian_loss_fn(
    module, variables, x: jax.Array, y: jax.Array, *, bn_mode: str = "batch", weight_decay: float = 0.0, loss="ce"
) -> SplitLoss:
    """The mean loss of one batch ``x (b, ...)``, or the average over several batches
    ``x (n, b, ...)`` / ``y (n, b)`` (the HVP of the average is the average HVP), as a
    function of the weights.

    Returns a :class:`~jaxnorm.diagnostics.curvature.SplitLoss`: call it as
    ``loss(params) -> scalar`` (exactly the function of earlier versions); its
    ``outputs(params)`` are the logits ``(b, C)`` (``(n, b, C)``) under ``bn_mode`` and its
    ``per_example(logits)`` the per-example losses, which ``curvature='ggn'`` and
    ``'fisher'`` need. With several batches, BatchNorm in ``'batch'`` mode uses each
    batch's own statistics.

    Args:
      bn_mode: ``'batch'`` (batch statistics, differentiated through: the training
        objective's Hessian, init2winit's choice; default) or ``'running'`` (running
        statistics, PyHessian's choice); see :mod:`jaxnorm.modes`.
      weight_decay: λ of the L2 term ``0.5 λ Σ ||W||²`` included in the loss.
      loss: a name from :data:`jaxnorm.objective.LOSSES` (``'ce'``, ``'mse'``) or a
        per-example callable ``(logits, labels) -> (b,)``.

    Raises:
      ValueError: unknown ``bn_mode``; the errors of
        :func:`~jaxnorm.diagnostics.per_example.batch_loss_fn`.
    """
    check_bn_mode(bn_mode, BN_MODES)
    per_example_loss = get_loss(loss)
    other = {k: v for k, v in variables.items() if k != "params"}
    penalty = (lambda p: weight_decay * l2_penalty(p)) if weight_decay else None
    forward = lambda p, xb: apply(module, {"params": p, **other}, xb, bn_mode=bn_mode)
    if y.ndim == 1:
        base = batch_loss_fn(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, loss=loss)
        return SplitLoss(lambda p: forward(p, x), lambda z: per_example_loss(z, y), penalty, loss=base)
    if y.ndim != 2 or x.shape[:2] != y.shape:
        raise ValueError(f"expected x (b, ...)/y (b,) or x (n, b, ...)/y (n, b); got {x.shape} and {y.shape}.")

    def mean_loss(params):
        per = map_chunks(lambda xy: batch_loss_fn(module, variables, xy[0], xy[1], bn_mode=bn_mode, weight_decay=weight_decay, loss=loss)(params), (x, y))
        return jnp.mean(per)

    outputs = lambda p: map_chunks(lambda xb: forward(p, xb), x)
    per_example = lambda z: jax.vmap(per_example_loss)(z, y)
    return SplitLoss(outputs, per_example, penalty, loss=mean_loss)


# ---------------------------------------------------------------------------------------
# Options shared by the solvers: the result record, the loop, the operator.


@dataclasses.dataclass(frozen=True)
class SolverInfo:
    """How a solver ran: ``curvature`` (a :data:`~jaxnorm.diagnostics.curvature.CURVATURES`
    name), ``loop`` (``'lax'`` or ``'host'``: the one used, after ``'auto'``),
    ``precision`` (the matmul precision: ``'highest'``, ..., or ``'default'``), and
    ``linearize``. A pytree without leaves: it passes through ``jax.jit`` as static
    data and ``jax.tree.map`` never sees it."""

    curvature: str = "hessian"
    loop: str = "lax"
    precision: str = "default"
    linearize: bool = False


jax.tree_util.register_dataclass(SolverInfo, data_fields=[], meta_fields=["curvature", "loop", "precision", "linearize"])


def _tracing(params) -> bool:
    leaves = jax.tree.leaves(params)
    return any(isinstance(a, jax.core.Tracer) for a in leaves) or isinstance(jnp.zeros(()), jax.core.Tracer)


def _platform(params) -> str:
    for a in jax.tree.leaves(params):
        devices = getattr(a, "devices", None)
        if callable(devices):
            try:
                return next(iter(devices())).platform
            except Exception:  # a non-array leaf, or an array without devices
                pass
    return jax.default_backend()


def resolve_loop(loop: str, params, linearize: bool = False) -> str:
    """The loop ``loop`` (:data:`LOOPS`) resolves to for ``params``: ``'auto'`` is
    ``'host'`` on a CPU platform and ``'lax'`` otherwise, while tracing, or with
    ``linearize`` (a linearization is reused within one program only).

    Raises:
      ValueError: an unknown loop; ``'host'`` while tracing (inside ``jax.jit``/``vmap``)
        or with ``linearize``.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {list(LOOPS)}, got {loop!r}.")
    traced = _tracing(params)
    if loop == "host" and traced:
        raise ValueError("loop='host' runs a Python loop and needs concrete arrays; inside jax.jit or vmap use loop='lax' or 'auto'.")
    if loop == "host" and linearize:
        raise ValueError("linearize=True reuses the linearization within one compiled loop: use loop='lax' or 'auto'.")
    if loop == "auto":
        return "lax" if traced or linearize or _platform(params) != "cpu" else "host"
    return loop


#: Jitted host-loop iterations, per loss function (weakly: an entry goes when its loss
#: does), so that calling a solver again with the same loss does not recompile.
_HOST_STEPS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


class _Operator:
    """The flat curvature operator of one solve.

    ``'lax'``: :meth:`matvec`, called inside the trace before the loop (with
    ``linearize``, ``jax.linearize`` there: the primal half runs once, before the loop).
    ``'host'``: :meth:`step`, the jitted iteration ``step(params, *rest) =
    fn(matvec, *rest)``, cached per (loss, kind) while the loss lives."""

    def __init__(self, loss_fn, params, curvature: str, loop: str, linearize: bool, precision: str):
        check_curvature(curvature)
        self.loss_fn, self.params, self.curvature, self.loop = loss_fn, params, curvature, loop
        self.linearize, self.precision = linearize, precision
        self.flat, self.unravel = ravel_pytree(params)
        self.dtype = flat_dtype(self.flat)

    def matvec(self):
        matvec = curvature_matvec(self.loss_fn, self.params, self.curvature)[0]
        if not self.linearize:
            return matvec
        _, lin = jax.linearize(matvec, jnp.zeros(self.flat.shape, self.dtype))
        return lin

    def step(self, kind, make_fn, donate_argnums=()):
        """The jitted ``(params, *rest) -> make_fn()(matvec, *rest)``; ``kind`` (hashable)
        names ``make_fn``'s function and every static value it closes over."""
        curvature = self.curvature

        def build(get_loss):
            fn = make_fn()
            return jax.jit(lambda p, *rest: fn(curvature_matvec(get_loss(), p, curvature)[0], *rest), donate_argnums=donate_argnums)

        key = (kind, curvature, self.precision, donate_argnums)
        try:
            table = _HOST_STEPS.setdefault(self.loss_fn, {})
        except TypeError:  # not weakly referenceable: no cache
            return build(lambda: self.loss_fn)
        if key not in table:
            table[key] = build(weakref.ref(self.loss_fn))
        return table[key]


#: Iterations per jitted call of the host loop. Unrolled in one program, the products
#: share their primal pass (XLA eliminates the identical forward/backward computations
#: of θ as common subexpressions: a linearization for free) and run outside any XLA
#: loop. Measured on 3C3D, batch 32, a loaded 2-core CPU: 20 HVPs as 4 calls of 5
#: unrolled products took 2.7 s (load ~4.7); one jitted HVP took 318 ms (load ~6).
#: Compile time grows with it (5 unrolled HVPs: 2x the compile of one).
HOST_CHUNK = 5


def _unrolled(body, k: int):
    """``k`` consecutive iterations ``i0 .. i0 + k − 1`` of ``body(matvec, i, carry, *extra)``."""

    def chunk(matvec, i0, carry, *extra):
        for j in range(k):
            carry = body(matvec, i0 + j, carry, *extra)
        return carry

    return chunk


def _fori(op: _Operator, kind, body, n, carry, *extra, donate: bool = False):
    """``carry = body(matvec, i, carry, *extra)`` for i in [0, n): ``lax.fori_loop``, or a
    Python loop over jitted chunks of :data:`HOST_CHUNK` unrolled iterations (plus one
    chunk of the remainder). ``body`` is a module-level function (``kind`` names it and
    every static value it closes over)."""
    if op.loop == "lax":
        matvec = op.matvec()
        return jax.lax.fori_loop(0, n, lambda i, c: body(matvec, i, c, *extra), carry)
    if op.loop == "unroll":
        matvec = op.matvec()
        for i in range(int(n)):
            carry = body(matvec, i, carry, *extra)
        return carry
    n = int(n)
    full, rest = divmod(n, HOST_CHUNK)
    donate_argnums = (2,) if donate else ()
    for size, start, count in ((HOST_CHUNK, 0, full), (rest, full * HOST_CHUNK, 1 if rest else 0)):
        if count:
            step = op.step((kind, size), lambda size=size: _unrolled(body, size), donate_argnums)
            for c in range(count):
                carry = step(op.params, start + c * size, carry, *extra)
    return carry


def _check_count(value, what: str, minimum: int = 1) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    if int(value) != value or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")


def _normalize(v):
    return v / jnp.linalg.norm(v)


def _start(key, flat, v0, dtype=jnp.float32):
    if v0 is not None:
        v0, _ = ravel_pytree(v0)
        return _normalize(v0.astype(dtype))
    return _normalize(jax.random.normal(key, flat.shape, dtype))


# ---------------------------------------------------------------------------------------
# Power iteration.


class PowerIterationResult(NamedTuple):
    """``eigenvalue`` (largest in magnitude, signed), ``eigenvector`` (params-shaped,
    unit norm), ``iterations`` run, ``converged`` (relative change of the eigenvalue
    estimate < tol: PyHessian's criterion), ``residual`` = ‖Cv − λv‖ / |λ| of the last
    iterate v, ``info`` (:class:`SolverInfo`: curvature, loop, precision).

    ``converged`` says that the *eigenvalue estimate* stopped moving, which can happen
    long before the vector is an eigenvector when the top two eigenvalues are close
    (3C3D with BN: converged at 94.7 with Lanczos giving 95.4 and λ₂ = 94.4); the
    residual tells whether the vector is one (small residual ⇒ λ lies within
    residual·|λ| of an eigenvalue)."""

    eigenvalue: jax.Array
    eigenvector: Any
    iterations: jax.Array
    converged: jax.Array
    residual: jax.Array
    info: SolverInfo = SolverInfo()


def _power_body(matvec, carry, shift):
    i, v, lam, _, _ = carry
    hv = matvec(v) - shift * v
    new = jnp.vdot(v, hv)
    # The residual of v comes free with its product; it describes v, the returned
    # vector is the next iterate Cv/‖Cv‖, at least as good for the top eigenvalue.
    residual = jnp.linalg.norm(hv - new * v) / jnp.abs(new)
    return i + 1, _normalize(hv), new, lam, residual


def _power_cond(carry, num_iters, tol):
    i, _, lam, prev, _ = carry
    return (i < num_iters) & ((i < 2) | (jnp.abs(lam - prev) >= tol * jnp.abs(lam)))


def _power_host_chunk(k: int):
    """``k`` unrolled power iterations (:data:`HOST_CHUNK`), each applied only while the
    stopping rule says go on (so the iterates are those of the ``lax`` loop; at most
    ``k − 1`` products past convergence are computed and discarded), and whether to go on."""

    def chunk(matvec, carry, shift, num_iters, tol):
        for _ in range(k):
            go = _power_cond(carry, num_iters, tol)
            new = _power_body(matvec, carry, shift)
            carry = jax.tree.map(lambda a, b: jnp.where(go, a, b), new, carry)
        return carry, _power_cond(carry, num_iters, tol)

    return chunk


def power_iteration(
    loss_fn: Loss,
    params: Any,
    *,
    key: Optional[jax.Array] = None,
    num_iters: int | jax.Array = 100,
    tol: float | jax.Array = 1e-3,
    v0: Any = None,
    shift: float | jax.Array = 0.0,
    curvature: str = "hessian",
    loop: str = "auto",
    precision: Optional[str] = "highest",
    linearize: bool = False,
) -> PowerIterationResult:
    """The eigenvalue of largest magnitude of ``C − shift·I``, plus ``shift`` (C the
    ``curvature`` matrix, the Hessian by default).

    With ``shift=0`` that is the Hessian's eigenvalue of largest magnitude -- the
    sharpness only when the top positive eigenvalue dominates the most negative one,
    which early in training it need not (a tiny MLP on digits had −25 against +6 at
    step 10). For the top eigenvalue whatever the negative part, pass a ``shift`` at or
    below the smallest eigenvalue (e.g. the result of a first call with ``shift=0``
    when that came out negative): the eigenvalues of ``H − shift·I`` are then >= 0 and
    the largest is ``λ_max − shift``. Or take the largest Ritz value of :func:`lanczos`.
    (GGN and Fisher are PSD: no shift needed.)

    Iterates ``v <- Cv/‖Cv‖`` with the Rayleigh quotient ``λ = vᵀCv`` until
    ``|λ_t − λ_{t−1}| < tol·|λ_t|`` or ``num_iters`` products (PyHessian's defaults:
    100, 1e-3). ``num_iters`` and ``tol`` are run-time values (no recompile when they
    change). ``v0`` (params-shaped) warm-starts it, e.g. from the previous eigenvector.
    ``curvature``, ``loop``, ``precision``, ``linearize``: the module docstring.

    Raises:
      ValueError: an unknown curvature or loop, ``loop='host'`` under a trace.
      TypeError: ``'ggn'``/``'fisher'`` without a SplitLoss.
    """
    loop = resolve_loop(loop, params, linearize)
    info = SolverInfo(curvature, loop, _precision_name(precision), bool(linearize))
    with _precision_context(precision):
        op = _Operator(loss_fn, params, curvature, loop, linearize, info.precision)
        dtype = op.dtype
        shift = jnp.asarray(shift, dtype)
        key = jax.random.PRNGKey(0) if key is None else key
        nan = jnp.full((), jnp.nan, dtype)
        carry = (jnp.zeros((), jnp.int32), _start(key, op.flat, v0, dtype), nan, nan, nan)
        if loop == "lax":
            matvec = op.matvec()
            carry = jax.lax.while_loop(lambda c: _power_cond(c, num_iters, tol), lambda c: _power_body(matvec, c, shift), carry)
        elif loop == "unroll":
            if isinstance(num_iters, jax.core.Tracer):
                raise ValueError("loop='unroll' unrolls num_iters iterations: pass a Python int, not a traced value.")
            _check_count(num_iters, "num_iters", minimum=0)
            chunk = _power_host_chunk(int(num_iters))
            carry, _ = chunk(op.matvec(), carry, shift, jnp.asarray(num_iters, jnp.int32), jnp.asarray(tol, dtype))
        else:
            step = op.step(("power", HOST_CHUNK), lambda: _power_host_chunk(HOST_CHUNK))
            n, t = jnp.asarray(num_iters, jnp.int32), jnp.asarray(tol, dtype)
            keep = int(num_iters) > 0
            while keep:
                carry, keep = step(op.params, carry, shift, n, t)
                keep = bool(keep)  # the host sync, once per chunk of iterations
    i, v, lam, prev, residual = carry
    converged = jnp.abs(lam - prev) < tol * jnp.abs(lam)
    return PowerIterationResult(lam + shift, op.unravel(v.astype(op.flat.dtype)), i, converged, residual, info)


# ---------------------------------------------------------------------------------------
# Lanczos.


class LanczosResult(NamedTuple):
    """``alphas (order,)``, ``betas (order - 1,)``: the tridiagonal matrix T; ``vectors
    (order, P)``: the orthonormal Lanczos basis (flat); ``info`` (:class:`SolverInfo`)."""

    alphas: jax.Array
    betas: jax.Array
    vectors: jax.Array
    info: SolverInfo = SolverInfo()

    def tridiagonal(self) -> jax.Array:
        return jnp.diag(self.alphas) + jnp.diag(self.betas, 1) + jnp.diag(self.betas, -1)


def _lanczos_body(matvec, i, carry):
    basis, alphas, betas = carry
    order = basis.shape[0]
    vi = basis[i]
    w = matvec(vi)
    alpha = jnp.vdot(vi, w)
    # Full reorthogonalization (twice: "twice is enough") against every basis vector
    # so far; rows beyond i are still zero and contribute nothing.
    w = w - basis.T @ (basis @ w)
    w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    nxt = jnp.where(beta > 1e-10, w / jnp.where(beta > 1e-10, beta, 1.0), 0.0)
    basis = jax.lax.cond(i + 1 < order, lambda b: b.at[i + 1].set(nxt), lambda b: b, basis)
    return basis, alphas.at[i].set(alpha), betas.at[i].set(beta)


def _batched_lanczos_body(matvec, i, carry):
    """:func:`_lanczos_body` for several Lanczos runs at once (leading axis of the carry)."""
    return jax.vmap(lambda c: _lanczos_body(matvec, i, c))(carry)


def _lanczos_init(v, order: int):
    # Three distinct buffers: the host loop donates the carry.
    return jnp.zeros((order, v.shape[0]), v.dtype).at[0].set(v), jnp.zeros((order,), v.dtype), jnp.zeros((order,), v.dtype)


def _lanczos_flat(matvec, v, order: int) -> LanczosResult:
    """``order`` Lanczos steps of the flat ``matvec`` from the unit vector ``v``, in one
    ``lax.fori_loop``."""
    basis, alphas, betas = jax.lax.fori_loop(0, order, lambda i, c: _lanczos_body(matvec, i, c), _lanczos_init(v, order))
    return LanczosResult(alphas, betas[:-1], basis)


def _check_order(order: int, p: int) -> None:
    if not 1 <= order <= p:
        raise ValueError(f"Lanczos order must lie in [1, {p}] (the number of parameters), got {order}.")


def lanczos(
    loss_fn: Loss,
    params: Any,
    order: int,
    *,
    key: Optional[jax.Array] = None,
    v0: Any = None,
    curvature: str = "hessian",
    loop: str = "auto",
    precision: Optional[str] = "highest",
    linearize: bool = False,
) -> LanczosResult:
    """``order`` Lanczos steps on the ``curvature`` matrix (the Hessian by default) with
    full reorthogonalization.

    ``order`` is static (the basis is ``order × P``); with ``order`` = the number of
    parameters the Ritz values are the exact eigenvalues. ``curvature``, ``loop``,
    ``precision``, ``linearize``: the module docstring.

    Raises:
      ValueError: ``order`` < 1 or larger than the number of parameters; an unknown
        curvature or loop.
    """
    loop = resolve_loop(loop, params, linearize)
    info = SolverInfo(curvature, loop, _precision_name(precision), bool(linearize))
    with _precision_context(precision):
        flat, _ = ravel_pytree(params)
        _check_order(order, flat.shape[0])
        op = _Operator(loss_fn, params, curvature, loop, linearize, info.precision)
        key = jax.random.PRNGKey(0) if key is None else key
        carry = _lanczos_init(_start(key, op.flat, v0, op.dtype), order)
        basis, alphas, betas = _fori(op, "lanczos", _lanczos_body, order, carry, donate=True)
    return LanczosResult(alphas, betas[:-1], basis, info)


def top_eigenpairs(result: LanczosResult, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` largest Ritz values (descending) and their Ritz vectors ``(k, P)`` (flat;
    ``unravel`` them with ``ravel_pytree(params)[1]``)."""
    order = result.alphas.shape[0]
    if not 1 <= k <= order:
        raise ValueError(f"k must lie in [1, {order}] (the Lanczos order), got {k}.")
    vals, vecs = jnp.linalg.eigh(result.tridiagonal())
    idx = jnp.argsort(-vals)[:k]
    return vals[idx], (vecs[:, idx].T @ result.vectors)


def outlier_ratio(eigenvalues: jax.Array, k: int) -> jax.Array:
    """``λ_max / λ_k`` from eigenvalues sorted in descending order (Ghorbani et al. 2019:
    large without BatchNorm, where a few outliers separate from the bulk)."""
    return eigenvalues[0] / eigenvalues[k - 1]


# ---------------------------------------------------------------------------------------
# Traces.


@dataclasses.dataclass(frozen=True)
class TraceResult:
    """A trace estimate: ``estimate``, ``stderr`` (its standard error), ``num_matvecs``
    (curvature products used), ``info`` (:class:`SolverInfo`).

    Unpacks as the ``(estimate, stderr)`` pair that :func:`hutchinson_trace` returned in
    earlier versions (``est, err = hutchinson_trace(...)``). A pytree (``info`` static)."""

    estimate: jax.Array
    stderr: jax.Array
    num_matvecs: jax.Array
    info: SolverInfo = SolverInfo()

    def __iter__(self):
        return iter((self.estimate, self.stderr))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return (self.estimate, self.stderr)[i]


jax.tree_util.register_dataclass(TraceResult, data_fields=["estimate", "stderr", "num_matvecs"], meta_fields=["info"])


def _rademacher_rows(key, idx, p: int, dtype):
    """Probe i is ``rademacher(fold_in(key, i))``: the same vector whichever batch it is in."""
    return jax.vmap(lambda i: jax.random.rademacher(jax.random.fold_in(key, i), (p,), dtype))(idx)


def _hutch_body(matvec, c, carry, key, num_samples, *, k: int, p: int, dtype):
    """Call c of Hutchinson's estimator: probes c·k ... c·k + k − 1 (those >= num_samples
    masked out), one vectorized product; accumulates Σ q and Σ q², q = vᵀCv."""
    s, s2 = carry
    idx = c * k + jnp.arange(k)
    v = _rademacher_rows(key, idx, p, dtype)
    q = jnp.sum(v * jax.vmap(matvec)(v), axis=1)
    q = jnp.where(idx < num_samples, q, 0.0)
    return s + jnp.sum(q), s2 + jnp.sum(q * q)


def _vmapped(matvec, rows):
    return jax.vmap(matvec)(rows)


def hutchinson_trace(
    loss_fn: Loss,
    params: Any,
    *,
    key: jax.Array,
    num_samples: int | jax.Array = 100,
    curvature: str = "hessian",
    probes_per_call: int = 1,
    loop: str = "auto",
    precision: Optional[str] = "highest",
    linearize: bool = False,
) -> TraceResult:
    """Hutchinson's estimator (Hutchinson, "A Stochastic Estimator of the Trace of the
    Influence Matrix for Laplacian Smoothing Splines", 1989): the mean of ``vᵀCv`` over
    ``num_samples`` Rademacher vectors (a run-time count: no recompile when it changes),
    C the ``curvature`` matrix, and its standard error (sample standard deviation /
    √num_samples). Variance per probe: ``2(‖C‖_F² − Σ C_ii²)``.

    ``probes_per_call`` probes share one vectorized product (``jax.vmap`` over the
    probes: one pass of the network over a batch of tangents); probe i is the same
    vector for any ``probes_per_call``, so the estimate is the same to rounding. The
    last call's surplus probes are masked out. ``curvature``, ``loop``, ``precision``,
    ``linearize``: the module docstring.

    Returns:
      a :class:`TraceResult` (unpacks as ``(estimate, stderr)``).

    Raises:
      ValueError: ``num_samples`` or ``probes_per_call`` not an integer >= 1; an unknown
        curvature or loop.
    """
    _check_count(num_samples, "num_samples")
    _check_count(probes_per_call, "probes_per_call")
    loop = resolve_loop(loop, params, linearize)
    info = SolverInfo(curvature, loop, _precision_name(precision), bool(linearize))
    k = int(probes_per_call)
    with _precision_context(precision):
        op = _Operator(loss_fn, params, curvature, loop, linearize, info.precision)
        p, dtype = op.flat.shape[0], op.dtype
        calls = (num_samples + k - 1) // k
        carry = (jnp.zeros((), dtype), jnp.zeros((), dtype))
        n = num_samples if loop == "lax" else jnp.asarray(num_samples, jnp.int32)
        body = functools.partial(_hutch_body, k=k, p=p, dtype=dtype)
        s, s2 = _fori(op, ("hutchinson", k, p, str(dtype)), body, calls, carry, key, n)
    n = jnp.asarray(num_samples, dtype)
    mean = s / n
    var = jnp.maximum(s2 / n - mean * mean, 0.0) * n / jnp.maximum(n - 1, 1)
    return TraceResult(mean, jnp.sqrt(var / n), jnp.asarray(num_samples, jnp.int32), info)


def _apply_rows(op: _Operator, rows: jax.Array, k: int) -> jax.Array:
    """``C`` applied to every row of ``rows (m, P)``, ``k`` rows per vectorized call."""
    m = rows.shape[0]
    calls = -(-m // k)
    idx = jnp.minimum(jnp.arange(calls * k), m - 1).reshape(calls, k)  # pad by repeating the last row
    if op.loop == "lax":
        matvec = op.matvec()
        out = jax.lax.map(lambda i: jax.vmap(matvec)(rows[i]), idx)
    elif op.loop == "unroll":
        matvec = op.matvec()
        out = jnp.stack([jax.vmap(matvec)(rows[i]) for i in idx])
    else:
        step = op.step("rows", lambda: _vmapped)
        out = jnp.stack([step(op.params, rows[i]) for i in idx])
    return out.reshape(calls * k, -1)[:m]


def hutchpp_trace(
    loss_fn: Loss,
    params: Any,
    *,
    key: jax.Array,
    num_matvecs: int = 99,
    curvature: str = "hessian",
    probes_per_call: int = 1,
    loop: str = "auto",
    precision: Optional[str] = "highest",
    linearize: bool = False,
) -> TraceResult:
    """Hutch++ (Meyer, Musco, Musco and Woodruff, "Hutch++: Optimal Stochastic Trace
    Estimation", SOSA 2021, Algorithm 1) with ``m = num_matvecs`` curvature products.

    With ``k = m/3`` Rademacher sketch vectors S and k Rademacher probes G (P × k each):
    ``Q = orth(C S)``, and ``tr(C) ≈ tr(Qᵀ C Q) + (1/k) tr(Gᵀ (I − QQᵀ) C (I − QQᵀ) G)``:
    the trace of C's projection on the (approximate) top-k subspace exactly, Hutchinson
    on the deflated rest. Unbiased for any symmetric C; for a PSD C the error is
    O(tr(C)/m) with high probability instead of Hutchinson's O(tr(C)/√m), and far smaller
    when the spectrum decays fast (the deflated rest then has a small Frobenius norm).

    ``stderr`` is the standard error of the Hutchinson part given Q (its k samples'
    standard deviation / √k); the sketch part has no variance given S. ``probes_per_call``
    vectors share one vectorized product, as in :func:`hutchinson_trace`.

    Raises:
      ValueError: ``num_matvecs`` not a multiple of 3 that is >= 3 (it is static: the
        sketch is P × m/3); ``probes_per_call`` < 1; an unknown curvature or loop.
    """
    _check_count(probes_per_call, "probes_per_call")
    if isinstance(num_matvecs, jax.core.Tracer) or int(num_matvecs) != num_matvecs or num_matvecs < 3 or num_matvecs % 3:
        raise ValueError(f"num_matvecs must be a static multiple of 3, >= 3 (sketch, projection and probes get a third each), got {num_matvecs!r}.")
    loop = resolve_loop(loop, params, linearize)
    info = SolverInfo(curvature, loop, _precision_name(precision), bool(linearize))
    k, calls = int(num_matvecs) // 3, int(probes_per_call)
    with _precision_context(precision):
        op = _Operator(loss_fn, params, curvature, loop, linearize, info.precision)
        p, dtype = op.flat.shape[0], op.dtype
        ks, kg = jax.random.split(key)
        s = _rademacher_rows(ks, jnp.arange(k), p, dtype)
        g = _rademacher_rows(kg, jnp.arange(k), p, dtype)
        q, _ = jnp.linalg.qr(_apply_rows(op, s, calls).T)  # (P, k) orthonormal columns
        low = jnp.sum(q.T * _apply_rows(op, q.T, calls))  # tr(Qᵀ C Q)
        gp = g - (g @ q) @ q.T  # rows of (I − QQᵀ) G
        r = jnp.sum(gp * _apply_rows(op, gp, calls), axis=1)  # gᵀ(I−QQᵀ)C(I−QQᵀ)g per probe
    n = jnp.asarray(k, dtype)
    mean = jnp.mean(r)
    var = jnp.sum((r - mean) ** 2) / jnp.maximum(n - 1, 1)
    return TraceResult(low + mean, jnp.sqrt(var / n), jnp.asarray(3 * k, jnp.int32), info)


# ---------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature.


def spectral_density(
    loss_fn: Loss,
    params: Any,
    *,
    key: jax.Array,
    order: int = 90,
    num_vectors: int = 5,
    grid: Optional[jax.Array] = None,
    num_points: int = 1000,
    sigma: Optional[float] = None,
    curvature: str = "hessian",
    probes_per_call: int = 1,
    loop: str = "auto",
    precision: Optional[str] = "highest",
    linearize: bool = False,
) -> dict[str, Any]:
    """Stochastic Lanczos quadrature: the eigenvalue density of the ``curvature`` matrix
    (the Hessian by default).

    For each of ``num_vectors`` Gaussian start vectors, Lanczos of ``order`` steps gives
    nodes θ_j (Ritz values) and weights τ_j (squared first components of T's
    eigenvectors, summing to 1); the density is the average of ``Σ_j τ_j N(t; θ_j, σ²)``.

    Args:
      grid: points t (default: ``num_points`` points from the smallest to the largest
        node, padded on each side by 10% of the spectral width plus 5σ).
      sigma: the Gaussian width (default: 1% of the spectral width, at least 1e-5).
      probes_per_call: start vectors whose Lanczos runs advance together, one vectorized
        product per step (``jax.vmap``); the start vectors are the same for any value.
      curvature, loop, precision, linearize: the module docstring.

    Returns:
      ``{'grid', 'density', 'nodes' (num_vectors, order), 'weights' (num_vectors, order),
      'info'}`` (``info``: a :class:`SolverInfo`, a pytree without leaves).

    Raises:
      ValueError: ``order`` outside [1, P]; ``num_vectors`` or ``probes_per_call`` < 1;
        an unknown curvature or loop.
    """
    flat, _ = ravel_pytree(params)
    _check_order(order, flat.shape[0])
    if num_vectors < 1:
        raise ValueError(f"num_vectors must be >= 1, got {num_vectors}.")
    _check_count(probes_per_call, "probes_per_call")
    loop = resolve_loop(loop, params, linearize)
    info = SolverInfo(curvature, loop, _precision_name(precision), bool(linearize))
    k = min(int(probes_per_call), num_vectors)
    with _precision_context(precision):
        op = _Operator(loss_fn, params, curvature, loop, linearize, info.precision)
        dtype = op.dtype
        keys = jax.random.split(key, num_vectors)
        groups = -(-num_vectors // k)
        idx = jnp.minimum(jnp.arange(groups * k), num_vectors - 1).reshape(groups, k)

        def one_group(group_keys, run):
            starts = jax.vmap(lambda kk: _start(kk, op.flat, None, dtype))(group_keys)
            basis, alphas, betas = run(jax.vmap(lambda v: _lanczos_init(v, order))(starts))
            t = jax.vmap(lambda a, b: jnp.diag(a) + jnp.diag(b[:-1], 1) + jnp.diag(b[:-1], -1))(alphas, betas)
            vals, vecs = jnp.linalg.eigh(t)
            return vals, vecs[:, 0, :] ** 2

        run = lambda carry: _fori(op, "lanczos-batched", _batched_lanczos_body, order, carry, donate=True)
        if loop == "lax":
            # A loop over groups (not unrolled on a CPU either): each body is itself a Lanczos loop.
            nodes, weights = jax.lax.map(lambda g: one_group(keys[g], run), idx)
        else:
            outs = [one_group(keys[g], run) for g in idx]
            nodes, weights = jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])
        nodes = nodes.reshape(groups * k, order)[:num_vectors]
        weights = weights.reshape(groups * k, order)[:num_vectors]
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width = jnp.maximum(hi - lo, 1e-6)
    sig = jnp.maximum(0.01 * width, 1e-5) if sigma is None else jnp.asarray(sigma, dtype)
    if grid is None:
        pad = 0.1 * width + 5 * sig
        grid = jnp.linspace(lo - pad, hi + pad, num_points)
    gauss = jnp.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / sig) ** 2) / (sig * math.sqrt(2 * math.pi))
    density = jnp.mean(jnp.sum(weights[..., None] * gauss, axis=1), axis=0)
    return {"grid": grid, "density": density, "nodes": nodes, "weights": weights, "info": info}


def block_loss_fn(loss_fn: Loss, params: Any, block: str) -> tuple[Loss, Any]:
    """The loss as a function of the parameters whose path (``'norm3/scale'``,
    ``'conv1/kernel'``; the ``/``-joined keys of the params pytree) matches the regex
    ``block`` (``re.search``), the others held at ``params``.

    Returns ``(block_loss, block_params)``: any function of this module applied to them
    gives the Hessian's diagonal block (a per-layer spectrum, e.g. ``block='^conv3/'``).
    (A plain loss: ``curvature='hessian'`` only.)

    Raises:
      ValueError: the regex matches no parameter (the message lists the paths).
    """
    paths = param_paths(params)
    leaves, treedef = jax.tree.flatten(params)
    pattern = re.compile(block)
    chosen = [i for i, p in enumerate(paths) if pattern.search(p)]
    if not chosen:
        raise ValueError(f"block {block!r} matches no parameter; the parameters are: {paths}.")
    sub = {paths[i]: leaves[i] for i in chosen}

    def block_loss(sub_params):
        merged = list(leaves)
        for i in chosen:
            merged[i] = sub_params[paths[i]]
        return loss_fn(jax.tree.unflatten(treedef, merged))

    return block_loss, sub
