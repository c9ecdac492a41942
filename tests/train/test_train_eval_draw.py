"""``train_eval_mode='deepobs'``: DeepOBS-PyTorch's training-loss set, redrawn at every
evaluation from all training examples through the training augmentation, against a
hand-written draw; deterministic per (seed, epoch), one compilation for every evaluation.

Tolerances: the engine's scan and the hand reference are two compiled programs computing
the same float32 sums of ≤ 64 per-example losses of O(1) (ln 10 ≈ 2.3 at initialization),
so they may differ by reassociation: at most ~64·2⁻²⁴ ≈ 4e-6 relative; 2e-5 stays above
it, while another draw or augmentation moves the sum by percents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import DEEPOBS_AUGMENT, augment, load
from jaxnorm.data.batching import TRAIN_EVAL_STEP, step_key
from jaxnorm.models import get_model
from jaxnorm.objective import cross_entropy
from jaxnorm.train import TrainConfig, create_state, fit, make_optimizer
from jaxnorm.train.step import layout_eval, make_drawn_evaluate, make_evaluate

RTOL = 2e-5  # see the module docstring
SIZE, BATCH = 48, 16


@pytest.fixture(scope="module")
def setup():
    ds = load("digits32", "train")
    data = (jnp.asarray(ds.images[:128]), jnp.asarray(ds.labels[:128], jnp.int32))
    module = get_model("mlp", depth=2, width=16, norm="bn_gamma_beta", num_classes=10)
    state = create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), data[0][:1])
    return ds, data, module, state


def _drawn(module, ds, augment_config=DEEPOBS_AUGMENT, size=SIZE, batch=BATCH):
    return jax.jit(make_drawn_evaluate(module, size=size, batch_size=batch, mean=ds.mean, std=ds.std, augment_config=augment_config))


def test_the_draw_is_a_function_of_seed_and_epoch_and_uses_the_augmentation(setup):
    ds, data, module, state = setup
    evaluate = _drawn(module, ds)
    out = lambda seed, epoch: {k: float(v) for k, v in evaluate(state, data, jnp.int32(seed), jnp.int32(epoch)).items()}
    first = out(0, 3)
    assert first["count"] == SIZE and out(0, 3) == first  # the same (seed, epoch): the same set, bit for bit
    assert out(0, 4)["loss_sum"] != first["loss_sum"] and out(1, 3)["loss_sum"] != first["loss_sum"]

    # By hand: SIZE indices without replacement from all 128, batch i augmented with
    # fold_in(augmentation key, i), the model in eval mode (running statistics).
    draw_key, aug_key = jax.random.split(step_key(0, 3, TRAIN_EVAL_STEP))
    idx = np.asarray(jax.random.permutation(draw_key, 128))[:SIZE]
    assert len(set(idx.tolist())) == SIZE
    want = 0.0
    for i in range(SIZE // BATCH):
        b = idx[i * BATCH : (i + 1) * BATCH]
        x = augment(jax.random.fold_in(aug_key, i), data[0][b], DEEPOBS_AUGMENT, ds.mean, ds.std)
        want += float(jnp.sum(cross_entropy(module.apply(state.variables, x, train=False), data[1][b])))
    np.testing.assert_allclose(first["loss_sum"], want, rtol=RTOL)

    plain = _drawn(module, ds, augment_config=None)(state, data, jnp.int32(0), jnp.int32(3))
    assert abs(float(plain["loss_sum"]) - want) > 100 * RTOL * want  # the augmentation changes it


def test_drawing_the_whole_set_without_augmentation_is_the_fixed_evaluation(setup):
    """size = all 128 (a padded last batch of 128 = 3·48 − 16): a permutation of every
    training example, so the sums are the stored split's, up to reassociation."""
    ds, data, module, state = setup
    drawn = _drawn(module, ds, augment_config=None, size=128, batch=48)(state, data, jnp.int32(0), jnp.int32(0))
    fixed = jax.jit(make_evaluate(module, mean=ds.mean, std=ds.std))(state, *map(jnp.asarray, layout_eval(*map(np.asarray, data), 48)))
    assert float(drawn["count"]) == float(fixed["count"]) == 128 and float(drawn["correct"]) == float(fixed["correct"])
    np.testing.assert_allclose(float(drawn["loss_sum"]), float(fixed["loss_sum"]), rtol=RTOL)


def test_the_loop_redraws_train_eval_every_epoch_with_one_compilation(tmp_path):
    base = TrainConfig(
        dataset="digits32", model="mlp", model_kwargs={"depth": 2, "width": 16}, batch_size=32, epochs=3,
        train_subset=128, eval_subset=48, eval_batch_size=16, augment=DEEPOBS_AUGMENT, checkpoint_every_epochs=0,
        results_dir=str(tmp_path),
    )  # fmt: skip
    runs = {mode: fit(base.replace(train_eval_mode=mode, name=mode), progress=False) for mode in ("fixed", "deepobs")}
    assert runs["deepobs"].traces == {"train_step": 1, "evaluate": 1, "evaluate_drawn": 1}
    assert "evaluate_drawn" not in runs["fixed"].traces  # the default is today's evaluation
    lines = {mode: [m for m in r.metrics if m["kind"] == "eval" and m["split"] == "train_eval"] for mode, r in runs.items()}
    assert [m["n"] for m in lines["deepobs"]] == [48, 48, 48]
    # Training is the same (the evaluation set does not feed back); the training-loss sets differ.
    assert [m["loss"] for m in runs["fixed"].metrics if m["kind"] == "train"] == [m["loss"] for m in runs["deepobs"].metrics if m["kind"] == "train"]
    assert all(a["loss"] != b["loss"] for a, b in zip(lines["fixed"], lines["deepobs"]))


def test_a_resumed_run_redraws_the_same_sets(tmp_path, monkeypatch):
    """The draw is a function of (seed, epoch): killed in epoch 2 and resumed from the
    epoch-1 checkpoint, the run reports the uninterrupted run's train_eval numbers."""
    from tests.train.helpers import fit_killed_at, tiny_config

    cfg = tiny_config(tmp_path, epochs=3, momentum=0.0, eval_subset=64, train_eval_mode="deepobs")
    whole = fit(cfg.replace(name="whole"), progress=False)
    fit_killed_at(cfg.replace(name="resumed"), kill_step=12, monkeypatch=monkeypatch)  # checkpoint at step 8
    resumed = fit(cfg.replace(name="resumed"), progress=False)
    lines = lambda r: [(m["epoch"], m["loss"], m["acc"]) for m in r.metrics if m["kind"] == "eval" and m["split"] == "train_eval"]
    assert len(lines(whole)) == 3 and lines(resumed) == lines(whole)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"train_eval_mode": "redrawn"}, r"train_eval_mode must be one of \['fixed', 'deepobs'\]"),
        ({"train_eval_mode": "deepobs", "eval_splits": ("test",)}, "redraws the 'train_eval' split, which eval_splits"),
    ],
)
def test_train_eval_mode_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_drawn_evaluate_errors(setup):
    ds, _, module, _ = setup
    with pytest.raises(ValueError, match="size and batch_size >= 1"):
        make_drawn_evaluate(module, size=0, batch_size=4, mean=ds.mean, std=ds.std)
    with pytest.raises(ValueError, match="exceeds the 8 examples of the drawn set"):
        make_drawn_evaluate(module, size=8, batch_size=16, mean=ds.mean, std=ds.std, bn_mode="batch")
