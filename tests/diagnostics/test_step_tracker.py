"""The in-training κ_W estimate (thesis §2.2) kept by the optimizer, and its observer.

On a small non-quadratic loss, three updates through ``make_optimizer(...,
track_step_conditioning=True)`` with momentum (so the step is not just −lr·g): after
each, the stored values equal the formula evaluated here in float64 on the gradients and
weights of the last two steps, κ_t = ‖g_t − g_{t−1}‖·‖w_{t−1}‖/(‖w_t − w_{t−1}‖·‖g_{t−1}‖).
float32 norms of 7 numbers and a difference of gradients ~10% apart: RTOL = 1e-5.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm.diagnostics import find_step_conditioning, track_step_conditioning
from jaxnorm.observers import StepConditioning
from jaxnorm.train.optim import make_optimizer

RTOL = 1e-5
_r = np.random.default_rng(0)
A = jnp.asarray(_r.normal(size=(7, 7)) / 3, jnp.float32)
P0 = {"a": jnp.asarray(_r.normal(size=3), jnp.float32), "b": jnp.asarray(_r.normal(size=(2, 2)), jnp.float32)}


def loss(p):
    v = jnp.concatenate([p["a"], p["b"].ravel()])
    return 0.5 * jnp.sum((A @ v) ** 2) + 0.1 * jnp.sum(v**4)


def flat(t):
    return np.concatenate([np.asarray(l, np.float64).ravel() for l in jax.tree.leaves(t)])


@pytest.fixture(scope="module")
def trajectory():
    """Three steps with and without the tracker: params, gradients, updates, tracker states."""
    tracked, plain = make_optimizer(0.05, momentum=0.9, track_step_conditioning=True), make_optimizer(0.05, momentum=0.9)
    st, sp = tracked.init(P0), plain.init(P0)
    grad, update, update_plain = jax.jit(jax.grad(loss)), jax.jit(tracked.update), jax.jit(plain.update)
    params, grads, updates, updates_plain, states = [P0], [], [], [], []
    for _ in range(3):
        g = grad(params[-1])
        u, st = update(g, st, params[-1])
        up, sp = update_plain(g, sp, params[-1])
        grads.append(g), updates.append(u), updates_plain.append(up), states.append(st)
        params.append(optax.apply_updates(params[-1], u))
    return types.SimpleNamespace(params=params, grads=grads, updates=updates, updates_plain=updates_plain, states=states)


def test_updates_are_unchanged_by_the_tracker(trajectory):
    for u, up in zip(trajectory.updates, trajectory.updates_plain):
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(up)):
            np.testing.assert_array_equal(a, b)


def test_first_step_records_no_kappa(trajectory):
    """Before a second gradient there is no step to compare: κ and the cosine are NaN, the
    gradient norm is recorded."""
    s = find_step_conditioning(trajectory.states[0])
    assert int(s.count) == 1 and np.isnan(s.kappa) and np.isnan(s.cosine)
    np.testing.assert_allclose(s.grad_norm, np.linalg.norm(flat(trajectory.grads[0])), rtol=RTOL)


@pytest.mark.parametrize("t", [1, 2])
def test_kappa_cosine_and_norm_from_the_last_two_steps(trajectory, t):
    """After update t+1: κ from (g_{t−1}, g_t, w_{t−1}, w_t), the cosine of g_t and g_{t−1},
    and ‖g_t‖, all by hand in float64."""
    g0, g1 = flat(trajectory.grads[t - 1]), flat(trajectory.grads[t])
    w0, w1 = flat(trajectory.params[t - 1]), flat(trajectory.params[t])
    n = np.linalg.norm
    s = find_step_conditioning(trajectory.states[t])
    assert int(s.count) == t + 1
    assert n(w1 - w0) > 0 and n(g1 - g0) > 1e-2 * n(g0)  # a real step, a real gradient change
    np.testing.assert_allclose(s.kappa, n(g1 - g0) * n(w0) / (n(w1 - w0) * n(g0)), rtol=RTOL)
    np.testing.assert_allclose(s.cosine, g1 @ g0 / (n(g1) * n(g0)), rtol=RTOL)
    np.testing.assert_allclose(s.grad_norm, n(g1), rtol=RTOL)


def test_observer_reads_the_tracker(trajectory):
    """StepConditioning returns the tracker's latest values under the documented names."""
    obs = StepConditioning(2)
    assert (obs.every, obs.name, obs.sink) == (2, "step_conditioning", "metrics")
    out = obs(types.SimpleNamespace(opt_state=trajectory.states[2]))
    s = find_step_conditioning(trajectory.states[2])
    assert set(out) == {"kappa_sgd", "cosine_sgd", "grad_norm"}
    np.testing.assert_array_equal([out["kappa_sgd"], out["cosine_sgd"], out["grad_norm"]], [s.kappa, s.cosine, s.grad_norm])


def test_errors(trajectory):
    plain = make_optimizer(0.05)
    with pytest.raises(ValueError, match="track_step_conditioning=True"):
        find_step_conditioning(plain.init(P0))
    with pytest.raises(ValueError, match="track_step_conditioning=True"):
        StepConditioning()(types.SimpleNamespace(opt_state=plain.init(P0)))
    with pytest.raises(ValueError, match="every must be >= 1"):
        StepConditioning(0)
    tx = track_step_conditioning()
    with pytest.raises(ValueError, match="needs params"):
        tx.update(trajectory.grads[0], tx.init(P0))


def test_same_batch_form_is_the_ratio_of_one_batchs_gradients(trajectory):
    """same_batch_step_conditioning(loss, w_t, w_{t−1}): Def. 2.5 with ω = the last step and
    both gradients of the same loss, by hand in float64 (RTOL as above); NaN for no step."""
    from jaxnorm.diagnostics import same_batch_step_conditioning

    n = np.linalg.norm
    w0, w1 = trajectory.params[1], trajectory.params[2]
    g0, g1 = flat(jax.grad(loss)(w0)), flat(jax.grad(loss)(w1))
    kappa, cosine = jax.jit(lambda a, b: same_batch_step_conditioning(loss, a, b))(w1, w0)
    f0, f1 = flat(w0), flat(w1)
    np.testing.assert_allclose(kappa, n(g1 - g0) * n(f0) / (n(f1 - f0) * n(g0)), rtol=RTOL)
    np.testing.assert_allclose(cosine, g1 @ g0 / (n(g1) * n(g0)), rtol=RTOL)
    # On this one loss the consecutive-step κ the tracker kept is the same quantity.
    np.testing.assert_allclose(kappa, find_step_conditioning(trajectory.states[2]).kappa, rtol=RTOL)
    assert all(np.isnan(v) for v in same_batch_step_conditioning(loss, w0, w0))
