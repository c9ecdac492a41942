"""The training objective: softmax cross-entropy plus L2 on weights only.

``loss = mean_i CE(logits_i, y_i) + 0.5 * λ * Σ_W ||W||²`` where W ranges over the
weight kernels (leaves named ``kernel``): biases and BatchNorm's γ/β are not decayed
(source document 001 / DeepOBS: "L2 regularization on weights only").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example correctness (float 0/1), ``(batch,)``."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
