"""Per-example gradients for any registered model, with BatchNorm in three named semantics.

With BatchNorm in training mode an example's loss depends on the whole batch through
the batch statistics, so "the gradient of one example" is not defined until one says
what happens to the statistics (Opacus refuses BatchNorm, BackPACK warns that its
individual gradients are meaningless). jaxnorm offers three definitions, chosen by
``bn_mode`` (the vocabulary of :mod:`jaxnorm.modes`); for a network without BatchNorm they coincide.

``'running'``
    BN normalizes with its running statistics (eval mode). ``g_i = ∇_θ ℓ(f_θ(x_i), t_i)``
    with every example independent. What the network computes at test time.
``'frozen'``
    The batch's statistics (per ghost group, if the model uses them) are computed once,
    from the whole batch at the current weights, and treated as constants:
    ``g_i = ∇_θ ℓ(f_θ(x_i; μ_B, σ²_B), t_i)`` with ``μ_B, σ²_B`` not differentiated. The
    forward pass of every example is exactly the training-mode forward pass (with
    dropout off); only the gradient paths through the statistics are cut. Cost: one
    extra batch forward pass.
``'batch'`` (the *coupled* definition)
    The exact contribution of example i's loss term with the statistics depending on the
    whole batch: ``g_i = ∂ℓ_i(θ; X)/∂θ`` where ``ℓ_i`` is the i-th entry of the
    training-mode per-example loss vector. Their mean is exactly the batch gradient of
    training. Each row is a vector-Jacobian product of the whole batch (b backward
    passes, vectorized), so this costs about b/2 to b times the other modes.

Dropout: ``running`` and ``frozen`` are deterministic (dropout off, also in the pass
that takes the frozen statistics); ``batch`` is the training-mode pass, dropout
included, with the key ``rng``.

The input gradient ``h_X(x_i) = ∂ℓ_i/∂x_i`` (Balduzzi et al. 2017; the gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022), Def. 1.3) follows the same semantics; in ``batch`` mode it is the diagonal
block: how example i's loss term changes with its own input, statistics included.

Loss: ``loss=`` names a per-example loss of :data:`jaxnorm.objective.LOSSES` (default
``'ce'``, softmax cross-entropy; ``'mse'`` against one-hot targets) or is a callable
``(logits, labels) -> (b,)``; with
``weight_decay=λ`` every example's gradient gains ``λ·W`` on the weight kernels, so the
mean equals the gradient of the training objective ``mean loss + ½λΣ‖W‖²``.

Memory: per-example gradients are computed in chunks of ``chunk_size`` examples
(mapped with ``jax.lax.map``, unrolled on a CPU); with a :class:`~jaxnorm.diagnostics.masking.GradientMask` each chunk
is masked before it is stored, so the peak is ``chunk_size × P + b × mask.size``
floats. :func:`per_example_gram` and :func:`per_example_sq_norms` never hold more than
two chunks of gradients at once; by default (``method='auto'``) they hold none: in
``running``/``frozen`` mode they are computed layer by layer from one batch backward
pass (:mod:`jaxnorm.diagnostics.layerwise`, which also gives the per-coordinate second
moment and the mean in the same pass: :func:`~jaxnorm.diagnostics.layerwise.per_example_statistics`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import norms
from jaxnorm.diagnostics._mapping import map_chunks
from jaxnorm.diagnostics.masking import GradientMask, flatten
from jaxnorm.layers import Norm
from jaxnorm.modes import check_bn_mode
from jaxnorm.objective import get_loss, is_weight, l2_penalty

__all__ = [
    "MODES",
    "WRT",
    "per_example_grads",
    "per_example_gram",
    "per_example_sq_norms",
    "batch_loss_fn",
    "mean_gradient",
    "frozen_batch_stats",
]

MODES = ("running", "frozen", "batch")  # the BN modes of jaxnorm.modes that per-example gradients take
WRT = ("params", "inputs", "both")

_DROPOUT_KEY = jax.random.PRNGKey(0)


def _check(variables, x, y, bn_mode: str, wrt: str = "params", chunk_size: Optional[int] = None) -> None:
    check_bn_mode(bn_mode, MODES)
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {list(WRT)}, got {wrt!r}.")
    if "params" not in variables:
        raise ValueError("variables must hold 'params' (and 'batch_stats' for BatchNorm models), e.g. state.variables.")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x (batch, ...) and integer labels (batch,), got shapes {x.shape} and {y.shape}.")
    if x.shape[0] < 1:
        raise ValueError("the batch is empty.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point (normalized inputs), got {x.dtype}.")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got {y.dtype}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}.")


def _weight_decay_grad(params, weight_decay: float):
    return jax.tree_util.tree_map_with_path(lambda p, w: weight_decay * w if is_weight(p) else jnp.zeros_like(w), params)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _batch_norm_paths(module, variables, x) -> dict[tuple[str, ...], Optional[int]]:
    """Path -> ghost group size of every batch-kind :class:`Norm` the model calls."""
    found = {}

    def interceptor(next_fun, args, kwargs, ctx):
        if isinstance(ctx.module, Norm) and ctx.method_name == "__call__" and ctx.module.kind == "batch":
            found[ctx.module.path] = ctx.module.group_size
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    return found


def frozen_batch_stats(module, variables, x, *, rng: Optional[jax.Array] = None) -> Any:
    """Per-example ``batch_stats`` that reproduce the training-mode forward pass in eval mode.

    Runs the training-mode forward pass on the batch ``x`` once, recording every
    batch-kind :class:`~jaxnorm.layers.Norm`'s batch statistics
    (:func:`jaxnorm.norms.batch_moments`: mean and biased variance, per ghost group),
    and returns a copy of ``variables['batch_stats']`` whose ``mean``/``var`` leaves
    are replaced by them, every leaf with a leading batch axis ``(b, ...)`` (example i
    gets its ghost group's statistics). Feeding row i to ``module.apply(..., train=False)``
    with ``x[i:i+1]`` normalizes exactly as training did (dropout off: the statistics
    are taken with every ``nn.Dropout`` bypassed, as in the eval-mode pass that uses
    them). The statistics are ``stop_gradient``-ed: the ``frozen`` semantics.
    """
    captured: dict[tuple[str, ...], tuple] = {}

    def interceptor(next_fun, args, kwargs, ctx):
        if isinstance(ctx.module, Norm) and ctx.method_name == "__call__" and ctx.module.kind == "batch":
            mean, var = norms.batch_moments(args[0], group_size=ctx.module.group_size)
            captured[ctx.module.path] = (mean, var)
        if isinstance(ctx.module, nn.Dropout) and ctx.method_name == "__call__":
            return args[0]  # dropout off, as in the eval-mode passes that use the statistics
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        module.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng if rng is not None else _DROPOUT_KEY})
    b = x.shape[0]

    def per_example(stat):  # (groups, C) -> (b, C)
        return jnp.repeat(jax.lax.stop_gradient(stat), b // stat.shape[0], axis=0)

    stats = jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape), dict(variables.get("batch_stats", {})))
    for path, (mean, var) in captured.items():
        node = stats
        for name in path:
            node = node[name]
        node["mean"], node["var"] = per_example(mean), per_example(var)
    return stats


class _Rows(NamedTuple):
    """``rows(idx) -> (param_grads (len(idx), ...) tree, input_grads (len(idx), ...))``."""

    fn: Callable
    batch: int


def _make_rows(module, variables, x, y, *, bn_mode: str, weight_decay: float, rng, loss="ce") -> _Rows:
    """The gradient rows of one batch: the single place where the three modes differ.

    ``rows.fn(idx, xs=None)``; ``xs`` (frozen/running only) evaluates the rows at these
    inputs instead of ``x`` (same shape), the statistics still those of ``x`` (input
    perturbations, :mod:`jaxnorm.diagnostics.input_conditioning`).
    """
    params = variables["params"]
    b = x.shape[0]
    rng = rng if rng is not None else _DROPOUT_KEY
    per_example_loss = get_loss(loss)
    decay = _weight_decay_grad(params, weight_decay) if weight_decay else None
    if bn_mode == "batch":
        other = {k: v for k, v in variables.items() if k != "params"}

        def losses(p, xx):
            logits, _ = module.apply({"params": p, **other}, xx, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
            return per_example_loss(logits, y)

        _, vjp = jax.vjp(losses, params, x)

        def one(i):
            gp, gx = vjp(jax.nn.one_hot(i, b, dtype=jnp.float32))
            return (gp if decay is None else _add(gp, decay)), gx[i]

        def coupled_rows(idx, xs=None):
            if xs is not None:
                raise ValueError("input perturbations are defined for bn_mode 'running' and 'frozen' only.")
            return jax.vmap(one)(idx)

        return _Rows(coupled_rows, b)

    stats = frozen_batch_stats(module, variables, x, rng=rng) if bn_mode == "frozen" else None
    other = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}

    def single(p, xi, yi, bs):
        v = {"params": p, **other, **({"batch_stats": bs} if bs else {})}
        logits = module.apply(v, xi[None], train=False)
        value = per_example_loss(logits, yi[None])[0]
        return value + weight_decay * l2_penalty(p) if weight_decay else value

    grad = jax.grad(single, argnums=(0, 1))
    running_stats = variables.get("batch_stats", {})

    def rows(idx, xs=None):
        xs = x if xs is None else xs
        if stats is None:
            return jax.vmap(grad, in_axes=(None, 0, 0, None))(params, xs[idx], y[idx], running_stats)
        bs = jax.tree.map(lambda a: a[idx], stats)
        return jax.vmap(grad, in_axes=(None, 0, 0, 0))(params, xs[idx], y[idx], bs)

    return _Rows(rows, b)


def _chunks(b: int, chunk_size: Optional[int]) -> jax.Array:
    """Example indices ``(num_chunks, chunk)``; the last chunk is padded with index b-1."""
    c = b if chunk_size is None else min(chunk_size, b)
    n = -(-b // c)
    idx = jnp.minimum(jnp.arange(n * c), b - 1)
    return idx.reshape(n, c)


def _select(out, wrt: str):
    gp, gx = out
    return {"params": gp, "inputs": gx, "both": (gp, gx)}[wrt]


def per_example_grads(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    bn_mode: str = "frozen",
    loss="ce",
    wrt: str = "params",
    chunk_size: Optional[int] = None,
    mask: Optional[GradientMask] = None,
    weight_decay: float = 0.0,
    rng: Optional[jax.Array] = None,
):
    """Per-example gradients ``g_i`` (and/or input gradients ``h_X(x_i)``) of a batch.

    Args:
      module: a flax model from :func:`jaxnorm.models.get_model` (any module called as
        ``apply(variables, x, train=...)``).
      variables: ``{'params': ..., 'batch_stats': ...}`` (e.g. ``state.variables``).
      x: ``(b, ...)`` network inputs (already normalized).
      y: ``(b,)`` integer labels.
      bn_mode: ``'running'``, ``'frozen'`` or ``'batch'`` (module docstring).
      loss: a name from :data:`jaxnorm.objective.LOSSES` or ``(logits, labels) -> (b,)``.
      wrt: ``'params'``, ``'inputs'`` or ``'both'``.
      chunk_size: examples per vectorized chunk (None: the whole batch at once).
      mask: keep only these coordinates of each parameter gradient (§1.6).
      weight_decay: λ; adds ``λ·W`` to every example's kernel gradients.
      rng: dropout key for training-mode passes (default: a fixed key).

    Returns:
      ``wrt='params'``: a pytree like ``params`` with a leading ``(b,)`` axis on every
      leaf, or a ``(b, mask.size)`` float32 matrix with ``mask``; ``wrt='inputs'``:
      ``(b, *x.shape[1:])``; ``wrt='both'``: the tuple of the two.

    Raises:
      ValueError: unknown mode/wrt, mismatched shapes, empty batch, a mask drawn for
        other params; and, in training-mode passes, :func:`jaxnorm.norms.batch_norm`'s
        errors (e.g. a dense BN layer on a batch of one).
      TypeError: non-float inputs or non-integer labels.
    """
    _check(variables, x, y, bn_mode, wrt, chunk_size)
    rows = _make_rows(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, rng=rng, loss=loss)
    return _map_rows(rows, chunk_size, wrt, mask)


def _map_rows(rows: _Rows, chunk_size, wrt, mask):
    b = rows.batch

    def chunk(idx):
        gp, gx = rows.fn(idx)
        if mask is not None:
            gp = mask.apply(gp, batch_dims=1).astype(jnp.float32)
        return gp, gx

    idx = _chunks(b, chunk_size)
    if idx.shape[0] == 1:
        out = chunk(idx[0])
    else:
        out = map_chunks(chunk, idx)
        out = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:b], out)
    return _select(out, wrt)


def per_example_gram(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    bn_mode: str = "frozen",
    loss="ce",
    chunk_size: Optional[int] = None,
    mask: Optional[GradientMask] = None,
    weight_decay: float = 0.0,
    rng: Optional[jax.Array] = None,
    method: str = "auto",
) -> jax.Array:
    """The ``(b, b)`` Gram matrix ``K_ij = <g_i, g_j>`` of the per-example weight gradients.

    Never holds more than two chunks of gradients: block ``(I, J)`` is computed from the
    gradients of chunks I and J, so with ``n = ceil(b / chunk_size)`` chunks the
    gradients are computed ``n + n²`` times instead of once (memory ``2 × chunk × P``
    instead of ``b × P``). Without ``chunk_size`` it is ``G Gᵀ`` of one pass.
    Every Gram-based metric (:mod:`jaxnorm.diagnostics.dissonance`,
    :func:`jaxnorm.diagnostics.effective_rank.stable_rank_from_gram`) takes it.

    ``method``: ``'auto'`` (default), ``'layerwise'`` or ``'materialize'``
    (:data:`jaxnorm.diagnostics.layerwise.METHODS`). ``'layerwise'`` computes the same
    matrix from every layer's inputs and output gradients of one batch backward pass,
    without per-example gradients (:mod:`jaxnorm.diagnostics.layerwise`: exact in
    ``running``/``frozen`` mode, ``chunk_size`` unused); ``'materialize'`` is the chunked
    computation above; ``'auto'`` is ``'layerwise'`` wherever it applies (no ``mask``,
    not ``bn_mode='batch'``, every parameter in a Dense/Conv/Norm layer), else
    ``'materialize'``.

    Arguments and errors as :func:`per_example_grads`; ``method='layerwise'`` also raises
    a ValueError with ``bn_mode='batch'``, a ``mask``, or an unsupported layer.
    """
    _check(variables, x, y, bn_mode, "params", chunk_size)
    if _layerwise_method(method, bn_mode, mask) != "materialize":
        from jaxnorm.diagnostics.layerwise import _statistics

        return _statistics(module, variables, x, y, bn_mode=bn_mode, loss=loss, weight_decay=weight_decay, want=("gram",),
                          method=method, chunk_size=chunk_size, rng=rng).gram
    rows = _make_rows(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, rng=rng, loss=loss)
    return _gram_of_rows(rows, chunk_size, mask)


def _gram_of_rows(rows: _Rows, chunk_size: Optional[int], mask: Optional[GradientMask] = None) -> jax.Array:
    """``G Gᵀ`` of the rows, block ``(I, J)`` from chunks I and J (two chunks in memory)."""
    b = rows.batch
    flat = lambda idx: flatten(rows.fn(idx)[0], 1, mask)
    idx = _chunks(b, chunk_size)
    if idx.shape[0] == 1:
        g = flat(idx[0])
        return g @ g.T
    blocks = map_chunks(lambda i: (lambda gi: map_chunks(lambda j: gi @ flat(j).T, idx))(flat(i)), idx)
    n, c = idx.shape
    return blocks.transpose(0, 2, 1, 3).reshape(n * c, n * c)[:b, :b]


def per_example_sq_norms(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    bn_mode: str = "frozen",
    loss="ce",
    chunk_size: Optional[int] = None,
    mask: Optional[GradientMask] = None,
    weight_decay: float = 0.0,
    rng: Optional[jax.Array] = None,
    method: str = "auto",
) -> jax.Array:
    """``(b,)`` squared norms ``‖g_i‖²`` of the per-example weight gradients, one chunk of
    gradients in memory at a time (``method='materialize'``), or without per-example
    gradients at all (``'layerwise'``; ``'auto'``, the default, picks it wherever it
    applies: see :func:`per_example_gram`). Arguments and errors as
    :func:`per_example_grads` and :func:`per_example_gram`."""
    _check(variables, x, y, bn_mode, "params", chunk_size)
    if _layerwise_method(method, bn_mode, mask) != "materialize":
        from jaxnorm.diagnostics.layerwise import _statistics

        return _statistics(module, variables, x, y, bn_mode=bn_mode, loss=loss, weight_decay=weight_decay,
                          want=("sq_norms",), method=method, chunk_size=chunk_size, rng=rng).sq_norms
    rows = _make_rows(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, rng=rng, loss=loss)
    sq = lambda idx: jnp.sum(jnp.square(flatten(rows.fn(idx)[0], 1, mask)), axis=-1)
    idx = _chunks(x.shape[0], chunk_size)
    return sq(idx[0]) if idx.shape[0] == 1 else map_chunks(sq, idx).reshape(-1)[: x.shape[0]]


def _layerwise_method(method: str, bn_mode: str, mask) -> str:
    from jaxnorm.diagnostics.layerwise import _resolve_method

    return _resolve_method(method, bn_mode, mask)


def batch_loss_fn(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    bn_mode: str = "batch",
    loss="ce",
    weight_decay: float = 0.0,
    rng: Optional[jax.Array] = None,
) -> Callable[[Any], jax.Array]:
    """``loss(params) -> scalar``: the batch's mean loss under ``bn_mode``, as a function of
    the weights (the matrix-free boundary of the weight-space metrics).

    ``'batch'`` is training's objective (BN with the statistics of the batch at the
    given weights, differentiated through); ``'frozen'`` recomputes the batch statistics
    at the given weights and does not differentiate through them (its gradient is the
    mean of the ``frozen`` per-example gradients); ``'running'`` uses the running
    statistics. Running statistics are never updated.
    """
    _check(variables, x, y, bn_mode)
    rng = rng if rng is not None else _DROPOUT_KEY
    other = {k: v for k, v in variables.items() if k != "params"}
    penalty = (lambda p: weight_decay * l2_penalty(p)) if weight_decay else (lambda p: 0.0)
    per_example_loss = get_loss(loss)

    def batch_loss(params):
        v = {"params": params, **other}
        if bn_mode == "running":
            logits = module.apply(v, x, train=False)
        elif bn_mode == "batch":
            logits, _ = module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        else:
            stats = frozen_batch_stats(module, v, x, rng=rng)
            bs = jax.tree.map(lambda a: a[0], stats) if not _varies(module, v, x) else None
            if bs is not None:
                logits = module.apply({**v, "batch_stats": bs}, x, train=False)
            else:  # ghost groups: each example has its group's statistics
                single = lambda xi, s: module.apply({**v, "batch_stats": s}, xi[None], train=False)[0]
                logits = jax.vmap(single)(x, stats)
        return jnp.mean(per_example_loss(logits, y)) + penalty(params)

    return batch_loss


def _varies(module, variables, x) -> bool:
    """True if some batch norm uses ghost groups smaller than the batch."""
    return any(g is not None and g < x.shape[0] for g in _batch_norm_paths(module, variables, x).values())


def mean_gradient(module, variables, x, y, *, bn_mode: str = "batch", weight_decay: float = 0.0, rng=None, loss="ce"):
    """``ḡ = ∇_θ`` of :func:`batch_loss_fn` (a params-shaped pytree). In ``batch`` mode it
    is the training step's gradient; in every mode it equals the mean of the
    corresponding per-example gradients."""
    return jax.grad(batch_loss_fn(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, rng=rng, loss=loss))(variables["params"])
