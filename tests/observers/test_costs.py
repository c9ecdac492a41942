"""``jaxnorm.observers.costs``: timing each conditioning metric alone on a state.

Timings are wall-clock and machine-dependent, so the checks are structural (which keys,
positive times, what repeats=0 and a bad request do) plus the parameter count against an
independent count of the model's leaves; ``time_call`` by counting the calls it makes."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.observers import GradientConditioning
from jaxnorm.observers.costs import REFERENCE, conditioning_costs, num_params, time_call
from jaxnorm.train import TrainConfig, build_model, create_state, make_optimizer

DIGITS = load("digits", "train")


@pytest.fixture(scope="module")
def observer_and_state():
    cfg = TrainConfig(model="mlp", model_kwargs={"depth": 3, "width": 8}, dataset="digits", track_step_conditioning=True)
    module = build_model(cfg, DIGITS.num_classes)
    obs = GradientConditioning(module, DIGITS.images[:16], DIGITS.labels[:16], mean=DIGITS.mean, std=DIGITS.std,
                               metrics=("kappa_w", "confusion"), batch_size=4, num_batches=2, num_input_perturbations=1, input_examples=3)  # fmt: skip
    import jax

    tx = make_optimizer(0.1, track_step_conditioning=True, total_steps=10, steps_per_epoch=10)
    state = create_state(jax.random.PRNGKey(0), module, tx, DIGITS.images[:1])
    return obs, state


def test_time_call_calls_once_to_compile_then_repeats():
    calls = []
    median, first = time_call(lambda x: calls.append(x) or np.zeros(()), 3, repeats=4)
    assert calls == [3] * 5 and median >= 0 and first >= 0
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_call(lambda: None, repeats=0)


def test_every_metric_the_tracker_and_the_reference_are_timed(observer_and_state):
    obs, state = observer_and_state
    costs = conditioning_costs(obs, state, repeats=1)
    expected = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(state.params))
    assert costs["params"] == expected == num_params(state.params)
    assert set(costs["seconds"]) == set(costs["first_call_seconds"]) == {"kappa_w", "confusion", "kappa_sgd", REFERENCE}
    assert all(s > 0 for s in costs["seconds"].values()) and costs["repeats"] == 1 and costs["backend"] == "cpu"
    assert obs.metrics == ("kappa_w", "confusion")  # the observer itself is not changed
    one = conditioning_costs(obs, state, repeats=1, metrics=("kappa_w",))
    assert set(one["seconds"]) == {"kappa_w", "kappa_sgd", REFERENCE}


def test_no_timing_and_bad_requests(observer_and_state):
    obs, state = observer_and_state
    none = conditioning_costs(obs, state, repeats=0)
    assert none["seconds"] == {} and none["first_call_seconds"] == {} and none["params"] == num_params(state.params)
    with pytest.raises(ValueError, match="repeats must be >= 0"):
        conditioning_costs(obs, state, repeats=-1)
    with pytest.raises(ValueError, match="unknown conditioning metric"):
        conditioning_costs(obs, state, repeats=1, metrics=("kappa",))
