"""``Instruments`` (the instrument panel): every quantity against an independent
computation from materialized per-example gradients and a dense Hessian on a tiny BN
MLP, the carry's distances inside ``fit``, the presets, and every documented error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.diagnostics import per_example_grads
from jaxnorm.diagnostics.effective_rank import gaussian_stable_rank
from jaxnorm.diagnostics.hessian import hessian_loss_fn, hutchinson_trace, power_iteration
from jaxnorm.diagnostics.masking import flatten
from jaxnorm.observers import INSTRUMENT_PRESETS, Instruments
from jaxnorm.train import build_model, create_state, fit, make_optimizer
from tests.train.helpers import tiny_config

B = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("inst"), model_kwargs={"depth": 3, "width": 12})
    ds = load("digits", "train")
    module = build_model(cfg, ds.num_classes)
    state = create_state(jax.random.PRNGKey(3), module, make_optimizer(0.1), jnp.asarray(ds.images[:1]))
    pool = (ds.images[:64], ds.labels[:64])
    obs = Instruments(module, *pool, mean=ds.mean, std=ds.std, preset="full", batch_size=B, trace_probes=8, eig_iters=12)
    record, carry = jax.jit(obs)(state, obs.init_carry(state))
    return cfg, ds, module, state, obs, jax.device_get(record), carry


def test_every_quantity_equals_its_definition_on_the_observed_batch(setup):
    _, ds, module, state, obs, rec, carry = setup
    assert set(rec) == set(INSTRUMENT_PRESETS["full"]) and "loss" not in rec
    x, y = obs._batch(state.step)  # the batch the observer drew (a function of seed and step)
    g = np.asarray(flatten(per_example_grads(module, state.variables, x, y, bn_mode="frozen"), batch_dims=1), np.float64)
    b = len(g)
    mean = g.mean(0)
    m2 = mean @ mean
    proj = g @ mean
    k = g @ g.T
    cos = k / np.sqrt(np.outer(np.diag(k), np.diag(k)))
    ref = {
        "grad_norm": np.sqrt(m2),
        "norm_test": np.sqrt(np.sum(np.var(g, 0, ddof=1)) / (b * m2)),
        "inner_product_test": np.sqrt(np.var(proj, ddof=1) / (b * m2**2)),
        "orthogonality_test": np.sqrt(np.sum((g - np.outer(proj / m2, mean)) ** 2) / (b - 1) / (b * m2)),
        "per_example_diversity": np.trace(k) / k.sum(),
        "coherence": k.sum() / (b * np.trace(k)),
        "confusion": max(-cos[np.triu_indices(b, 1)].min(), 0.0),
        "relative_rank": (np.trace(k) / np.linalg.eigvalsh(k)[-1]) / gaussian_stable_rank(b, g.shape[1]),
        "mean_gsnr": np.mean(mean**2 / (np.var(g, 0) + 1e-5)),
    }
    # float32 pipeline against float64 references of the same gradients: rounding of sums
    # over b = 16 examples and ~1e3 coordinates, relative ~1e-5 at worst; 1e-3 leaves
    # headroom (confusion is a cosine near its minimum, ratios of O(1) numbers).
    for name, value in ref.items():
        assert float(rec[name]) == pytest.approx(value, rel=1e-3, abs=1e-6), name
    assert float(rec["update_size"]) == float(rec["distance"]) == 0.0  # the carry is the state itself
    # "loss" (by name only): the mean cross-entropy of the batch, BN on its statistics as in 'frozen'.
    only_loss = Instruments(module, ds.images[:64], ds.labels[:64], mean=ds.mean, std=ds.std, quantities=("loss",), batch_size=B)
    logits = module.apply(state.variables, x, train=True, mutable=["batch_stats"])[0]
    ce = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(b), np.asarray(y)])
    assert float(only_loss(state, carry)[0]["loss"]) == pytest.approx(ce, rel=1e-5)

    # The Hessian quantities: training's batch-mode loss on the same batch, the library's
    # solvers (tested against dense Hessians in tests/diagnostics) with the observer's key,
    # here in their lax loops -- the observer unrolls them: the same iterations, to rounding.
    loss = hessian_loss_fn(module, state.variables, x, y, bn_mode="batch")
    key = jax.random.fold_in(jax.random.PRNGKey(obs.seed + 1), state.step)
    trace = hutchinson_trace(loss, state.params, key=key, num_samples=obs.trace_probes, probes_per_call=obs.trace_probes, loop="lax")
    top = power_iteration(loss, state.params, key=key, num_iters=obs.eig_iters, tol=0.0, loop="lax")
    assert float(rec["hessian_trace"]) == pytest.approx(float(trace.estimate), rel=1e-4)
    assert float(rec["top_eigenvalue"]) == pytest.approx(float(top.eigenvalue), rel=1e-4)


def test_in_fit_the_carry_measures_update_and_distance(tmp_path):
    cfg = tiny_config(tmp_path, model_kwargs={"depth": 3, "width": 12}, epochs=1, momentum=0.0, checkpoint_every_epochs=0, eval_splits=())
    ds = load("digits", "train")
    obs = Instruments(build_model(cfg, ds.num_classes), ds.images[:64], ds.labels[:64], mean=ds.mean, std=ds.std, every=2, batch_size=B)
    result = fit(cfg, observers=[obs], progress=False)
    lines = [m for m in result.metrics if m.get("kind") == "instruments"]
    assert [m["step"] for m in lines] == [0, 2, 4, 6, 8]  # observers also see the initial state
    assert set(INSTRUMENT_PRESETS["economy"]) <= set(lines[0])
    assert lines[0]["update_size"] == lines[0]["distance"] == 0.0
    # Between observations the update is two SGD steps; at step 2 it is the distance from θ_0.
    assert lines[1]["update_size"] == pytest.approx(lines[1]["distance"], rel=1e-6)
    assert all(m["distance"] > 0 and m["update_size"] > 0 and np.isfinite(m["norm_test"]) for m in lines[1:])
    assert all(b["distance"] <= a["distance"] + b["update_size"] * (1 + 1e-5) for a, b in zip(lines, lines[1:]))  # triangle inequality


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "first"}, "unknown instrument preset"),
    ({"quantities": ("grad_norm", "alpha")}, "unknown instrument quantity"),
    ({"bn_mode": "batch"}, "bn_mode must be one of"),
    ({"every": 0}, "every must be >= 1"),
    ({"batch_size": 1}, "batch_size"),
    ({"batch_size": 65}, "batch_size"),
    ({"trace_probes": 0, "batch_size": B}, "trace_probes"),
    ({"loss": "hinge", "batch_size": B}, "hinge"),
])  # fmt: skip
def test_bad_arguments_are_clear_errors(setup, kwargs, message):
    _, ds, module, *_ = setup
    with pytest.raises(ValueError, match=message):
        Instruments(module, ds.images[:64], ds.labels[:64], mean=ds.mean, std=ds.std, **kwargs)
