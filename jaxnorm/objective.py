"""The training objective: a per-example loss by name, plus an L2 term over a scope.

``objective = mean_i loss(logits_i, y_i) + 0.5 * λ * Σ_{θ in scope} ||θ||²``. The L2
scopes (:data:`L2_SCOPES`):

* ``'weights'`` (the default) -- the weight kernels (leaves named ``kernel``): biases and
  the norm layers' γ/β are not decayed. This is what the text of "Dissecting BatchNorm:
  An Ablation Study on the Core Components" (master thesis, University of Tübingen, 2023)
  states: "ℓ2 regularization on the weights (but not the biases)" (Appendix B).
* ``'all_but_bias'`` -- every parameter not named ``bias``, so BatchNorm's γ (``scale``)
  too: what DeepOBS-PyTorch (Schneider et al., "DeepOBS: A Deep Learning Optimizer
  Benchmark Suite", 2019; ``get_regularization_groups`` of its PyTorch test problems)
  actually decays, since it penalizes each parameter whose name lacks ``bias`` and
  PyTorch names γ ``weight``. β is a ``bias`` in both frameworks, so it stays undecayed.

Losses (:data:`LOSSES`; every one maps ``(logits (b, C), integer labels (b,))`` to a
per-example ``(b,)`` vector in the logits' dtype, at least float32: bfloat16/float16 logits
are promoted to float32, float64 ones (under ``jax_enable_x64``) stay float64 -- see
:func:`compute_dtype`):

* ``'ce'`` -- softmax cross-entropy (the thesis studies, DeepOBS);
* ``'mse'`` -- ``0.5 * Σ_c (logits_c - onehot(y)_c)²``, the squared loss against one-hot
  targets that Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at
  the Edge of Stability" (2021), train with.

Every place that builds a loss (``TrainConfig.loss``, the train and eval steps,
:func:`jaxnorm.diagnostics.hessian_loss_fn`, the per-example functions) takes the name
or a callable of the same contract (:func:`get_loss`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import jax
import jax.numpy as jnp
import optax

from jaxnorm._registry import lookup

PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]


#: The parameter sets an L2 term may cover (module docstring).
L2_SCOPES = ("weights", "all_but_bias")


def _leaf_name(path) -> str:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None))


def is_weight(path) -> bool:
    """True for a params leaf that is a weight kernel (name ``kernel``)."""
    return _leaf_name(path) == "kernel"


def in_l2_scope(path, scope: str = "weights") -> bool:
    """Whether the params leaf at ``path`` is in the L2 ``scope`` (:data:`L2_SCOPES`).

    Raises:
      ValueError: an unknown scope (the message lists the known ones).
    """
    check_l2_scope(scope)
    return is_weight(path) if scope == "weights" else _leaf_name(path) != "bias"


def check_l2_scope(scope: str, where: str = "l2_scope") -> str:
    """``scope`` if it is one of :data:`L2_SCOPES`, else a ValueError naming ``where``."""
    if scope not in L2_SCOPES:
        raise ValueError(f"{where} must be one of {list(L2_SCOPES)} (the parameters the L2 term covers), got {scope!r}.")
    return scope


def _scale_switch(switches, path):
    """The ``use_scale`` 0/1 switch of the ``bn_ablation`` norm layer whose γ is at
    ``path`` (from its ``batch_stats``), or None (not a γ, or no switch: a plain norm)."""
    if switches is None or _leaf_name(path) != "scale":
        return None
    node = switches
    for key in path[:-1]:
        node = node.get(getattr(key, "key", None)) if isinstance(node, Mapping) else None
        if node is None:
            return None
    return node.get("use_scale") if isinstance(node, Mapping) else None


def l2_penalty(params, scope: str = "weights", switches=None) -> jax.Array:
    """``0.5 * Σ ||θ||²`` over the params leaves in ``scope`` (:data:`L2_SCOPES`;
    multiply by λ).

    ``switches``: a ``bn_ablation`` model's ``batch_stats`` (None: no switches). A γ that
    the run's variant switches off (``use_scale`` 0; the layer then uses exactly 1 in its
    place) is weighted by that switch, so the superset's objective equals the variant's
    own, whose γ does not exist, and the unused γ gets no decay gradient. Only
    ``'all_but_bias'`` covers γ at all.

    Raises:
      ValueError: an unknown scope.
    """
    check_l2_scope(scope)
    terms = []
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        if in_l2_scope(path, scope):
            term = jnp.sum(jnp.square(x.astype(compute_dtype(x.dtype))))
            switch = _scale_switch(switches, path)
            terms.append(term if switch is None else term * switch)
    return 0.5 * sum(terms) if terms else jnp.zeros((), jnp.float32)


def compute_dtype(dtype):
    """The dtype losses and the L2 term are computed in: ``dtype`` promoted to at least
    float32 (bfloat16 -> float32, float32 -> float32, float64 -> float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels, ``(batch,)``, in
    :func:`compute_dtype` of the logits."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(compute_dtype(logits.dtype)), labels)


def squared_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``0.5 * ||logits - onehot(labels)||²``, ``(batch,)`` (Cohen et al. 2021), in
    :func:`compute_dtype` of the logits."""
    dtype = compute_dtype(logits.dtype)
    logits = logits.astype(dtype)
    return 0.5 * jnp.sum(jnp.square(logits - jax.nn.one_hot(labels, logits.shape[-1], dtype=dtype)), axis=-1)


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
