"""Weight-space metrics (κ_W, Def. 2.5; Def. 4.1) and the perturbation samplers
(Defs. 2.6, 2.7, random), on losses whose gradients are known in closed form.

For the quadratic ``L(w) = ½ wᵀAw`` the gradient is ``Aw``, so
``ḡ(w + ω) − ḡ(w) = Aω`` exactly and κ_W's ratio for ω is
``‖Aω‖‖w‖ / (‖ω‖‖Aw‖)``, at most ``λ_max‖w‖/‖Aw‖`` (ω along the top eigenvector).
The library differentiates in float32: gradient differences of size ~0.1 against
gradients of size ~3 lose ~1.5 digits to cancellation (measured: 4e-7 relative), so
RTOL = 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import (
    random_mask,
    sgd_step_condition_number,
    weight_perturbations,
    weight_space_metrics,
)

RTOL = 1e-5

# Jitted once per signature: eagerly, every lax.map and random op would compile separately.
perturb = jax.jit(weight_perturbations, static_argnums=(0, 3), static_argnames=("eta",))


def metrics(loss, w, omegas, **kw):
    return jax.jit(lambda w, om: weight_space_metrics(loss, w, om, **kw))(w, omegas)

_r = np.random.default_rng(0)
_Q, _ = np.linalg.qr(_r.normal(size=(7, 7)))
EIGS = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
A = (_Q * EIGS) @ _Q.T  # SPD, eigenvectors the columns of _Q
TOP = _Q[:, 0]
W = _r.normal(size=7)


def tree(v):
    """A flat (..., 7) array as the pytree {'a': (..., 3), 'b': (..., 2, 2)} (leaf order a, b)."""
    v = jnp.asarray(v, jnp.float32)
    return {"a": v[..., :3], "b": v[..., 3:].reshape(v.shape[:-1] + (2, 2))}


def vec(t):
    return jnp.concatenate([t["a"], t["b"].reshape(t["b"].shape[:-2] + (4,))], axis=-1)


def quadratic(t):
    v = vec(t)
    return 0.5 * v @ jnp.asarray(A, jnp.float32) @ v


def quartic(t):
    """Not quadratic: the gradient change is not linear in ω."""
    v = vec(t)
    return quadratic(t) + 0.25 * jnp.sum(v**4)


def ref_metrics(g0, gk, omegas, w):
    """κ_W and the Def. 4.1 forms in float64 from flat vectors."""
    n = np.linalg.norm
    cos = [r @ g0 / (n(r) * n(g0)) for r in gk]
    return {
        "kappa_w": max(n(gk[k] - g0) * n(w) / (n(omegas[k]) * n(g0)) for k in range(len(gk))),
        "min_cosine": min(cos),
        "weight_gradient_diversity": sum(r @ r for r in gk) / np.sum(gk.sum(0) ** 2),
        "weight_gradient_coherence": sum(g0 @ r for r in gk) / sum(r @ r for r in gk),
    }


def check(got, want, rtol=RTOL):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=rtol, err_msg=k)


OMEGAS = 0.1 * _r.normal(size=(3, 7))


def test_quadratic_matches_the_closed_form():
    """weight_space_metrics on ½wᵀAw with three random ω equals the closed form computed
    in NumPy with ḡ(w + ω_k) = A(w + ω_k); evaluating the perturbed gradients 2 at a
    time (chunk_size=2, 2 + 1) changes nothing."""
    want = ref_metrics(A @ W, (A @ (W + OMEGAS).T).T, OMEGAS, W)
    check(metrics(quadratic, tree(W), tree(OMEGAS)), want)
    check(metrics(quadratic, tree(W), tree(OMEGAS), chunk_size=2), want)


def test_per_perturbation_values_are_the_terms_before_the_max_and_min():
    """per_perturbation=True: per ω_k the ratio ‖A ω_k‖‖w‖/(‖ω_k‖‖Aw‖) and the cosine of
    A(w + ω_k) with Aw (closed form, float64); their max / min are weight_space_metrics'
    κ_W / min cosine."""
    got = metrics(quadratic, tree(W), tree(OMEGAS), per_perturbation=True)
    g0, gk = A @ W, (A @ (W + OMEGAS).T).T
    n = np.linalg.norm
    ratio = [n(A @ o) * n(W) / (n(o) * n(g0)) for o in OMEGAS]
    cos = [g @ g0 / (n(g) * n(g0)) for g in gk]
    np.testing.assert_allclose(got["ratio"], ratio, rtol=RTOL)
    np.testing.assert_allclose(got["cosine"], cos, rtol=RTOL)
    check({k: v for k, v in got.items() if k not in ("ratio", "cosine")}, ref_metrics(g0, gk, OMEGAS, W))
    assert float(got["kappa_w"]) == float(np.max(got["ratio"])) and float(got["min_cosine"]) == float(np.min(got["cosine"]))


def test_quadratic_kappa_along_the_top_eigenvector_is_lambda_max_norm_ratio():
    """With ω along A's top eigenvector the ratio is λ_max‖w‖/‖Aw‖, the largest any ω can
    give: among random ω and the eigenvector, κ_W (the max over k) is that value."""
    omegas = np.stack([OMEGAS[0], 0.05 * TOP, OMEGAS[1]])
    got = metrics(quadratic, tree(W), tree(omegas))["kappa_w"]
    np.testing.assert_allclose(float(got), EIGS[0] * np.linalg.norm(W) / np.linalg.norm(A @ W), rtol=RTOL)


def test_mask_restricts_every_norm_and_inner_product():
    """With a mask, κ_W and the Def. 4.1 forms are the closed form on the masked
    coordinates of w, ω and the gradients."""
    m = random_mask(jax.random.PRNGKey(0), tree(W), 0.5)
    keep = np.concatenate([m.indices[0], 3 + m.indices[1]])
    assert 3 <= len(keep) < 7
    g0, gk = A @ W, (A @ (W + OMEGAS).T).T
    want = ref_metrics(g0[keep], gk[:, keep], OMEGAS[:, keep], W[keep])
    check(metrics(quadratic, tree(W), tree(OMEGAS), mask=m), want)


def test_scaling_the_loss_changes_nothing():
    """Loss × 7 (a non-quadratic loss): the same limited-targeted perturbations (ḡ/‖ḡ‖_∞ is
    scale-free) and the same κ_W, min cosine, diversity and coherence (float32: 1e-5)."""
    w = tree(W)
    scaled = lambda t: 7.0 * quartic(t)
    out = []
    for loss in (quartic, scaled):
        om = perturb("limited_targeted", jax.random.PRNGKey(0), w, 2, eta=0.01, mean_grad=jax.grad(loss)(w))
        out.append((om, metrics(loss, w, om)))
    (om1, m1), (om7, m7) = out
    for a, b in zip(jax.tree.leaves(om1), jax.tree.leaves(om7)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    check(m7, {k: float(v) for k, v in m1.items()}, rtol=1e-5)


def test_sgd_step_estimate_on_the_quadratic_is_invariant_to_loss_scale():
    """The SGD-step estimate with ω = −lr ḡ on ½wᵀAw is ‖A ḡ‖‖w‖/‖ḡ‖² whatever the
    loss scale c at a fixed lr (the gradient change is linear in the step, so c cancels):
    checked for c = 1 and 7 against that closed form."""
    lr = 0.05
    for c in (1.0, 7.0):
        loss = lambda t: c * quadratic(t)
        w0 = tree(W)
        g0 = jax.grad(loss)(w0)
        w1 = jax.tree.map(lambda p, g: p - lr * g, w0, g0)
        step = jax.tree.map(jnp.subtract, w1, w0)
        got = sgd_step_condition_number(g0, jax.grad(loss)(w1), w0, step)
        g = A @ W
        np.testing.assert_allclose(float(got), np.linalg.norm(A @ g) * np.linalg.norm(W) / (g @ g), rtol=RTOL)


# --------------------------------------------------------------------------------------
# Perturbation samplers.


def per_example_tree(b=6):
    return tree(np.random.default_rng(1).normal(size=(b, 7)) * np.arange(1, b + 1)[:, None])


def test_targeted_perturbations_are_signed_normalized_per_example_gradients():
    """Def. 2.6: ω_k = η ζ_k g_j/‖g_j‖ for n distinct examples j, ζ_k ∈ {−1, +1}: each of
    norm η; with n = b every example is used once; over a few keys both signs occur."""
    eta, b = 1e-3, 6
    pe = per_example_tree(b)
    g = np.asarray(vec(pe), np.float64)
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    signs = set()
    for seed in range(3):
        om = perturb("targeted", jax.random.PRNGKey(seed), tree(W), b, eta=eta, per_example=pe)
        assert jax.tree.map(jnp.shape, om) == {"a": (b, 3), "b": (b, 2, 2)}
        o = np.asarray(vec(om), np.float64)
        np.testing.assert_allclose(np.linalg.norm(o, axis=1), eta, rtol=1e-5)
        c = (o / eta) @ unit.T  # ±1 at the chosen example, |c| < 1 elsewhere
        j = np.argmax(np.abs(c), axis=1)
        np.testing.assert_allclose(np.abs(c[np.arange(b), j]), 1.0, rtol=1e-5)
        np.testing.assert_allclose(o, eta * np.sign(c[np.arange(b), j])[:, None] * unit[j], atol=1e-6 * eta)
        assert sorted(j) == list(range(b))
        signs |= set(np.sign(c[np.arange(b), j]))
    assert signs == {-1.0, 1.0}
    om = perturb("targeted", jax.random.PRNGKey(0), tree(W), 2, eta=eta, per_example=pe)
    assert jax.tree.leaves(om)[0].shape[0] == 2


def test_limited_targeted_perturbations_are_plus_minus_mean_gradient_over_its_max():
    """Def. 2.7: ±η ḡ/‖ḡ‖_∞ (the largest coordinate moves by exactly η); n = 2 gives +
    then −, n = 1 one of the two."""
    eta = 1e-3
    gbar = tree(np.random.default_rng(2).normal(size=7))
    g = np.asarray(vec(gbar), np.float64)
    want = eta * g / np.abs(g).max()
    om = np.asarray(vec(perturb("limited_targeted", jax.random.PRNGKey(0), tree(W), 2, eta=eta, mean_grad=gbar)))
    np.testing.assert_allclose(om, [want, -want], rtol=1e-6)
    one = np.asarray(vec(perturb("limited_targeted", jax.random.PRNGKey(1), tree(W), 1, eta=eta, mean_grad=gbar)))
    assert one.shape == (1, 7)
    assert np.allclose(one[0], want, rtol=1e-6) or np.allclose(one[0], -want, rtol=1e-6)


def test_random_perturbations_follow_each_leafs_weight_statistics():
    """'random': per leaf, Gaussian with that leaf's mean and std, × η. With 2 × 20000
    draws the sample mean is within 5 standard errors (0.05η) of η·mean and the std within
    3% of η·std; the 50-element leaf (100 draws) within 0.05η and 25%."""
    r = np.random.default_rng(3)
    params = {"big": jnp.asarray(0.3 + 2.0 * r.normal(size=(200, 100)), jnp.float32),
              "small": jnp.asarray(-1.0 + 0.1 * r.normal(size=50), jnp.float32)}
    eta = 1e-3
    om = perturb("random", jax.random.PRNGKey(0), params, 2, eta=eta)
    for name, mean_tol, std_rtol in (("big", 0.05, 0.03), ("small", 0.05, 0.25)):
        w, o = np.asarray(params[name], np.float64), np.asarray(om[name], np.float64) / eta
        assert o.shape == (2,) + w.shape
        assert abs(o.mean() - w.mean()) < mean_tol * max(1.0, w.std())
        np.testing.assert_allclose(o.std(), w.std(), rtol=std_rtol)


def test_random_leaves_constant_leaves_unperturbed_random_isotropic_moves_every_leaf():
    """The thesis's 'random' sampler draws from each leaf's own mean and std: a zero bias
    or β (std 0, mean 0) gets ω = 0 exactly, γ = 1 the constant η in every draw.
    'random_isotropic' moves every coordinate: ‖ω_k‖ = η‖w‖ (float32: 1e-5), every leaf
    nonzero, and -- an isotropic direction -- β's share of ‖ω‖² near its share 4/409 of
    the coordinates (a χ²₄ share: relative std √(2/4) per draw, 5% over 200 draws, so
    the 40% bound is 8 standard errors)."""
    r = np.random.default_rng(5)
    params = {"kernel": jnp.asarray(r.normal(size=(20, 20)), jnp.float32), "bias": jnp.zeros(1),
              "beta": jnp.zeros(4), "gamma": jnp.ones(4)}
    eta = 1e-3
    om = perturb("random", jax.random.PRNGKey(0), params, 3, eta=eta)
    assert np.all(np.asarray(om["bias"]) == 0) and np.all(np.asarray(om["beta"]) == 0)
    np.testing.assert_allclose(om["gamma"], eta, rtol=1e-6)
    assert np.asarray(om["kernel"]).std() > 0
    iso = perturb("random_isotropic", jax.random.PRNGKey(1), params, 200, eta=eta)
    flat = np.concatenate([np.asarray(l, np.float64).reshape(200, -1) for l in jax.tree.leaves(iso)], axis=1)
    w_norm = np.linalg.norm(np.concatenate([np.asarray(l, np.float64).ravel() for l in jax.tree.leaves(params)]))
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), eta * w_norm, rtol=1e-5)
    for name in ("bias", "beta", "gamma"):
        assert np.all(np.abs(np.asarray(iso[name])).reshape(200, -1).max(axis=1) > 0), name
    share = np.mean(np.sum(np.asarray(iso["beta"], np.float64) ** 2, axis=1) / np.sum(flat**2, axis=1))
    np.testing.assert_allclose(share, 4 / 409, rtol=0.4)


@pytest.mark.parametrize(
    "kind,kwargs,match",
    [
        ("targeted", {}, "need the per-example gradients"),
        ("targeted", {"per_example": "pe", "n": 7}, "n <= b"),
        ("limited_targeted", {}, "need the batch gradient"),
        ("limited_targeted", {"mean_grad": "g", "n": 3}, "n must be 1 or 2"),
        ("random", {"n": 0}, "n >= 1"),
        ("random", {"eta": 0.0}, "eta must be > 0"),
        ("random", {"eta": -1e-3}, "eta must be > 0"),
        ("gaussian", {}, "unknown weight perturbation 'gaussian'"),
    ],
)
def test_perturbation_errors(kind, kwargs, match):
    kwargs = dict(kwargs)
    n = kwargs.pop("n", 2)
    if kwargs.get("per_example") == "pe":
        kwargs["per_example"] = per_example_tree(6)
    if kwargs.get("mean_grad") == "g":
        kwargs["mean_grad"] = tree(W)
    with pytest.raises(ValueError, match=match):
        weight_perturbations(kind, jax.random.PRNGKey(0), tree(W), n, **kwargs)
