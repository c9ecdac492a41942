"""The engine's options beyond the thesis defaults, against optax and closed forms:
AdamW with cosine decay and warmup, the MSE loss, full-batch gradient descent,
hyperparameters as data in fit_many, and the divergence factor.

Tolerances: where two different compiled programs compute the same float32 sums (a
fit_many program vs the single runs, the engine's step vs a hand-written step) their
results may differ by reassociation. Per step the largest sum here has ≤ 256 terms
(full batch of 256, or the 64×32 layer's fan-in 64), so one step's relative rounding is
at most ~256·2⁻²⁴ ≈ 1.5e-5 in the worst case and ~√256·2⁻²⁴ ≈ 1e-6 typically; over the
few steps compared, 1e-4 of each leaf's scale stays well above it, while a wrong
learning rate, order of examples or weight decay moves parameters by > 1e-2 of scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics import hessian_loss_fn
from jaxnorm.models import get_model
from jaxnorm.objective import LOSSES, get_loss, squared_error
from jaxnorm.train import TrainConfig, fit, fit_many, make_optimizer
from jaxnorm.train.optim import hyperparams
from tests.train.helpers import tiny_config

REL = 1e-4  # see the module docstring


def rel_diff(a, b, floor: float = 0.0) -> float:
    """Largest |a - b| over every leaf, relative to that leaf's largest |b|, or to
    ``floor`` times the largest |b| of all leaves where that is larger (for leaves that
    hold rounding noise only)."""
    scale = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in jax.tree.leaves(b))
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), floor * scale, 1e-30)))
    return out


def _params_and_grads():
    r = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(r.normal(size=(5, 3)), jnp.float32), "bias": jnp.asarray(r.normal(size=3), jnp.float32)}}
    grads = [jax.tree.map(lambda a: jnp.asarray(r.normal(size=a.shape), jnp.float32), params) for _ in range(12)]
    return params, grads


def _run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def test_adamw_cosine_warmup_equals_optax():
    """make_optimizer('adamw', cosine, warmup) = optax.adamw over optax's
    warmup_cosine_decay_schedule with decay masked to the kernels: the same operations
    in the same order (measured equal bit for bit; a few ulps allowed)."""
    params, grads = _params_and_grads()
    ours = make_optimizer(3e-2, optimizer="adamw", weight_decay=0.1, schedule="cosine", warmup_steps=4, total_steps=12)
    ref = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, 3e-2, 4, 12),
        weight_decay=0.1,
        mask=lambda p: {"dense": {"kernel": True, "bias": False}},
    )
    p1, s1 = _run(ours, params, grads)
    p2, _ = _run(ref, params, grads)
    assert rel_diff(p1, p2) <= 8 * 2.0**-24 * len(grads)
    h = hyperparams(s1)
    assert float(h["learning_rate"]) == pytest.approx(3e-2) and float(h["l2"]) == 0.0  # adamw: decoupled
    assert float(h["weight_decay"]) == pytest.approx(0.1)


def test_sgd_linear_schedule_and_warmup_are_the_closed_form_multipliers():
    """SGD without momentum: update_t = -lr·m(t)·g with m the warmup ramp t/k for t < k,
    then a linear decay from 1 to `end` over the remaining steps."""
    params, grads = _params_and_grads()
    k, total, end, lr = 3, 12, 0.25, 0.5
    tx = make_optimizer(lr, schedule="linear", schedule_kwargs={"end": end}, warmup_steps=k, total_steps=total)
    state = tx.init(params)
    for t, g in enumerate(grads):
        u, state = tx.update(g, state, params)
        m = t / k if t < k else 1 + (end - 1) * min((t - k) / (total - k), 1.0)
        np.testing.assert_allclose(u["dense"]["kernel"], -lr * m * np.asarray(g["dense"]["kernel"]), rtol=1e-6, atol=1e-7)


def test_mse_is_half_the_squared_distance_to_one_hot():
    logits = jnp.asarray([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0]])
    y = jnp.asarray([2, 0])
    expected = 0.5 * np.array([1 + 4 + 0.25, 1 + 0 + 9])
    np.testing.assert_allclose(squared_error(logits, y), expected, rtol=1e-7)
    assert set(LOSSES) == {"ce", "mse"} and get_loss("mse") is squared_error
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")


def test_full_batch_mse_fit_equals_gradient_descent_by_hand(tmp_path):
    """loss='mse', full_batch=True, plain SGD: every step is w ← w − η ∇ mean_i ½‖f(x_i) − e_y‖²
    over the whole subset, which this test computes with jax.grad of its own loss."""
    cfg = tiny_config(
        tmp_path, norm="vanilla", loss="mse", full_batch=True, momentum=0.0, learning_rate=0.05, epochs=5,
        train_subset=128, checkpoint_every_epochs=0, log_every_steps=1,
    )
    out = fit(cfg, observers=[], progress=False)
    assert out.step == 5 and [m["steps"] for m in out.metrics if m["kind"] == "train"] == [1] * 5

    ds = load("digits", "train")
    x = normalize(jnp.asarray(ds.images[:128]), ds.mean, ds.std)
    y = jnp.asarray(ds.labels[:128])
    module = get_model("mlp", norm="vanilla", num_classes=ds.num_classes, depth=3, width=32)
    params = module.init(jax.random.split(jax.random.PRNGKey(0))[0], x[:1], train=False)["params"]
    loss = lambda p: jnp.mean(0.5 * jnp.sum((module.apply({"params": p}, x, train=False) - jax.nn.one_hot(y, 10)) ** 2, axis=-1))
    first = float(loss(params))
    for _ in range(5):
        params = jax.tree.map(lambda w, g: w - 0.05 * g, params, jax.grad(loss)(params))
    assert rel_diff(out.state.params, params) < REL
    assert out.metrics[[m["kind"] for m in out.metrics].index("train")]["loss"] == pytest.approx(first, rel=1e-5)


def test_fit_many_over_learning_rates_and_weight_decays_equals_the_single_runs(tmp_path):
    """Runs differing in learning rate and weight decay (data in the optimizer state)
    train as one program, compiled once, and each equals the same run alone."""
    base = tiny_config(tmp_path, epochs=1, checkpoint_every_epochs=0)
    settings = [(0.1, 0.0), (0.02, 0.0), (0.1, 0.05)]
    together = fit_many(
        [base.replace(name=f"lr{lr}_wd{wd}", learning_rate=lr, weight_decay=wd) for lr, wd in settings], observers=[], progress=False
    )
    assert together[0].traces["train_step"] == 1
    for (lr, wd), t in zip(settings, together):
        alone = fit(base.replace(name=f"alone_lr{lr}_wd{wd}", learning_rate=lr, weight_decay=wd), observers=[], progress=False)
        assert rel_diff(t.state.params, alone.state.params) < REL
        assert float(hyperparams(t.state.opt_state)["learning_rate"]) == pytest.approx(lr)
    # The settings really differ: far more than the tolerance apart.
    assert rel_diff(together[0].state.params, together[1].state.params) > 100 * REL
    assert rel_diff(together[0].state.params, together[2].state.params) > 100 * REL


def test_fit_many_refuses_runs_with_and_without_momentum(tmp_path):
    base = tiny_config(tmp_path)
    with pytest.raises(ValueError, match="momentum buffer is structure"):
        fit_many([base.replace(name="a", momentum=0.9), base.replace(name="b", momentum=0.0)], progress=False)


def test_adamw_cosine_fit_trains(tmp_path):
    cfg = tiny_config(tmp_path, optimizer="adamw", momentum=0.0, learning_rate=1e-2, schedule="cosine", warmup_steps=4, weight_decay=1e-2, epochs=3)
    out = fit(cfg, observers=[], progress=False)
    losses = [m["loss"] for m in out.metrics if m["kind"] == "train"]
    assert out.status == "finished" and losses[-1] < 0.5 * losses[0]


def test_divergence_factor_stops_a_run_whose_finite_loss_explodes(tmp_path):
    cfg = tiny_config(tmp_path, norm="vanilla", loss="mse", learning_rate=5.0, momentum=0.0, divergence_factor=10.0, epochs=3, log_every_steps=1)
    out = fit(cfg, observers=[], progress=False)
    assert out.status == "diverged" and "loss above 10 x its first step's" in out.divergence["reason"]
    line = [m for m in out.metrics if m["kind"] == "divergence"][0]
    assert line["step"] == out.divergence["step"]


def test_hessian_loss_fn_takes_the_loss_by_name():
    ds = load("digits", "train")
    x = normalize(jnp.asarray(ds.images[:16]), ds.mean, ds.std)
    y = jnp.asarray(ds.labels[:16])
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=10, depth=2, width=8)
    v = module.init(jax.random.PRNGKey(0), x[:2], train=False)
    logits, _ = module.apply(v, x, train=True, mutable=["batch_stats"])
    expected = float(jnp.mean(0.5 * jnp.sum((logits - jax.nn.one_hot(y, 10)) ** 2, axis=-1)))
    assert float(hessian_loss_fn(module, v, x, y, loss="mse")(v["params"])) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"loss": "hinge"}, "unknown TrainConfig.loss"),
        ({"optimizer": "lion"}, "unknown TrainConfig.optimizer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"warmup_steps": -2}, "warmup_steps"),
        ({"divergence_factor": 0.5}, "divergence_factor"),
        ({"eval_bn_mode": "train"}, "'train' is now called 'batch'"),
        ({"l2_scope": "gamma"}, r"TrainConfig.l2_scope must be one of \['weights', 'all_but_bias'\]"),
    ],
)
def test_new_config_fields_are_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_configs_stored_with_the_old_eval_mode_name_still_load():
    d = TrainConfig().to_dict()
    d["eval_mode"] = d.pop("eval_bn_mode")
    d["eval_mode"] = "batch"
    assert TrainConfig.from_dict(d).eval_bn_mode == "batch"


def test_a_rerun_skips_ended_runs_even_when_one_diverged_before_its_first_checkpoint(tmp_path):
    """One run diverges at once (no checkpoint), the other finishes: a second fit_many of
    the same group trains nothing (both are read back, with their statuses) instead of
    refusing to resume runs whose latest checkpoints differ."""
    base = tiny_config(tmp_path, norm="vanilla", loss="mse", momentum=0.0, divergence_factor=10.0, epochs=2, log_every_steps=1)
    group = [base.replace(name="ok", learning_rate=0.05), base.replace(name="boom", learning_rate=50.0)]
    first = fit_many(group, observers=[], progress=False)
    assert [r.status for r in first] == ["finished", "diverged"]
    again = fit_many(group, observers=[], progress=False)
    assert [r.status for r in again] == ["finished", "diverged"] and again[0].traces == {}
    assert again[0].metrics == first[0].metrics and again[1].divergence == first[1].divergence
    assert rel_diff(again[0].state.params, first[0].state.params) == 0.0


def test_an_unfinished_run_of_a_group_trains_on_while_the_ended_ones_are_read_back(tmp_path):
    """Mixed ablation variants train as the superset; if one run's folder is removed, the
    rerun trains that run alone but still in the superset's structure, and equals the
    run trained in the group."""
    import shutil

    base = tiny_config(tmp_path, epochs=1)
    group = [base.replace(name=v, norm=v) for v in ("vanilla", "bn_gamma_beta")]
    first = fit_many(group, observers=[], progress=False)
    shutil.rmtree(first[1].run_dir)
    again = fit_many(group, observers=[], progress=False)
    assert again[0].traces == {} and again[1].traces["train_step"] == 1
    # In the superset the BN run keeps the pre-BN biases, whose gradient is zero up to
    # rounding: their values (~1e-9) are rounding noise that a program of one run need not
    # reproduce bit for bit (measured: 5e-9 apart). They are compared on the scale of the
    # run's parameters (1e-3 of its largest: 5e-6 against REL), every other leaf on its own.
    assert rel_diff(again[1].state.params, first[1].state.params, floor=1e-3) < REL


def test_l2_scope_reaches_the_loop_and_is_part_of_the_run_identity(tmp_path):
    """DeepOBS-PyTorch's scope adds BN's γ to the L2 term: at the first step (γ = 1 in the
    two norm layers of 32 features) the objective exceeds the weights-only one by exactly
    λ·0.5·64, the data terms being equal (same initial parameters). A run folder of one
    scope is refused for the other; a config.json from before the field reads 'weights'."""
    from jaxnorm.train.run_folder import BOOKKEEPING_FIELDS, RunExistsError

    lam = 0.01
    first = {}
    for scope in ("weights", "all_but_bias"):
        cfg = tiny_config(tmp_path, max_steps=1, log_every_steps=1, weight_decay=lam, l2_scope=scope, name=scope, checkpoint_every_epochs=0)
        (m,) = [m for m in fit(cfg, progress=False).metrics if m["kind"] == "train"]
        first[scope] = m
    assert first["weights"]["ce"] == first["all_but_bias"]["ce"]
    extra = (first["all_but_bias"]["loss"] - first["all_but_bias"]["ce"]) - (first["weights"]["loss"] - first["weights"]["ce"])
    # Each loss is a float32 O(1) value (rounding ~1e-7); the difference is 0.32.
    assert extra == pytest.approx(lam * 0.5 * 64, abs=1e-5)
    assert "l2_scope" not in BOOKKEEPING_FIELDS
    with pytest.raises(RunExistsError, match="l2_scope: stored 'weights', new 'all_but_bias'"):
        fit(tiny_config(tmp_path, max_steps=1, log_every_steps=1, weight_decay=lam, l2_scope="all_but_bias", name="weights", checkpoint_every_epochs=0), progress=False)
    old = TrainConfig().to_dict()
    del old["l2_scope"]
    assert TrainConfig.from_dict(old).l2_scope == "weights"
