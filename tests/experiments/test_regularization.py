"""The regularization study (``experiments/regularization.py``): the lecture's formulas
(weight decay as a shrink, dropout's scale, its mean and its eval identity) against
closed forms, the scale invariance behind the effective learning rate, the quick study
end to end, divergence, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import regularization as reg
from jaxnorm.models import get_model
from jaxnorm.train import create_state, make_optimizer, make_train_step
from jaxnorm.objective import cross_entropy


def _init(module, tx, x):
    # Jitted: eager JAX compiles every primitive on its own, seconds on a small CPU.
    return jax.jit(lambda key: create_state(key, module, tx, x[:1]))(jax.random.PRNGKey(0))


def _one_step(module, tx, state, x, y, weight_decay_in_loss=0.0):
    """The state after one step of the library's train step on the batch (x, y) (no
    normalization: mean 0, std 1; perm = identity, so the batch is all of x)."""
    c = x.shape[-1]
    step = make_train_step(module, tx, batch_size=len(y), mean=np.zeros(c), std=np.ones(c), weight_decay=weight_decay_in_loss)
    return jax.jit(step)(state, (x, y), jnp.arange(len(y)), 0, 0, 0)[0]


def test_weight_decay_step_is_a_shrink_then_a_gradient_step_closed_form():
    """A linear softmax model (mlp of depth 1: logits = xW + b), plain SGD with
    kernel_weight_decay λ: W' = (1 − ηλ) W − η ∇_W CE, b' = b − η ∇_b CE (b not decayed),
    with the cross-entropy gradient in closed form, ∇_W = Xᵀ(softmax(XW + b) − Y)/n, in
    float64. Float32 step vs float64 formula: entries O(0.1-1), atol 1e-6."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    lr, lam = 0.3, 0.2
    module = get_model("mlp", norm="vanilla", num_classes=3, depth=1)
    tx = reg.make_sgd(lr)
    state = reg.with_weight_decay(_init(module, tx, x), lam)
    new = _one_step(module, tx, state, jnp.asarray(x), jnp.asarray(y))
    w = np.asarray(state.params["dense1"]["kernel"], np.float64)
    b = np.asarray(state.params["dense1"]["bias"], np.float64)
    z = x.astype(np.float64) @ w + b
    soft = np.exp(z - z.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    residual = (soft - np.eye(3)[y]) / len(y)
    np.testing.assert_allclose(new.params["dense1"]["kernel"], (1 - lr * lam) * w - lr * x.T.astype(np.float64) @ residual, atol=1e-6)
    np.testing.assert_allclose(new.params["dense1"]["bias"], b - lr * residual.sum(axis=0), atol=1e-6)


def test_weight_decay_in_the_optimizer_equals_the_l2_penalty_for_sgd():
    """With BatchNorm (γ, β learned, not decayed): decay in the optimizer (this study) and
    0.5 λ Σ‖W‖² in the loss (``TrainConfig.weight_decay``) give the same SGD step, and
    both equal (1 − ηλ) w − η ∇CE on every kernel and w − η ∇CE on γ, β and biases
    (∇CE by jax.grad of the training-mode objective). Float32 rounding: rtol 1e-5."""
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 6))
    y = jnp.arange(8) % 4
    lr, lam = 0.1, 0.05
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=4, depth=3, width=5)
    tx, plain_sgd = reg.make_sgd(lr), make_optimizer(lr)
    state = reg.with_weight_decay(_init(module, tx, x), lam)
    via_tx = _one_step(module, tx, state, x, y)
    via_loss = _one_step(module, plain_sgd, state.replace(opt_state=plain_sgd.init(state.params)), x, y, weight_decay_in_loss=lam)

    def ce(params):
        logits, _ = module.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(cross_entropy(logits, y))

    grads = jax.jit(jax.grad(ce))(state.params)
    decayed = set()
    for path, w in jax.tree_util.tree_leaves_with_path(state.params):
        name = "/".join(str(k.key) for k in path)
        g = _at(grads, path)
        shrink = 1 - lr * lam if name.endswith("kernel") else 1.0
        decayed |= {name} if shrink != 1 else set()
        want = shrink * np.asarray(w) - lr * np.asarray(g)
        np.testing.assert_allclose(_at(via_tx.params, path), want, rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(_at(via_loss.params, path), want, rtol=1e-5, atol=1e-7, err_msg=name)
    assert decayed == {"dense1/kernel", "dense2/kernel", "dense3/kernel"}


def _at(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def _capture_dropout(module, variables, x, train, keys=None):
    """``(inputs, outputs)`` of the model's (first) dropout layer: one pass (eval), or
    one per key, stacked (train)."""

    def run(key):
        seen = {}

        def grab(next_fun, args, kwargs, ctx):
            out = next_fun(*args, **kwargs)
            if isinstance(ctx.module, nn.Dropout) and ctx.method_name == "__call__" and "in" not in seen:
                seen["in"], seen["out"] = args[0], out
            return out

        with nn.intercept_methods(grab):
            logits = module.apply(variables, x, train=train, rngs={"dropout": key} if train else {})
        return seen["in"], seen["out"], logits

    if not train:
        return jax.jit(lambda: run(None))()
    return jax.jit(jax.vmap(run))(keys)


def test_dropout_scales_kept_units_keeps_the_mean_and_is_the_identity_at_eval():
    """The lecture's dropout: each unit is 0 with probability p, else input / (1 − p) —
    exactly the float32 quotient. Over K = 4000 keys the mean of each unit matches its
    input within 5 standard errors (σ = |a| √(p/((1 − p)K))), the kept fraction is
    1 − p within 5 binomial standard errors, and the logits (linear after the dropout
    of a depth-2 MLP) average to the eval-mode logits within 5 standard errors. At eval
    the dropout layer returns its input and the net equals the dropout-free net."""
    p, k = 0.3, 4000
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    module = get_model("mlp", norm="vanilla", num_classes=3, depth=2, width=16, dropout_rate=p)
    variables = jax.jit(lambda key: module.init(key, x, train=False))(jax.random.PRNGKey(1))
    ins, outs, logits = _capture_dropout(module, variables, x, True, jax.random.split(jax.random.PRNGKey(2), k))
    a, out = np.asarray(ins[0]), np.asarray(outs)
    np.testing.assert_array_equal(np.asarray(ins), np.broadcast_to(a, ins.shape))  # the input does not depend on the key
    kept = out != 0
    # Exactly the float32 a / (1 − p), or a · (1/(1 − p)) where XLA turned the division
    # by a constant into a multiplication (one rounding more).
    keep = np.float32(1 - p)
    quotient, product = (np.broadcast_to(v, out.shape)[kept] for v in (a / keep, a * (np.float32(1) / keep)))
    assert np.all((out[kept] == quotient) | (out[kept] == product))
    np.testing.assert_allclose(out[kept], quotient, rtol=1.2e-7)
    active = a != 0  # ReLU zeros give 0 either way
    frac = kept[:, active].mean()
    assert abs(frac - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / (k * active.sum()))
    se = np.abs(a) * math.sqrt(p / ((1 - p) * k))
    assert np.all(np.abs(out.mean(axis=0) - a) <= 5 * se + 1e-6)
    eval_logits = jax.jit(lambda v: module.apply(v, x, train=False))(variables)
    logits = np.asarray(logits)
    assert np.all(np.abs(logits.mean(axis=0) - eval_logits) <= 5 * logits.std(axis=0) / math.sqrt(k) + 1e-6)

    ev_in, ev_out, _ = _capture_dropout(module, variables, x, False)
    np.testing.assert_array_equal(ev_out, ev_in)
    plain = get_model("mlp", norm="vanilla", num_classes=3, depth=2, width=16)
    np.testing.assert_array_equal(eval_logits, jax.jit(lambda v: plain.apply(v, x, train=False))(variables))


def test_pre_bn_weights_are_scale_invariant_and_the_observer_records_their_norms():
    """In a BN MLP the bias-free layers (dense1, dense2) feed BatchNorm: scaling W by c
    leaves the training-mode output unchanged (up to BN's ε: atol 1e-4) and divides the
    gradient by c (rtol 1e-3) -- why SGD moves their direction at η/‖W‖². The output
    layer has a bias and is not scale-invariant; a vanilla MLP has no such layer. The
    observer's norms are the kernels' Frobenius norms."""
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
    y = jnp.arange(16) % 3
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=3, width=6)
    variables = jax.jit(lambda key: module.init(key, x, train=False))(jax.random.PRNGKey(1))
    params = variables["params"]
    assert reg.scale_invariant_layers(params) == ["dense1", "dense2"]
    vanilla = get_model("mlp", norm="vanilla", num_classes=3, depth=3, width=6)
    assert reg.scale_invariant_layers(jax.eval_shape(lambda: vanilla.init(jax.random.PRNGKey(1), x, train=False))["params"]) == []

    def loss(params):
        logits, _ = module.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(cross_entropy(logits, y)), logits

    c = 3.0
    scale = lambda layer: {**params, layer: {**params[layer], "kernel": c * params[layer]["kernel"]}}
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, logits), g = value_and_grad(params)
    (_, logits_c), g_c = value_and_grad(scale("dense1"))
    np.testing.assert_allclose(logits_c, logits, atol=1e-4)
    np.testing.assert_allclose(g_c["dense1"]["kernel"], g["dense1"]["kernel"] / c, rtol=1e-3, atol=1e-6)
    # The output layer is not scale-invariant: scaling it changes the logits.
    assert not np.allclose(value_and_grad(scale("dense3"))[0][1], logits, atol=1e-2)

    observer = reg.WeightNorms(5, reg.scale_invariant_layers(params))
    got = jax.jit(lambda p: observer(types.SimpleNamespace(params=p)))(params)  # the observer reads state.params only
    assert set(got) == {"dense1", "dense2", "dense3"} and observer.annotations == {"scale_invariant": ["dense1", "dense2"]}
    for layer, v in got.items():
        assert float(v) == pytest.approx(np.linalg.norm(np.asarray(params[layer]["kernel"])), rel=1e-6)


def test_quick_study_writes_records_plots_and_summary(tmp_path):
    """The quick study with BN only (the vanilla model runs the same code; one norm keeps
    the test within its time budget) and a third λ = 1e4 that diverges on purpose: with
    η = 0.1 every step multiplies the kernels by 1 − ηλ = −999, so the loss overflows
    within a few steps -- the runs beside it (the same program) go on."""
    reg.main(["--quick", "--norms", "bn_gamma_beta", "--weight-decays", "0", "0.01", "10000", "--results", str(tmp_path)])
    cfg = dataclasses.replace(reg.RegularizationConfig().quick(), norms=("bn_gamma_beta",), weight_decays=(0.0, 0.01, 1e4))
    root = tmp_path / "regularization" / "digits-quick"
    lines = {}
    for p in cfg.dropout_rates:
        for wd in cfg.weight_decays:
            run = root / reg.run_name("bn_gamma_beta", wd, p, 0)
            config = json.loads((run / "config.json").read_text())
            assert (config["norm"], config["weight_decay"], config["dropout_rate"], config["seed"]) == ("bn_gamma_beta", wd, p, 0)
            lines[(wd, p)] = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for (wd, p), recs in lines.items():
        norms = [l for l in recs if l["kind"] == "weight_norms"]
        # Runs of one seed start from the same weights (paired comparisons).
        assert norms[0] == lines[(0.0, 0.0)][0] and norms[0]["step"] == 0 and norms[0]["scale_invariant"] == ["dense1", "dense2"]
        if wd == 1e4:
            assert recs[-1]["kind"] == "divergence" and "non-finite" in recs[-1]["reason"] and recs[-1]["step"] < cfg.steps
            assert not any(l["kind"] == "eval" for l in recs)
            continue
        assert [l["step"] for l in norms] == list(range(0, cfg.steps + 1, cfg.record_every))
        assert all(l[k] > 0 for l in norms for k in ("dense1", "dense2", "dense3"))
        train = [l for l in recs if l["kind"] == "train"]
        assert [l["step"] for l in train] == list(range(cfg.record_every, cfg.steps + 1, cfg.record_every))
        evals = {l["split"]: l for l in recs if l["kind"] == "eval"}
        assert (evals["train"]["n"], evals["test"]["n"]) == (cfg.train_subset, 359)
        assert all(0 <= e["acc"] <= 1 and math.isfinite(e["loss"]) for e in evals.values())
    # Weight decay shrinks every kernel relative to the paired λ = 0 run.
    end = lambda wd: [l for l in lines[(wd, 0.0)] if l["kind"] == "weight_norms"][-1]
    assert all(end(0.01)[k] < end(0.0)[k] for k in ("dense1", "dense2", "dense3"))
    plots = root / "plots"
    for png in ("gap.png", "grid.png", "weight_norms.png"):
        assert (plots / png).stat().st_size > 10_000
    summary = (plots / "summary.md").read_text()
    assert summary.count(" | 1/1 |") == 4 and "| bn_gamma_beta | 10000 | 0.5 | - | - | - | - | - | - | 0/1 |" in summary
    assert "(1 − ηλ)" in summary and "η/‖W‖²" in summary and "| bn_gamma_beta | p 0 → 0.5 |" in summary
    assert "- bn_gamma_beta, dropout: p = 0.5: accuracy gap " in summary

    # The report is a function of the stored files (what --plot-only reads; not redrawn
    # here to keep the test within its budget).
    assert reg.summary_markdown(cfg, reg._stored(root, cfg)) == summary


def test_aggregate_and_effective_lr():
    def records(train_acc, test_acc, norms):
        lines = [{"kind": "weight_norms", "step": 10 * i, "scale_invariant": ["dense1"], "dense1": v, "dense2": 1.0} for i, v in enumerate(norms)]
        return lines + [
            {"kind": "eval", "split": "train", "acc": train_acc, "loss": 0.1},
            {"kind": "eval", "split": "test", "acc": test_acc, "loss": 0.5},
        ]

    runs = [records(1.0, 0.9, [2.0, 3.0]), records(1.0, 0.8, [2.0, 5.0]), [{"kind": "divergence", "step": 3, "reason": "x"}]]
    s = reg.aggregate(runs)
    assert s["finished"] == 2
    assert s["test_acc"] == pytest.approx((0.85, 0.05)) and s["acc_gap"] == pytest.approx((0.15, 0.05))
    assert s["loss_gap"] == pytest.approx((0.4, 0.0))
    assert math.isnan(reg.aggregate([])["test_acc"][0])
    cfg = reg.RegularizationConfig(weight_decays=(0.0, 0.1), learning_rate=0.5)
    results = {("bn", 0.0, 0.0, 0): runs[0], ("bn", 0.0, 0.0, 1): runs[1], ("bn", 0.1, 0.0, 0): records(1.0, 0.9, [2.0, 1.0])}
    eff = reg.effective_lr(cfg, results, "bn")
    assert eff[(0.0, "dense1")] == pytest.approx({"init": 2.0, "end": 4.0, "shrink": 2.0, "lr_init": 0.125, "lr_end": (0.5 / 9 + 0.5 / 25) / 2})
    # One recorded step of 10: pure decay would give (1 − 0.5 · 0.1)^10 · 2.
    assert eff[(0.1, "dense1")] == pytest.approx({"init": 2.0, "end": 1.0, "shrink": 0.95**10 * 2.0, "lr_init": 0.125, "lr_end": 0.5})
    assert reg.effective_lr(cfg, results, "vanilla") == {}
    # Paired by seed: seed 0 has a partner at λ = 0.1, seed 1 has none; the diverged run
    # pairs with nothing.
    results[("bn", 0.1, 0.0, 2)] = records(1.0, 0.9, [1.0])
    results[("bn", 0.0, 0.0, 2)] = runs[2]
    assert reg.paired_change(results, "bn", (0.0, 0.0), (0.1, 0.0), "test_acc") == (pytest.approx(0.0), 0.0, 1)
    assert reg.paired_change(results, "bn", (0.0, 0.0), (0.5, 0.0), "test_acc")[2] == 0
    assert [reg._verdict(c) for c in ((-0.02, 0.01), (0.02, 0.01), (-0.01, 0.01), (0.0, 0.0))] == ["smaller", "larger", "no clear change", "no clear change"]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"norms": ()}, "at least one"),
        ({"norms": ("bn", "weird")}, "unknown norm"),
        ({"weight_decays": ()}, "weight_decays"),
        ({"weight_decays": (0.0, -1e-3)}, "weight_decays"),
        ({"weight_decays": (0.0, 0.0)}, "distinct"),
        ({"dropout_rates": (0.0, 1.0)}, "dropout_rates"),
        ({"dropout_rates": (float("nan"),)}, "dropout_rates"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 1}, "batch_size"),
        ({"train_subset": 8, "batch_size": 16}, "train_subset"),
        ({"steps": 25, "record_every": 10}, "multiple of record_every"),
        ({"record_every": 0}, "record_every"),
        ({"seeds": (0, 0)}, "seeds"),
        ({"seeds": ()}, "seeds"),
    ],
)
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        reg.RegularizationConfig(**changes)


def test_bad_command_line_and_observer_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        reg.main(["--config", "nope", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="dropout_rates"):
        reg.main(["--quick", "--dropout-rates", "1.5", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="no stored runs"):
        reg.main(["--plot-only", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="every"):
        reg.WeightNorms(0)
