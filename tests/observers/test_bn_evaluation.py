"""The ``BNEvaluation`` and ``NormInputs`` observers: their records equal the
``jaxnorm.diagnostics.bn_statistics`` functions (themselves tested against NumPy) on
the documented orders, in the compiled path; records at the documented steps inside
``fit``; every documented error.

Tolerances: the same float32 computations compiled as one program or as separate ones
differ by reassociation only: a mean over <= 359 examples, ~359 · 6e-8 relative at worst;
1e-5 leaves headroom.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.data.splits import seeded_permutation
from jaxnorm.diagnostics.bn_statistics import evaluate_in_mode, norm_inputs, population_batch_stats
from jaxnorm.models import get_model
from jaxnorm.observers.bn_evaluation import BNEvaluation
from jaxnorm.observers.norm_inputs import NormInputs
from jaxnorm.results import read_jsonl, read_npz
from jaxnorm.train import fit
from tests.train.helpers import tiny_config

TRAIN, TEST = load("digits", "train"), load("digits", "test")


@pytest.fixture(scope="module")
def model():
    module = get_model("mlp", depth=3, width=8, num_classes=10, norm="bn_gamma_beta")
    x = normalize(jnp.asarray(TRAIN.images[:64]), TRAIN.mean, TRAIN.std)
    variables = module.init(jax.random.PRNGKey(0), x[:2], train=False)
    # Move the running statistics off their initial values (a few training-mode passes).
    for i in range(4):
        _, upd = module.apply(variables, x[16 * i : 16 * (i + 1)], train=True, mutable=["batch_stats"])
        variables = {**variables, **upd}
    return module, variables


def test_bn_evaluation_equals_the_library_functions(model):
    module, variables = model
    images, labels = TEST.images[:50], TEST.labels[:50]
    obs = BNEvaluation(module, TRAIN.images[:100], images, labels, TRAIN.mean, TRAIN.std, every=7, population_batch_size=16, test_batch_sizes=(4, 16, 400))
    state = types.SimpleNamespace(variables=variables)
    got = jax.jit(lambda v: obs(types.SimpleNamespace(variables=v)))(variables)
    prep = lambda a: normalize(jnp.asarray(a), TRAIN.mean, TRAIN.std)
    x, y = prep(images), jnp.asarray(labels)
    train_x = prep(TRAIN.images[:100][seeded_permutation(100, 0)])
    order = seeded_permutation(50, 1)
    pop = population_batch_stats(module, variables, train_x, batch_size=16)
    want = {
        "running": evaluate_in_mode(module, variables, x, y, bn_mode="running"),
        "population": evaluate_in_mode(module, {**variables, "batch_stats": pop}, x, y, bn_mode="running"),
        **{f"batch{b}": evaluate_in_mode(module, variables, x[order], y[order], bn_mode="batch", batch_size=b) for b in (4, 16, 50)},
    }
    assert sorted(got) == sorted(f"{k}_{m}" for k in want for m in ("loss", "acc"))
    for k, r in want.items():
        np.testing.assert_allclose(float(got[f"{k}_loss"]), float(r["loss"]), rtol=1e-5)
        assert float(got[f"{k}_acc"]) == pytest.approx(float(r["acc"]), abs=1e-6)
    # Population statistics differ from the running averages: the comparison is not vacuous.
    assert not np.allclose(pop["norm1"]["var"], variables["batch_stats"]["norm1"]["var"], rtol=1e-3)
    assert obs.test_batch_sizes == (4, 16, 50)  # 400 > 50 examples: the whole split
    assert obs.annotations == {"split": "test", "n": 50, "population_batch_size": 16, "population_examples": 96, "batch4_n": 48, "batch16_n": 48, "batch50_n": 50}
    assert state.variables is variables


def test_norm_inputs_observer(model):
    module, variables = model
    probe = normalize(jnp.asarray(TEST.images[:8]), TRAIN.mean, TRAIN.std)
    got = jax.jit(lambda v: NormInputs(module, probe, every=3, layers=("norm1",))(types.SimpleNamespace(variables=v)))(variables)
    want = norm_inputs(module, variables, probe, layers=("norm1",))
    assert sorted(got) == ["norm1"] and got["norm1"].shape == (8, 8)
    # Jitted vs eager: norm1's input is a 64-term dot product per entry, reassociated by
    # XLA per CPU: worst 64·u ≈ 4e-6 of the terms' scale; 1e-5 of the largest entry.
    want1 = np.asarray(want["norm1"])
    np.testing.assert_allclose(np.asarray(got["norm1"]), want1, rtol=0, atol=1e-5 * np.abs(want1).max())


def test_observers_inside_fit_record_at_the_documented_steps(tmp_path):
    """16 steps, every=16: a line (and a Z) before the first step and after the last."""
    cfg = tiny_config(tmp_path, epochs=2, log_every_steps=8)  # 256 / 32 = 8 steps per epoch
    from jaxnorm.train import build_model

    module = build_model(cfg, 10)
    probe = normalize(jnp.asarray(TEST.images[:8]), TRAIN.mean, TRAIN.std)
    obs = [
        BNEvaluation(module, TRAIN.images[:256], TEST.images, TEST.labels, TRAIN.mean, TRAIN.std, every=16, population_batch_size=32, test_batch_sizes=(8,)),
        NormInputs(module, probe, every=16, layers=("norm1",)),
    ]
    result = fit(cfg, observers=obs, progress=False)
    lines = [m for m in read_jsonl(result.run_dir / "metrics.jsonl") if m["kind"] == "bn_eval"]
    assert [m["step"] for m in lines] == [0, 16]
    final_eval = [m for m in result.metrics if m["kind"] == "eval" and m["split"] == "test"][-1]
    # The observer's running-statistics accuracy is fit's own eval of the final state.
    assert lines[-1]["running_acc"] == pytest.approx(final_eval["acc"], abs=1e-6) and lines[-1]["batch8_n"] == 352
    traj = read_npz(result.run_dir / "trajectories.npz")
    assert list(traj["norm_inputs/steps"]) == [0, 16] and traj["norm_inputs/norm1"].shape == (2, 8, 32)


def test_errors(model):
    module, variables = model
    args = (module, TRAIN.images[:20], TEST.images[:10], TEST.labels[:10], TRAIN.mean, TRAIN.std)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        BNEvaluation(*args, every=0, population_batch_size=4)
    for b in (1, 21, True):
        with pytest.raises(ValueError, match=r"population_batch_size must be an int in \[2, 20\]"):
            BNEvaluation(*args, every=1, population_batch_size=b)
    with pytest.raises(ValueError, match="test batch sizes must be ints >= 2"):
        BNEvaluation(*args, every=1, population_batch_size=4, test_batch_sizes=(1, 8))
    with pytest.raises(ValueError, match="non-empty split"):
        BNEvaluation(module, TRAIN.images[:20], TEST.images[:0], TEST.labels[:0], TRAIN.mean, TRAIN.std, every=1, population_batch_size=4)
    probe = jnp.zeros((4, 8, 8, 1))
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        NormInputs(module, probe, every=0)
    with pytest.raises(ValueError, match="is now called 'batch'"):
        NormInputs(module, probe, every=1, bn_mode="train")
    with pytest.raises(ValueError, match="no norm layer named"):
        NormInputs(module, probe, every=1, layers=("norm7",))(types.SimpleNamespace(variables=variables))
