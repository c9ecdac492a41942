"""The statistics BatchNorm normalizes with at test time, for a trained model.

Three pure, jittable functions of a flax model and its variables:

* :func:`norm_inputs` -- the input of every norm layer (or of chosen ones) in one
  forward pass, captured with a flax method interceptor (``nn.intercept_methods``):
  nothing is added to the model;
* :func:`population_batch_stats` -- exact inference statistics of every BatchNorm layer
  (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by
  Reducing Internal Covariate Shift", Alg. 2; the BatchNorm ablation thesis (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen 2023), eq. 2.26-2.27):
  training batches go through the network in training mode and every BN layer's
  inputs feed a :class:`jaxnorm.norms.PopulationAccumulator` (mean of the batch means,
  ``m/(m-1)`` times the mean of the biased batch variances);
* :func:`evaluate_in_mode` -- mean loss and accuracy of a split with BatchNorm on the
  statistics in ``variables`` (``bn_mode='running'``: running averages, or population
  statistics put there by :func:`population_batch_stats`) or on each test batch's own
  statistics (``bn_mode='batch'``, :mod:`jaxnorm.modes`).

Nothing here updates running statistics: every forward pass goes through
:func:`jaxnorm.modes.apply`, which drops the updated ``batch_stats``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm.layers import Norm
from jaxnorm.modes import apply as apply_in_mode
from jaxnorm.modes import check_bn_mode
from jaxnorm.norms import PopulationAccumulator
from jaxnorm.objective import accuracy, get_loss

__all__ = ["evaluate_in_mode", "norm_inputs", "population_batch_stats"]


def norm_inputs(
    module: nn.Module,
    variables,
    x: jax.Array,
    *,
    bn_mode: str = "batch",
    kinds: Optional[Sequence[str]] = None,
    layers: Optional[Sequence[str]] = None,
    rng: Optional[jax.Array] = None,
) -> dict[str, jax.Array]:
    """The input of each :class:`jaxnorm.layers.Norm` layer in one forward pass of ``x``.

    Args:
      module, variables: the model and its variables (not changed).
      x: ``(batch, ...)`` model inputs (already normalized as the model sees them).
      bn_mode: ``'batch'`` (training's forward: later layers see inputs normalized with
        batch statistics, as Alg. 2 needs) or ``'running'`` (eval mode).
      kinds: keep only norm layers of these kinds (``'batch'``, ``'layer'``, ``'group'``,
        ``'instance'``); None: all.
      layers: keep only these layers, named by their module path joined with ``'/'``
        (``'norm1'``, ``'block2/norm1'``); None: all.
      rng: the dropout key of a ``'batch'`` pass (default: a fixed key).

    Returns:
      ``{path: input}``, each input shaped ``(batch, ..., features)`` as the layer
      received it; a layer called twice keeps its last call. Under ``jit`` the values
      are tracers of the enclosing computation.

    Raises:
      ValueError: an unknown ``bn_mode``, or a name in ``layers`` that is no norm layer
        of the model (the message lists the ones it has).
    """
    check_bn_mode(bn_mode, ("batch", "running"))
    captured: dict[str, jax.Array] = {}
    seen: list[str] = []

    def capture(next_fun, args, kwargs, ctx):
        mod = ctx.module
        if isinstance(mod, Norm) and ctx.method_name == "__call__":
            name = "/".join(mod.path)
            seen.append(name)
            if (kinds is None or mod.kind in kinds) and (layers is None or name in layers):
                captured[name] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        apply_in_mode(module, variables, x, bn_mode=bn_mode, rng=rng)
    missing = [name for name in (layers or ()) if name not in seen]
    if missing:
        raise ValueError(f"no norm layer named {missing} in the model; it has {sorted(set(seen))}.")
    return captured


def _check_batches(n: int, batch_size: int, what: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 2 <= batch_size <= n:
        raise ValueError(f"{what} needs an int 2 <= batch_size <= {n} (the examples), got {batch_size!r}.")


def population_batch_stats(module: nn.Module, variables, x: jax.Array, *, batch_size: int, rng: Optional[jax.Array] = None) -> dict:
    """Exact inference statistics of every BatchNorm layer (Ioffe & Szegedy 2015, Alg. 2).

    The examples ``x`` go through the network in training mode (``bn_mode='batch'``)
    in consecutive batches of ``batch_size`` -- ``x[0:b]``, ``x[b:2b]``, ...; the
    incomplete last batch is dropped, so shuffle ``x`` first if its order is not random
    -- each BN layer normalizing with its batch's statistics as in training (nothing is
    updated). Per BN layer, over its inputs of every batch: ``mean = E_B[μ_B]`` and
    ``var = m/(m−1) · E_B[σ²_B]`` with σ²_B the biased batch variance and m the values
    per feature in a batch (``batch_size`` times the spatial positions of a conv
    layer); see :func:`jaxnorm.norms.population_stats`. With one batch of all examples
    they are the mean and unbiased variance of each layer's input over ``x``. This is
    the variance BN normalizes with (within-batch), not the variance over all of ``x``,
    which adds the spread of the batch means.

    Pure and jittable (``batch_size`` static); the batches run in one ``lax.scan``.

    Args:
      module, variables: the trained model (``variables`` with ``batch_stats``).
      x: ``(n, ...)`` training inputs, normalized as the model sees them.
      batch_size: m, the training batch size the population statistics are for.
      rng: the dropout key of the training-mode passes (default: a fixed key).

    Returns:
      a new ``batch_stats`` tree shaped like ``variables['batch_stats']`` with every BN
      layer's ``mean``/``var`` replaced by the population statistics (other entries,
      e.g. the ablation switches, kept); ``variables`` is not changed. Use it as
      ``{**variables, 'batch_stats': stats}`` in eval mode.

    Raises:
      ValueError: ``batch_size`` not an int in ``[2, n]``; a model without BatchNorm.
    """
    n = x.shape[0]
    _check_batches(n, batch_size, "population statistics")
    shapes = jax.eval_shape(lambda b: norm_inputs(module, variables, b, kinds=("batch",), rng=rng), x[:batch_size])
    if not shapes or not variables.get("batch_stats"):
        raise ValueError("population statistics: the model has no BatchNorm layer (no batch_stats).")
    steps = n // batch_size
    batches = x[: steps * batch_size].reshape((steps, batch_size) + x.shape[1:])
    init = {name: PopulationAccumulator.init(s.shape[-1]) for name, s in shapes.items()}

    def body(accs, batch):
        inputs = norm_inputs(module, variables, batch, kinds=("batch",), rng=rng)
        return {name: acc.update(inputs[name]) for name, acc in accs.items()}, None

    accs, _ = jax.lax.scan(body, init, batches)
    out = flax.core.unfreeze(variables["batch_stats"])  # a copy of the containers: the caller's tree stays as it was
    for name, acc in accs.items():
        node = out
        for key in name.split("/"):
            node = node[key]
        stats = acc.result()
        node["mean"], node["var"] = stats.mean.astype(node["mean"].dtype), stats.var.astype(node["var"].dtype)
    return out


def evaluate_in_mode(
    module: nn.Module,
    variables,
    x: jax.Array,
    y: jax.Array,
    *,
    bn_mode: str,
    batch_size: Optional[int] = None,
    loss: Union[str, Callable] = "ce",
) -> dict[str, jax.Array]:
    """Mean loss and accuracy of ``(x, y)`` with BatchNorm in ``bn_mode``.

    ``'running'``: eval mode on the statistics in ``variables['batch_stats']`` (running
    averages, or population statistics); the examples are independent and
    ``batch_size`` only chunks the work (None: one chunk; the last chunk is padded and
    the padding not counted). ``'batch'``: BN normalizes each consecutive batch of
    ``batch_size`` by its own statistics (TENT's test-batch baseline; nothing is
    updated); the incomplete last batch is dropped, so shuffle ``x`` first if its
    order is not random (a split sorted by class would give one-class batches).

    Pure and jittable (``bn_mode``, ``batch_size``, ``loss`` static); batches run in a
    ``lax.map``.

    Returns:
      ``{'loss', 'acc', 'n'}``: mean per-example ``loss`` (a name from
      :data:`jaxnorm.objective.LOSSES` or a callable), mean accuracy, and the number of
      examples counted (an int).

    Raises:
      ValueError: unknown ``bn_mode``; ``'batch'`` without an int ``2 <= batch_size <=
        len(x)``; ``'running'`` with ``batch_size`` < 1.
    """
    check_bn_mode(bn_mode, ("running", "batch"))
    per_example = get_loss(loss)
    n = x.shape[0]
    if bn_mode == "batch":
        _check_batches(n, batch_size, "test-batch statistics ('batch' mode)")
        b, k = batch_size, n // batch_size
        count = k * b
    else:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
        b = n if batch_size is None else min(batch_size, n)
        k = -(-n // b)
        count = n
    pad = k * b - n
    if pad > 0:
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
        y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
    x, y = x[: k * b].reshape((k, b) + x.shape[1:]), y[: k * b].reshape(k, b)
    mask = (jnp.arange(k * b) < count).reshape(k, b).astype(jnp.float32)

    def one(batch):
        xb, yb, mb = batch
        logits = apply_in_mode(module, variables, xb, bn_mode=bn_mode)
        return jnp.sum(per_example(logits, yb) * mb), jnp.sum(accuracy(logits, yb) * mb)

    losses, correct = jax.lax.map(one, (x, y, mask))
    return {"loss": jnp.sum(losses) / count, "acc": jnp.sum(correct) / count, "n": count}
