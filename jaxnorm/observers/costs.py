"""What the gradient-conditioning metrics cost: each metric timed alone on one state.

The gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022) (Fig. 4.10) plots the seconds per call of each metric against the
number of learnable parameters, next to one batch gradient. :func:`conditioning_costs`
measures the same on a trained state: for every metric of a
:class:`~jaxnorm.observers.GradientConditioning` a copy that computes only that metric is
jitted, called once (compile + run: ``first_call_seconds``) and then ``repeats`` times
(median: ``seconds``); likewise the in-optimizer κ_W tracker's update (``kappa_sgd``,
:func:`jaxnorm.diagnostics.track_step_conditioning`) and one batch gradient of the
observer's batch size (``batch_gradient``, the reference). Nothing is mutated; the
timings are wall-clock, so they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional, Sequence

import jax

from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics import batch_loss_fn, track_step_conditioning
from jaxnorm.observers.conditioning import METRICS, GradientConditioning

__all__ = ["REFERENCE", "conditioning_costs", "num_params", "time_call"]

#: The reference cost every metric is compared with.
REFERENCE = "batch_gradient"


def time_call(fn: Callable, *args, repeats: int) -> tuple[float, float]:
    """``(median seconds of `repeats` calls, seconds of the first call incl. compile)``;
    every call waits for its result (``jax.block_until_ready``). ValueError if
    ``repeats < 1``."""
    if repeats < 1:
        raise ValueError(f"time_call needs repeats >= 1, got {repeats}.")
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times)), first


def num_params(params) -> int:
    """The number of learnable parameters (every leaf's size)."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def conditioning_costs(
    observer: GradientConditioning, state, *, repeats: int, metrics: Optional[Sequence[str]] = None
) -> dict:
    """Times each metric of ``observer`` (or ``metrics``) alone on ``state`` (an object
    with ``.params`` and ``.variables``, e.g. a trained :class:`~jaxnorm.train.TrainState`
    or ``FitResult.state``), the κ_W tracker's update and one batch gradient (see the
    module docstring).

    Returns ``{"params": n, "seconds": {name: median}, "first_call_seconds": {name: s},
    "repeats": repeats, "backend": jax.default_backend()}``; with ``repeats == 0`` the two
    timing dicts are empty (nothing is run). ValueError for ``repeats < 0`` or a metric
    the observer does not know.
    """
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats}.")
    wanted = tuple(observer.metrics if metrics is None else metrics)
    unknown = sorted(set(wanted) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown conditioning metric(s) {unknown}.")
    out = {"params": num_params(state.params), "seconds": {}, "first_call_seconds": {}, "repeats": repeats, "backend": jax.default_backend()}
    if repeats == 0:
        return out

    def record(name, fn, *args):
        out["seconds"][name], out["first_call_seconds"][name] = time_call(fn, *args, repeats=repeats)

    for metric in wanted:
        alone = copy.copy(observer)  # shares the pool, mask and module; computes one metric
        alone.metrics = (metric,)
        record(metric, jax.jit(alone), state)
    tracker = track_step_conditioning()
    record("kappa_sgd", jax.jit(tracker.update), state.params, tracker.init(state.params), state.params)
    b = observer.batch_size
    x, y = normalize(observer.images[:b], observer.mean, observer.std), observer.labels[:b]
    loss = lambda v: batch_loss_fn(observer.module, v, x, y, bn_mode="batch", weight_decay=observer.weight_decay)
    record(REFERENCE, jax.jit(lambda v: jax.grad(loss(v))(v["params"])), state.variables)
    return out
