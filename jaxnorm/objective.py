"""The training objective: a per-example loss by name, plus L2 on weights only.

``objective = mean_i loss(logits_i, y_i) + 0.5 * λ * Σ_W ||W||²`` where W ranges over
the weight kernels (leaves named ``kernel``): biases and BatchNorm's γ/β are not decayed
(source document 001 / DeepOBS: "L2 regularization on weights only").

Losses (:data:`LOSSES`; every one maps ``(logits (b, C), integer labels (b,))`` to a
per-example ``(b,)`` float32 vector):

* ``'ce'`` -- softmax cross-entropy (the thesis studies, DeepOBS);
* ``'mse'`` -- ``0.5 * Σ_c (logits_c - onehot(y)_c)²``, the squared loss against one-hot
  targets that Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at
  the Edge of Stability" (2021), train with.

Every place that builds a loss (``TrainConfig.loss``, the train and eval steps,
:func:`jaxnorm.diagnostics.hessian_loss_fn`, the per-example functions) takes the name
or a callable of the same contract (:func:`get_loss`).
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp
import optax

from jaxnorm._registry import lookup

PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]


def is_weight(path) -> bool:
    """True for a params leaf that is a weight kernel (name ``kernel``)."""
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"


def l2_penalty(params) -> jax.Array:
    """``0.5 * Σ ||W||²`` over the weight kernels (multiply by λ)."""
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for p, x in jax.tree_util.tree_leaves_with_path(params) if is_weight(p)]
    return 0.5 * sum(leaves) if leaves else jnp.zeros((), jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels, ``(batch,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def squared_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``0.5 * ||logits - onehot(labels)||²``, ``(batch,)`` (Cohen et al. 2021)."""
    logits = logits.astype(jnp.float32)
    return 0.5 * jnp.sum(jnp.square(logits - jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)), axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example correctness (float 0/1), ``(batch,)``."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


LOSSES: dict[str, PerExampleLoss] = {"ce": cross_entropy, "mse": squared_error}


def get_loss(loss: Union[str, PerExampleLoss]) -> PerExampleLoss:
    """The per-example loss named ``loss`` (a key of :data:`LOSSES`), or ``loss`` itself
    if it is callable.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if callable(loss):
        return loss
    return lookup(LOSSES, loss, "loss")
