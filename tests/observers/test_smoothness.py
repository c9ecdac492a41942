"""The ``Smoothness`` observer and ``smoothness_probe`` (Santurkar et al. 2018, Fig. 4).

The probe against closed forms on a quadratic; the observer against the same numbers
computed here by hand (``module.apply`` at w and at w − ηg, no jaxnorm loss code) on a
tiny BN MLP, in both BN modes, with probe batches and with Norm noise; inside ``fit``:
lines every k steps; and every documented error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.observers.smoothness import Smoothness, smoothness_probe
from jaxnorm.train import build_model, create_state, fit, make_optimizer
from tests.train.helpers import tiny_config

DIGITS = load("digits", "train")
X, Y = DIGITS.images[:16], DIGITS.labels[:16]
ETAS = (0.05, 0.2, 0.8)
KEYS = {"loss", "grad_norm", "loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta_smoothness"}
# float32 on both sides, different compiled programs (vmapped vs one η at a time): loss
# and gradient sums of a few hundred terms, relative ~1e-6 each; 1e-4 relative leaves
# headroom for the gradient *differences* (‖∇L(w − ηg) − g‖ at the smallest η is a
# difference of O(1) gradients about 10x smaller than them).
RTOL = 1e-4


def test_probe_matches_closed_forms_on_a_quadratic():
    """L(w) = ½ wᵀAw: g = Aw, L(w − ηg) = ½ (w − ηg)ᵀA(w − ηg), ∇L(w − ηg) − g = −ηAg, so
    the gradient change is η‖Ag‖ and the β-smoothness ‖Ag‖/‖g‖ (≤ λ_max) for every η.
    Params as a two-leaf pytree; float32 vs float64 closed forms, relative 1e-5 (entries
    O(1), dimension 7: a few float32 roundings of 6e-8)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    a = q @ np.diag([0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0]) @ q.T
    w = rng.normal(size=7)
    etas = np.array([0.01, 0.05, 0.2])

    def loss(params):
        v = jnp.concatenate([params["a"], params["b"].reshape(-1)])
        return 0.5 * v @ jnp.asarray(a, jnp.float32) @ v

    params = {"a": jnp.asarray(w[:4], jnp.float32), "b": jnp.asarray(w[4:].reshape(3, 1), jnp.float32)}
    got = {k: float(v) for k, v in jax.jit(lambda p: smoothness_probe(loss, p, etas))(params).items()}
    g = a @ w
    moved = [0.5 * (w - e * g) @ a @ (w - e * g) for e in etas]
    change = etas * np.linalg.norm(a @ g)
    want = {
        "loss": 0.5 * w @ a @ w,
        "grad_norm": np.linalg.norm(g),
        "loss_min": min(moved),
        "loss_max": max(moved),
        "grad_change_min": change.min(),
        "grad_change_max": change.max(),
        "beta_smoothness": np.linalg.norm(a @ g) / np.linalg.norm(g),
    }
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k
    assert got["beta_smoothness"] <= 8.0 * (1 + 1e-6)


def _tiny(norm="bn_gamma_beta", **model_kwargs):
    cfg = tiny_config("unused", model_kwargs={"depth": 2, "width": 6, **model_kwargs}, norm=norm)
    module = build_model(cfg, DIGITS.num_classes)
    state = create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), jnp.asarray(X[:1]))
    # Non-trivial running statistics, so that 'running' differs from 'batch'.
    stats = jax.tree.map(lambda v: v * 1.5 + 0.1, state.batch_stats)
    return module, state.replace(batch_stats=stats, step=jnp.int32(7))


def _by_hand(module, state, batches, *, train: bool, rng=None):
    """The probe numbers with one η at a time, from ``module.apply`` and optax's loss."""
    xs = [normalize(jnp.asarray(X[i]), DIGITS.mean, DIGITS.std) for i in batches]
    ys = [jnp.asarray(Y[i]) for i in batches]

    def loss(params):
        total = 0.0
        for x, y in zip(xs, ys):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if train:
                logits, _ = module.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
            else:
                logits = module.apply(variables, x, train=False)
            total = total + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        return total / len(xs)

    flat = lambda t: np.concatenate([np.asarray(l, np.float64).ravel() for l in jax.tree.leaves(t)])
    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one program for w and every w − ηg
    value, g = value_and_grad(state.params)
    g0 = flat(g)
    losses, changes = [], []
    for eta in ETAS:
        moved = jax.tree.map(lambda p, d: p - eta * d, state.params, g)
        lv, gm = value_and_grad(moved)
        losses.append(float(lv))
        changes.append(np.linalg.norm(flat(gm) - g0))
    gn = np.linalg.norm(g0)
    return {
        "loss": float(value), "grad_norm": gn, "loss_min": min(losses), "loss_max": max(losses),
        "grad_change_min": min(changes), "grad_change_max": max(changes),
        "beta_smoothness": max(c / (e * gn) for c, e in zip(changes, ETAS)),
    }  # fmt: skip


def _check(got, want):
    assert set(got) == KEYS
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(v, rel=RTOL), k


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_observer_is_the_probe_of_the_training_loss_computed_by_hand(bn_mode):
    """One probe batch of 16 (batch mode: batch statistics at every probed w; running:
    the stored statistics), jitted, against one η at a time by hand."""
    module, state = _tiny()
    obs = Smoothness(module, X, Y, DIGITS.mean, DIGITS.std, etas=ETAS, every=3, bn_mode=bn_mode)
    got = jax.jit(obs)(state)
    _check(got, _by_hand(module, state, [slice(0, 16)], train=bn_mode == "batch", rng=jax.random.PRNGKey(0)))
    assert obs.name == "smoothness" and obs.sink == "metrics" and obs.every == 3
    assert obs.annotations == {"bn_mode": bn_mode, "probe_examples": 16, "objective": "ce"}


def test_probe_batches_average_and_noise_is_drawn_once_per_measurement():
    """Two probe batches of 8 (the loss is their mean), a model with Norm noise: the
    probe's noise key is fold_in(PRNGKey(seed), step), the same for every η; a later
    step draws other noise."""
    module, state = _tiny(norm_options={"noise_mean": 1.0, "noise_var": 2.0})
    obs = Smoothness(module, X, Y, DIGITS.mean, DIGITS.std, etas=ETAS, batch_size=8, seed=3)
    got = jax.jit(obs)(state)
    key = jax.random.fold_in(jax.random.PRNGKey(3), 7)
    _check(got, _by_hand(module, state, [slice(0, 8), slice(8, 16)], train=True, rng=key))
    later = jax.jit(obs)(state.replace(step=jnp.int32(8)))
    # Same program, same inputs but the key: any difference is the noise's (1e-3 is far
    # above rounding and far below the noise's effect on the gradient here).
    assert max(abs(float(later[k]) / float(got[k]) - 1) for k in KEYS) > 1e-3


def test_in_fit_every_k_steps(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=4, epochs=1, momentum=0.0, checkpoint_every_epochs=0, eval_splits=())
    module = build_model(cfg, DIGITS.num_classes)
    result = fit(cfg, observers=[Smoothness(module, X, Y, DIGITS.mean, DIGITS.std, etas=ETAS, every=2)], progress=False)
    lines = [m for m in result.metrics if m["kind"] == "smoothness"]
    assert [m["step"] for m in lines] == [0, 2, 4]
    for m in lines:
        assert set(m) == KEYS | {"kind", "step", "bn_mode", "probe_examples", "objective"}
        assert all(math.isfinite(m[k]) for k in KEYS)
        assert m["loss_min"] <= m["loss_max"] and m["grad_change_min"] <= m["grad_change_max"] and m["beta_smoothness"] > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"etas": ()}, "etas"),
        ({"etas": (0.1, -1.0)}, "etas"),
        ({"etas": (float("nan"),)}, "etas"),
        ({"etas": ("a",)}, "etas"),
        ({"every": 0}, "every"),
        ({"bn_mode": "eval"}, "now called 'running'"),
        ({"bn_mode": "frozen"}, "bn_mode"),
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 17}, "batch_size"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    module, _ = _tiny()
    kwargs = {"etas": ETAS, **kwargs}
    with pytest.raises(ValueError, match=match):
        Smoothness(module, X, Y, DIGITS.mean, DIGITS.std, **kwargs)


def test_mismatched_probe_set_is_refused():
    module, _ = _tiny()
    with pytest.raises(ValueError, match="differ in length"):
        Smoothness(module, X, Y[:8], DIGITS.mean, DIGITS.std, etas=ETAS)
