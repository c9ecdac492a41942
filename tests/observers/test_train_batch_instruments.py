"""``TrainBatchInstruments``: the panel measured inside the training step, from the
step's own backward pass -- its records against materialized per-example gradients of the
same batch, its update against a plain step's, inside ``fit`` (files, steps, the plain
run's trajectory), and the coupled-BatchNorm refusal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.data.batching import batch_indices
from jaxnorm.diagnostics import per_example_grads
from jaxnorm.diagnostics.masking import flatten
from jaxnorm.observers import INSTRUMENT_PRESETS, TrainBatchInstruments
from jaxnorm.train import build_model, create_state, fit, make_optimizer, make_train_step
from tests.train.helpers import tiny_config

B, DECAY = 16, 0.01
# float32 sums of at most a few thousand products: n·u = 4096 · 6e-8 = 2.4e-4 bounds the
# reassociation error relative to the summed magnitudes; 1e-3 leaves 4x headroom.
RTOL = 1e-3


@pytest.mark.parametrize("norm", ["vanilla", "layer"])
def test_step_records_and_update_equal_the_materialized_reference(tmp_path, norm):
    cfg = tiny_config(tmp_path, norm=norm, model_kwargs={"depth": 3, "width": 12})
    ds = load("digits", "train")
    module = build_model(cfg, ds.num_classes)
    tx = make_optimizer(0.1)
    state = create_state(jax.random.PRNGKey(3), module, tx, jnp.asarray(ds.images[:1]))
    obs = TrainBatchInstruments(preset="business")
    kw = dict(batch_size=B, mean=ds.mean, std=ds.std, weight_decay=DECAY)
    data = (jnp.asarray(ds.images[:64]), jnp.asarray(ds.labels[:64]))
    perm = jnp.arange(64, dtype=jnp.int32)
    args = (data, perm, jnp.int32(0), jnp.int32(0), jnp.int32(1))
    plain_state, plain_m = jax.jit(make_train_step(module, tx, **kw))(state, *args)
    step = jax.jit(make_train_step(module, tx, in_step=[obs], **kw))
    new_state, m, records, _ = step(state, *args, {"instruments": obs.init_carry(state)})
    rec = jax.device_get(records["instruments"])
    # The same forward pass: a mean of B float32 losses, each side within B·u = 1e-6 relative.
    assert float(m["loss"]) == pytest.approx(float(plain_m["loss"]), rel=2e-6)
    for a, b, p in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(plain_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * (np.abs(np.asarray(b - p)).max() + 1e-12))  # vs the update's size

    # The reference: per-example gradients of the same batch (no dropout, no BN: 'running').
    idx = batch_indices(perm, 1, B)
    x, y = normalize(data[0][idx], jnp.asarray(ds.mean), jnp.asarray(ds.std)), data[1][idx]
    rows = per_example_grads(module, state.variables, x, y, bn_mode="running", weight_decay=DECAY)
    g = np.asarray(flatten(rows, 1), np.float64)
    gbar, sq = g.mean(0), (g**2).sum(1)
    proj = g @ gbar
    g2 = gbar @ gbar
    expect = {
        "grad_norm": np.sqrt(g2),
        "norm_test": np.sqrt(((g - gbar) ** 2).sum() / ((B - 1) * B * g2)),
        "inner_product_test": np.sqrt(((proj - g2) ** 2).sum() / ((B - 1) * B * g2**2)),
        "orthogonality_test": np.sqrt(((g - np.outer(proj / g2, gbar)) ** 2).sum() / ((B - 1) * B * g2)),
        "coherence": B * g2 / sq.sum(),
        "per_example_diversity": sq.sum() / (B * B * g2),
        "distance": 0.0,
    }
    for name, value in expect.items():
        assert float(rec[name]) == pytest.approx(value, rel=RTOL, abs=1e-7), name
    cos = (g @ g.T) / np.sqrt(np.outer(sq, sq))
    assert float(rec["confusion"]) == pytest.approx(max(-cos[np.triu_indices(B, 1)].min(), 0.0), rel=RTOL, abs=1e-6)
    update = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(plain_state.params), jax.tree.leaves(state.params))])
    assert float(rec["update_size"]) == pytest.approx(np.linalg.norm(update), rel=RTOL)
    assert np.isfinite(rec["mean_gsnr"]) and np.isfinite(rec["hessian_trace"])


def test_in_fit_records_are_filed_at_the_measured_steps_and_training_is_unchanged(tmp_path):
    changes = dict(norm="vanilla", model_kwargs={"depth": 3, "width": 12}, epochs=1, checkpoint_every_epochs=0, eval_splits=())
    obs = TrainBatchInstruments(every=3)
    result = fit(tiny_config(tmp_path / "a", **changes), observers=[obs], progress=False)
    plain = fit(tiny_config(tmp_path / "b", **changes), observers=[], progress=False)
    lines = [m for m in result.metrics if m.get("kind") == "instruments"]
    assert [m["step"] for m in lines] == [0, 3, 6]  # θ_t of each measured step; the final state has no batch
    assert set(INSTRUMENT_PRESETS["economy"]) == set(lines[0]) - {"kind", "step"}
    assert lines[0]["distance"] == 0.0 and all(m["distance"] > 0 for m in lines[1:])
    losses = [m["loss"] for m in result.metrics if m.get("kind") == "train"]
    plain_losses = [m["loss"] for m in plain.metrics if m.get("kind") == "train"]
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-4)  # the same run, up to reassociation
    assert result.traces["train_step+instruments"] == 1


def test_coupled_batchnorm_is_refused_with_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, checkpoint_every_epochs=0, eval_splits=())  # BN in batch mode
    with pytest.raises(ValueError, match="batch statistics"):
        fit(cfg, observers=[TrainBatchInstruments()], progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "first"}, "unknown instrument preset"),
    ({"quantities": ("alpha",)}, "unknown instrument quantity"),
    ({"every": 0}, "every must be >= 1"),
    ({"eig_iters": 0}, "eig_iters"),
])  # fmt: skip
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainBatchInstruments(**kwargs)
