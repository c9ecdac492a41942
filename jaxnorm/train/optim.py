"""Optimizers and learning-rate schedules of the studies, as optax transformations.

SGD with optional (Nesterov) momentum, and three schedules, chosen by name from a
registry:

* ``constant`` -- the ablation study's setting (Table 3.1 of source document 001);
* ``step`` -- multiply by ``factor`` at the given epochs (DeepOBS All-CNN-C reference:
  lr 0.05 divided by 10 at epochs 200, 250, 300);
* ``plateau`` -- multiply by ``factor`` when the training loss, averaged over an
  epoch, has not improved by ``rtol`` for ``patience`` epochs (source document 002:
  CIFAR-10, batch 64, "learning rate decreased on plateau"). Its update needs the loss:
  ``tx.update(grads, state, params, value=loss)``; :func:`make_optimizer` always
  returns a transformation that accepts ``value`` (others ignore it).

Freezing: ``make_optimizer(..., frozen=regex)`` zeroes the update of every parameter
whose path (``'norm3/scale'``, ``'conv1/kernel'``; see :func:`param_paths`) matches the
regex, so it keeps its initial value bit for bit (BN-only training, γ/β learned in
chosen layers only).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Optional, Sequence

import jax
import optax
from optax import contrib

from jaxnorm._registry import lookup
from jaxnorm._tree import param_paths


def _constant(lr: float, steps_per_epoch: int) -> tuple[optax.ScalarOrSchedule, list]:
    return lr, []


def _step(lr: float, steps_per_epoch: int, *, epochs: Sequence[int] = (), factor: float = 0.1):
    boundaries = {int(e) * steps_per_epoch: factor for e in epochs}
    return optax.piecewise_constant_schedule(lr, boundaries), []


def _plateau(
    lr: float,
    steps_per_epoch: int,
    *,
    factor: float = 0.1,
    patience: int = 5,
    rtol: float = 1e-4,
    cooldown: int = 0,
    min_scale: float = 1e-4,
):
    tail = contrib.reduce_on_plateau(
        factor=factor,
        patience=patience,
        rtol=rtol,
        atol=0.0,
        cooldown=cooldown,
        accumulation_size=steps_per_epoch,
        min_scale=min_scale,
    )
    return lr, [tail]


SCHEDULES: dict[str, Callable] = {"constant": _constant, "step": _step, "plateau": _plateau}


def freeze_labels(frozen: str, params):
    """``params``' structure with leaves ``'frozen'`` (path matches ``frozen`` by
    ``re.search``) or ``'trainable'``.

    Raises:
      ValueError: ``frozen`` is not a valid regex, or matches no parameter (listing the
        available paths).
    """
    try:
        pattern = re.compile(frozen)
    except re.error as e:
        raise ValueError(f"frozen={frozen!r} is not a valid regular expression: {e}.") from None
    paths = param_paths(params)
    hits = [bool(pattern.search(p)) for p in paths]
    if not any(hits):
        raise ValueError(f"frozen={frozen!r} matches no parameter; the parameters are: {paths}.")
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, ["frozen" if h else "trainable" for h in hits])


def make_optimizer(
    learning_rate: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    schedule: str = "constant",
    schedule_kwargs: Mapping | None = None,
    steps_per_epoch: int = 1,
    frozen: Optional[str] = None,
    track_step_conditioning: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """SGD (``momentum=0``: plain SGD) with a named schedule.

    Args:
      learning_rate: base step size.
      momentum: heavy-ball coefficient (0 disables it).
      nesterov: Nesterov momentum.
      schedule: ``'constant'``, ``'step'`` or ``'plateau'``.
      schedule_kwargs: the schedule's options (``epochs``/``factor`` for step;
        ``factor``/``patience``/``rtol``/``cooldown``/``min_scale`` for plateau).
      steps_per_epoch: converts epoch-based options to steps.
      frozen: a regex, or None. Parameters whose path (:func:`param_paths`) it matches
        (``re.search``) get an exactly zero update: they keep their initial values
        (gradients, e.g. of an L2 term, are still computed, and momentum still tracks
        them, but nothing is applied). The mask is built from the params at ``init``.
      track_step_conditioning: put :func:`jaxnorm.diagnostics.step_tracker.track_step_conditioning`
        first in the chain: the in-training κ_W estimate at every step (two extra
        params-sized buffers in the optimizer state; updates unchanged).

    Raises:
      ValueError: unknown schedule, non-positive learning rate, negative momentum or an
        invalid ``frozen`` regex; at ``init``, a ``frozen`` regex that matches no
        parameter (the message lists the parameter paths).
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}.")
    lr, tail = lookup(SCHEDULES, schedule, "schedule")(learning_rate, steps_per_epoch, **dict(schedule_kwargs or {}))
    sgd = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
    parts = [sgd, *tail]
    if track_step_conditioning:
        # Imported here: jaxnorm.diagnostics imports jaxnorm.train (no import cycle at load).
        from jaxnorm.diagnostics.step_tracker import track_step_conditioning as tracker

        parts.insert(0, tracker())  # first: it needs the raw gradients
    if frozen is not None:
        try:
            re.compile(frozen)
        except re.error as e:
            raise ValueError(f"frozen={frozen!r} is not a valid regular expression: {e}.") from None
        # Last in the chain: whatever the optimizer computes, a frozen leaf's update is 0.
        freeze = optax.multi_transform(
            {"trainable": optax.identity(), "frozen": optax.set_to_zero()},
            lambda params: freeze_labels(frozen, params),
        )
        parts.append(freeze)
    return optax.with_extra_args_support(optax.chain(*parts))
