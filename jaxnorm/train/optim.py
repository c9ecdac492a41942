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
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import optax
from optax import contrib

from jaxnorm._registry import lookup


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


def make_optimizer(
    learning_rate: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    schedule: str = "constant",
    schedule_kwargs: Mapping | None = None,
    steps_per_epoch: int = 1,
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

    Raises:
      ValueError: unknown schedule, non-positive learning rate or negative momentum.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}.")
    lr, tail = lookup(SCHEDULES, schedule, "schedule")(learning_rate, steps_per_epoch, **dict(schedule_kwargs or {}))
    sgd = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
    return optax.with_extra_args_support(optax.chain(sgd, *tail))
