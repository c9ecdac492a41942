"""Loss (CE + L2 on weights only) and the optimizers/schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm.models import get_model
from jaxnorm.train import cross_entropy, l2_penalty, make_optimizer
from jaxnorm.objective import is_weight


def _params():
    model = get_model("mlp", depth=3, width=8, norm="bn_gamma_beta")
    return model.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)), train=False)["params"]


def test_l2_penalty_counts_kernels_only():
    params = _params()
    kernels = [params[f"dense{i}"]["kernel"] for i in (1, 2, 3)]
    expected = 0.5 * sum(float(np.sum(np.asarray(k, np.float64) ** 2)) for k in kernels)
    # float32 sum of ~400 squares: relative error well under 1e-6.
    np.testing.assert_allclose(float(l2_penalty(params)), expected, rtol=1e-6)


def test_l2_gradient_is_lambda_w_on_kernels_and_zero_on_bias_gamma_beta():
    params = _params()
    lam = 0.002
    grads = jax.grad(lambda p: lam * l2_penalty(p))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        p = params
        for k in path:
            p = p[k.key]
        if is_weight(path):
            np.testing.assert_allclose(np.asarray(g), lam * np.asarray(p), rtol=1e-6)
        else:
            assert np.all(np.asarray(g) == 0), path  # biases, γ and β are not decayed


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1])
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    ref = lse - logits[np.arange(6), labels]
    np.testing.assert_allclose(np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels))), ref, rtol=1e-5)


def _lr_trace(tx, steps, value=1.0):
    """Effective learning rate per step: the update of a unit gradient on a scalar param."""
    params = jnp.zeros(())
    state = tx.init(params)
    out = []
    for _ in range(steps):
        upd, state = tx.update(jnp.ones(()), state, params, value=jnp.asarray(value))
        out.append(-float(upd))
    return np.array(out)


def test_constant_schedule_and_plain_sgd():
    np.testing.assert_allclose(_lr_trace(make_optimizer(0.1), 5), 0.1, rtol=1e-6)


def test_step_schedule_divides_at_epoch_boundaries():
    tx = make_optimizer(0.05, schedule="step", schedule_kwargs={"epochs": (2, 3), "factor": 0.1}, steps_per_epoch=2)
    np.testing.assert_allclose(_lr_trace(tx, 8), [0.05] * 4 + [0.005] * 2 + [0.0005] * 2, rtol=1e-5)


def test_plateau_schedule_reduces_after_patience_epochs_without_improvement():
    tx = make_optimizer(0.1, schedule="plateau", schedule_kwargs={"factor": 0.5, "patience": 2}, steps_per_epoch=3)
    lrs = _lr_trace(tx, 18, value=1.0)  # a flat loss: never improves after the first epoch
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] < 0.1 and lrs[-1] >= 0.1 * 0.5**6  # reduced, by whole factors of 0.5
    assert np.all(np.diff(lrs) <= 1e-12)  # never increases


def test_momentum_matches_optax_reference():
    tx = make_optimizer(0.1, momentum=0.9)
    ref = optax.sgd(0.1, momentum=0.9)
    params = jnp.ones(3)
    s, r = tx.init(params), ref.init(params)
    for g in (jnp.ones(3), 2 * jnp.ones(3)):
        u, s = tx.update(g, s, params)
        v, r = ref.update(g, r, params)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": 0.1, "momentum": -0.1}, "momentum"),
        ({"learning_rate": 0.1, "schedule": "exponential"}, "unknown schedule"),
        ({"learning_rate": 0.1, "schedule": "cosine"}, "needs total_steps"),
        ({"learning_rate": 0.1, "optimizer": "lion"}, "unknown optimizer"),
        ({"learning_rate": 0.1, "optimizer": "adam", "momentum": 0.9}, "SGD options"),
        ({"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
        ({"learning_rate": 0.1, "warmup_steps": -1}, "warmup_steps"),
        ({"learning_rate": 0.1, "schedule": "plateau", "warmup_steps": 3}, "plateau"),
        ({"learning_rate": 0.1, "optimizer": "adam", "optimizer_kwargs": {"beta": 0.5}}, "unknown optimizer options"),
        ({"learning_rate": 0.1, "optimizer_kwargs": {"b1": 0.5}}, "unknown optimizer options"),
    ],
)
def test_optimizer_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(**kwargs)
