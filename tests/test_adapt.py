"""``jaxnorm.adapt``: the three test-time modes of a BN network, TENT's update against an
independent gradient, what it may change, entropy descent, episodes, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm import adapt
from jaxnorm.models import get_model

X = jax.random.normal(jax.random.PRNGKey(0), (16, 6))
LR = 0.2
OPT = optax.sgd(LR)  # one optimizer object: it is static in the state, a new one would recompile


def _model(norm="bn_gamma_beta", **norm_options):
    module = get_model("mlp", norm=norm, num_classes=4, depth=3, width=8, norm_options=norm_options or None)
    variables = jax.jit(module.init, static_argnames="train")(jax.random.PRNGKey(1), X, train=False)
    # Running statistics away from their (0, 1) start, as after training.
    stats = jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])
    return module, {"params": variables["params"], "batch_stats": stats}


@pytest.fixture(scope="module")
def net():
    """The model, its variables and every compiled step the tests use (compiled once)."""
    module, variables = _model()
    steps = {m: adapt.make_step(module, m) for m in ("running", "batch", "tent")}
    steps["tent_after"] = adapt.make_step(module, "tent", predict_after_update=True)
    steps["tent_episodic"] = adapt.make_step(module, "tent", episodic=True)
    steps["tent_2"] = adapt.make_step(module, "tent", steps=2)
    return module, variables, steps


def test_entropy_against_numpy():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 3.0], [80.0, 0.0, 0.0, 0.0]], np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=1)
    got = np.asarray(adapt.entropy(logits))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got[0] == pytest.approx(np.log(4), rel=1e-6) and got[2] < 1e-30 + 1e-6


def test_running_and_batch_modes(net):
    """'batch' = the train-mode forward with its statistics update discarded; 'running' =
    eval mode (compiled vs eager: float32 rounding, 1e-6). With running statistics set by
    one train-mode pass over X at momentum 0 and the biased variance, X is "the training
    distribution": its batch-mode output equals its running-mode output (1e-5)."""
    module, variables, steps = net
    state = adapt.source_state(variables, OPT)
    apply = jax.jit(module.apply, static_argnames=("train", "mutable"))
    train_out, _ = apply(variables, X, train=True, mutable=("batch_stats",))
    logits, after = steps["batch"](state, X)
    np.testing.assert_allclose(logits, train_out, rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, after.batch_stats, variables["batch_stats"])
    np.testing.assert_allclose(steps["running"](state, X)[0], apply(variables, X, train=False), rtol=1e-6, atol=1e-6)

    module, variables = _model(momentum=0.0, unbiased_running_var=False)
    _, updated = jax.jit(module.apply, static_argnames=("train", "mutable"))(variables, X, train=True, mutable=("batch_stats",))
    state = adapt.source_state({"params": variables["params"], **updated})
    running, batch = (adapt.make_step(module, m)(state, X)[0] for m in ("running", "batch"))
    np.testing.assert_allclose(running, batch, rtol=1e-5, atol=1e-5)
    other = jax.random.normal(jax.random.PRNGKey(5), X.shape) * 2 + 1  # another distribution
    assert not np.allclose(*(adapt.make_step(module, m)(state, other)[0] for m in ("running", "batch")), atol=1e-2)


def test_tent_updates_only_gamma_beta_by_the_entropy_gradient(net):
    """One SGD step: γ/β move by −lr ∇ mean entropy, the gradient taken independently over
    the full params of the train-mode forward (its γ/β part; 1e-6); the returned logits are
    those γ/β moved from (predict, then update) = the batch-mode logits. After three more
    steps every other parameter and all batch_stats are bit-identical to the source."""
    module, variables, steps = net
    lr = LR
    state = adapt.init_tent(variables, OPT)
    assert set(state.affine) == {f"norm{i}/{p}" for i in (1, 2) for p in ("scale", "bias")}

    def mean_entropy(params):
        logits, _ = module.apply({**variables, "params": params}, X, train=True, mutable=["batch_stats"])
        return jnp.mean(adapt.entropy(logits))

    grads = adapt.norm_affine(jax.jit(jax.grad(mean_entropy))(variables["params"]))
    step = steps["tent"]
    logits, new = step(state, X)
    np.testing.assert_array_equal(logits, steps["batch"](state, X)[0])
    for k, g in grads.items():
        assert float(jnp.max(jnp.abs(g))) > 1e-4, k  # a real move
        np.testing.assert_allclose(new.affine[k], state.affine[k] - lr * g, rtol=1e-6, atol=1e-6)
    for _ in range(3):
        _, new = step(new, X)
    assert int(new.updates) == 4
    source = dict(jax.tree_util.tree_leaves_with_path(variables["params"]))
    for path, leaf in jax.tree_util.tree_leaves_with_path(new.variables["params"]):
        name = "/".join(p.key for p in path)
        if adapt.is_norm_affine(name):
            assert not np.allclose(leaf, source[path]), name
        else:
            np.testing.assert_array_equal(leaf, source[path])
    jax.tree.map(np.testing.assert_array_equal, new.batch_stats, variables["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, new.params, variables["params"])  # the source stays


def test_entropy_decreases_over_adaptation_steps_and_episodes_reset(net):
    module, variables, steps = net
    state = adapt.init_tent(variables, OPT)
    step = steps["tent"]
    entropies = []
    for _ in range(8):
        logits, state = step(state, X)
        entropies.append(float(jnp.mean(adapt.entropy(logits))))
    assert all(a > b for a, b in zip(entropies, entropies[1:])), entropies
    # update_then_predict: the forward after the update, i.e. the next prediction.
    after, _ = steps["tent_after"](state, X)
    np.testing.assert_allclose(after, step(step(state, X)[1], X)[0], rtol=1e-6, atol=1e-6)

    first, s1 = steps["tent_episodic"](state, X)
    second, _ = steps["tent_episodic"](s1, X)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, steps["batch"](adapt.reset(state), X)[0])  # the source's γ/β
    fresh = adapt.reset(state)
    assert int(fresh.updates) == 0
    jax.tree.map(np.testing.assert_array_equal, fresh.affine, adapt.norm_affine(variables["params"]))
    jax.tree.map(np.testing.assert_array_equal, fresh.opt_state, OPT.init(fresh.affine))
    # Several updates per batch: k steps, the logits of the k-th forward.
    two, s2 = steps["tent_2"](fresh, X)
    np.testing.assert_allclose(two, step(step(fresh, X)[1], X)[0], rtol=1e-6, atol=1e-6)
    assert int(s2.updates) == 2


def test_run_stream_is_the_steps_in_order(net):
    _, variables, steps = net
    step = steps["tent"]
    state = adapt.init_tent(variables, OPT)
    xs = jax.random.normal(jax.random.PRNGKey(3), (48, 6))
    logits, end = adapt.run_stream(step, state, xs, 16)
    want, s = [], state
    for lo in (0, 16, 32):
        out, s = step(s, xs[lo : lo + 16])
        want.append(out)
    np.testing.assert_array_equal(logits, jnp.concatenate(want))
    assert logits.shape == (48, 4) and int(end.updates) == 3


def test_bad_input_is_refused():
    module = get_model("mlp", norm="bn", num_classes=4, depth=3, width=8)
    variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(1), X, train=False))  # shapes suffice
    with pytest.raises(ValueError, match="nothing to adapt"):
        adapt.init_tent(variables)
    adapt.source_state(variables)  # running/batch still work without γ/β
    with pytest.raises(ValueError, match="'params'"):
        adapt.init_tent({"batch_stats": {}})
    with pytest.raises(ValueError, match="unknown adaptation mode 'train'"):
        adapt.make_step(module, "train")
    with pytest.raises(ValueError, match="takes the options"):
        adapt.make_step(module, "batch", steps=2)
    with pytest.raises(ValueError, match="takes the options"):
        adapt.make_step(module, "tent", lr=1.0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            adapt.make_step(module, "tent", steps=bad)
    step = adapt.make_step(module, "batch")
    state = adapt.source_state(variables)
    with pytest.raises(ValueError, match="last batch of 1"):
        adapt.run_stream(step, state, X[:9], 4)
    with pytest.raises(ValueError, match="batch_size"):
        adapt.run_stream(step, state, X, 1)


def test_the_learning_rate_as_data_is_the_fixed_rate_optimizer_and_one_compilation(net):
    """adapt.tent_optimizer holds the lr as data: a state set to lr by with_learning_rate
    steps exactly as the optimizer built with that lr (same arithmetic: sgd, -lr * g), and
    the jitted step does not recompile for another lr."""
    module, variables, _ = net
    opt = adapt.tent_optimizer("sgd", 1.0)
    step = adapt.make_step(module, "tent")
    for lr in (LR, 0.05):
        _, want = step(adapt.init_tent(variables, optax.sgd(lr)), X)
        _, got = step(adapt.with_learning_rate(adapt.init_tent(variables, opt), lr), X)
        for k in want.affine:
            np.testing.assert_allclose(got.affine[k], want.affine[k], rtol=1e-6, atol=1e-7)
    assert step._cache_size() == 3  # two fixed-lr optimizers (static) + the one lr-as-data optimizer
    with pytest.raises(ValueError, match="tent_optimizer"):
        adapt.with_learning_rate(adapt.init_tent(variables, OPT), 0.1)
    with pytest.raises(ValueError, match="unknown TENT optimizer"):
        adapt.tent_optimizer("lamb", 0.1)
