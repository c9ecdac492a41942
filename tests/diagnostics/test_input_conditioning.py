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
from tests.diagnostics.helpers import B, SHAPE, batch, bn_inputs, ce, flat64, group_moments, model

RTOL = 1e-4
M = 5  # examples averaged over (< B: the perturbed batch keeps examples M.. unchanged)
X, Y = batch(1)
_r = np.random.default_rng(4)
DELTAS = _r.normal(size=(3,) + SHAPE)
DELTAS = jnp.asarray(0.5 * DELTAS / np.linalg.norm(DELTAS.reshape(3, -1), axis=1)[:, None, None, None], jnp.float32)


def reference(name, mode):
    """(mean, per-example values) of κ_X by the loop in the module docstring. ``frozen``:
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
    per = []
    for i in range(M):
        h0 = flat64(h_w(stats, X[i], Y[i]))
        ratios = [
            np.linalg.norm(flat64(h_w(stats, X[i] + d, Y[i])) - h0) * np.linalg.norm(np.asarray(X[i], np.float64))
            / (np.linalg.norm(np.asarray(d, np.float64)) * np.linalg.norm(h0))
            for d in DELTAS
        ]
        per.append(max(ratios))
    return np.mean(per), np.array(per)


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
    want_mean, want_per = reference(name, mode)
    assert per.shape == (M,)
    np.testing.assert_allclose(per, want_per, rtol=RTOL)
    np.testing.assert_allclose(mean, want_mean, rtol=RTOL)


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
