"""The regularization study (``experiments/regularization.py``) on the engine: the
lecture's formulas against closed forms -- one step of the engine's SGD with weight decay
λ (held in the optimizer state) is the shrink (1 − ηλ)W − η∇ (float64 reference), on the
kernels only; dropout's scale, its mean and its eval identity --, the study's groups (one
fit_many program per (norm, p) over every (λ, seed), equal to the single runs to float32
rounding), the quick study end to end with a diverging run, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import regularization as reg
from jaxnorm.analysis import regularization as analysis
from jaxnorm.analysis.plotting import embed_figures
from jaxnorm.models import get_model
from jaxnorm.objective import cross_entropy
from jaxnorm.study import run_study
from jaxnorm.train import create_state, fit, make_optimizer, make_train_step
from jaxnorm.train.optim import hyperparams


def _init(module, tx, x):
    # Jitted: eager JAX compiles every primitive on its own, seconds on a small CPU.
    return jax.jit(lambda key: create_state(key, module, tx, x[:1]))(jax.random.PRNGKey(0))


def _one_step(module, tx, state, x, y):
    """The state after one step of the engine's train step on the batch (x, y): λ read
    from the optimizer state (no normalization: mean 0, std 1; perm = identity, so the
    batch is all of x)."""
    c = x.shape[-1]
    step = make_train_step(module, tx, batch_size=len(y), mean=np.zeros(c), std=np.ones(c))
    return jax.jit(step)(state, (x, y), jnp.arange(len(y)), 0, 0, 0)[0]


def test_weight_decay_step_is_a_shrink_then_a_gradient_step_closed_form():
    """A linear softmax model (mlp of depth 1: logits = xW + b), the engine's plain SGD
    with ``weight_decay=λ`` (data in the optimizer state, the objective's 0.5 λ‖W‖²):
    W' = (1 − ηλ) W − η ∇_W CE, b' = b − η ∇_b CE (b not decayed), with the
    cross-entropy gradient in closed form, ∇_W = Xᵀ(softmax(XW + b) − Y)/n, in float64.
    Tolerance: a float32 gradient entry sums n = 16 terms |x r/n| ≤ 3/16 (|x| ≤ 3
    here, |r| ≤ 1), so its rounding is ≤ 16·2⁻²⁴·3 ≈ 3e-6, times η = 0.3: ≤ 1e-6, plus
    ~1e-7 from W itself (|W| < 1): atol 2e-6 (a wrong λ moves W by ηΔλ|W| ≫ 1e-3)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    assert np.abs(x).max() <= 3
    y = rng.integers(0, 3, size=16).astype(np.int32)
    lr, lam = 0.3, 0.2
    module = get_model("mlp", norm="vanilla", num_classes=3, depth=1)
    tx = make_optimizer(lr, weight_decay=lam)
    state = _init(module, tx, x)
    assert float(hyperparams(state.opt_state)["l2"]) == pytest.approx(lam)
    new = _one_step(module, tx, state, jnp.asarray(x), jnp.asarray(y))
    w = np.asarray(state.params["dense1"]["kernel"], np.float64)
    b = np.asarray(state.params["dense1"]["bias"], np.float64)
    z = x.astype(np.float64) @ w + b
    soft = np.exp(z - z.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    residual = (soft - np.eye(3)[y]) / len(y)
    np.testing.assert_allclose(new.params["dense1"]["kernel"], (1 - lr * lam) * w - lr * x.T.astype(np.float64) @ residual, rtol=0, atol=2e-6)
    np.testing.assert_allclose(new.params["dense1"]["bias"], b - lr * residual.sum(axis=0), rtol=0, atol=2e-6)


def test_weight_decay_shrinks_the_kernels_only_with_batchnorm():
    """With BatchNorm (γ, β learned, not decayed): the engine's step with λ in the
    optimizer state is (1 − ηλ) w − η ∇CE on every kernel and w − η ∇CE on γ, β and
    biases (∇CE by jax.grad of the training-mode cross-entropy, another program: float32
    reassociation of sums of ≤ 8 terms, rtol 1e-5 of each entry plus atol 1e-7)."""
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 6))
    y = jnp.arange(8) % 4
    lr, lam = 0.1, 0.05
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=4, depth=3, width=5)
    tx = make_optimizer(lr, weight_decay=lam)
    state = _init(module, tx, x)
    new = _one_step(module, tx, state, x, y)

    def ce(params):
        logits, _ = module.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(cross_entropy(logits, y))

    grads = jax.jit(jax.grad(ce))(state.params)
    decayed = set()
    for path, w in jax.tree_util.tree_leaves_with_path(state.params):
        name = "/".join(str(k.key) for k in path)
        shrink = 1 - lr * lam if name.endswith("kernel") else 1.0
        decayed |= {name} if shrink != 1 else set()
        want = shrink * np.asarray(w) - lr * np.asarray(_at(grads, path))
        np.testing.assert_allclose(_at(new.params, path), want, rtol=1e-5, atol=1e-7, err_msg=name)
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


QUICK = dataclasses.replace(reg.SETUPS["digits"].quick(), norms=("bn_gamma_beta",), weight_decays=(0.0, 0.01, 1e4))


def _rel_diff(a, b) -> float:
    """Largest |a − b| over every leaf, relative to that leaf's largest |b|."""
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
    return out


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick study with BN only (the vanilla model runs the same code; one norm keeps
    the test within its time budget) and a third λ = 1e4 that diverges on purpose: with
    η = 0.1 every step multiplies the kernels by 1 − ηλ = −999, so the loss overflows
    within a few steps -- the runs beside it (the same program) go on."""
    results = tmp_path_factory.mktemp("reg")
    out = run_study(reg.STUDY, QUICK, seeds=QUICK.seeds, results=str(results), progress=False)
    return results, out


def test_one_program_per_norm_and_dropout_rate_over_every_weight_decay_and_seed(tmp_path):
    """The default grid: 2 norms x 4 p = 8 groups, each of the 4 λ x 3 seeds, differing
    only in weight_decay and seed (so fit_many accepts them as one program)."""
    setup = reg.SETUPS["digits"]
    groups = reg.STUDY.groups(setup, setup.seeds, tmp_path / "regularization" / "digits")
    assert len(groups) == 8 and all(g.strategy == "vmap" and len(g.configs) == 12 for g in groups)
    for g in groups:
        dicts = [c.to_dict() for c in g.configs]
        varying = {k for d in dicts for k, v in d.items() if v != dicts[0][k]}
        assert varying == {"weight_decay", "seed", "name"}
        assert {(c.weight_decay, c.seed) for c in g.configs} == {(w, s) for w in setup.weight_decays for s in setup.seeds}
        assert all(c.momentum == 0 and c.optimizer == "sgd" and c.max_steps == 2000 for c in g.configs)
    assert {(g.configs[0].norm, g.configs[0].model_kwargs.get("dropout_rate", 0.0)) for g in groups} == {
        (n, p) for n in setup.norms for p in setup.dropout_rates
    }


def test_quick_study_writes_runs_plots_and_summary(quick):
    results, out = quick
    root = results / "regularization" / "digits-quick"
    assert len(out) == 6 and all(r.traces["train_step"] == 1 for r in out)  # 2 programs, compiled once each
    lines = {}
    for p in QUICK.dropout_rates:
        for wd in QUICK.weight_decays:
            run = root / reg.run_name("bn_gamma_beta", wd, p, 0)
            config = json.loads((run / "config.json").read_text())
            assert (config["norm"], config["weight_decay"], config["model_kwargs"].get("dropout_rate", 0.0), config["seed"]) == ("bn_gamma_beta", wd, p, 0)
            assert json.loads((run / "status.json").read_text())["program"] == {"runs": 3, "strategy": "vmap"}
            lines[(wd, p)] = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for (wd, p), recs in lines.items():
        norms = [l for l in recs if l["kind"] == "weight_norms"]
        # Runs of one seed start from the same weights (paired comparisons).
        assert norms[0] == lines[(0.0, 0.0)][0] and norms[0]["step"] == 0 and norms[0]["scale_invariant"] == ["dense1", "dense2"]
        if wd == 1e4:
            assert recs[-1]["kind"] == "divergence" and "non-finite" in recs[-1]["reason"] and recs[-1]["step"] < QUICK.steps
            assert not any(l["kind"] == "eval" for l in recs)
            continue
        assert [l["step"] for l in norms] == list(range(0, QUICK.steps + 1, QUICK.record_every))
        assert all(l[k] > 0 for l in norms for k in ("dense1", "dense2", "dense3"))
        evals = {l["split"]: l for l in recs if l["kind"] == "eval"}
        assert (evals["train"]["n"], evals["test"]["n"]) == (QUICK.train_subset, QUICK.train_subset)
        assert all(0 <= e["acc"] <= 1 and math.isfinite(e["loss"]) and e["step"] == QUICK.steps for e in evals.values())
    # Weight decay shrinks every kernel relative to the paired λ = 0 run.
    end = lambda wd: [l for l in lines[(wd, 0.0)] if l["kind"] == "weight_norms"][-1]
    assert all(end(0.01)[k] < end(0.0)[k] for k in ("dense1", "dense2", "dense3"))

    verdict = reg.STUDY.analyze(QUICK, root)
    assert verdict.startswith("regularization digits-quick: 4/6 runs finished; bn_gamma_beta: λ = 10000: no finished pair, p = 0.5: acc gap ")
    plots = root / "plots"
    for png in ("gap.png", "grid.png", "weight_norms.png"):
        assert (plots / png).stat().st_size > 10_000
    summary = (plots / "summary.md").read_text()
    assert summary.count(" | 1/1 |") == 4 and "| bn_gamma_beta | 10000 | 0.5 | — | — | — | — | — | — | 0/1 |" in summary
    assert "(1 − ηλ)" in summary and "η/‖W‖²" in summary and "| bn_gamma_beta | p 0 → 0.5 | 1 |" in summary
    assert "- bn_gamma_beta, dropout: p = 0.5: accuracy gap no test (n = 1), loss gap no test (n = 1)." in summary
    assert "Diverged (non-finite loss; not averaged): bn_gamma_beta_wd10000_p0.5_s0, bn_gamma_beta_wd10000_p0_s0." in summary
    # The report is a function of the stored files (what --plot-only reads).
    assert embed_figures(analysis.summary_markdown(*analysis.load_results(root)), plots) == summary


def test_the_program_over_weight_decays_equals_the_single_runs(quick, tmp_path):
    """The p = 0.5 group (λ ∈ {0, 0.01, 1e4} as one vmapped program) against λ = 0 and
    λ = 0.01 trained alone by fit (another compiled program: float32 reassociation).
    Per step the largest sum has 64 terms (the 64 inputs' fan-in; batch 16), so one
    step's relative rounding is ≤ 64·2⁻²⁴ ≈ 4e-6 worst case; over 40 steps ≤ 40 times
    that, 1.6e-4 of each leaf's scale, before any amplification by the steps; tolerance
    1e-3 (measured on an x86 CPU: 0, the programs agree bit for bit), while λ = 0 and
    0.01 end 6e-2 apart (asserted > 1e-2). The final evaluations agree to the same
    tolerance."""
    results, out = quick
    group = {r.run_dir.name: r for r in out}
    root = results / "regularization" / "digits-quick"
    for wd in (0.0, 0.01):
        cfg = reg.run_config(QUICK, root, "bn_gamma_beta", wd, 0.5, 0)
        alone = fit(cfg.replace(results_dir=str(tmp_path), study="alone"), observers=[], progress=False)
        together = group[cfg.name]
        assert _rel_diff(together.state.params, alone.state.params) < 1e-3
        assert _rel_diff(together.state.batch_stats, alone.state.batch_stats) < 1e-3
        ev = lambda r: {m["split"]: m for m in r.metrics if m["kind"] == "eval"}
        for split in ("train", "test"):
            assert ev(together)[split]["loss"] == pytest.approx(ev(alone)[split]["loss"], rel=1e-3)
    a, b = (group[reg.run_name("bn_gamma_beta", wd, 0.5, 0)].state.params for wd in (0.0, 0.01))
    assert _rel_diff(a, b) > 1e-2


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
def test_bad_setup_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        reg.RegularizationSetup(**changes)


def test_bad_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reg.main(["--config", "nope", "--results", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    for argv, match in (
        (["--quick", "--dropout-rates", "1.5"], "dropout_rates"),
        (["--quick", "--seeds", "0", "0"], "seeds must be distinct"),
        (["--plot-only"], "no stored runs"),
    ):
        assert reg.main([*argv, "--results", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err
