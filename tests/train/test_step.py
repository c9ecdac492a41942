"""The compiled train/eval steps against hand-written references; no recompiles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm.data import batch_indices, epoch_permutation, load
from jaxnorm.models import get_model
from jaxnorm.train import create_state, layout_eval, make_evaluate, make_optimizer, make_train_step
from jaxnorm.objective import l2_penalty

BATCH = 16


@pytest.fixture(scope="module")
def setup():
    ds = load("digits", "train")
    images, labels = jnp.asarray(ds.images[:128]), jnp.asarray(ds.labels[:128])
    model = get_model("convnet", depth=4, width=8, norm="bn_gamma_beta")
    tx = make_optimizer(0.1, momentum=0.9)
    state = create_state(jax.random.PRNGKey(0), model, tx, images[:1])
    return ds, images, labels, model, tx, state


def test_train_step_equals_reference_sgd_step(setup):
    ds, images, labels, model, tx, state = setup
    lam = 0.01
    step = jax.jit(make_train_step(model, tx, batch_size=BATCH, mean=ds.mean, std=ds.std, weight_decay=lam))
    perm = epoch_permutation(3, 1, 128)
    new, metrics = step(state, (images, labels), perm, jnp.int32(3), jnp.int32(1), jnp.int32(2))

    # Reference: the same batch, normalized by hand, loss written out, one SGD-momentum step.
    idx = np.asarray(perm)[2 * BATCH : 3 * BATCH]
    x = (np.asarray(images)[idx] - np.asarray(ds.mean)) / np.asarray(ds.std)
    y = np.asarray(labels)[idx]

    def loss(params):
        logits, upd = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + lam * l2_penalty(params), upd["batch_stats"]

    (ref_loss, ref_stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    ref_params = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)  # first momentum step = plain SGD
    # float32, same ops in a different compilation: differences are rounding only.
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(ref_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert int(new.step) == int(state.step) + 1


def test_train_step_traces_once_over_steps_and_epochs(setup):
    ds, images, labels, model, tx, state = setup
    fn = make_train_step(model, tx, batch_size=BATCH, mean=ds.mean, std=ds.std)
    step = jax.jit(chex.assert_max_traces(fn, n=1), donate_argnums=(0,))
    state = jax.tree.map(jnp.copy, state)  # the fixture's state must survive donation
    for epoch in range(2):
        perm = epoch_permutation(0, epoch, 128)
        for s in range(3):
            state, _ = step(state, (images, labels), perm, jnp.int32(0), jnp.int32(epoch), jnp.int32(s))
    assert int(state.step) == 6


def test_train_step_batches_follow_the_epoch_permutation(setup):
    ds, images, labels, model, tx, state = setup
    perm = epoch_permutation(5, 0, 128)
    idx = np.asarray(batch_indices(perm, jnp.int32(3), BATCH))
    np.testing.assert_array_equal(idx, np.asarray(perm)[3 * BATCH : 4 * BATCH])


def test_layout_eval_pads_with_a_mask_or_drops_the_remainder():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int32)
    xi, yi, m = layout_eval(x, y, 4)
    assert xi.shape == (3, 4, 1, 1, 1) and m.sum() == 10 and m[2].tolist() == [1, 1, 0, 0]
    np.testing.assert_array_equal(yi.reshape(-1)[:10], y)
    xd, yd, md = layout_eval(x, y, 4, drop_remainder=True)
    assert xd.shape[0] == 2 and md.sum() == 8
    with pytest.raises(ValueError, match="exceeds"):
        layout_eval(x, y, 11, drop_remainder=True)


def test_evaluate_running_mode_equals_per_example_reference(setup):
    ds, images, labels, model, tx, state = setup
    state = state.replace(batch_stats=jax.tree.map(lambda v: v + 0.3, state.batch_stats))  # non-trivial stats
    laid = layout_eval(np.asarray(images[:50]), np.asarray(labels[:50]), 16)
    totals = jax.jit(make_evaluate(model, mean=ds.mean, std=ds.std))(state, *laid)
    x = (np.asarray(images[:50]) - np.asarray(ds.mean)) / np.asarray(ds.std)
    logits = model.apply(state.variables, x, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:50])
    assert float(totals["count"]) == 50
    np.testing.assert_allclose(float(totals["loss_sum"]), float(ce.sum()), rtol=1e-5)
    assert float(totals["correct"]) == float(jnp.sum(jnp.argmax(logits, -1) == labels[:50]))


def test_evaluate_batch_mode_uses_each_batch_statistics(setup):
    ds, images, labels, model, tx, state = setup
    laid = layout_eval(np.asarray(images[:48]), np.asarray(labels[:48]), 16, drop_remainder=True)
    totals = jax.jit(make_evaluate(model, mean=ds.mean, std=ds.std, bn_mode="batch"))(state, *laid)
    x = (np.asarray(images[:48]) - np.asarray(ds.mean)) / np.asarray(ds.std)
    ref = 0.0
    for b in range(3):
        logits, _ = model.apply(state.variables, x[16 * b : 16 * (b + 1)], train=True, mutable=["batch_stats"])
        ref += float(optax.softmax_cross_entropy_with_integer_labels(logits, labels[16 * b : 16 * (b + 1)]).sum())
    np.testing.assert_allclose(float(totals["loss_sum"]), ref, rtol=1e-5)
    running = jax.jit(make_evaluate(model, mean=ds.mean, std=ds.std))(state, *laid)
    assert abs(float(running["loss_sum"]) - ref) > 1e-3  # the two modes really differ


def test_evaluate_rejects_unknown_mode(setup):
    ds, *_ , model, tx, state = setup
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        make_evaluate(model, mean=ds.mean, std=ds.std, bn_mode="population")
