"""``LayerStatistics``: per-layer activation RMS, gradient norm and weight norm on a
fixed probe batch, every k steps during ``fit``.

The lecture's initialization-scale study (CMU lecture “Normalization and Regularization”, "Initialization vs.
optimization") explains its outcomes by the signal in each layer: with ``W ~ N(0, c/n)``
and a ReLU, the mean square of a layer's output is ``c/2`` times that of its input, so
over D layers activations and gradients scale like ``(c/2)^(D/2)`` -- unless a norm
resets them. This observer measures exactly those profiles (and the weight norms, whose
ratio ``‖W_T‖/‖W_0‖`` tells whether the scale set at initialization persists) and writes
them to ``trajectories.npz``::

    layer_statistics/steps           (P,)     the steps measured (0 first)
    layer_statistics/loss, /acc      (P,)     the probe batch's mean loss and accuracy
    layer_statistics/activation_rms  (P, D)   entry i-1 for weight layer i
    layer_statistics/grad_norm       (P, D)
    layer_statistics/weight_norm     (P, D)

A non-finite value stays in the record (NaN/inf): :func:`jaxnorm.train.fit` decides
divergence from the training loss, not from here.
"""

from __future__ import annotations

from typing import Callable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm.data.augmentation import normalize
from jaxnorm.modes import check_bn_mode
from jaxnorm.objective import accuracy, get_loss

__all__ = ["LayerStatistics", "layer_statistics"]

_DROPOUT_KEY = jax.random.PRNGKey(0)
_WEIGHT_LAYERS = (nn.Dense, nn.Conv)


def _frobenius(a: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(a.astype(jnp.float32))))


def _rms(a: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32))))


def layer_statistics(module, variables, x, y, *, bn_mode: str = "batch", loss="ce") -> dict[str, jax.Array]:
    """Per-weight-layer statistics of ``module`` on one batch.

    Weight layers are the model's top-level ``Dense``/``Conv`` submodules with a
    ``kernel`` parameter, in the order the forward pass calls them (layer 1 first).
    The model must be a chain of them (dense/conv stacks such as ``'mlp'``,
    ``'deep_fc'``): what enters weight layer ``i + 1`` is layer ``i``'s output after its
    norm and activation (and whatever else sits between, e.g. pooling or dropout).

    Args:
      module: a flax model, ``apply(variables, x, train=...)``.
      variables: its variables (``params`` and, with BN, ``batch_stats``); not mutated.
      x: ``(batch, ...)`` a *normalized* input batch; y: ``(batch,)`` int labels.
      bn_mode: ``'batch'`` (training's forward: BN on the batch's statistics, which are
        differentiated through and then dropped) or ``'running'`` (running statistics),
        see :mod:`jaxnorm.modes`. Dropout, in ``'batch'`` mode, uses a fixed key.
      loss: the per-example loss (a name from :data:`jaxnorm.objective.LOSSES` or a
        callable); the gradients are those of its batch mean.

    Returns:
      ``loss``, ``acc`` (scalars) and three ``(D,)`` float32 arrays, entry ``i - 1`` for
      weight layer ``i``: ``activation_rms`` = √mean(z_i²) over batch and units, with z_i
      the input of weight layer ``i + 1`` (the model's output -- the logits -- for
      ``i = D``); ``grad_norm`` = ‖∂L/∂W_i‖_F of the mean loss L; ``weight_norm`` =
      ‖W_i‖_F.

    Raises:
      ValueError: an unknown ``bn_mode``/``loss``, or a model with no weight layer.
    """
    check_bn_mode(bn_mode, ("batch", "running"))
    per_example = get_loss(loss)
    rest = {k: v for k, v in variables.items() if k != "params"}

    def objective(params):
        calls: list[tuple[str, jax.Array]] = []

        def record(next_fun, args, kwargs, context):
            m = context.module
            # Top-level weight layers only (scope path (name,): a direct child of the model).
            if context.method_name == "__call__" and isinstance(m, _WEIGHT_LAYERS) and m.scope is not None and len(m.scope.path) == 1:
                calls.append((m.name, args[0]))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            if bn_mode == "batch":
                out, _ = module.apply({"params": params, **rest}, x, train=True, mutable=["batch_stats"], rngs={"dropout": _DROPOUT_KEY})
            else:
                out = module.apply({"params": params, **rest}, x, train=False)
        return jnp.mean(per_example(out, y)), (out, calls)

    (value, (logits, calls)), grads = jax.value_and_grad(objective, has_aux=True)(variables["params"])
    calls = [(name, inp) for name, inp in calls if "kernel" in variables["params"].get(name, {})]
    if not calls:
        raise ValueError("layer_statistics: the model has no top-level Dense/Conv layer with a 'kernel' parameter.")
    names = [name for name, _ in calls]
    if len(set(names)) != len(names):
        raise ValueError(f"layer_statistics: a weight layer is called more than once ({names}); the model is not a chain.")
    signals = [inp for _, inp in calls[1:]] + [logits]
    return {
        "loss": value,
        "acc": jnp.mean(accuracy(logits, y)),
        "activation_rms": jnp.stack([_rms(z) for z in signals]),
        "grad_norm": jnp.stack([_frobenius(grads[n]["kernel"]) for n in names]),
        "weight_norm": jnp.stack([_frobenius(variables["params"][n]["kernel"]) for n in names]),
    }


class LayerStatistics:
    """Observer: :func:`layer_statistics` on a fixed probe batch every ``every`` steps
    (and at step 0), into ``trajectories.npz`` (the module docstring lists the arrays).

    Args:
      module: the model as trained (``jaxnorm.train.build_model(config, classes)``).
      images, labels: the probe batch, float32 images in [0, 1] as stored (normalized
        here with ``mean``/``std``, as the training step does) and int labels; kept on
        the device, the same every time, so changes over training are the weights'.
      mean, std: the dataset's per-channel normalization constants.
      every: the interval in steps (>= 1).
      bn_mode: ``'batch'`` (default: BN on the probe batch's statistics, as in training)
        or ``'running'``.
      loss: the per-example loss whose gradients are measured (default ``'ce'``).
    """

    name = "layer_statistics"
    sink = "trajectories"

    def __init__(self, module, images, labels, mean, std, *, every: int = 100, bn_mode: str = "batch", loss: Union[str, Callable] = "ce"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"LayerStatistics: every must be an int >= 1, got {every!r}.")
        if len(images) != len(labels) or not len(labels):
            raise ValueError(f"LayerStatistics: need a non-empty probe batch with one label per image, got {len(images)} images, {len(labels)} labels.")
        self.bn_mode = check_bn_mode(bn_mode, ("batch", "running"), where="LayerStatistics.bn_mode")
        get_loss(loss)
        self.module, self.every, self.loss = module, every, loss
        self.x = normalize(jnp.asarray(images, jnp.float32), mean, std)
        self.y = jnp.asarray(labels, jnp.int32)

    def __call__(self, state) -> dict[str, jax.Array]:
        return layer_statistics(self.module, state.variables, self.x, self.y, bn_mode=self.bn_mode, loss=self.loss)
