"""``jaxnorm.diagnostics.hessian_conditioning``: Def. 2.4's κ and the directional form
against a dense float64 Hessian (``jax.hessian``), and the η sweep of Def. 2.5's κ_W on
a tanh net (converges to the directional value) and a ReLU net (exceeds even Def. 2.4's
value once a step crosses a kink). Source: "Gradient Conditioning in Deep Neural
Networks" (master thesis, BYU 2022), Defs. 2.4, 2.5, 3.4.

Tolerances: float32 against float64 references. Lanczos at order = dimension gives the
eigenvalues to 1e-4 of λ_max and an HVP is within 1e-5 of Σ|H_ij v_j| (both derived in
test_hessian.py), so Def. 2.4's κ is compared at 1e-4 and the directional form at 1e-5.
The sweep's round-off bound is the module docstring's
``ρ(η) = (2 e_g + u‖H‖‖w‖) / (‖ω‖ ‖Hĝ‖)``, with e_g = ‖g₃₂ − g₆₄‖ the float32 gradient's
measured rounding error (two gradients enter the difference) and u‖w‖ the rounding of
``w + ω``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnorm.diagnostics import (
    directional_condition_number,
    flatten,
    hessian_condition_number,
    input_condition_number,
    kappa_w_sweep,
    kappa_x_sweep,
    plateau,
    random_mask,
    weight_perturbations,
    weight_space_metrics,
)

from tests.diagnostics.helpers import batch, model

U32 = 2.0**-24
ETAS = np.logspace(-7, -1, 13)  # half decades, the study's 1e-3 among them
RTOL = 0.05  # plateau agreement


def tiny_net(act, dtype):
    """A 5-6-6-3 MLP (96 parameters) with activation ``act`` and cross-entropy on 16
    fixed examples: ``(loss, params)``, every array of ``dtype``."""
    r = np.random.default_rng(0)
    p = {
        "w1": r.normal(size=(5, 6)) / np.sqrt(5),
        "b1": 0.2 * r.normal(size=6),
        "w2": r.normal(size=(6, 6)) / np.sqrt(6),
        "b2": 0.2 * r.normal(size=6),
        "w3": r.normal(size=(6, 3)) / np.sqrt(6),
    }
    p = {k: jnp.asarray(v, dtype) for k, v in p.items()}
    x = jnp.asarray(r.normal(size=(16, 5)), dtype)
    y = jnp.asarray(r.integers(0, 3, 16))

    def pre(p):
        a1 = x @ p["w1"] + p["b1"]
        a2 = act(a1) @ p["w2"] + p["b2"]
        return a1, a2

    def loss(p):
        z = act(pre(p)[1]) @ p["w3"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1))

    loss.pre = pre  # the pre-activations: which side of each ReLU kink an example is on
    return loss, p


def dense_reference(act):
    """Float64: gradient, dense Hessian, Def. 2.4's κ, the directional form, and the
    float32 gradient's rounding error e_g."""
    with jax.enable_x64(True):
        loss, p = tiny_net(act, np.float64)
        f, unravel = ravel_pytree(p)
        h = np.asarray(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(f))  # jitted: op by op it compiles every op
        g = np.asarray(ravel_pytree(jax.grad(loss)(p))[0])
        w = np.asarray(f)
        grad64 = jax.jit(lambda v: ravel_pytree(jax.grad(loss)(unravel(v)))[0])
        # The exact finite difference along ĝ at the float32 step actually taken.
        kappa64 = lambda eta: _ratio(grad64, w, g, eta)
    loss32, p32 = tiny_net(act, np.float32)
    e_g = np.linalg.norm(np.asarray(ravel_pytree(jax.grad(loss32)(p32))[0], np.float64) - g)
    gh = g / np.linalg.norm(g)
    h_norm = np.abs(np.linalg.eigvalsh(h)).max()
    hg = np.linalg.norm(h @ gh)
    return dict(
        h=h, g=g, w=w, h_norm=h_norm, hg=hg, e_g=e_g, kappa64=kappa64,
        kappa=h_norm * np.linalg.norm(w) / np.linalg.norm(g),
        directional=hg * np.linalg.norm(w) / np.linalg.norm(g),
        step=lambda eta: eta * np.linalg.norm(g) / np.abs(g).max(),  # ‖ω‖ of ±η ḡ/‖ḡ‖_∞
    )


def _ratio(grad64, w, g, eta):
    """Def. 2.5 over the pair ±η ḡ/‖ḡ‖_∞ in float64, at the steps float32 takes."""
    with jax.enable_x64(True):
        out = []
        for sign in (1.0, -1.0):
            omega = sign * eta * g / np.abs(g).max()
            wp = (w.astype(np.float32) + omega.astype(np.float32)).astype(np.float64)  # float32's w + ω
            out.append(np.linalg.norm(np.asarray(grad64(wp)) - g) * np.linalg.norm(w) / (np.linalg.norm(wp - w) * np.linalg.norm(g)))
        return max(out)


@functools.lru_cache(maxsize=None)
def built(name):
    """``(name, loss, params, dense reference, hessian_condition_number, kappa_w_sweep)``
    for the tanh or the ReLU net, computed once per session."""
    act = {"tanh": jnp.tanh, "relu": jax.nn.relu}[name]
    loss, params = tiny_net(act, np.float32)
    ref = dense_reference(act)
    p = ref["w"].size
    hc = jax.jit(lambda q: hessian_condition_number(loss, q, order=p))(params)
    sweep = jax.jit(lambda q: kappa_w_sweep(loss, q, ETAS, rtol=RTOL))(params)
    return name, loss, params, ref, hc, sweep


@pytest.fixture(params=["tanh", "relu"])
def net(request):
    return built(request.param)


# ---------------------------------------------------------------- Def. 2.4 and the directional form


def test_hessian_forms_match_the_dense_hessian(net):
    name, loss, params, ref, hc, _ = net
    np.testing.assert_allclose(float(hc.kappa), ref["kappa"], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(float(hc.hessian_norm), ref["h_norm"], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(float(hc.directional), ref["directional"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(hc.hg_norm), ref["hg"], rtol=1e-5, err_msg=name)
    assert float(hc.directional) <= float(hc.kappa)
    # The standalone directional form agrees, for ĝ and for any directions given.
    got = jax.jit(lambda q: directional_condition_number(loss, q))(params)
    np.testing.assert_allclose(float(got), ref["directional"], rtol=1e-5)
    d = np.random.default_rng(1).normal(size=(3, ref["w"].size))
    want = max(np.linalg.norm(ref["h"] @ v) / np.linalg.norm(v) for v in d) * np.linalg.norm(ref["w"]) / np.linalg.norm(ref["g"])
    dirs = jax.vmap(ravel_pytree(params)[1])(jnp.asarray(d, jnp.float32))
    np.testing.assert_allclose(float(directional_condition_number(loss, params, dirs, chunk_size=2)), want, rtol=1e-5)


def test_few_lanczos_steps_give_a_lower_bound_above_the_directional_form(net):
    """Ritz values and ‖Hĝ‖ are ‖Hv‖-type quantities for unit v: at a low order the
    estimate of ‖H‖₂ is below the true norm (up to rounding), and never below ‖Hĝ‖."""
    _, loss, params, ref, _, _ = net
    low = jax.jit(lambda q: hessian_condition_number(loss, q, order=3))(params)
    assert float(low.kappa) <= ref["kappa"] * (1 + 1e-4)
    assert float(low.kappa) >= float(low.directional)


def test_lanczos_start_vector_can_be_given():
    """From the top eigenvector one Lanczos step is exact (H v = λ v), whatever ĝ is."""
    _, loss, params, ref, _, _ = built("tanh")
    vals, vecs = np.linalg.eigh(ref["h"])
    top = vecs[:, np.argmax(np.abs(vals))]
    v0 = ravel_pytree(params)[1](jnp.asarray(top, jnp.float32))
    hc = hessian_condition_number(loss, params, order=1, v0=v0)
    np.testing.assert_allclose(float(hc.kappa), ref["kappa"], rtol=1e-4)


def test_hessian_forms_are_nan_at_a_zero_gradient_and_check_the_order():
    w0 = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    loss = lambda p: 0.5 * sum(jnp.sum((p[k] - w0[k]) ** 2) for k in p)  # minimum at w0: g = 0
    hc = hessian_condition_number(loss, w0, order=2)
    assert np.isnan(float(hc.kappa)) and np.isnan(float(hc.directional))
    assert np.isnan(float(directional_condition_number(loss, w0)))
    # A zero direction has no unit vector: NaN, not a silent 0.
    moved = jax.tree.map(lambda a: a + 1.0, w0)
    dirs = {"a": jnp.stack([jnp.ones(3), jnp.zeros(3)]), "b": jnp.zeros((2, 2, 2))}
    assert np.isnan(float(directional_condition_number(loss, moved, dirs)))
    with pytest.raises(ValueError, match="order"):
        hessian_condition_number(loss, w0, order=0)
    with pytest.raises(ValueError, match="order"):
        hessian_condition_number(loss, w0, order=8)


# ---------------------------------------------------------------- the η sweep


def test_tanh_sweep_plateaus_at_the_directional_hessian_value():
    """Smooth loss: κ_W(η) = directional + O(η) in exact arithmetic (float64, the same
    float32 steps), and float32 adds at most ρ(η). Wherever both are below rtol/2 the
    values lie within rtol of each other and of the limit, so they must form one plateau
    that contains the limit; below η ≈ ρ⁻¹(rtol/2) round-off takes over."""
    _, _, _, ref, _, sweep = built("tanh")
    vals = np.asarray(sweep.values, np.float64)
    np.testing.assert_allclose(float(sweep.limit), ref["directional"], rtol=1e-5)
    rho = (2 * ref["e_g"] + U32 * ref["h_norm"] * np.linalg.norm(ref["w"])) / (ref["step"](ETAS) * ref["hg"])
    exact = np.array([ref["kappa64"](e) for e in ETAS])
    assert np.all(np.abs(vals - exact) <= rho * exact), "float32 error beyond the round-off bound"
    trunc = np.abs(exact - ref["directional"]) / ref["directional"]
    # First order: (κ − limit)/‖ω‖ is constant where neither the rounding of the step's
    # direction (below ~1e-4: u‖H‖‖w‖/‖ω‖, the second term of ρ, which is a worst case
    # ~100x above the measured effect) nor higher orders (0.1) interfere; measured
    # 0.115-0.130 on [1e-4, 1e-2].
    linear = (ETAS >= 1e-4) & (ETAS <= 1e-2)
    slope = (trunc / ref["step"](ETAS))[linear]
    assert np.ptp(slope) <= 0.2 * slope.mean()
    # Within x of the limit each, two values agree within (1+x)/(1−x) − 1 <= rtol for
    # x <= rtol/(2 + rtol). Those η are consecutive (round-off below, nothing above here).
    good = rho + trunc <= RTOL / (2 + RTOL)
    (idx,) = np.nonzero(good)
    assert len(idx) >= 8 and np.all(np.diff(idx) == 1), (rho, trunc)
    assert np.all(np.abs(vals[good] - ref["directional"]) <= RTOL / (2 + RTOL) * ref["directional"])
    sub = plateau(jnp.asarray(vals[good]), RTOL, limit=float(sweep.limit))
    assert int(sub.length) == len(idx) and bool(sub.contains_limit)
    # The sweep's own verdict: the longest run is at least that long and holds the limit
    # (it may start lower: round-off errors of a few % still agree within rtol).
    pl = sweep.plateau
    assert bool(pl.contains_limit) and int(pl.length) >= len(idx)
    # Never above Def. 2.4's value on this grid: the lower bound holds for the smooth net.
    assert np.all(vals <= ref["kappa"])


def test_relu_sweep_exceeds_the_hessian_value_where_a_step_crosses_a_kink():
    """Piecewise smooth loss: below the first kink crossing the sweep plateaus at the
    directional value of w's activation region (fixed ReLU on/off pattern); at larger η
    the step changes which side of a ReLU some pre-activation is on, and κ_W exceeds
    even Def. 2.4's ‖H‖‖w‖/‖g‖ (measured: 15.4 at η = 3e-3 against 14.0; directional
    6.16)."""
    _, loss, params, ref, hc, sweep = built("relu")
    vals = np.asarray(sweep.values, np.float64)
    g = ravel_pytree(jax.grad(loss)(params))[0]
    unravel = ravel_pytree(params)[1]

    def crossed(eta):
        """Does either step of the pair ±η ḡ/‖ḡ‖_∞ flip a ReLU's side for some example?"""
        for sign in (1.0, -1.0):
            moved = unravel(ravel_pytree(params)[0] + sign * eta * g / jnp.max(jnp.abs(g)))
            if any(bool(jnp.any((a > 0) != (b > 0))) for a, b in zip(loss.pre(params), loss.pre(moved))):
                return True
        return False

    above = vals > ref["kappa"]
    assert above.any(), vals
    assert all(crossed(e) for e in ETAS[above])
    assert not crossed(ETAS[0])
    assert bool(sweep.plateau.contains_limit)
    # The plateau ends before the first η whose step crosses a kink.
    first_cross = min(i for i, e in enumerate(ETAS) if crossed(e))
    assert int(sweep.plateau.stop) <= first_cross + 1
    np.testing.assert_allclose(float(sweep.limit), float(hc.directional), rtol=1e-5)


def test_sweep_reproduces_the_study_value_and_relative_steps(net):
    """Absolute η with the default directions is the study's κ_W (limited targeted,
    Def. 2.7) at that η (the two build ω in a different rounding order: within ρ(η));
    ``relative=True`` sets ‖ω‖ = η‖w‖ whatever the directions' scale."""
    _, loss, params, ref, _, sweep = net
    g = jax.grad(loss)(params)
    om = weight_perturbations("limited_targeted", jax.random.PRNGKey(0), params, 2, eta=1e-3, mean_grad=g)
    study = float(jax.jit(lambda q, o: weight_space_metrics(loss, q, o))(params, om)["kappa_w"])
    rho = (2 * ref["e_g"] + U32 * ref["h_norm"] * np.linalg.norm(ref["w"])) / (ref["step"](1e-3) * ref["hg"])
    i = int(np.argmin(np.abs(ETAS - 1e-3)))
    np.testing.assert_allclose(float(sweep.values[i]), study, rtol=2 * rho)
    # With a mask (§1.6): the study's masked κ_W, and a masked limit from the dense H.
    mask = random_mask(jax.random.PRNGKey(5), params, 0.5)
    masked = float(jax.jit(lambda q, o: weight_space_metrics(loss, q, o, mask=mask))(params, om)["kappa_w"])
    msw = jax.jit(lambda q: kappa_w_sweep(loss, q, [1e-3], mask=mask))(params)
    np.testing.assert_allclose(float(msw.values[0]), masked, rtol=2 * rho)
    unravel = ravel_pytree(params)[1]
    mvec = lambda v: np.asarray(flatten(unravel(jnp.asarray(v, jnp.float32)), 0, mask), np.float64)
    gh = ref["h"] @ ref["g"]
    want = np.linalg.norm(mvec(gh)) / np.linalg.norm(mvec(ref["g"])) * np.linalg.norm(mvec(ref["w"])) / np.linalg.norm(mvec(ref["g"]))
    np.testing.assert_allclose(float(msw.limit), want, rtol=1e-5)
    w_norm = np.linalg.norm(ref["w"])
    dirs = jax.tree.map(lambda a: jnp.stack([a, -3 * a]), g)
    rel = jax.jit(lambda q, d: kappa_w_sweep(loss, q, [1e-4], directions=d, relative=True).values)
    scaled = jax.tree.map(lambda a: a * 7.0, dirs)
    np.testing.assert_allclose(np.asarray(rel(params, dirs)), np.asarray(rel(params, scaled)), rtol=1e-6)
    # The same two directions scaled to norm ‖w‖: absolute η then also means ‖ω‖ = η‖w‖.
    c = w_norm / float(jnp.linalg.norm(ravel_pytree(g)[0]))
    unit = jax.tree.map(lambda a: jnp.stack([c * a, -c * a]), g)
    absolute = kappa_w_sweep(loss, params, [1e-4], directions=unit).values
    rho_rel = (2 * ref["e_g"] + U32 * ref["h_norm"] * w_norm) / (1e-4 * w_norm * ref["hg"])
    np.testing.assert_allclose(np.asarray(rel(params, dirs)), np.asarray(absolute), rtol=2 * rho_rel)


def test_sweep_argument_errors():
    loss = lambda p: jnp.sum(jnp.cos(p["a"]))
    p = {"a": jnp.ones(3)}
    for etas in ([], [[1e-3]], [1e-3, 0.0], [-1e-3]):
        with pytest.raises(ValueError, match="η|etas"):
            kappa_w_sweep(loss, p, etas)
    with pytest.raises(ValueError, match="rtol"):
        kappa_w_sweep(loss, p, [1e-3], rtol=0.0)
    module, variables = model("mlp_vanilla")
    x, y = batch()
    for etas in ([], [0.0]):
        with pytest.raises(ValueError, match="η|etas"):
            kappa_x_sweep(module, variables, x, y, etas, key=jax.random.PRNGKey(0))


# ---------------------------------------------------------------- the plateau verdict


def test_plateau_finds_the_longest_agreeing_run():
    v = jnp.array([1.0, 5.0, 5.1, 5.05, 9.0, 9.1, 20.0])
    pl = plateau(v, 0.05, limit=5.02)
    assert (int(pl.start), int(pl.stop), int(pl.length), bool(pl.contains_limit)) == (1, 4, 3, True)
    assert not bool(plateau(v, 0.05, limit=7.0).contains_limit)
    assert not bool(plateau(v, 0.05).contains_limit)  # no limit given
    # Ties go to the earliest run; NaN and 0 (a difference rounded to nothing) break runs.
    pl = plateau(jnp.array([2.0, 2.0, 0.0, 3.0, 3.0]), 0.01)
    assert (int(pl.start), int(pl.stop)) == (0, 2)
    pl = plateau(jnp.array([jnp.nan, 0.0, 4.0, jnp.inf]), 0.01, limit=4.0)
    assert (int(pl.start), int(pl.length), bool(pl.contains_limit)) == (2, 1, False)  # one point is no plateau
    pl = plateau(jnp.array([jnp.nan, 0.0]), 0.01, limit=1.0)
    assert (int(pl.length), bool(pl.contains_limit)) == (0, False)
    jitted = jax.jit(lambda x: plateau(x, 0.05, 5.0))(v)
    assert int(jitted.length) == 3


def test_plateau_argument_errors():
    with pytest.raises(ValueError, match="1-D"):
        plateau(jnp.zeros((2, 2)), 0.1)
    with pytest.raises(ValueError, match="1-D"):
        plateau(jnp.zeros((0,)), 0.1)
    with pytest.raises(ValueError, match="rtol"):
        plateau(jnp.ones(3), -0.1)


# ---------------------------------------------------------------- κ_X


@pytest.mark.extended
def test_kappa_x_sweep_is_input_condition_number_at_each_eta():
    """One η: the library's κ_X with targeted perturbations at that η (the same key and
    directions; ω built in another rounding order, so within the round-off bound of κ_X,
    ~u‖x‖/η = 5e-4 relative for ‖x‖ ≈ 8 at η = 1e-3: compared at 2e-3); relative steps
    are absolute ones times mean ‖x_i‖."""
    module, variables = model("mlp_vanilla")
    x, y = batch()
    key = jax.random.PRNGKey(3)
    sw = kappa_x_sweep(module, variables, x, y, [1e-3, 1e-2], key=key, n=4, m=4)
    want = input_condition_number(module, variables, x, y, key=key, n=4, m=4, eta=1e-3)
    np.testing.assert_allclose(float(sw.values[0]), float(want), rtol=2e-3)
    assert sw.limit is None and not bool(sw.plateau.contains_limit)
    scale = float(jnp.mean(jnp.linalg.norm(x[:4].reshape(4, -1), axis=1)))
    rel = kappa_x_sweep(module, variables, x, y, [1e-3 / scale], key=key, n=4, m=4, relative=True)
    # η/scale·scale differs from η by rounding, and κ_X amplifies it (the same ~u‖x‖/η
    # bound as above; 9.5e-5 measured on an AMD EPYC without AVX-512): 2e-3.
    np.testing.assert_allclose(float(rel.values[0]), float(sw.values[0]), rtol=2e-3)
