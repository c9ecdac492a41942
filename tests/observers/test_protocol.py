"""``jaxnorm.observers.compiled``: an observer's record outside ``fit``, compiled once."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.observers import compiled


class SquaredNorm:
    name, every, sink = "squared_norm", 1, "metrics"

    def __init__(self):
        self.calls = 0

    def __call__(self, state):
        self.calls += 1  # counts traces: the compiled function runs Python once per shape
        return {"value": jnp.sum(state["w"] ** 2)}


class Carrying(SquaredNorm):
    def init_carry(self, state):
        return jnp.zeros(())


def test_compiled_is_the_observers_record_traced_once():
    obs = SquaredNorm()
    measure = compiled(obs)
    for w in (np.arange(3.0), np.ones(3)):
        np.testing.assert_allclose(float(measure({"w": jnp.asarray(w)})["value"]), float(np.sum(w**2)), rtol=1e-6)
    assert obs.calls == 1


def test_a_stateful_observer_is_refused():
    with pytest.raises(ValueError, match="carries state"):
        compiled(Carrying())
