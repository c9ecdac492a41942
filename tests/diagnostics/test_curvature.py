"""Curvature beyond the Hessian (GGN, empirical Fisher), Hutch++, batched probes, the
host loop, float64 and the matmul precision (``jaxnorm.diagnostics.curvature`` and the
solvers of ``jaxnorm.diagnostics.hessian``).

References are dense matrices built another way: ``jax.jacfwd`` of the network outputs,
``jax.hessian`` of the loss of the outputs, the per-example gradients of
``jaxnorm.diagnostics.per_example.per_example_grads``.

Tolerances (float32 unless stated): a product ``C v`` against a dense ``C @ v`` differs by
the rounding of sums of P-term dot products, bounded by ~P·eps·(|C| @ |v|) with eps =
6e-8; with P <= 60 that is <= 4e-6 of the bound; we allow 1e-5 of it (plus 1e-7 for rows
that are 0 by cancellation). Eigenvalues: the dense references are symmetrized and
``eigh``-ed in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnorm.diagnostics.curvature import CURVATURES, SplitLoss, curvature_matvec, curvature_vp
from jaxnorm.diagnostics.hessian import (
    hessian_loss_fn,
    hutchinson_trace,
    hutchpp_trace,
    hvp,
    SolverInfo,
    lanczos,
    power_iteration,
    spectral_density,
)
from jaxnorm.diagnostics.per_example import per_example_grads
from jaxnorm.models import get_model
from jaxnorm.objective import cross_entropy, l2_penalty, squared_error

RNG = np.random.default_rng(0)
B, D, C = 6, 5, 3
X = jnp.asarray(RNG.standard_normal((B, D)), jnp.float32)
Y = jnp.asarray([0, 1, 2, 0, 1, 1], jnp.int32)


def _dense_ops(split, params, names=tuple(CURVATURES)):
    """The curvatures ``names`` as dense matrices (the products applied to the identity),
    in one compiled program."""
    p = ravel_pytree(params)[0].shape[0]
    eye = jnp.eye(p, dtype=jnp.float32)
    out = jax.jit(lambda q: {n: jax.vmap(curvature_matvec(split, q, n)[0])(eye) for n in names})(params)
    return {n: np.asarray(m, np.float64).T for n, m in out.items()}


def _close(got, want, v_abs_bound, what):
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert np.all(err <= 1e-5 * v_abs_bound + 1e-7), f"{what}: max excess {np.max(err - 1e-5 * v_abs_bound)}"


def _net(depth, norm="vanilla", activation="tanh", weight_decay=0.0, bn_mode="batch", loss="ce"):
    module = get_model("mlp", depth=depth, width=4, num_classes=C, norm=norm, activation=activation)
    v = jax.jit(lambda k: module.init(k, X, train=False))(jax.random.PRNGKey(1))  # jitted: op by op, init compiles every op
    split = hessian_loss_fn(module, v, X, Y, bn_mode=bn_mode, weight_decay=weight_decay, loss=loss)
    return module, v, split


def _reference_ggn(split: SplitLoss, params):
    """Jᵀ H_z J + ∇²R from a dense Jacobian (jacfwd) and the dense Hessian of the mean loss
    w.r.t. the outputs (jax.hessian); the penalty's Hessian by jax.hessian as well."""
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def dense(flat):
        z = split.outputs(unravel(flat))
        jac = jax.jacfwd(lambda f: split.outputs(unravel(f)).reshape(-1))(flat)  # (N·C, P)
        hz = jax.hessian(lambda zz: split.data_loss(zz.reshape(z.shape)))(z.reshape(-1))
        g = jac.T @ hz @ jac
        if split.penalty is not None:
            g = g + jax.hessian(lambda f: split.penalty(unravel(f)))(flat)
        return g, jax.hessian(lambda f: split(unravel(f)))(flat)

    g, h = dense(flat)
    return np.asarray(g, np.float64), np.asarray(h, np.float64)


@pytest.fixture(scope="module")
def mlp():
    """A 2-layer tanh MLP with L2 (P = 39) and its dense GGN, Hessian and library operators."""
    module, v, split = _net(2, weight_decay=0.01)
    g, h = _reference_ggn(split, v["params"])
    p = g.shape[0]
    ops = _dense_ops(split, v["params"])
    assert all(m.shape == (p, p) for m in ops.values())
    return module, v, split, g, h, ops


def test_ggn_product_equals_jacobian_sandwich(mlp):
    *_, g, _, ops = mlp
    # The library's dense GGN has columns G e_j: compare against the reference column by column.
    _close(ops["ggn"], g, np.abs(g).sum(axis=1, keepdims=True), "GGN")
    assert np.abs(g - g.T).max() <= 1e-6 * np.abs(g).max()


def test_hessian_product_equals_dense_hessian(mlp):
    *_, h, ops = mlp
    _close(ops["hessian"], h, np.abs(h).sum(axis=1, keepdims=True), "Hessian")


def test_ggn_is_psd_and_differs_from_the_hessian_of_a_nonlinear_net(mlp):
    *_, g, h, ops = mlp
    lam = np.linalg.eigvalsh((ops["ggn"] + ops["ggn"].T) / 2)
    # PSD up to float32 rounding of a 39x39 operator: 1e-5 of the largest eigenvalue.
    assert lam.min() >= -1e-5 * lam.max()
    assert np.abs(g - h).max() > 1e-3 * np.abs(h).max()  # the residual term is not negligible here


def test_ggn_equals_the_hessian_for_a_linear_model_with_cross_entropy():
    """logits = W x + b: the outputs are linear in θ, so H = Jᵀ H_z J (+ the L2 term) exactly."""
    _, v, split = _net(1, weight_decay=0.05)
    ggn = _dense_ops(split, v["params"], ("ggn",))["ggn"]
    _, h = _reference_ggn(split, v["params"])
    _close(ggn, h, np.abs(h).sum(axis=1, keepdims=True), "GGN vs Hessian (linear model)")


def test_mse_loss_hessian_is_identity_over_n():
    """For ½‖z − onehot‖² averaged over the batch, H_z = I/N: G = Jᵀ J / N."""
    _, v, split = _net(2, loss="mse")
    flat, unravel = ravel_pytree(v["params"])
    jac = np.asarray(jax.jit(jax.jacfwd(lambda f: split.outputs(unravel(f)).reshape(-1)))(flat), np.float64)
    want = jac.T @ jac / B
    got = _dense_ops(split, v["params"], ("ggn",))["ggn"]
    _close(got, want, np.abs(jac.T) @ np.abs(jac).sum(axis=1, keepdims=True) / B, "GGN (mse)")


@pytest.mark.parametrize("norm,bn_mode", [("vanilla", "running"), ("bn_gamma_beta", "batch")])
def test_fisher_is_the_mean_of_per_example_gradient_outer_products(norm, bn_mode):
    """F = (1/N) Σ g_i g_iᵀ, with g_i from per_example_grads in the same BN semantics
    (``'batch'``: the coupled per-example gradients)."""
    module, v, split = _net(2, norm=norm, bn_mode=bn_mode)
    p = ravel_pytree(v["params"])[0].shape[0]
    eye = jnp.eye(p, dtype=jnp.float32)

    @jax.jit
    def both(v):
        grads = per_example_grads(module, v, X, Y, bn_mode=bn_mode)
        rows = jax.vmap(lambda i: ravel_pytree(jax.tree.map(lambda a: a[i], grads))[0])(jnp.arange(B))
        return rows, jax.vmap(curvature_matvec(split, v["params"], "fisher")[0])(eye).T

    gmat, got = (np.asarray(a, np.float64) for a in both(v))
    want = gmat.T @ gmat / B
    _close(got, want, np.abs(gmat.T) @ np.abs(gmat) / B, "Fisher")
    lam = np.linalg.eigvalsh((got + got.T) / 2)
    assert lam.min() >= -1e-5 * lam.max() and np.sum(lam > 1e-5 * lam.max()) <= B  # PSD, rank <= N


def test_solvers_take_the_curvature_and_record_it(mlp):
    _, v, split, g, *_ = mlp
    top = np.linalg.eigvalsh(g)[-1]
    # loop='lax' here: one HVP per program compiles faster than the host loop's chunk of 5.
    res = power_iteration(split, v["params"], curvature="ggn", num_iters=500, tol=1e-7, loop="lax")
    assert res.info.curvature == "ggn"
    # PSD: power iteration converges to λ_max; at tol 1e-7 the Rayleigh quotient is within
    # ~1e-6 relative (float32), allow 1e-4.
    assert float(res.eigenvalue) == pytest.approx(top, rel=1e-4)
    # The solvers' plumbing does not depend on the curvature (the products are tested
    # densely above); the record is static: eval_shape traces without compiling.
    lz = jax.eval_shape(lambda p: lanczos(split, p, 10, curvature="fisher"), v["params"])
    assert lz.info == SolverInfo("fisher", "lax", "highest", False) and lz.alphas.shape == (10,)
    tr = jax.eval_shape(lambda p: hutchinson_trace(split, p, key=jax.random.PRNGKey(0), num_samples=4, curvature="ggn"), v["params"])
    assert tr.info == SolverInfo("ggn", "lax", "highest", False)
    sd = jax.eval_shape(lambda p: spectral_density(split, p, key=jax.random.PRNGKey(0), order=4, num_vectors=1, curvature="fisher"), v["params"])
    assert sd["info"].curvature == "fisher"


# --- traces -----------------------------------------------------------------------------

P_Q = 60
_U, _ = np.linalg.qr(RNG.standard_normal((P_Q, P_Q)))
SPEC = 0.6 ** np.arange(P_Q)  # fast decay: Hutch++'s deflation removes almost everything
A_PSD = (_U * SPEC) @ _U.T
_V = RNG.standard_normal((P_Q, 5))
A_LOW = _V @ _V.T  # rank 5


def _quadratic(a):
    a = jnp.asarray(a, jnp.float32)
    return lambda p: 0.5 * p @ a @ p


def test_hutchpp_is_exact_on_a_matrix_of_rank_below_the_sketch():
    """rank(A) = 5 <= k = 6: Q spans A's range, the deflated rest is 0, the estimate is
    tr(A) up to float32 rounding (1e-5 relative)."""
    res = hutchpp_trace(_quadratic(A_LOW), jnp.zeros(P_Q), key=jax.random.PRNGKey(0), num_matvecs=18, probes_per_call=6)
    assert float(res.estimate) == pytest.approx(np.trace(A_LOW), rel=1e-5)
    assert int(res.num_matvecs) == 18 and res.info.loop == "host"


@pytest.fixture(scope="module")
def trace_runs():
    """400 seeds of Hutchinson (30 probes) and Hutch++ (30 matvecs) on A_PSD, one vmapped
    program each (inside vmap the solvers use their lax loops)."""
    loss, p0 = _quadratic(A_PSD), jnp.zeros(P_Q)
    keys = jax.random.split(jax.random.PRNGKey(42), 400)
    hutch = jax.jit(jax.vmap(lambda k: hutchinson_trace(loss, p0, key=k, num_samples=30).estimate))(keys)
    hpp = jax.jit(jax.vmap(lambda k: hutchpp_trace(loss, p0, key=k, num_matvecs=30, probes_per_call=4).estimate))(keys)
    return np.asarray(hutch, np.float64), np.asarray(hpp, np.float64)


def test_hutchpp_is_unbiased_and_beats_hutchinson_at_equal_matvecs(trace_runs):
    hutch, hpp = trace_runs
    exact = SPEC.sum()
    # Unbiased: the mean of 400 estimates within 4 standard errors of the truth (a
    # 4-sigma margin: a false failure has probability ~6e-5 for an unbiased estimator,
    # and the seeds are fixed).
    for est in (hutch, hpp):
        assert abs(est.mean() - exact) <= 4 * est.std(ddof=1) / np.sqrt(len(est))
    # Hutchinson's RMS error is sqrt(2(‖A‖_F² − Σ A_ii²)/30) (~0.3 here); Hutch++ leaves
    # only the tail beyond the top 10 (Frobenius² ~ 0.6^20/0.64 ~ 6e-5) plus the sketch's
    # leakage: a predicted ratio below 0.02. Assert a factor 10.
    var = 2 * (np.sum(A_PSD**2) - np.sum(np.diag(A_PSD) ** 2)) / 30
    assert np.sqrt(np.mean((hutch - exact) ** 2)) == pytest.approx(np.sqrt(var), rel=0.15)  # 400 seeds: ±7% (1σ)
    assert np.sqrt(np.mean((hpp - exact) ** 2)) < 0.1 * np.sqrt(np.mean((hutch - exact) ** 2))


def test_batched_probes_equal_one_at_a_time(mlp):
    """Probe i is the same vector whatever the batch; 20 probes in calls of 7 (the last
    call masks one surplus probe) equal 20 single calls up to rounding of vmapped
    products: 1e-5 of the sum of |vᵀHv|, bounded by the estimate's scale."""
    _, v, split, *_ = mlp
    key = jax.random.PRNGKey(3)
    # loop='lax': one small compiled program each (the loops are compared elsewhere).
    one = hutchinson_trace(split, v["params"], key=key, num_samples=20, loop="lax")
    seven = hutchinson_trace(split, v["params"], key=key, num_samples=20, probes_per_call=7, loop="lax")
    scale = abs(float(one.estimate)) + 3 * float(one.stderr) * np.sqrt(20)
    assert abs(float(one.estimate) - float(seven.estimate)) <= 1e-5 * scale
    assert abs(float(one.stderr) - float(seven.stderr)) <= 1e-5 * scale
    q = _quadratic(A_PSD)
    sd1 = spectral_density(q, jnp.zeros(P_Q), key=key, order=8, num_vectors=5, num_points=50, loop="lax")
    sd3 = spectral_density(q, jnp.zeros(P_Q), key=key, order=8, num_vectors=5, num_points=50, probes_per_call=3, loop="lax")
    np.testing.assert_allclose(sd1["nodes"], sd3["nodes"], atol=1e-5 * SPEC[0])
    np.testing.assert_allclose(sd1["weights"], sd3["weights"], atol=1e-5)


# --- loops, precision, float64 ------------------------------------------------------------


def test_host_loop_equals_lax_loop(mlp):
    """Both loops run the same iteration function; compiled separately, their float32
    results differ only by rounding. 30 power iterations at tolerance 0: measured
    difference 6e-8 relative, allowed 1e-5 (the error of one iteration's vector is
    damped by the later ones, λ₂/λ₁ < 1, so it does not accumulate)."""
    _, v, split, *_ = mlp
    runs = {loop: power_iteration(split, v["params"], num_iters=30, tol=0.0, loop=loop) for loop in ("host", "lax")}
    assert runs["host"].info.loop == "host" and runs["lax"].info.loop == "lax"
    assert int(runs["host"].iterations) == int(runs["lax"].iterations) == 30
    assert float(runs["host"].eigenvalue) == pytest.approx(float(runs["lax"].eigenvalue), rel=1e-5)
    q = _quadratic(A_PSD)
    lz = {loop: lanczos(q, jnp.zeros(P_Q), 10, loop=loop) for loop in ("host", "lax")}  # 2 host chunks
    np.testing.assert_allclose(lz["host"].alphas, lz["lax"].alphas, atol=1e-5 * float(jnp.abs(lz["lax"].alphas).max()))
    # 'unroll': the same iterations traced into the caller's program, also under jit.
    unrolled = jax.jit(lambda a: lanczos(q, a, 10, loop="unroll").alphas)(jnp.zeros(P_Q))
    np.testing.assert_allclose(unrolled, lz["lax"].alphas, atol=1e-5 * float(jnp.abs(lz["lax"].alphas).max()))
    top = jax.jit(lambda a: power_iteration(q, a, num_iters=10, tol=0.0, loop="unroll").eigenvalue)(jnp.zeros(P_Q))
    assert float(top) == pytest.approx(float(power_iteration(q, jnp.zeros(P_Q), num_iters=10, tol=0.0, loop="lax").eigenvalue), rel=1e-5)
    # Linearized once, then applied: the same products to rounding ('auto' picks the lax
    # loop: the linearization is reused within one program).
    lin = power_iteration(split, v["params"], num_iters=30, tol=0.0, linearize=True)
    assert lin.info.linearize and lin.info.loop == "lax"
    assert float(lin.eigenvalue) == pytest.approx(float(runs["lax"].eigenvalue), rel=1e-5)
    # The host loop's jitted iteration is cached per loss: a second call does not retrace.
    from jaxnorm.diagnostics import hessian as hessian_module

    steps = hessian_module._HOST_STEPS[split]
    before = {k: f._cache_size() for k, f in steps.items()}
    power_iteration(split, v["params"], num_iters=3, tol=0.0, loop="host")
    assert {k: f._cache_size() for k, f in steps.items()} == before


def test_auto_loop_is_host_on_cpu_and_lax_under_jit(mlp):
    _, v, split, *_ = mlp
    # num_iters=0 runs no iteration (nothing to compile); eval_shape traces like jit.
    assert power_iteration(split, v["params"], num_iters=0).info.loop == "host"  # the test machine's CPU
    assert jax.eval_shape(lambda p: power_iteration(split, p, num_iters=2), v["params"]).info.loop == "lax"


def test_precision_highest_equals_default_on_cpu_and_is_recorded(mlp):
    """On a CPU both are full float32: the products agree to rounding (1e-6 relative)."""
    _, v, split, *_ = mlp
    u = jax.tree.map(jnp.ones_like, v["params"])
    hi = ravel_pytree(jax.jit(lambda p: hvp(split, p, u, precision="highest"))(v["params"]))[0]
    lo = ravel_pytree(jax.jit(lambda p: hvp(split, p, u, precision=None))(v["params"]))[0]
    np.testing.assert_allclose(hi, lo, rtol=1e-6, atol=1e-6 * float(jnp.abs(lo).max()))
    assert power_iteration(split, v["params"], num_iters=0).info.precision == "highest"
    assert power_iteration(split, v["params"], num_iters=0, precision=None).info.precision == "default"


def test_float64_is_honoured():
    """Under x64 (``jax.enable_x64``, the successor of ``jax.experimental.enable_x64``) with float64 params and inputs: the losses, the products and the solver
    stay float64, and power iteration reaches the dense Hessian's top eigenvalue to 1e-10
    (float32 rounding alone would leave ~1e-7)."""
    with jax.enable_x64(True):
        z = jnp.asarray(RNG.standard_normal((4, C)), jnp.float64)
        assert cross_entropy(z, Y[:4]).dtype == jnp.float64 and squared_error(z, Y[:4]).dtype == jnp.float64
        assert cross_entropy(z.astype(jnp.float32), Y[:4]).dtype == jnp.float32
        assert l2_penalty({"kernel": z}).dtype == jnp.float64
        module = get_model("mlp", depth=2, width=3, num_classes=C, activation="tanh")
        x64 = jnp.asarray(X, jnp.float64)
        v = jax.jit(lambda k: module.init(k, x64, train=False))(jax.random.PRNGKey(1))
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
        split = hessian_loss_fn(module, v, x64, Y)
        flat, unravel = ravel_pytree(v["params"])
        dense = np.asarray(jax.jit(jax.hessian(lambda f: split(unravel(f))))(flat))
        lam = np.linalg.eigvalsh(dense)
        want = lam[np.argmax(np.abs(lam))]
        res = power_iteration(split, v["params"], num_iters=3000, tol=1e-15, loop="lax")
        assert res.eigenvalue.dtype == jnp.float64 and jax.tree.leaves(res.eigenvector)[0].dtype == jnp.float64
        assert abs(float(res.eigenvalue) - want) <= 1e-10 * abs(want)
        ggn_out = jax.eval_shape(lambda p: curvature_vp(split, p, "ggn")(p), v["params"])  # dtypes without compiling
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(ggn_out))


def test_documented_errors(mlp):
    _, v, split, *_ = mlp
    p, key = v["params"], jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="unknown curvature"):
        power_iteration(split, p, curvature="kfac")
    with pytest.raises(TypeError, match="SplitLoss"):
        lanczos(lambda q: split(q), p, 3, curvature="ggn")
    with pytest.raises(ValueError, match="loop must be"):
        lanczos(split, p, 3, loop="python")
    with pytest.raises(ValueError, match="loop='host'"):
        jax.jit(lambda q: power_iteration(split, q, loop="host"))(p)
    with pytest.raises(ValueError, match="linearize"):
        power_iteration(split, p, loop="host", linearize=True)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="probes_per_call"):
            hutchinson_trace(split, p, key=key, num_samples=4, probes_per_call=bad)
        with pytest.raises(ValueError, match="probes_per_call"):
            spectral_density(split, p, key=key, order=3, num_vectors=2, probes_per_call=bad)
    with pytest.raises(ValueError, match="num_samples"):
        hutchinson_trace(split, p, key=key, num_samples=0)
    for bad in (0, 10, 4.5):
        with pytest.raises(ValueError, match="num_matvecs"):
            hutchpp_trace(split, p, key=key, num_matvecs=bad)
    with pytest.raises(ValueError, match="probes_per_call"):
        hutchpp_trace(split, p, key=key, num_matvecs=9, probes_per_call=0)
