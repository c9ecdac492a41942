"""The nearly free in-training κ_W estimate, computed inside the optimizer at every step.

The gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022), §2.2: with ω the optimizer's own step, κ_W can be estimated during
training "with very little additional cost" from consecutive gradients:

    κ_t = ‖g_t − g_{t−1}‖ · ‖w_{t−1}‖ / (‖w_t − w_{t−1}‖ · ‖g_{t−1}‖)

where ``g_t`` is the training gradient at step t. Consecutive steps use different
batches (i ≠ j), which the thesis notes as an approximation: the batch change adds to
the gradient change. How much it adds is measurable: on digits with BN the median
cosine of consecutive training gradients is about 0.01 (issue 14), so there the change
is almost all minibatch noise and κ_t says little about the loss's conditioning.

:func:`same_batch_step_conditioning` is the same ratio with both gradients on one
batch B (i = j), ``‖ḡ(w_t; B) − ḡ(w_{t−1}; B)‖·‖w_{t−1}‖/(‖w_t − w_{t−1}‖·‖ḡ(w_{t−1}; B)‖)``:
Def. 2.5 with ω = the optimizer's last step. It costs two gradients (the tracker keeps
``w_{t−1}``, so the step is known), which is why it is an observer's job
(:class:`jaxnorm.observers.StepConditioning` with a pool of examples), not the
optimizer's. Neither form is a bound of the other: the batch change usually adds
(κ_t > same-batch), but it can also cancel part of the step's own change.

:func:`track_step_conditioning` is an optax ``GradientTransformation`` that passes the
updates through unchanged and keeps, in its state, the previous gradient and weights
(two params-sized buffers) and the latest estimate, the cosine similarity of
consecutive gradients and the gradient norm. It must come first in the chain (it needs
the raw gradients); :func:`jaxnorm.train.optim.make_optimizer` puts it there with
``track_step_conditioning=True`` (``TrainConfig.track_step_conditioning``).
:class:`jaxnorm.observers.StepConditioning` is the observer that reads the values out of a
``TrainState`` every k steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnorm.diagnostics.step_consistency import _tree_norm, sgd_step_condition_number

__all__ = ["StepConditioningState", "track_step_conditioning", "find_step_conditioning", "same_batch_step_conditioning"]


class StepConditioningState(NamedTuple):
    """State of :func:`track_step_conditioning`.

    Attributes:
      prev_grad, prev_params: the previous step's gradient and weights.
      kappa: κ_t of the latest step (NaN before the second step).
      cosine: ``cos(g_t, g_{t−1})`` (NaN before the second step).
      grad_norm: ``‖g_t‖``.
      count: steps seen.
    """

    prev_grad: Any
    prev_params: Any
    kappa: jax.Array
    cosine: jax.Array
    grad_norm: jax.Array
    count: jax.Array


def track_step_conditioning() -> optax.GradientTransformation:
    """Identity on the updates; records κ_t, the consecutive-gradient cosine and ‖g_t‖."""

    def init(params):
        # Two separate buffers (and three scalars): a donated state must not alias.
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        nan = lambda: jnp.full((), jnp.nan, jnp.float32)
        return StepConditioningState(zeros(), zeros(), nan(), nan(), nan(), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("track_step_conditioning needs params: call tx.update(grads, state, params).")
        seen = state.count > 0
        step = jax.tree.map(jnp.subtract, params, state.prev_params)
        kappa = sgd_step_condition_number(state.prev_grad, updates, state.prev_params, step)
        dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(state.prev_grad)))
        g_norm = _tree_norm(updates)
        cosine = dot / (g_norm * _tree_norm(state.prev_grad))
        nan = jnp.full((), jnp.nan, jnp.float32)
        new = StepConditioningState(
            prev_grad=updates,
            prev_params=params,
            kappa=jnp.where(seen, kappa, nan).astype(jnp.float32),
            cosine=jnp.where(seen, cosine, nan).astype(jnp.float32),
            grad_norm=g_norm.astype(jnp.float32),
            count=state.count + 1,
        )
        return updates, new

    return optax.GradientTransformation(init, update)


def find_step_conditioning(opt_state) -> StepConditioningState:
    """The :class:`StepConditioningState` inside an optimizer state.

    Raises:
      ValueError: the optimizer does not track step conditioning.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, StepConditioningState))
        if isinstance(s, StepConditioningState)
    ]
    if not found:
        raise ValueError(
            "the optimizer state holds no step-conditioning tracker: build the optimizer with "
            "make_optimizer(..., track_step_conditioning=True) (TrainConfig.track_step_conditioning=True)."
        )
    return found[0]


def same_batch_step_conditioning(loss_fn, params, prev_params) -> tuple[jax.Array, jax.Array]:
    """``(κ, cosine)`` of the step ``prev_params -> params`` with both gradients on one batch.

    ``loss_fn(params) -> scalar`` is the loss of one fixed batch B (e.g.
    :func:`~jaxnorm.diagnostics.per_example.batch_loss_fn` with ``bn_mode='batch'``,
    training's objective). Returns float32 scalars: ``κ = ‖ḡ(w) − ḡ(w')‖·‖w'‖/(‖w − w'‖·‖ḡ(w')‖)``
    (w = ``params``, w' = ``prev_params``; module docstring) and ``cos(ḡ(w), ḡ(w'))``.
    NaN where the step or ``ḡ(w')`` is zero (no step yet: the ratio is undefined).
    Cost: two gradients of ``loss_fn``.
    """
    grad = jax.grad(loss_fn)
    g_prev, g = grad(prev_params), grad(params)
    step = jax.tree.map(jnp.subtract, params, prev_params)
    step_norm, prev_norm, g_norm = _tree_norm(step), _tree_norm(g_prev), _tree_norm(g)
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_prev)))
    defined = (step_norm > 0) & (prev_norm > 0)
    kappa = jnp.where(defined, sgd_step_condition_number(g_prev, g, prev_params, step), jnp.nan)
    cosine = jnp.where(defined & (g_norm > 0), dot / (g_norm * prev_norm), jnp.nan)
    return kappa.astype(jnp.float32), cosine.astype(jnp.float32)
