"""Per-example gradient statistics layer by layer, without materializing per-example gradients.

For a dense layer ``z = a W + c`` the gradient of example i's loss term w.r.t. the
kernel is the outer product ``a_i δ_iᵀ``, where ``a_i`` is the layer's input and
``δ_i = ∂ℓ_i/∂z_i`` the gradient of the example's loss w.r.t. the layer's output. So
with ``A`` (b×n) the inputs and ``Δ`` (b×m) the output gradients of a batch,

    ‖g_i‖² = ‖a_i‖² ‖δ_i‖²,      K = (A Aᵀ) ⊙ (Δ Δᵀ),      Σ_i g_i² = (A⊙A)ᵀ (Δ⊙Δ),

and the bias gradient is ``δ_i`` itself (Goodfellow 2015, "Efficient Per-Example
Gradient Computations"; the "ghost norm" of Li et al. 2022, "Large Language Models Can
Be Strong Differentially Private Learners"; BackPACK's ``BatchL2Grad``, Dangel et al.
2020, "BackPACK: Packing more into backprop"). Every ``Δ`` of the network comes from ONE
vector-Jacobian product: each weight layer's output gets a zero "perturbation" ε added
(:func:`flax.linen.intercept_methods`), and ``∂(Σ_i ℓ_i)/∂ε`` is the matrix of
per-example output gradients, because example i's loss depends only on row i. The cost
is about one forward and one backward pass of the batch, plus per-layer products.

Which layers, and how (chosen per layer from shapes at trace time):

* ``nn.Dense`` (input ``(b, ..., n)``; ``T`` = the product of the middle axes, 1 for an
  MLP) and ``nn.Conv`` (through its patches, im2col: ``A_i`` is ``(T, k²·c_in)`` over
  the T output positions, and ``g_i = A_iᵀ Δ_i``).
  With ``T = 1`` the identities above are used as they stand. With ``T > 1`` the Gram
  entry is ``Σ_{t,s} (A_i A_jᵀ)_{ts} (Δ_i Δ_jᵀ)_{ts}``, ``O(b² T² (n + m))`` flops; the
  alternative is to form this one layer's per-example kernel gradients
  ``G = einsum('btn,btm->bnm')`` (``b T n m`` flops, ``b n m`` floats) and take
  ``G Gᵀ`` (``b² n m``). The cheaper of the two by that flop count is used (for
  convolutions it is almost always G: T² is large); the second moment of a ``T > 1``
  layer always forms G (it has no cheaper exact form).
* :class:`jaxnorm.layers.Norm` (γ, β: a few floats per channel): each example's
  gradient of the layer's own parameters is computed directly, as the vector-Jacobian
  product of the layer applied to that example alone with cotangent ``δ_i`` (this is
  ``Σ_positions δ ⊙ x̂`` for γ and ``Σ_positions δ`` for β, including the
  ``bn_ablation`` superset's switches: a switched-off γ/β gets exactly 0).
* A dense/conv layer whose kernel is re-parameterized (weight norm, weight
  standardization: :func:`jaxnorm.layers.kernel_hook`), or any other configuration the
  identity does not cover (grouped or input-dilated convolutions, masks, circular,
  reflect or causal padding, unshared ``ConvLocal`` weights, custom ``dot_general``):
  the gradient w.r.t. the *stored* parameters is a Jacobian of the effective kernel's
  gradient, which does not preserve norms, so that one layer's per-example gradients
  are materialized the same way as a norm layer's (``b ×`` the layer's parameters).
* A parameter owned by any other module (``nn.Embed``, a custom ``self.param``), or by
  a layer the model calls inside a flax transform (the cell of an ``nn.RNN``, which
  ``nn.scan`` runs once per time step with shared weights: e.g. the MNIST-1D GRU;
  ``nn.vmap``, ``nn.remat``), is unsupported: ``method='layerwise'`` raises a
  ValueError; ``'auto'`` uses the materialized path.

BatchNorm modes (the vocabulary of :mod:`jaxnorm.modes`, the semantics of
:mod:`jaxnorm.diagnostics.per_example`): the row-independence the identity needs holds
in ``'running'`` and ``'frozen'`` mode, where the statistics are constants. With ghost
batch statistics in ``'frozen'`` mode, the batch is split into groups that share every
layer's statistics (gcd of the group sizes) and the pass is vmapped over them. In
``'batch'`` (coupled) mode example i's loss depends on every example through the
statistics, so ``∂(Σℓ)/∂ε`` is NOT the matrix of per-example output gradients (it mixes
rows); that mode always uses the materialized path (``per_example_grads``'s b
vector-Jacobian products) -- also for networks without BatchNorm, whose ``'running'``
numbers are the same apart from dropout.

For comparison, BackPACK's ``BatchL2Grad`` (backpack-for-pytorch 1.7) applies the same
per-layer identity to autograd's output gradients ``g_out`` of the batch loss ``L``
(with ``reduction='mean'`` its per-example quantities are those of ``ℓ_i / b``). With a
BatchNorm in training mode it refuses to run: its error says that results like individual
gradients may not be meaningful, as BatchNorm mixes samples; were the check removed,
row i of ``g_out`` below a BN layer would be ``Σ_j ∂ℓ_j/∂z_i`` -- the contribution of
example i's activation row to the batch gradient, every example's loss term mixed in
through the statistics -- so its "individual gradients" would sum to the batch
gradient but be neither jaxnorm's ``coupled`` rows ``∂ℓ_i/∂θ`` nor its ``frozen``
ones. (Layers above the last BN are the exception: there both coincide with it.) In
eval mode it computes what ``'running'`` computes here (the benchmark
``experiments/benchmarks/per_example_stats.py`` compares the two on 3C3D).

Weight decay λ adds ``λ·W`` to every example's kernel gradient (as in
:func:`~jaxnorm.diagnostics.per_example.per_example_grads`); it enters through
``‖g_i + λW‖² = ‖g_i‖² + 2λ<g_i, W> + λ²‖W‖²`` with ``<g_i, W> = Σ_t a_itᵀ W δ_it`` (and
the same expansion for the Gram and the second moment), so it needs no per-example
gradient either.

Exactness: every statistic is the exact value of the materialized computation
(:func:`~jaxnorm.diagnostics.per_example.per_example_grads` and friends) up to
floating-point reassociation; the tests compare them on every model of the zoo in
float64 to ~1e-10.

Dropout is off (``running``/``frozen``), as in the materialized path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
from flax.core import tracers as _flax_tracers
import jax.numpy as jnp
import numpy as np

from jaxnorm.diagnostics._mapping import map_chunks
from jaxnorm.diagnostics.masking import flatten
from jaxnorm.diagnostics.per_example import (
    _check,
    _chunks,
    _gram_of_rows,
    _make_rows,
    frozen_batch_stats,
)
from jaxnorm.layers import Norm
from jaxnorm.objective import get_loss, is_weight

__all__ = ["PerExampleStats", "STATISTICS", "METHODS", "per_example_statistics", "statistics_of_forward", "layer_plan"]

#: The statistics :func:`per_example_statistics` can compute (``compute=``).
STATISTICS = ("sq_norms", "gram", "second_moment", "mean_grad", "projections")
#: ``'layerwise'`` (this module), ``'materialize'`` (per-example gradients), ``'auto'``.
METHODS = ("auto", "layerwise", "materialize")


class PerExampleStats(NamedTuple):
    """Statistics of the per-example weight gradients ``g_i`` of one batch (b examples).

    Attributes (a field not asked for in ``compute=`` is None):
      sq_norms: ``(b,)``, ``‖g_i‖²`` (as :func:`~jaxnorm.diagnostics.per_example_sq_norms`).
      gram: ``(b, b)``, ``<g_i, g_j>`` (as :func:`~jaxnorm.diagnostics.per_example_gram`).
      second_moment: a pytree like ``params``, the per-coordinate mean ``(1/b) Σ_i g_i²``
        (so the per-coordinate variance is ``second_moment - mean_grad²`` and
        ``Σ_i g_i² = b · second_moment``; BackPACK's ``SumGradSquared`` of the mean loss
        is ``second_moment / b``).
      mean_grad: a pytree like ``params``, ``(1/b) Σ_i g_i`` (as
        :func:`~jaxnorm.diagnostics.mean_gradient` in the same mode).
      projections: ``(b,)``, ``<g_i, ḡ>`` -- the Gram matrix's row means, in ``O(b)``:
        with ``sq_norms`` all that Cockpit's gradient tests need
        (:mod:`~jaxnorm.diagnostics.gradient_tests`).
    """

    sq_norms: Optional[jax.Array]
    gram: Optional[jax.Array]
    second_moment: Any
    mean_grad: Any
    projections: Optional[jax.Array] = None


class _Unsupported(ValueError):
    """A parameter the layer-wise path cannot attribute to a layer it handles."""


@dataclasses.dataclass(frozen=True)
class _Call:
    """One intercepted layer call (static: found by a shape-only pass)."""

    path: tuple[str, ...]
    kind: str  # 'dense' | 'conv' | 'replay'
    module: Any  # the unbound layer (replay: applied per example; conv: its settings)
    args: tuple  # the call's positional arguments after the input (e.g. Norm's train)
    kwargs: tuple  # the call's keyword arguments, as sorted (name, value) pairs
    out: jax.ShapeDtypeStruct
    inp: tuple[int, ...]  # the input's shape


def _conv_settings(m: nn.Conv, nd: int):
    """``(strides, padding, kernel_dilation)`` of a flax Conv the identity covers, else None."""
    b = lambda v: (1,) * nd if v is None else ((v,) * nd if isinstance(v, int) else tuple(v))
    if any(d != 1 for d in b(m.input_dilation)):
        return None
    padding = nn.linear.canonicalize_padding(m.padding, nd)
    if isinstance(padding, str) and padding not in ("SAME", "VALID", "SAME_LOWER"):
        return None  # CIRCULAR, REFLECT, CAUSAL: flax pads by hand first
    return b(m.strides), padding, b(m.kernel_dilation)


def _kind(m, x) -> str:
    """How the layer-wise path handles the flax layer ``m`` called on ``x``."""
    if type(m) is nn.Dense and m.dot_general_cls is None and m.dot_general is None:
        return "dense"
    if (
        type(m) is nn.Conv
        and m.conv_general_dilated_cls is None
        and m.conv_general_dilated is None
        and m.feature_group_count == 1
        and m.mask is None
        and x.ndim == len(np.atleast_1d(m.kernel_size)) + 2
        and _conv_settings(m, x.ndim - 2) is not None
    ):
        return "conv"
    return "replay"


_LAYERS = (nn.Dense, nn.linear._Conv, Norm)


@contextlib.contextmanager
def _taps(eps, calls, aux):
    """Intercepts every top-level Dense/Conv/Norm call of the model run inside the block.

    ``eps=None``: the shape-only discovery pass, appending a :class:`_Call` per layer
    call to ``calls``. Otherwise each call's output is shifted by ``eps[k]`` and
    ``aux[k] = (input of call k, its layer's variables)`` is recorded.

    A layer called inside a transform of the model (``nn.scan`` -- e.g. the cell of an
    ``nn.RNN`` --, ``nn.vmap``, ``nn.remat``, ...) runs under another JAX trace than the
    model: it is left untapped (its input is not a value of this trace, and one call of a
    scanned cell stands for every step), so its parameters stay uncovered and
    :func:`_check_coverage` sends the model to the materialized path."""
    depth = [0]
    base = _flax_tracers.current_trace()

    def interceptor(next_fun, args, kwargs, ctx):
        m = ctx.module
        if (
            depth[0]
            or ctx.method_name != "__call__"
            or not isinstance(m, _LAYERS)
            or _flax_tracers.current_trace() != base
        ):
            return next_fun(*args, **kwargs)
        depth[0] += 1
        try:
            out = next_fun(*args, **kwargs)
        finally:
            depth[0] -= 1
        k = len(aux)
        if eps is None:
            calls.append(_Call(m.path, _kind(m, args[0]), m.unbind()[0], tuple(args[1:]), tuple(sorted(kwargs.items())),
                               jax.ShapeDtypeStruct(out.shape, out.dtype), tuple(args[0].shape)))
            aux.append(None)
            return out
        if k >= len(calls) or calls[k].path != m.path:
            raise RuntimeError("the model called its layers in a different order on a second trace.")
        aux.append((args[0], m.variables if calls[k].kind == "replay" else None))
        return out + eps[k].astype(out.dtype)

    with nn.intercept_methods(interceptor):
        yield


def _forward(module, variables, x, y, loss, eps, calls):
    """The per-example losses' sum of the eval-mode forward pass, every layer's output
    shifted by ``eps[k]`` (:func:`_taps`); returns ``(Σ loss, aux)``."""
    aux: list = []
    with _taps(eps, calls, aux):
        logits = module.apply(variables, x, train=False)
    return jnp.sum(get_loss(loss)(logits, y)), aux


def _discover(module, variables, x, y, loss) -> list[_Call]:
    """The layer calls of a forward pass on ``x`` (a shape-only trace)."""
    calls: list[_Call] = []
    jax.eval_shape(lambda v, x: _forward(module, v, x, y, loss, None, calls)[0], variables, x)
    return calls


def _layer_terms(module, variables, x, y, loss, calls):
    """``(aux, deltas)`` of one group of examples that share their statistics (``calls``
    from :func:`_discover`; every layer output has the batch as its leading axis)."""
    eps = _zero_taps(calls, x.shape[0])
    total, vjp, aux = jax.vjp(lambda e: _forward(module, variables, x, y, loss, e, calls), eps, has_aux=True)
    (deltas,) = vjp(jnp.ones_like(total))
    return aux, deltas


def _zero_taps(calls, b: int):
    return [jnp.zeros((b,) + c.out.shape[1:], c.out.dtype) for c in calls]


def _replay_grads(call: _Call, layer_vars, a, d):
    """Per-example gradients of one layer's own parameters: ``vmap`` over examples of the
    layer's vector-Jacobian product with cotangent ``δ_i`` (the materialized fallback)."""
    rest = {k: v for k, v in layer_vars.items() if k != "params"}
    kwargs = dict(call.kwargs)

    def one(ai, di):
        f = lambda p: call.module.apply({"params": p, **rest}, ai[None], *call.args, **kwargs)
        _, vjp = jax.vjp(f, layer_vars["params"])
        return vjp(di[None].astype(call.out.dtype))[0]

    return jax.vmap(one)(a, d)


def _patches(call: _Call, a):
    """``(b, T, k²·c_in)`` patches of a conv input, features in the kernel's HWIO order.

    Gathered by strided slices of the padded input (pure data movement, so exact at any
    matmul precision; ``jax.lax.conv_general_dilated_patches`` computes the same array
    as a convolution with a one-hot ``(k²c_in, c_in, k, k)`` filter: k²c_in times the
    layer's own flops, and subject to the backend's reduced-precision convolutions)."""
    m, nd = call.module, a.ndim - 2
    ks = tuple(int(k) for k in np.atleast_1d(m.kernel_size))
    strides, padding, dilation = _conv_settings(m, nd)
    window = tuple((k - 1) * d + 1 for k, d in zip(ks, dilation))
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(a.shape[1:-1], window, strides, padding)
    a = jnp.pad(a, [(0, 0), *[tuple(p) for p in padding], (0, 0)])
    out = tuple((s - w) // st + 1 for s, w, st in zip(a.shape[1:-1], window, strides))
    parts = []
    for offset in np.ndindex(*ks):  # row-major over the window: the kernel's H, W order
        index = tuple(
            slice(o * d, o * d + (n - 1) * st + 1, st) for o, d, n, st in zip(offset, dilation, out, strides)
        )
        parts.append(a[(slice(None), *index, slice(None))])
    p = jnp.stack(parts, axis=-2)  # (b, *out, k², c_in)
    return p.reshape(a.shape[0], math.prod(out), math.prod(ks) * a.shape[-1])


def _subtree(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def _uses_g(T: int, n: int, m: int, b: int, want) -> bool:
    """Whether to form a ``T > 1`` layer's per-example kernel gradients (module docstring)."""
    if T == 1:
        return False
    if "second_moment" in want:
        return True
    ghost, mat = 0, b * T * n * m
    if "gram" in want:
        ghost, mat = ghost + b * b * T * T * (n + m + 1), mat + b * b * n * m
    if "sq_norms" in want:
        ghost, mat = ghost + b * T * T * (n + m + 1), mat + b * n * m
    if "projections" in want:  # <g_i, M> = Σ_t a_itᵀ M δ_it without G
        ghost, mat = ghost + b * T * n * m, mat + b * n * m
    if "mean_grad" in want:  # Σ_i A_iᵀ D_i without G; G's mean with it
        ghost, mat = ghost + b * T * n * m, mat + b * n * m
    return mat < ghost


class _Leaf(NamedTuple):
    """One parameter leaf's per-example gradients ``g_i + r``, in one of two forms.

    ``rows``: materialized ``(b, ...)`` (replayed layers, biases, kernels whose G is
    formed). Else a kernel ``(n, m)`` with ``g_i = A_iᵀ D_i``: ``A`` (b, T, n), ``D``
    (b, T, m). ``shift``: ``r``, the same for every example (e.g. ``λW``), or None.
    ``mean``: ``(1/b) Σ_i (g_i + r)``, filled in when a statistic needs it."""

    rows: Any = None
    A: Any = None
    D: Any = None
    shift: Any = None
    mean: Any = None

    def mean_of(self) -> jax.Array:
        if self.rows is not None:
            return jnp.mean(self.rows, axis=0)  # the shift is in the rows
        m = jnp.einsum("btn,btm->nm", self.A, self.D) / self.A.shape[0]
        return m if self.shift is None else m + self.shift


class _Acc:
    """Accumulates the statistics of the leaves, one at a time."""

    def __init__(self, b, want, dtype):
        self.b, self.want = b, want
        self.sq = jnp.zeros((b,), dtype) if "sq_norms" in want else None
        self.gram = jnp.zeros((b, b), dtype) if "gram" in want else None
        self.proj = jnp.zeros((b,), dtype) if "projections" in want else None
        self.second: dict = {}
        self.mean: dict = {}

    def add(self, path, leaf: _Leaf):
        if leaf.rows is not None:
            self._add_rows(path, leaf.rows, leaf.mean)
        else:
            self._add_kernel(path, leaf)

    def _add_rows(self, path, g, mean):
        """Materialized per-example gradients ``g`` (b, ...) of the leaf at ``path``."""
        f = g.reshape(self.b, -1)
        if self.sq is not None:
            self.sq = self.sq + jnp.sum(jnp.square(f), axis=1)
        if self.gram is not None:
            self.gram = self.gram + f @ f.T
        if self.proj is not None:
            self.proj = self.proj + f @ mean.reshape(-1)
        if "second_moment" in self.want:
            self.second[path] = jnp.mean(jnp.square(g), axis=0)
        if "mean_grad" in self.want:
            self.mean[path] = jnp.mean(g, axis=0) if mean is None else mean

    def _add_kernel(self, path, leaf: _Leaf):
        """A kernel (n, m) with per-example gradients ``A_iᵀ D_i + R`` (no G formed)."""
        A, D, R = leaf.A, leaf.D, leaf.shift
        b, T, n = A.shape
        want = self.want
        if T == 1:
            a, d = A[:, 0], D[:, 0]
            if self.sq is not None:
                self.sq = self.sq + jnp.sum(jnp.square(a), 1) * jnp.sum(jnp.square(d), 1)
            if self.gram is not None:
                self.gram = self.gram + (a @ a.T) * (d @ d.T)
            if "second_moment" in want:
                self.second[path] = (jnp.square(a).T @ jnp.square(d)) / b
        else:
            if self.sq is not None:
                self.sq = self.sq + jnp.einsum("bts,bts->b", A @ jnp.swapaxes(A, 1, 2), D @ jnp.swapaxes(D, 1, 2))
            if self.gram is not None:
                self.gram = self.gram + jnp.einsum("itjs,itjs->ij", jnp.einsum("itn,jsn->itjs", A, A), jnp.einsum("itm,jsm->itjs", D, D))
        if self.proj is not None:  # <A_iᵀ D_i + R, M> = Σ_t a_itᵀ M δ_it + <R, M>
            p = jnp.sum((A @ leaf.mean) * D, axis=(1, 2))
            self.proj = self.proj + (p if R is None else p + jnp.sum(R * leaf.mean))
        if R is not None:
            # ‖g + R‖² = ‖g‖² + 2<g, R> + ‖R‖², <g_i, R> = Σ_t a_itᵀ R δ_it.
            c = jnp.sum((A @ R) * D, axis=(1, 2))
            r2 = jnp.sum(jnp.square(R))
            if self.sq is not None:
                self.sq = self.sq + 2 * c + r2
            if self.gram is not None:
                self.gram = self.gram + (c[:, None] + c[None, :]) + r2
            if "second_moment" in want:  # mean (g + R)² = mean g² + 2 R mean g + R²
                self.second[path] = self.second[path] + 2 * R * (leaf.mean - R) + jnp.square(R)
        if "mean_grad" in want:
            self.mean[path] = leaf.mean


def _check_coverage(params, calls) -> None:
    owned = {c.path for c in calls}
    missing = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)
        if not any(names[: len(o)] == o for o in owned):
            missing.append("/".join(map(str, names)))
    if missing:
        raise _Unsupported(
            f"the layer-wise path handles parameters of nn.Dense, nn.Conv and jaxnorm Norm layers called by the model "
            f"itself; these belong to another module, or to a layer inside a transform of the model (nn.scan, e.g. "
            f"an nn.RNN cell; nn.vmap; nn.remat): {missing}. Use method='materialize' (or 'auto')."
        )


def _group_size(calls, b: int, bn_mode: str) -> Optional[int]:
    """Examples per vmapped group (None: the whole batch shares its statistics)."""
    if bn_mode != "frozen":
        return None
    sizes = [
        c.module.group_size for c in calls
        if isinstance(c.module, Norm) and c.module.kind == "batch" and c.module.group_size is not None and c.module.group_size < b
    ]
    return math.gcd(*sizes) if sizes else None


def _layerwise(module, variables, x, y, *, bn_mode, loss, weight_decay, want, rng=None):
    params = variables["params"]
    b = x.shape[0]
    other = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    calls = _discover(module, variables, x, y, loss)
    _check_coverage(params, calls)
    g = _group_size(calls, b, bn_mode)
    if bn_mode == "frozen":
        stats = frozen_batch_stats(module, variables, x, rng=rng)  # (b, ...) per example
    else:
        stats = variables.get("batch_stats", {})

    def group(xg, yg, bs):
        v = {"params": params, **other, **({"batch_stats": bs} if bs else {})}
        aux, deltas = _layer_terms(module, v, xg, yg, loss, calls)
        return _call_terms(calls, aux, deltas)

    if g is None:
        bs = jax.tree.map(lambda s: s[0], stats) if bn_mode == "frozen" else stats
        terms = group(x, y, bs)
    else:
        n = b // g
        xs, ys = x.reshape((n, g) + x.shape[1:]), y.reshape(n, g)
        bs = jax.tree.map(lambda s: s.reshape((n, g) + s.shape[1:])[:, 0], stats)
        terms = jax.vmap(group)(xs, ys, bs)
        terms = jax.tree.map(lambda t: t.reshape((b,) + t.shape[2:]), terms)
    shift = {}
    if weight_decay:
        for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
            if is_weight(path):
                shift[_names(path)] = weight_decay * w
    return _reduce(calls, terms, params, shift, want)


def _names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)


def _call_terms(calls, aux, deltas):
    """Per layer call: a replayed layer's per-example parameter gradients, or ``(A, D)``
    (inputs as patches ``(b, T, n)``, output gradients ``(b, T, m)``)."""
    out = []
    for c, (a, lv), d in zip(calls, aux, deltas):
        if c.kind == "replay":
            out.append(_replay_grads(c, lv, a, d))
        else:
            A = _patches(c, a) if c.kind == "conv" else a.reshape(a.shape[0], -1, a.shape[-1])
            out.append((A, d.reshape(d.shape[0], -1, d.shape[-1])))
    return out


def _reduce(calls, terms, params, shift: dict, want) -> PerExampleStats:
    """The statistics of ``g_i + r`` from the layer calls' terms (:func:`_call_terms`);
    ``shift`` maps a leaf's path to ``r`` (absent: 0)."""
    b = jax.tree.leaves(terms)[0].shape[0]
    replayed: dict = {}
    kernels: dict = {}
    for c, t in zip(calls, terms):
        if c.kind == "replay":
            replayed[c.path] = t if c.path not in replayed else jax.tree.map(jnp.add, replayed[c.path], t)
        else:
            kernels.setdefault(c.path, []).append(t)
    leaves: dict = {}
    for path, rows in replayed.items():
        for rel, leaf in jax.tree_util.tree_flatten_with_path(rows)[0]:
            full = path + _names(rel)
            leaves[full] = _Leaf(rows=leaf if full not in shift else leaf + shift[full][None])
    for path, parts in kernels.items():
        # A layer called several times: its gradient sums over the calls, like positions.
        A = jnp.concatenate([p[0] for p in parts], axis=1)
        D = jnp.concatenate([p[1] for p in parts], axis=1)
        layer = _subtree(params, path)
        kernel = layer["kernel"]
        R = shift.get(path + ("kernel",))
        R = None if R is None else R.reshape(-1, kernel.shape[-1]).astype(A.dtype)
        if _uses_g(A.shape[1], A.shape[2], D.shape[2], b, want):
            G = jnp.einsum("btn,btm->bnm", A, D)
            leaves[path + ("kernel",)] = _Leaf(rows=G if R is None else G + R)
        else:
            leaves[path + ("kernel",)] = _Leaf(A=A, D=D, shift=R)
        if "bias" in layer:
            bias, r = jnp.sum(D, axis=1), shift.get(path + ("bias",))
            leaves[path + ("bias",)] = _Leaf(rows=bias if r is None else bias + r[None])
    if want & {"mean_grad", "projections", "second_moment"}:
        leaves = {p: leaf._replace(mean=leaf.mean_of()) for p, leaf in leaves.items()}
    dtype = jnp.result_type(*(jax.tree.leaves(params) or [jnp.float32]))
    acc = _Acc(b, want, dtype)
    for path, leaf in leaves.items():
        acc.add(path, leaf)
    return _finish(acc, params)


def _finish(acc: _Acc, params) -> PerExampleStats:
    def tree(values):
        return jax.tree_util.tree_map_with_path(lambda path, p: values[_names(path)].reshape(p.shape), params)

    return PerExampleStats(
        acc.sq,
        acc.gram,
        tree(acc.second) if "second_moment" in acc.want else None,
        tree(acc.mean) if "mean_grad" in acc.want else None,
        acc.proj,
    )


def _materialized(module, variables, x, y, *, bn_mode, loss, weight_decay, want, chunk_size, rng):
    """The statistics from per-example gradient rows, ``chunk_size`` rows at a time (the
    Gram in blocks of two chunks, as :func:`~jaxnorm.diagnostics.per_example_gram`)."""
    rows = _make_rows(module, variables, x, y, bn_mode=bn_mode, weight_decay=weight_decay, rng=rng, loss=loss)
    b = x.shape[0]
    idx = _chunks(b, chunk_size)
    n, c = idx.shape
    sq = gram = second = mean = proj = None
    if n == 1:
        gp = rows.fn(idx[0])[0]
        f = flatten(gp, 1)
        sq, gram = jnp.sum(jnp.square(f), axis=1), f @ f.T
        second = jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), gp)
        mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), gp)
        proj = f @ flatten(mean)
    else:
        if want & {"sq_norms", "second_moment", "mean_grad", "projections"}:
            # Padded rows (the last chunk repeats example b-1) get weight 0 in the sums.
            valid = (jnp.arange(n * c) < b).reshape(n, c)
            wsum = lambda w, t: jax.tree.map(lambda g: jnp.tensordot(w.astype(g.dtype), g, axes=1), t)

            def chunk(args):
                i, w = args
                gp = rows.fn(i)[0]
                return jnp.sum(jnp.square(flatten(gp, 1)), axis=1), wsum(w, jax.tree.map(jnp.square, gp)), wsum(w, gp)

            sq, sum_sq, total = map_chunks(chunk, (idx, valid))
            sq = sq.reshape(-1)[:b]
            second, mean = (jax.tree.map(lambda a: jnp.sum(a, axis=0) / b, t) for t in (sum_sq, total))
        if "projections" in want:  # a second pass: every row against the mean
            flat_mean = flatten(mean)
            proj = map_chunks(lambda i: flatten(rows.fn(i)[0], 1) @ flat_mean, idx).reshape(-1)[:b]
        if "gram" in want:
            gram = _gram_of_rows(rows, chunk_size)
    pick = lambda name, value: value if name in want else None
    return PerExampleStats(pick("sq_norms", sq), pick("gram", gram), pick("second_moment", second), pick("mean_grad", mean),
                           pick("projections", proj))  # fmt: skip


def _resolve_method(method: str, bn_mode: str, mask=None) -> str:
    """``'layerwise'`` or ``'materialize'`` for ``method`` (:data:`METHODS`) in ``bn_mode``;
    ``'auto'`` picks the layer-wise path wherever it is exact (``running``/``frozen``, no
    mask) and lets an unsupported layer fall back at trace time.

    Raises:
      ValueError: unknown method; ``'layerwise'`` with ``bn_mode='batch'`` (coupled rows)
        or with a gradient mask.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    if method == "layerwise":
        if bn_mode == "batch":
            raise ValueError(
                "method='layerwise' needs examples that do not interact: bn_mode 'running' or 'frozen'. In 'batch' "
                "(coupled) mode BatchNorm's batch statistics mix the rows of the output gradients; use "
                "method='materialize' (or 'auto')."
            )
        if mask is not None:
            raise ValueError("method='layerwise' does not take a gradient mask; use method='materialize' (or 'auto').")
    if method == "auto":
        return "materialize" if bn_mode == "batch" or mask is not None else "auto"
    return method


def _statistics(module, variables, x, y, *, bn_mode, loss, weight_decay, want, method, chunk_size=None, rng=None):
    """The dispatcher behind :func:`per_example_statistics` and the ``method=`` of
    ``per_example_gram``/``per_example_sq_norms`` (arguments already checked)."""
    how = _resolve_method(method, bn_mode)
    kw = dict(bn_mode=bn_mode, loss=loss, weight_decay=weight_decay, want=frozenset(want))
    if how != "materialize":
        try:
            return _layerwise(module, variables, x, y, rng=rng, **kw)
        except _Unsupported:
            if how == "layerwise":
                raise
    return _materialized(module, variables, x, y, chunk_size=chunk_size, rng=rng, **kw)


def per_example_statistics(
    module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    bn_mode: str = "frozen",
    loss="ce",
    weight_decay: float = 0.0,
    method: str = "auto",
    compute=STATISTICS,
    chunk_size: Optional[int] = None,
    rng: Optional[jax.Array] = None,
) -> PerExampleStats:
    """Squared norms, Gram matrix, second moment and mean of the per-example gradients.

    The per-example gradients are those of
    :func:`~jaxnorm.diagnostics.per_example.per_example_grads` with the same arguments:
    ``g_i = ∇_θ ℓ_i`` (the example's own loss term, not divided by b) plus ``λ·W`` on every
    weight kernel with ``weight_decay=λ``; so ``sq_norms``/``gram`` equal
    ``per_example_sq_norms``/``per_example_gram`` and ``mean_grad`` equals
    ``mean_gradient`` in the same mode. Pure and jittable (every choice is made from
    shapes at trace time).

    Args:
      module, variables, x, y, loss, weight_decay, rng: as :func:`per_example_grads`
        (``rng``: the key of the training-mode passes -- the coupled rows, and the pass
        that takes the ``frozen`` statistics, where a :class:`Norm` injects noise).
      bn_mode: ``'running'``, ``'frozen'`` (default, as the per-example functions) or
        ``'batch'`` (coupled: always materialized, module docstring).
      method: ``'layerwise'`` (this module's identities: about one forward and one
        backward pass of the batch), ``'materialize'`` (per-example gradients,
        ``chunk_size`` rows at a time), or ``'auto'`` (default: layer-wise wherever it
        is exact, i.e. ``running``/``frozen`` and every parameter in a Dense/Conv/Norm
        layer; otherwise materialized).
      compute: the subset of :data:`STATISTICS` to compute (the others are None).
      chunk_size: rows per chunk of the materialized path (ignored by the layer-wise one).

    Returns:
      :class:`PerExampleStats` with ``sq_norms`` ``(b,)``, ``gram`` ``(b, b)``,
      ``second_moment`` and ``mean_grad`` (pytrees like ``params``).

    Memory (layer-wise): the activations and output gradients of the batch, plus for
    each convolution (T > 1 positions) its patches ``b × T × k²c_in`` and, where formed,
    its per-example kernel gradients ``b × k²c_in × c_out``; never ``b ×`` all parameters.

    Raises:
      ValueError: unknown mode/method/statistic, mismatched shapes, empty batch;
        ``method='layerwise'`` with ``bn_mode='batch'`` or with a parameter of a module
        other than ``nn.Dense``/``nn.Conv``/:class:`~jaxnorm.layers.Norm`.
      TypeError: non-float inputs or non-integer labels.
    """
    _check(variables, x, y, bn_mode, "params", chunk_size)
    want = tuple(compute)
    unknown = [s for s in want if s not in STATISTICS]
    if unknown or not want:
        raise ValueError(f"compute must be a non-empty subset of {list(STATISTICS)}, got {list(want)}.")
    return _statistics(
        module, variables, x, y, bn_mode=bn_mode, loss=loss, weight_decay=weight_decay, want=want, method=method,
        chunk_size=chunk_size, rng=rng,
    )


def layer_plan(module, variables, x, *, compute=STATISTICS) -> list[tuple[str, str]]:
    """``[(layer path, how)]``: how the layer-wise path handles each layer call on the batch
    ``x`` -- ``'identity'`` (T = 1 output position -- a dense layer, or a conv on a 1x1
    output: the outer-product identities), ``'patch-gram'``
    (T > 1: the position-pair Gram), ``'per-example kernel'`` (T > 1: this layer's
    per-example kernel gradients formed) or ``'per-example vjp'`` (norm layers,
    re-parameterized kernels, other configurations). For reading and benchmarking."""
    calls = _discover(module, variables, x, jnp.zeros((x.shape[0],), jnp.int32), "ce")
    b, out = x.shape[0], []
    for c in calls:
        if c.kind == "replay":
            out.append(("/".join(c.path), "per-example vjp"))
            continue
        T = math.prod(c.out.shape[1:-1])
        m = c.out.shape[-1]
        n = c.inp[-1] * (math.prod(np.atleast_1d(c.module.kernel_size)) if c.kind == "conv" else 1)
        how = "identity" if T == 1 else ("per-example kernel" if _uses_g(T, n, m, b, frozenset(compute)) else "patch-gram")
        out.append(("/".join(c.path), how))
    return out


def statistics_of_forward(
    forward: Callable[[Any], tuple[jax.Array, Any]],
    params,
    *,
    compute=("sq_norms", "projections"),
    shift: Optional[Any] = None,
):
    """The batch gradient and per-example statistics of ANY forward pass, from one
    forward and one backward pass: how a training step measures its own batch.

    ``forward(params) -> (losses, aux)`` runs the model once (any ``apply``: training
    mode, dropout keys, mutable collections) and returns the ``(b,)`` per-example losses
    ``ℓ_i``. Every Dense/Conv/Norm call inside it is intercepted as in
    :func:`per_example_statistics`, and ONE vector-Jacobian product w.r.t. the layers'
    outputs gives the per-example output gradients; the weights' own gradients are not
    taken by autodiff at all (their batch gradient is the mean of the per-example terms,
    so the backward pass is done once). ``shift`` is a pytree like ``params`` (or None)
    added to every example's gradient -- e.g. the L2 term's gradient ``λ·θ``, the same
    for every example.

    Returns:
      ``(value, aux, stats)``: ``value = (1/b) Σ_i ℓ_i``, ``forward``'s ``aux``, and
      :class:`PerExampleStats` of ``g_i = ∇ℓ_i + shift`` with ``compute`` plus
      ``mean_grad`` -- the gradient of ``value`` plus ``shift``, equal to
      ``jax.grad`` of it up to floating-point reassociation.

    Exact only where examples do not interact, which is checked: a
    :class:`~jaxnorm.layers.Norm` of the batch kind called with ``train=True`` (batch
    statistics couple the rows, module docstring) or injecting noise, and parameters of
    any other module (flax's own ``BatchNorm``, ``nn.Embed``), raise. Dropout is fine:
    each example's loss still depends on its own row only.

    Raises:
      ValueError: a coupling or unsupported layer (above), an unknown statistic,
        ``losses`` not of shape ``(b,)``.
    """
    want = frozenset(compute) | {"mean_grad"}
    unknown = sorted(want - set(STATISTICS))
    if unknown:
        raise ValueError(f"compute must be a subset of {list(STATISTICS)}, got {unknown}.")
    calls: list[_Call] = []
    shape = jax.eval_shape(lambda p: _tapped(forward, p, None, calls)[0], params).shape
    _check_independent(calls)
    try:
        _check_coverage(params, calls)
    except _Unsupported as e:
        raise ValueError(f"per-example statistics of a training step need every parameter in a Dense/Conv/Norm layer: {e}") from None
    if len(shape) != 1:
        raise ValueError(f"forward must return per-example losses of shape (b,), got shape {shape}.")
    b = shape[0]
    frozen = jax.lax.stop_gradient(params)
    eps = _zero_taps(calls, b)

    def total(e):
        losses, aux, taps = _tapped(forward, frozen, e, calls)
        return jnp.sum(losses), (losses, aux, taps)

    (_, (losses, aux, taps)), deltas = jax.value_and_grad(total, has_aux=True)(eps)
    shifts = {}
    if shift is not None:
        shifts = {_names(path): s for path, s in jax.tree_util.tree_flatten_with_path(shift)[0]}
    stats = _reduce(calls, _call_terms(calls, taps, deltas), params, shifts, want)
    return jnp.mean(losses), aux, stats


def _tapped(forward, params, eps, calls):
    """``forward(params)`` inside :func:`_taps`: ``(losses, aux, taps)``."""
    taps: list = []
    with _taps(eps, calls, taps):
        losses, aux = forward(params)
    return losses, aux, taps


def _check_independent(calls) -> None:
    """Raises for a layer call that couples the examples of a training-mode pass."""
    for c in calls:
        if not isinstance(c.module, Norm):
            continue
        train = c.args[0] if c.args else dict(c.kwargs).get("train", False)
        if train and c.module.kind == "batch":
            raise ValueError(
                f"layer {'/'.join(c.path)} normalizes by batch statistics in this pass, so every example's loss depends "
                "on the whole batch and per-example gradients of the training step are not defined. Measure on a pool "
                "batch in 'frozen' or 'running' mode instead (jaxnorm.observers.Instruments)."
            )
        if train and (c.module.noise_mean or c.module.noise_var):
            raise ValueError(f"layer {'/'.join(c.path)} injects noise in training mode; its per-example gradients cannot be replayed.")
