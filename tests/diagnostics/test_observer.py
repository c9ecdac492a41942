"""``GradientConditioning`` (every metric, jitted) and both diagnostics observers in ``fit``.

The metric values themselves are checked against references in the other files of this
folder; here: the observer composes them under ``jax.jit`` into finite values with the
documented keys, deterministically per step, and ``fit`` writes their lines to
``metrics.jsonl``. Tiny BN MLP (depth 3, width 8) on 8x8 digits, batches of 4.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.observers import METRICS, ConditioningSweep, GradientConditioning, StepConditioning
from jaxnorm.train import TrainConfig, build_model, create_state, fit, make_optimizer

DIGITS = load("digits", "train")
POOL = (DIGITS.images[:32], DIGITS.labels[:32])


def config(tmp_path) -> TrainConfig:
    return TrainConfig(
        model="mlp",
        model_kwargs={"depth": 3, "width": 8},
        dataset="digits",
        batch_size=16,
        max_steps=4,
        eval_splits=("test",),
        eval_subset=64,
        train_subset=128,
        checkpoint_every_epochs=0,
        results_dir=str(tmp_path),
        study="t",
        name="r",
        track_step_conditioning=True,
    )


def observer(module, **kw) -> GradientConditioning:
    # n_x = 1: on a CPU the library unrolls the κ_X passes, one per input perturbation.
    base = dict(mean=DIGITS.mean, std=DIGITS.std, batch_size=4, num_batches=2, num_input_perturbations=1, input_examples=3)
    return GradientConditioning(module, *POOL, **{**base, **kw})


@pytest.fixture(scope="module")
def module():
    return build_model(config("unused"), DIGITS.num_classes)


def test_every_metric_is_finite_under_jit(module):
    """All of METRICS plus the sample sizes, finite, from one jitted call (with targeted
    weight perturbations and a 50% mask: the paths the defaults do not take); the same
    state gives the same values (the batches are keyed by the step), the next step
    other ones."""
    obs = observer(module, weight_perturbation="targeted", mask_fraction=0.5, hessian_order=4)
    assert obs.metrics == METRICS and (obs.name, obs.sink, obs.every) == ("conditioning", "metrics", 50)
    state = create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), POOL[0][:1])
    run = jax.jit(lambda st: obs(st))
    out = jax.device_get(run(state))
    assert set(out) == {*METRICS, "n_batches", "batch_size"}
    bad = {k: v for k, v in out.items() if not np.isfinite(v)}
    assert not bad, bad
    assert out["n_batches"] == 2 and out["batch_size"] == 4
    assert 0 < out["coherence"] <= 1 and out["confusion"] >= 0 and out["kappa_w"] > 0
    again = jax.device_get(run(state))
    assert again == out
    later = jax.device_get(run(state.replace(step=state.step + 1)))
    assert later["coherence"] != out["coherence"]


def test_the_hessian_forms_are_the_library_functions_on_the_observers_batch(module):
    """kappa_w_hessian / kappa_w_directional equal hessian_condition_number /
    directional_condition_number on the batch the observer draws (its first batch,
    training's BN), and the directional form is at most Def. 2.4's (‖Hĝ‖ <= the Lanczos
    estimate of ‖H‖, which takes the max with ‖Hĝ‖ by construction)."""
    from jaxnorm.diagnostics.hessian_conditioning import directional_condition_number, hessian_condition_number
    from jaxnorm.diagnostics.per_example import batch_loss_fn

    obs = observer(module, metrics=("kappa_w_hessian", "kappa_w_directional"), hessian_order=4)
    state = create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), POOL[0][:1])
    out = jax.device_get(jax.jit(obs)(state))

    @jax.jit  # one compiled program (op by op, each HVP of the Lanczos loop would compile alone)
    def direct(st):
        xs, ys, _ = obs._batches(st.step)
        loss = batch_loss_fn(module, st.variables, xs[0], ys[0], bn_mode="batch")
        return hessian_condition_number(loss, st.params, order=4).kappa, directional_condition_number(loss, st.params)

    want_h, want_d = (float(v) for v in direct(state))
    # Same functions, compiled as part of another program: float32 reassociation only.
    # ‖H v‖ sums a few hundred products per coordinate; 1e-4 relative is ~10x over n·u.
    np.testing.assert_allclose(out["kappa_w_hessian"], want_h, rtol=1e-4)
    np.testing.assert_allclose(out["kappa_w_directional"], want_d, rtol=1e-4)
    assert 0 < out["kappa_w_directional"] <= out["kappa_w_hessian"] * (1 + 1e-4)
    with pytest.raises(ValueError, match="hessian_order"):
        observer(module, hessian_order=0)


def test_fit_writes_conditioning_and_step_conditioning_lines(module, tmp_path):
    """A 4-step fit with GradientConditioning (one cheap metric: every metric was compiled
    above) and StepConditioning, both every 2 steps: lines at steps 0 (before training),
    2 and 4. κ_SGD is NaN at step 0 (no step yet), then finite and positive."""
    obs = observer(module, metrics=("diversity",), every=2)
    step_obs = StepConditioning(2, module, *POOL, mean=DIGITS.mean, std=DIGITS.std, batch_size=4)
    result = fit(config(tmp_path), observers=[obs, step_obs], progress=False)
    assert result.status == "finished" and result.step == 4
    cond = [m for m in result.metrics if m["kind"] == "conditioning"]
    steps = [m for m in result.metrics if m["kind"] == "step_conditioning"]
    assert [m["step"] for m in cond] == [0, 2, 4] == [m["step"] for m in steps]
    for m in cond:
        assert set(m) == {"kind", "step", "diversity", "n_batches", "batch_size"}
        assert m["diversity"] > 0 and (m["n_batches"], m["batch_size"]) == (2, 4)
    assert math.isnan(steps[0]["kappa_sgd"]) and math.isnan(steps[0]["kappa_same_batch"])  # no step yet
    for m in steps[1:]:
        assert set(m) == {"kind", "step", "kappa_sgd", "cosine_sgd", "grad_norm", "kappa_same_batch", "cosine_same_batch"}
        assert m["kappa_sgd"] > 0 and -1 <= m["cosine_sgd"] <= 1 and m["grad_norm"] > 0
        assert m["kappa_same_batch"] > 0 and -1 <= m["cosine_same_batch"] <= 1


def test_the_sweep_on_the_recorded_batch(module):
    """ConditioningSweep (a thin caller of kappa_w_sweep/kappa_x_sweep, whose values are
    tested against dense references in test_hessian_conditioning.py) sweeps the batch and
    κ_X key the conditioning observer uses: its entry at the observer's η is the recorded
    kappa_w/kappa_x, and the plateau summary follows the documented rule."""
    from jaxnorm.observers.conditioning_sweep import eta_key

    etas = (1e-4, 1e-3, 1e-2)
    obs = observer(module, metrics=("kappa_w", "kappa_x"), eta=1e-3)
    sweep = ConditioningSweep(obs, etas, min_plateau=2)
    assert (sweep.name, sweep.sink, sweep.every, sweep.annotations["etas"]) == ("conditioning_sweep", "metrics", 50, list(etas))
    state = create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), POOL[0][:1])
    got, rec = jax.device_get(jax.jit(lambda st: (sweep(st), obs(st)))(state))
    # The observer scales ±ḡ/‖ḡ‖_∞ by η once, the sweep by η after building it at η = 1,
    # and batches the perturbed gradients differently: one rounding of ω (u|ω|) plus
    # reassociation, whose relative effect on ḡ(w + ω) − ḡ(w) scales as 1/η -- measured
    # 1.4e-4 at η = 1e-4 against the unbatched kernel, so 2e-3 at η = 1e-3 is > 100x headroom.
    np.testing.assert_allclose(got[eta_key("kappa_w", 1e-3)], rec["kappa_w"], rtol=2e-3)
    np.testing.assert_allclose(got[eta_key("kappa_x", 1e-3)], rec["kappa_x"], rtol=1e-4)
    assert got["kappa_w_limit"] > 0
    want_w = np.array([got[eta_key("kappa_w", e)] for e in etas])
    want_x = np.array([got[eta_key("kappa_x", e)] for e in etas])
    for q, values in (("kappa_w", want_w), ("kappa_x", want_x)):
        start, stop = int(got[f"{q}_plateau_start"]), int(got[f"{q}_plateau_stop"])
        run = values[start:stop]
        if stop - start >= 2:  # the documented summary: the run's median, agreeing within rtol
            assert run.max() <= 1.05 * run.min() and got[f"{q}_plateau"] == pytest.approx(np.median(run), rel=1e-6)
        else:
            assert math.isnan(got[f"{q}_plateau"])
    assert got["kappa_w_contains_limit"] in (0.0, 1.0)
    for kw, match in ((dict(etas=(1e-3,)), "at least two"), (dict(etas=(1e-2, 1e-3)), "ascending"),
                      (dict(rtol=0.0), "rtol"), (dict(min_plateau=4), "min_plateau"), (dict(every=75), "multiple")):
        with pytest.raises(ValueError, match=match):
            ConditioningSweep(obs, **{"etas": etas, **kw})
    with pytest.raises(ValueError, match="without mask_fraction"):
        ConditioningSweep(observer(module, metrics=("kappa_w",), mask_fraction=0.5), etas)


def test_step_conditioning_pool_errors(module):
    with pytest.raises(ValueError, match="together"):
        StepConditioning(2, module)
    with pytest.raises(ValueError, match="mean and std"):
        StepConditioning(2, module, *POOL)
    with pytest.raises(ValueError, match="batch_size <= pool size"):
        StepConditioning(2, module, *POOL, mean=DIGITS.mean, std=DIGITS.std, batch_size=64)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(metrics=("kappa_w", "sharpness")), r"unknown conditioning metric\(s\) \['sharpness'\]"),
        (dict(metrics=()), "unknown conditioning metric"),
        (dict(bn_mode="batch"), "must be one of \\['frozen', 'running'\\]"),
        (dict(weight_perturbation="gaussian"), "unknown weight perturbation 'gaussian'"),
        (dict(every=0), "every >= 1"),
        (dict(batch_size=1), "batch_size >= 2"),
        (dict(num_batches=0), "num_batches >= 1"),
        (dict(num_batches=1), "num_batches must be >= 2"),
        (dict(num_input_perturbations=0), r"num_input_perturbations must lie in \[1, batch_size=4\]"),
        (dict(num_input_perturbations=5), r"num_input_perturbations must lie in \[1, batch_size=4\]"),
        (dict(input_examples=0), r"input_examples must lie in \[1, batch_size=4\]"),
        (dict(input_examples=5), r"input_examples must lie in \[1, batch_size=4\]"),
        (dict(batch_size=8, num_batches=5, input_examples=8), "the pool holds 32 examples; num_batches \\* batch_size = 40"),
    ],
)
def test_constructor_errors(module, kwargs, match):
    with pytest.raises(ValueError, match=match):
        observer(module, **kwargs)


def test_one_batch_is_enough_without_batch_metrics(module):
    """num_batches=1 is refused only when confusion or diversity are asked for."""
    assert observer(module, num_batches=1, metrics=("coherence",)).num_batches == 1


# The constructor validates the perturbation settings, so a bad one fails before fit
# creates the run folder and compiles (not at the first observation).
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_weight_perturbations=3),  # limited_targeted has two directions
        dict(num_weight_perturbations=0),
        dict(weight_perturbation="targeted", num_weight_perturbations=5),  # > batch_size
        dict(eta=0.0),
    ],
    ids=["limited_targeted_n3", "n0", "targeted_n_gt_batch", "eta0"],
)
def test_constructor_rejects_bad_perturbation_sizes(module, kwargs):
    with pytest.raises(ValueError):
        observer(module, metrics=("kappa_w",), **kwargs)
