"""κ_X (Defs. 3.4, 3.5, eq. 3.16) against an explicit loop of per-example gradients.

Reference: for each of the first m examples, the weight gradient h_W of that example
alone (jax.grad of its CE in eval mode) at x_i and at x_i + δ_k, the ratio
‖h_W(x_i + δ_k) − h_W(x_i)‖·‖x_i‖ / (‖δ_k‖·‖h_W(x_i)‖), its max over k, then the mean
over i. δ has norm 0.5 against ‖x_i‖ ≈ 8: gradient changes of a few % of the gradient,
so float32 cancellation costs ~1.5 digits (measured: up to 7e-6 relative); RTOL = 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import input_condition_number, input_perturbations
from jaxnorm.diagnostics.input_conditioning import input_perturbation_samples
from tests.diagnostics.helpers import B, SHAPE, batch, bn_inputs, ce, flat64, group_moments, model

RTOL = 1e-4
# Jitted: eagerly, every random op and gather would compile on its own.
samples = jax.jit(input_perturbation_samples, static_argnums=(0, 3), static_argnames=("eta", "m"))
M = 5  # examples averaged over (< B: the perturbed batch keeps examples M.. unchanged)
X, Y = batch(1)
_r = np.random.default_rng(4)
DELTAS = _r.normal(size=(3,) + SHAPE)
DELTAS = jnp.asarray(0.5 * DELTAS / np.linalg.norm(DELTAS.reshape(3, -1), axis=1)[:, None, None, None], jnp.float32)


def reference(name, mode):
    """(mean, per-example values, (3, M) ratios) of κ_X by the loop in the module docstring. ``frozen``:
    every example normalized by the statistics of the unperturbed batch (computed here
    in float64 from the BN layers' captured inputs)."""
    module, v = model(name)

    @jax.jit
    def h_w(stats, xi, yi):
        def loss(p):
            vv = {"params": p, **({"batch_stats": stats} if stats else {})}
            return ce(module.apply(vv, xi[None], train=False), yi[None])[0]

        return jax.grad(loss)(v["params"])

    if mode == "frozen":
        stats = {k: {"mean": jnp.float32(group_moments(a, None)[0][0]), "var": jnp.float32(group_moments(a, None)[1][0])}
                 for k, a in bn_inputs(module, v, X).items()}
    else:
        stats = v.get("batch_stats", {})
    per, ratio_rows = [], []
    for i in range(M):
        h0 = flat64(h_w(stats, X[i], Y[i]))
        ratios = [
            np.linalg.norm(flat64(h_w(stats, X[i] + d, Y[i])) - h0) * np.linalg.norm(np.asarray(X[i], np.float64))
            / (np.linalg.norm(np.asarray(d, np.float64)) * np.linalg.norm(h0))
            for d in DELTAS
        ]
        per.append(max(ratios))
        ratio_rows.append(ratios)
    return np.mean(per), np.array(per), np.array(ratio_rows).T


def library(name, mode):
    """κ_X with the given δ: (mean, per-example values), jitted."""
    module, v = model(name)
    run = jax.jit(
        lambda v: input_condition_number(
            module, v, X, Y, key=jax.random.PRNGKey(5), bn_mode=mode, m=M, perturbations=DELTAS, per_example=True
        )
    )
    return jax.device_get(run(v))


@pytest.mark.parametrize("name,mode", [("mlp_vanilla", "running"), ("mlp_bn", "frozen")])
def test_given_perturbations_match_the_loop(name, mode):
    """Running mode on a vanilla MLP, and frozen mode on a BN MLP: the perturbed examples
    are still normalized by the statistics of the unperturbed batch."""
    mean, per = library(name, mode)
    want_mean, want_per, want_ratios = reference(name, mode)
    assert per.shape == (M,)
    np.testing.assert_allclose(per, want_per, rtol=RTOL)
    np.testing.assert_allclose(mean, want_mean, rtol=RTOL)
    if mode == "frozen":
        # One set of draws per example (what 'interpolation' produces): example i's k-th
        # draw is DELTAS[(k + i) % 3], so its ratio is the loop's ratio of that δ at x_i.
        module, v = model(name)
        order = (np.arange(3)[:, None] + np.arange(M)[None]) % 3
        per_example = DELTAS[order]  # (3, M, ...)
        got = jax.jit(lambda v: input_condition_number(
            module, v, X, Y, key=jax.random.PRNGKey(5), bn_mode=mode, m=M, perturbations=per_example, ratios=True))(v)
        assert got.shape == (3, M)
        np.testing.assert_allclose(got, np.take_along_axis(want_ratios, order, axis=0), rtol=RTOL)


def test_input_perturbations_are_signed_normalized_input_gradients():
    """Def. 3.5: δ_k = η ζ_k h_X(x_j)/‖h_X(x_j)‖ for n distinct examples j: norm η each."""
    eta = 1e-3
    hx = jnp.asarray(np.random.default_rng(6).normal(size=(B,) + SHAPE) * np.arange(1, B + 1)[:, None, None, None], jnp.float32)
    d = input_perturbations(jax.random.PRNGKey(0), hx, 4, eta=eta)
    assert d.shape == (4,) + SHAPE
    flat, unit = np.asarray(d, np.float64).reshape(4, -1), flat64(hx, 1)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), eta, rtol=1e-5)
    c = flat @ unit.T / eta
    j = np.argmax(np.abs(c), axis=1)
    assert len(set(j)) == 4
    np.testing.assert_allclose(flat, eta * np.sign(c[np.arange(4), j])[:, None] * unit[j], atol=1e-6 * eta)


def test_uniform_input_perturbations_have_the_batchs_moments():
    """'uniform': elements U(μ − √3σ, μ + √3σ)·η with μ, σ of the batch's elements. With
    4 × 64 = 256 draws the sample mean is within 5 standard errors (5σ/16) of μ, the
    std within 15% of σ (a uniform sample's relative std error is √((kurtosis − 1)/4N)
    = √(0.8/1024) ≈ 2.8%: 15% is > 5 of them), and every element inside the interval."""
    x = jnp.asarray(0.7 + 2.0 * np.random.default_rng(8).normal(size=(B,) + SHAPE), jnp.float32)
    eta = 1e-3
    d = np.asarray(samples("uniform", jax.random.PRNGKey(1), x, 4, eta=eta), np.float64) / eta
    mu, sigma = float(np.mean(np.asarray(x, np.float64))), float(np.std(np.asarray(x, np.float64)))
    assert d.shape == (4,) + SHAPE
    assert abs(d.mean() - mu) < 5 * sigma / np.sqrt(d.size)
    np.testing.assert_allclose(d.std(), sigma, rtol=0.15)
    assert d.min() >= mu - np.sqrt(3) * sigma - 1e-4 and d.max() <= mu + np.sqrt(3) * sigma + 1e-4


def test_interpolation_perturbations_point_to_another_example():
    """'interpolation': δ_{k,i} = η (x_j − x_i) for some j ≠ i (found by search here), and
    over 6 × 5 draws more than one j per example occurs."""
    eta = 1e-2
    xn = np.asarray(X, np.float64)
    d = np.asarray(samples("interpolation", jax.random.PRNGKey(2), X, 6, eta=eta, m=5), np.float64)
    assert d.shape == (6, 5) + SHAPE
    for i in range(5):
        diffs = eta * (xn - xn[i])  # (B, ...): candidate j
        err = np.abs(d[:, i][:, None] - diffs[None]).reshape(6, B, -1).max(axis=2)  # (6, B)
        j = np.argmin(err, axis=1)
        assert np.all(err[np.arange(6), j] < 1e-6) and np.all(j != i)
        assert len(set(j)) > 1


def test_errors():
    module, v = model("mlp_vanilla")
    k = jax.random.PRNGKey(0)
    call = lambda **kw: jax.eval_shape(lambda v: input_condition_number(module, v, X, Y, key=k, **kw), v)
    with pytest.raises(ValueError, match="use bn_mode='frozen'"):
        call(bn_mode="batch")
    with pytest.raises(ValueError, match="must be one of"):
        call(bn_mode="exact")
    for m in (0, B + 1):
        with pytest.raises(ValueError, match=r"m must lie in \[1, 8\]"):
            call(bn_mode="running", m=m)
    with pytest.raises(ValueError, match="perturbations must be"):
        call(bn_mode="running", perturbations=DELTAS[:, :, :, 0])
    hx = jnp.ones((B,) + SHAPE)
    for n in (0, B + 1):
        with pytest.raises(ValueError, match="1 <= n <= b"):
            input_perturbations(k, hx, n)
    with pytest.raises(ValueError, match="eta must be > 0"):
        input_perturbations(k, hx, 2, eta=0.0)
    for kind, kw, match in (("gaussian", {}, "unknown input perturbation 'gaussian'"),
                            ("targeted", {}, "need the input gradients"),
                            ("uniform", {"n": 0}, "n >= 1"), ("uniform", {"eta": -1.0}, "eta must be > 0"),
                            ("interpolation", {"m": B + 1}, r"m must lie in \[1, 8\]")):  # fmt: skip
        kw = {"n": 2, **kw}
        with pytest.raises(ValueError, match=match):
            input_perturbation_samples(kind, k, X, kw.pop("n"), **kw)
    with pytest.raises(ValueError, match="at least two"):
        input_perturbation_samples("interpolation", k, X[:1], 2)
