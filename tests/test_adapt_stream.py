"""``jaxnorm.adapt.make_steps`` / ``evaluate_stream``: every mode from one trained state,
against the per-mode ``run_stream`` (an independent path), and non-finite logits flagged."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from jaxnorm import adapt
from jaxnorm.models import get_model

X = jax.random.normal(jax.random.PRNGKey(0), (20, 6))
Y = np.arange(20) % 4


@pytest.fixture(scope="module")
def net():
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=4, depth=3, width=8)
    variables = jax.jit(module.init, static_argnames="train")(jax.random.PRNGKey(1), X, train=False)
    return module, variables, adapt.make_steps(module, ("running", "batch", "tent"), tent_steps=2)


def test_each_mode_equals_its_own_stream_from_the_same_state(net):
    module, variables, steps = net
    state = adapt.init_tent(variables, optax.adam(1e-2))
    out = adapt.evaluate_stream(steps, state, X, Y, batch_size=8)
    assert list(out) == ["running", "batch", "tent"]
    for mode, step in steps.items():
        logits, final = adapt.run_stream(step, state, X, 8)
        correct = np.argmax(np.asarray(logits), -1) == Y
        p = np.exp(np.asarray(logits, np.float64) - np.asarray(logits, np.float64).max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        entropy = float(np.mean(-np.sum(p * np.log(p), 1)))
        r = out[mode]
        np.testing.assert_array_equal(r["correct"], correct)
        assert r["error"] == pytest.approx(1 - correct.mean()) and r["finite"]
        assert r["entropy"] == pytest.approx(entropy, rel=1e-5)  # float32 entropy of 20 rows vs float64
        assert r["updates"] == int(final.updates) == (2 * 3 if mode == "tent" else 0)  # 3 batches x 2 updates


def test_non_finite_logits_are_flagged(net):
    module, variables, steps = net
    bad = {**variables, "params": jax.tree.map(lambda p: p * np.nan, variables["params"])}
    out = adapt.evaluate_stream({"running": steps["running"]}, adapt.source_state(bad), X, Y, batch_size=8)
    assert out["running"]["finite"] is False
    with pytest.raises(ValueError, match="unknown adaptation mode"):
        adapt.make_steps(module, ("train",))
