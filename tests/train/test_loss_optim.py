"""Loss (CE + L2 over its scope: the kernels, or DeepOBS-PyTorch's every-parameter-not-named-bias)
and the optimizers/schedules."""

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


def _set_params():
    """A tiny BN MLP (5 -> 2 -> 2) with every parameter set by hand, so the L2 sums are
    exact small integers: dense1/kernel (no bias: BN absorbs it), norm1/scale,
    norm1/bias, dense2/kernel, dense2/bias."""
    model = get_model("mlp", depth=2, width=2, num_classes=2, norm="bn_gamma_beta")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)), train=False)["params"]
    assert sorted(f"{k}/{n}" for k, v in params.items() for n in v) == ["dense1/kernel", "dense2/bias", "dense2/kernel", "norm1/bias", "norm1/scale"]
    full = lambda shape, v: jnp.full(shape, v, jnp.float32)
    return {
        "dense1": {"kernel": full((5, 2), 1.0)},  # Σ = 10
        "norm1": {"scale": full((2,), 3.0), "bias": full((2,), 5.0)},  # Σγ² = 18, Σβ² = 50
        "dense2": {"kernel": full((2, 2), 2.0), "bias": full((2,), 7.0)},  # Σ = 16, Σb² = 98
    }


def test_l2_scopes_against_a_hand_count():
    """'weights': 0.5(10 + 16) = 13; 'all_but_bias' adds γ: 0.5(10 + 18 + 16) = 22. β and
    the dense bias never count. Integers well below 2^24: exact in float32."""
    params = _set_params()
    assert float(l2_penalty(params)) == float(l2_penalty(params, "weights")) == 13.0
    assert float(l2_penalty(params, "all_but_bias")) == 22.0
    lam = 0.5
    grads = jax.grad(lambda p: lam * l2_penalty(p, "all_but_bias"))(params)
    decayed = {"dense1/kernel", "norm1/scale", "dense2/kernel"}
    for (path, g), (_, w) in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves_with_path(params)):
        name = "/".join(k.key for k in path)
        np.testing.assert_array_equal(np.asarray(g), lam * np.asarray(w) if name in decayed else 0.0 * np.asarray(w), err_msg=name)
    with pytest.raises(ValueError, match=r"l2_scope must be one of \['weights', 'all_but_bias'\].*got 'everything'"):
        l2_penalty(params, "everything")


def test_l2_leaves_out_a_switched_off_gamma_of_the_ablation_superset():
    """In the bn_ablation superset every run has γ; a variant that learns none (bn, bn_beta,
    vanilla) uses exactly 1 in its place, so its L2 is that of its own network (γ absent):
    the superset's γ counts only where use_scale is on, and gets no decay gradient off."""
    from jaxnorm.layers import set_ablation_variant

    model = get_model("mlp", depth=2, width=2, num_classes=2, norm="bn_ablation")
    stats = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)), train=False)["batch_stats"]
    params = _set_params()
    for variant, want in [("bn_gamma_beta", 22.0), ("bn_gamma", 22.0), ("bn_beta", 13.0), ("bn", 13.0), ("vanilla", 13.0)]:
        switches = set_ablation_variant(stats, variant)
        assert float(l2_penalty(params, "all_but_bias", switches)) == want, variant
        assert float(l2_penalty(params, "weights", switches)) == 13.0, variant
        g = jax.grad(lambda p: l2_penalty(p, "all_but_bias", switches))(params)["norm1"]["scale"]
        np.testing.assert_array_equal(np.asarray(g), 3.0 if want == 22.0 else 0.0)


def test_train_step_adds_the_scoped_l2_and_adamw_decays_the_scope():
    """The train step's objective minus its data term is λ·penalty of its scope (the
    penalty at the step's input parameters); adamw's decoupled decay moves exactly the
    scope's leaves when the gradient is zero."""
    from jaxnorm.train import create_state
    from jaxnorm.train.step import make_train_step

    model = get_model("mlp", depth=2, width=2, num_classes=2, norm="bn_gamma_beta")
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 5))
    data = (x, jnp.arange(8, dtype=jnp.int32) % 2)
    lam = 0.25
    for scope, penalty in [("weights", 13.0), ("all_but_bias", 22.0)]:
        tx = make_optimizer(0.1, weight_decay=lam)
        state = create_state(jax.random.PRNGKey(0), model, tx, x[:1]).replace(params=_set_params())
        step = make_train_step(model, tx, batch_size=8, mean=jnp.zeros(5), std=jnp.ones(5), l2_scope=scope)
        _, m = step(state, data, jnp.arange(8), 0, 0, 0)
        # loss and ce are float32 sums of O(1) values: rounding ~1e-7 relative, far below 1e-5.
        np.testing.assert_allclose(float(m["loss"] - m["ce"]), lam * penalty, rtol=1e-5)
    params = _set_params()
    for scope, moved in [("weights", {"dense1/kernel", "dense2/kernel"}), ("all_but_bias", {"dense1/kernel", "norm1/scale", "dense2/kernel"})]:
        tx = make_optimizer(0.1, optimizer="adamw", weight_decay=lam, l2_scope=scope)
        upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        for path, u in jax.tree_util.tree_leaves_with_path(upd):
            name = "/".join(k.key for k in path)
            assert bool(jnp.any(u != 0)) == (name in moved), (scope, name)
    with pytest.raises(ValueError, match="l2_scope must be one of"):
        make_optimizer(0.1, l2_scope="gamma")
    with pytest.raises(ValueError, match="l2_scope must be one of"):
        make_train_step(model, make_optimizer(0.1), batch_size=8, mean=0.0, std=1.0, l2_scope="gamma")


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
