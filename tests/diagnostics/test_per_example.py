"""Per-example gradients (:mod:`jaxnorm.diagnostics.per_example`) against explicit loops.

Every reference is an independent per-example computation: a Python loop of
``jax.grad`` over single examples (``running``, ``frozen``: with BN statistics computed
here in float64 from the BN layers' captured inputs), or ``jax.grad`` of the
training-mode loss written here (``coupled``). The tiny models (helpers.MODELS) have
non-trivial running statistics and parameters moved off their initial values.

Tolerances are scale-relative per leaf (helpers.assert_tree_close): the library and the
loop run the same float32 arithmetic in a different order (batched vs single-example
matmuls, float64 vs float32 statistics), which moves results by a few ulps of the
largest entry: measured 1e-7 to 5e-7 of each leaf's scale. RTOL = 1e-5 leaves a 20x
margin while still catching any semantic difference (a wrong statistic or a missing
gradient path moves gradients by > 1e-2 of their scale: test_modes_differ...).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import (
    MODES,
    batch_loss_fn,
    frozen_batch_stats,
    mean_gradient,
    per_example_grads,
    per_example_gram,
    per_example_sq_norms,
    random_mask,
)
from jaxnorm.objective import is_weight
from tests.diagnostics.helpers import (
    B,
    MODELS,
    assert_tree_close,
    batch,
    bn_inputs,
    ce,
    flat64,
    group_moments,
    model,
)

RTOL = 1e-5

X, Y = batch()


@functools.lru_cache(maxsize=None)
def lib(name: str, mode: str, chunk_size=None):
    """The library's ``(param_grads, input_grads)`` (wrt='both')."""
    if chunk_size is None and mode in MODES:
        return modes(name)[mode]
    return extras()[f"{mode}/{chunk_size}"]


@functools.lru_cache(maxsize=None)
def modes(name: str):
    """The rows (wrt='both') of the modes the tests use, and ``mean_gradient`` for the BN
    models, in one compilation per model (compilations, ~1 s each, dominate the run time
    on CPU)."""
    module, v = model(name)

    def run(v):
        out = {m: per_example_grads(module, v, X, Y, bn_mode=m, wrt="both") for m in ROW_MODES.get(name, MODES)}
        if name in MEAN_GRADIENT_MODES:
            out.update({f"mean/{m}": mean_gradient(module, v, X, Y, bn_mode=m) for m in MEAN_GRADIENT_MODES[name]})
        return out

    return jax.device_get(jax.jit(run)(v))


@functools.lru_cache(maxsize=None)
def extras():
    """conv_bn: chunked, masked, Gram/norm and weight-decay variants, one compilation."""
    module, v = model("conv_bn")
    mask = the_mask()

    def run(v):
        pe = functools.partial(per_example_grads, module, v, X, Y)
        out = {
            "batch/3": pe(bn_mode="batch", wrt="both", chunk_size=3),
            "masked": pe(bn_mode="frozen", mask=mask, chunk_size=3),
            "decay/running": pe(bn_mode="running", weight_decay=DECAY),
            "decay/batch": pe(bn_mode="batch", weight_decay=DECAY),
        }
        for c, masked in GRAM_CASES:
            kw = dict(bn_mode="frozen", chunk_size=c, mask=mask if masked else None)
            out[f"gram/{c}/{masked}"] = per_example_gram(module, v, X, Y, **kw)
            out[f"sq/{c}/{masked}"] = per_example_sq_norms(module, v, X, Y, **kw)
        return out

    return jax.device_get(jax.jit(run)(v))


DECAY = 0.1
# Unchunked; and chunks of 5 (5+3, the last padded) with a mask: 2x2 blocks (on a CPU the
# library unrolls the n + n² chunk passes, so few chunks keep the compilation short).
GRAM_CASES = [(None, False), (5, True)]
# running: batch_loss_fn's eval-mode branch; coupled: training's gradient; frozen with
# ghost groups: the vmapped branch.
MEAN_GRADIENT_MODES = {"conv_bn": MODES, "mlp_ghost": ("frozen",)}
ROW_MODES = {"mlp_ghost": ("frozen", "batch")}  # default: all three


@functools.lru_cache(maxsize=None)
def the_mask():
    return random_mask(jax.random.PRNGKey(3), model("conv_bn")[1]["params"], 0.3)


def stack(rows):
    return jax.tree.map(lambda *a: np.stack(a), *rows)


@functools.lru_cache(maxsize=None)
def single_grad(name: str):
    """``(∇_θ, ∇_x)`` of one example's CE in eval mode with the given ``batch_stats``."""
    module, _ = model(name)

    def loss(params, stats, xi, yi):
        v = {"params": params, **({"batch_stats": stats} if stats else {})}
        return ce(module.apply(v, xi[None], train=False), yi[None])[0]

    return jax.jit(jax.grad(loss, argnums=(0, 2)))


def group_size(name):
    return dict(MODELS[name][1].get("norm_options", {})).get("group_size")


def loop_reference(name: str, mode: str):
    """Python loop over examples. ``running``: the running statistics. ``frozen``: each
    example normalized by its ghost group's (or the batch's) mean and biased variance of
    every BN layer's training-mode input, computed here in float64."""
    module, v = model(name)
    grad = single_grad(name)
    if mode == "frozen":
        gs = group_size(name)
        moments = {k: group_moments(a, gs) for k, a in bn_inputs(module, v, X).items()}
    rows = []
    for i in range(B):
        if mode == "running":
            stats = v.get("batch_stats", {})
        else:
            g = 0 if group_size(name) is None else i // group_size(name)
            stats = {k: {"mean": jnp.float32(mu[g]), "var": jnp.float32(var[g])} for k, (mu, var) in moments.items()}
        rows.append(grad(v["params"], stats, X[i], Y[i]))
    return stack(rows)


def train_loss_vector(module, v):
    """The training-mode per-example CE vector as a function of (params, inputs)."""

    def losses(params, x):
        logits, _ = module.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
        return ce(logits, Y)

    return losses


# --------------------------------------------------------------------------------------
# The three modes.


@pytest.mark.parametrize("name,mode", [("conv_bn", "running"), ("conv_bn", "frozen"), ("mlp_ghost", "frozen")])
def test_running_and_frozen_match_a_loop_of_single_example_gradients(name, mode):
    """``running``/``frozen`` rows (params and inputs, wrt='both') equal a Python loop of
    single-example gradients under the same fixed statistics; ``mlp_ghost``: each example
    uses its own ghost group's statistics."""
    gp, gx = lib(name, mode)
    ref_p, ref_x = loop_reference(name, mode)
    assert_tree_close(gp, ref_p, RTOL, f"{name}/{mode} params")
    assert_tree_close(gx, ref_x, RTOL, f"{name}/{mode} inputs")


def test_frozen_ghost_groups_differ_from_whole_batch_statistics():
    """Guards the ghost-group test against vacuity: normalizing example 0 by whole-batch
    statistics instead of its group's gives visibly different gradients (> 100x RTOL)."""
    module, v = model("mlp_ghost")
    moments = {k: group_moments(a, None) for k, a in bn_inputs(module, v, X).items()}
    whole = {k: {"mean": jnp.float32(mu[0]), "var": jnp.float32(var[0])} for k, (mu, var) in moments.items()}
    gp, _ = single_grad("mlp_ghost")(v["params"], whole, X[0], Y[0])
    got = flat64(jax.tree.map(lambda a: a[0], lib("mlp_ghost", "frozen")[0]))
    assert np.abs(flat64(gp) - got).max() > 100 * RTOL * np.abs(got).max()


@pytest.mark.parametrize("name", ["conv_bn", "mlp_ghost"])
def test_coupled_rows_average_to_the_training_batch_gradient(name):
    """``coupled`` rows average to ``jax.grad`` of the training-mode batch mean loss (BN
    with the batch's or the ghost groups' statistics, differentiated through), written
    here with ``module.apply(..., train=True, mutable=['batch_stats'])``. The mean of 8
    float32 vector-Jacobian products against e_i vs one against the vector of 1/8: equal
    up to reassociation. The mean cancels (BN makes the rows partly opposite: it can be
    5x smaller than the rows), so the bound is relative to the rows' scale: measured
    ~6e-7, bound 1e-5."""
    module, v = model(name)
    losses = train_loss_vector(module, v)
    mean_ref = jax.jit(jax.grad(lambda p: jnp.mean(losses(p, X))))(v["params"])
    rows = lib(name, "batch")[0]
    assert_tree_close(jax.tree.map(lambda a: a.mean(0), rows), mean_ref, RTOL, "coupled mean", scale=rows)


def test_coupled_rows_are_the_rows_of_the_training_loss_jacobian():
    """``coupled`` row i, params: ∂ℓ_i/∂θ of the training-mode per-example loss vector;
    inputs: the diagonal block ∂ℓ_i/∂x_i, every other input fixed and the batch
    statistics moving with x_i. References: loops of jax.grad over i."""
    module, v = model("conv_bn")
    losses = train_loss_vector(module, v)
    row = jax.jit(jax.grad(lambda p, i: losses(p, X)[i]))
    diag = jax.jit(jax.grad(lambda xi, i: losses(v["params"], X.at[i].set(xi))[i]))
    gp, gx = lib("conv_bn", "batch")
    assert_tree_close(gp, stack([row(v["params"], i) for i in range(B)]), RTOL, "coupled params")
    assert_tree_close(gx, np.stack([diag(X[i], i) for i in range(B)]), RTOL, "coupled inputs")


def test_modes_differ_under_batchnorm():
    """Guards the equality tests against vacuity: with BN the three definitions give
    different gradients (relative differences far above the tolerance)."""
    g = {m: flat64(lib("conv_bn", m)[0], 1) for m in MODES}
    for a, b in [("running", "frozen"), ("frozen", "batch")]:
        assert np.abs(g[a] - g[b]).max() > 1e-2 * np.abs(g[b]).max()


@pytest.mark.parametrize("name", ["mlp_vanilla", "mlp_layer"])
def test_all_modes_agree_without_batchnorm(name):
    """Without BN (no norm, or layer norm whose statistics are per example) the three
    modes are one definition: equal rows, params and inputs (vanilla: also equal to the
    loop of single-example gradients)."""
    ref_p, ref_x = loop_reference(name, "running") if name == "mlp_vanilla" else lib(name, "running")
    for mode in MODES:
        gp, gx = lib(name, mode)
        assert_tree_close(gp, ref_p, RTOL, f"{name}/{mode} params")
        assert_tree_close(gx, ref_x, RTOL, f"{name}/{mode} inputs")


@pytest.mark.parametrize(
    "name",
    [
        "conv_bn",
        "mlp_ghost",
        # With dropout, frozen mode is the training-mode pass with dropout off (the
        # statistics too are taken with dropout bypassed): the reference is the same
        # network built with dropout_rate=0 (dropout has no parameters).
        "mlp_dropout",
    ],
)
def test_frozen_forward_reproduces_training_logits(name):
    """Documented (module docstring, ``'frozen'``): "The forward pass of every example is
    exactly the training-mode forward pass (with dropout off)". ``frozen_batch_stats``
    row i, fed to an eval-mode pass of x_i alone, gives the training-mode logits of x_i
    of the same network without dropout, and ``batch_loss_fn(bn_bn_mode='frozen')`` equals the
    training-mode mean loss. Same float32 arithmetic in a different order: 1e-5."""
    module, v = model(name)
    rng = jax.random.PRNGKey(7)
    reference = module.clone(dropout_rate=0.0) if name == "mlp_dropout" else module

    @jax.jit
    def run(v):
        train_logits, _ = reference.apply(v, X, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        stats = frozen_batch_stats(module, v, X, rng=rng)
        one = lambda s, xi: module.apply({"params": v["params"], "batch_stats": s}, xi[None], train=False)[0]
        rows = jax.vmap(one)(stats, X)  # example i alone, with row i of the statistics
        loss = batch_loss_fn(module, v, X, Y, bn_mode="frozen", rng=rng)(v["params"])
        return train_logits, stats, rows, loss

    train_logits, stats, rows, loss = run(v)
    assert all(a.shape[0] == B for a in jax.tree.leaves(stats))
    np.testing.assert_allclose(rows, train_logits, rtol=RTOL, atol=RTOL * np.abs(train_logits).max())
    np.testing.assert_allclose(loss, np.mean(ce(train_logits, Y)), rtol=RTOL)


@pytest.mark.parametrize("name", sorted(MEAN_GRADIENT_MODES))
def test_mean_gradient_is_the_mean_of_the_per_example_gradients(name):
    """``mean_gradient(mode)`` (∇ of ``batch_loss_fn``) equals the mean of the same mode's
    rows, as documented; for ``frozen`` this checks that the statistics are not
    differentiated (mlp_ghost: the ghost-group branch of ``batch_loss_fn``)."""
    out = modes(name)
    for mode in MEAN_GRADIENT_MODES[name]:
        rows = out[mode][0]
        # Bound relative to the rows, as for the coupled mean above.
        assert_tree_close(out[f"mean/{mode}"], jax.tree.map(lambda a: a.mean(0), rows), RTOL, f"{name}/{mode}", scale=rows)


# --------------------------------------------------------------------------------------
# Chunks, masks, Gram matrix, norms, weight decay.


def test_chunking_that_does_not_divide_the_batch_changes_nothing():
    """chunk_size=3 on a batch of 8 (chunks 3+3+2, the last padded with a repeated
    example): the same rows, params and inputs, as one vectorized pass. ``coupled`` (the
    vjp rows); ``frozen`` chunks are checked with a mask below.

    Only the vmap width differs, but that makes two different compiled programs: XLA tiles
    and vectorizes a width-3 and a width-8 batched matmul/convolution differently (and
    differently per instruction set), so the float32 sums are reassociated. A kernel
    gradient entry of conv2 in ``coupled`` mode sums B x H x W = 8 x 8 x 8 = 512 products
    (BN couples the examples), so the reassociation error is bounded by about
    n·u·Σ|terms| = 512 x 6e-8 = 3e-5 of the summands' scale (worst case) and is typically
    ~√n·u ≈ 1.4e-6 of it: measured 1.0e-6 of the leaf's max on an AVX-512 Xeon (the old
    1e-6 tolerance failed there). RTOL = 1e-5, the module's tolerance for reordered float32
    arithmetic, is 7x the typical error, while a chunking bug (a shifted chunk, a padding
    row kept, a row from the wrong example) moves whole rows by O(1) of the scale."""
    assert_tree_close(lib("conv_bn", "batch", 3), lib("conv_bn", "batch"), RTOL, "chunked coupled")


def masked_reference(grads, mask) -> np.ndarray:
    """Each leaf's rows at the mask's flat indices, concatenated in leaf order (NumPy)."""
    leaves = [np.asarray(l) for l in jax.tree.leaves(grads)]
    return np.concatenate([l.reshape(l.shape[0], -1)[:, i] for l, i in zip(leaves, mask.indices)], axis=1)


def test_mask_path_equals_masking_the_full_gradients():
    """With a mask (and chunks of 3) the rows are the masked coordinates of the full
    per-example gradients: a selection, so equal up to the vmap width, which reassociates
    the float32 sums (a different compiled program: the bound of the chunking test above),
    hence RTOL of the largest entry; a wrong index or chunk gives O(1) errors."""
    got = extras()["masked"]
    want = masked_reference(lib("conv_bn", "frozen")[0], the_mask())
    assert got.shape == (B, the_mask().size) and got.dtype == np.float32
    assert the_mask().size < 0.5 * sum(the_mask().sizes)  # a real subset: 30% of each leaf, rounded up
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


@pytest.mark.parametrize("chunk_size,masked", GRAM_CASES)
def test_gram_and_squared_norms_equal_the_explicit_products(chunk_size, masked):
    """``per_example_gram`` = G Gᵀ and ``per_example_sq_norms`` = row norms² of the
    (masked) per-example gradient matrix G, in float64 here; with chunks the Gram matrix
    is assembled from 2x2 blocks (chunks 5+3). float32 dot products of ~200 terms: 1e-5
    of the largest entry."""
    full = lib("conv_bn", "frozen")[0]
    g = masked_reference(full, the_mask()).astype(np.float64) if masked else flat64(full, 1)
    k, sq = extras()[f"gram/{chunk_size}/{masked}"], extras()[f"sq/{chunk_size}/{masked}"]
    assert k.shape == (B, B) and sq.shape == (B,)
    want = g @ g.T
    np.testing.assert_allclose(k, want, rtol=RTOL, atol=RTOL * np.abs(want).max())
    np.testing.assert_allclose(sq, (g**2).sum(1), rtol=RTOL)


@pytest.mark.parametrize("mode", ["running", "batch"])
def test_weight_decay_adds_lambda_w_to_kernels_only(mode):
    """With weight_decay=λ every row gains λW on the kernels and nothing on biases, γ, β
    (two implementations: the L2 term in the single-example loss for running/frozen, an
    added tree for coupled). Differences of float32 gradients: 1e-5 of the scale."""
    _, v = model("conv_bn")
    got, base = extras()[f"decay/{mode}"], lib("conv_bn", mode)[0]
    scale = max(np.abs(l).max() for l in jax.tree.leaves(base))
    kernels = 0
    for (path, g), b, w in zip(
        jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(base), jax.tree.leaves(v["params"])
    ):
        added = np.asarray(g, np.float64) - np.asarray(b, np.float64)
        kernels += is_weight(path)
        want = np.broadcast_to(DECAY * np.asarray(w) if is_weight(path) else 0.0, added.shape)
        np.testing.assert_allclose(added, want, atol=RTOL * scale, err_msg=jax.tree_util.keystr(path))
    assert kernels == 3  # conv1, conv2, dense3


# --------------------------------------------------------------------------------------
# Errors (under jax.eval_shape: raised while tracing, nothing is compiled).


def bad_calls():
    other_mask = random_mask(jax.random.PRNGKey(0), {"w": jnp.zeros((3, 2))}, 0.5)
    return [
        (dict(bn_mode="exact"), ValueError, "must be one of"),
        (dict(bn_mode="coupled"), ValueError, "'coupled' is now called 'batch'"),
        (dict(wrt="weights"), ValueError, "wrt must be one of"),
        (dict(y=Y[:3]), ValueError, r"expected x \(batch, ...\) and integer labels"),
        (dict(x=X[0]), ValueError, r"expected x \(batch, ...\)"),
        (dict(x=X[:4].astype(jnp.int32)), TypeError, "x must be floating point"),
        (dict(y=Y[:4].astype(jnp.float32)), TypeError, "labels must be integers"),
        (dict(chunk_size=0), ValueError, "chunk_size must be >= 1"),
        (dict(mask=other_mask), ValueError, "does not match the mask"),
        # A dense BN layer in training mode sees one value per feature on a batch of one:
        # the variance is undefined, and batch_norm's error reaches the caller.
        (dict(bn_mode="batch", x=X[:1], y=Y[:1]), ValueError, "at least 2 values per feature"),
    ]


@pytest.mark.parametrize("change,error,match", bad_calls(), ids=[m for _, _, m in bad_calls()])
def test_documented_errors(change, error, match):
    """Each documented misuse raises the documented exception with a message saying what
    is wrong."""
    module, v = model("mlp_bn")
    kwargs = dict(x=X[:4], y=Y[:4], bn_mode="frozen")
    kwargs.update(change)
    x, y = kwargs.pop("x"), kwargs.pop("y")
    with pytest.raises(error, match=match):
        jax.eval_shape(lambda v: per_example_grads(module, v, x, y, **kwargs), v)


def test_other_argument_errors():
    """Variables without 'params'; the Gram and norm functions check like per_example_grads."""
    module, v = model("mlp_bn")
    with pytest.raises(ValueError, match="variables must hold 'params'"):
        per_example_grads(module, {"batch_stats": v["batch_stats"]}, X, Y)
    for fn in (per_example_gram, per_example_sq_norms):
        with pytest.raises(ValueError, match="must be one of"):
            fn(module, v, X, Y, bn_mode="exact")
        with pytest.raises(ValueError, match="chunk_size"):
            fn(module, v, X, Y, chunk_size=0)


# --------------------------------------------------------------------------------------
# The chunk maps: unrolled on a CPU (what every test above ran), jax.lax.map elsewhere.


@pytest.mark.parametrize("unroll", [True, False])
def test_chunk_maps_equal_a_python_loop_unrolled_or_not(unroll):
    """``map_chunks`` stacks ``fn`` over the leading axis of a pytree, and ``map_batched``
    equals ``vmap`` computed 3 rows at a time (7 = 3+3+1, padding dropped), both with the
    CPU's unrolled loop and with ``lax.map`` (the GPU/TPU path, otherwise untested here)."""
    from jaxnorm.diagnostics._mapping import map_batched, map_chunks

    xs = {"a": jnp.arange(21.0).reshape(7, 3), "b": jnp.arange(7.0)}
    fn = lambda t: {"s": jnp.sum(t["a"]) * t["b"], "v": t["a"] * 2.0}
    want = {"s": np.array([np.sum(np.arange(21.0).reshape(7, 3)[i]) * i for i in range(7)]),
            "v": 2.0 * np.arange(21.0).reshape(7, 3)}
    for got in (map_chunks(fn, xs, unroll=unroll), map_batched(fn, xs, 3, unroll=unroll), map_batched(fn, xs)):
        np.testing.assert_array_equal(got["s"], want["s"])
        np.testing.assert_array_equal(got["v"], want["v"])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        map_batched(fn, xs, 0, unroll=unroll)
