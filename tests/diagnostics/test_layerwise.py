"""Layer-wise per-example statistics (:mod:`jaxnorm.diagnostics.layerwise`) against the
materialized per-example gradients.

The reference is :func:`per_example_grads` (a vmap of single-example gradients, tested
against Python loops in test_per_example.py), reduced here in float64 NumPy: ``Σ g²``,
``G Gᵀ``, the mean of ``g²`` and of ``g``. Every model family of the registry (mlp,
deep_fc, convnet plain and residual, on images and on sequences, 3c3d, allcnnc, the
MNIST-1D linear/MLP/CNN baselines), tiny, in ``running`` and ``frozen``
mode, with and without BatchNorm, ghost groups, the ``bn_ablation`` superset and layer
norm; weight norm (the per-layer fallback of a re-parameterized kernel) in the float32
test below.

The zoo runs in float64 (``jax.enable_x64``) with a float64 loss (the library's losses
compute in float32): that is where "exact" can be checked. ``running`` without weight
decay, ``frozen`` with λ = 0.1, whose reference adds ``λ·W`` to the rows' kernels here
(per_example_grads' definition; its own L2 term, :func:`jaxnorm.objective.l2_penalty`,
sums in float32). To stay within the file's time budget (compilation-bound) the
networks run ``frozen`` only -- the mode where BN's statistics are batch-dependent, and
without BN the same computation as ``running`` -- except the BN ConvNet, which runs
both. The two paths compute the same sums in another order; in float64 that is
~1e-15 relative, amplified by the conditioning of the frozen BN statistics of these
tiny batches (b = 4 examples at 1x1 resolution in 3C3D: measured ~1e3 in float32,
where both paths move ~5e-5 away from the float64 value), so ~1e-12 at worst;
F64_RTOL = 1e-10 leaves 100x headroom and is 1e8 below a semantic error.

float32 (weight decay, the mse loss, the public ``per_example_gram``/``sq_norms``, the
coupled mode) runs on the small MLPs, whose statistics are well conditioned: the paths' gradients differ by
reassociation, 1e-7 to 5e-7 of a leaf's scale (measured in test_per_example.py); a
squared norm or Gram entry doubles that, and float32 sums of up to ~1e3 products add
~log2(P)·u ≈ 6e-7; so ~2e-6 is the expected worst case and F32_RTOL = 2e-5 leaves 10x
headroom (measured here: <= 5e-7). Leaving out any one layer's term moves the Gram by
more than 1e-6 of its scale on the two DeepOBS nets (frozen BN on 4 examples makes the
early layers' gradients ~1e4 x the last layer's; test_every_layer_term_is_visible): 1e4
x F64_RTOL.

Gram errors are measured relative to ``sqrt(K_ii K_jj)`` (the Cauchy-Schwarz scale of
entry ij: an off-diagonal entry can cancel to ~0), mean-gradient errors relative to the
rows' scale (the mean cancels), second moments relative to each leaf's own scale.
"""

from __future__ import annotations

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics import (
    mean_gradient,
    per_example_grads,
    per_example_gram,
    per_example_sq_norms,
    per_example_statistics,
    random_mask,
)
from jaxnorm.diagnostics.layerwise import STATISTICS, layer_plan
from jaxnorm.layers import set_ablation_variant
from jaxnorm.models import get_model
from tests.diagnostics.helpers import CLASSES, assert_tree_close, draw_variables

F32_RTOL = 2e-5  # expected worst case ~2e-6 (module docstring)
F64_RTOL = 1e-10
DECAY = 0.1
MODES = ("running", "frozen")

# name -> (registry name, kwargs, input shape, batch, options). Tiny widths; the DeepOBS
# nets have fixed widths, so they get a small input instead (9x9: the smallest that
# survives 3C3D's VALID convs, and All-CNN-C's two stride-2 convs and VALID 3x3).
CASES = {
    "mlp_bn": ("mlp", dict(depth=3, width=8, norm="bn_gamma_beta"), (8, 8, 1), 8, dict(modes=("frozen",))),
    "mlp_ghost": (
        "mlp", dict(depth=3, width=8, norm="bn_gamma_beta", norm_options={"group_size": 4}), (8, 8, 1), 8, dict(modes=("frozen",))
    ),
    "deep_fc_ablation": ("deep_fc", dict(depth=4, width=8, norm="bn_ablation"), (6,), 8, dict(variant="bn_gamma", modes=("frozen",))),
    "convnet_bn": ("convnet", dict(depth=3, width=4, norm="bn_gamma_beta"), (8, 8, 1), 8, {}),
    "convnet_residual_layer": (
        "convnet", dict(depth=4, width=4, residual=True, norm="layer", stages=1), (8, 8, 1), 8, dict(modes=("frozen",))
    ),
    "3c3d_bn": ("3c3d", dict(norm="bn_gamma_beta"), (9, 9, 1), 4, dict(modes=("frozen",))),
    # Without the second moment, so that the convs at 5x5 and 3x3 take the position-pair
    # forms of the squared norms and the Gram (test_layer_plan_names_each_layer_treatment).
    "allcnnc_vanilla": ("allcnnc", dict(), (9, 9, 1), 2, dict(modes=("frozen",), compute=("sq_norms", "gram", "mean_grad"))),
    # 1-D: sequences (length, channels). The MNIST-1D baselines on shortened sequences
    # (the models take any length), BN over batch and length; the linear model's one slot
    # is its logits. (The GRU falls back to the materialized path: test_mnist1d_models.py.)
    "mnist1d_linear_bn": ("mnist1d_linear", dict(norm="bn_gamma_beta", bn_positions=(1,)), (12, 1), 4, dict(modes=("frozen",))),
    "mnist1d_mlp_bn": ("mnist1d_mlp", dict(width=6, norm="bn_gamma_beta"), (12, 1), 4, dict(modes=("frozen",))),
    "mnist1d_cnn_bn": ("mnist1d_cnn", dict(channels=3, norm="bn_gamma_beta"), (20, 1), 4, dict(modes=("frozen",))),
    "convnet1d_bn": ("convnet", dict(depth=3, width=3, norm="bn_gamma_beta"), (12, 2), 4, {}),
}
# Only in the float32 test.
OTHER_CASES = {"mlp_weight_norm": ("mlp", dict(depth=3, width=8, weight_reparam="weight_norm"), (6,), 8, {})}


def ce64(logits, labels):
    """Softmax cross-entropy in the logits' precision (the library's casts to float32)."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


def data(shape, b, seed=0):
    r = np.random.default_rng(seed)
    return jnp.asarray(r.normal(size=(b,) + shape), jnp.float32), jnp.asarray(r.integers(0, CLASSES, size=b), jnp.int32)


@functools.lru_cache(maxsize=None)
def case(name):
    """``(module, variables, x, y, options)`` with generic values drawn in NumPy (as
    helpers.model): kernels ~ N(0, 1/fan_in), biases/β ~ N(0, 0.2²), γ ~ 1 + N(0, 0.2²),
    weight norm's g ~ 1 + N(0, 0.2²), running means ~ N(0, 0.5²), variances ~ U(0.5, 2)."""
    reg, kwargs, shape, b, opts = {**CASES, **OTHER_CASES}[name]
    module = get_model(reg, num_classes=CLASSES, **kwargs)
    x, y = data(shape, b)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), x[:1])
    r = np.random.default_rng(zlib.crc32(name.encode()))

    v = draw_variables(shapes, r)
    opts = dict(opts)
    if "variant" in opts:
        v = {**v, "batch_stats": set_ablation_variant(v["batch_stats"], opts.pop("variant"))}
    return module, v, x, y, opts


DECAY_IN = {"running": 0.0, "frozen": DECAY}


@functools.lru_cache(maxsize=None)
def results(name):
    """Per mode: the float64 layer-wise statistics and the reference rows (materialized,
    plus ``λ·W`` on the kernels), one compilation."""
    module, v, x, y, opts = case(name)
    modes = opts.get("modes", MODES)
    compute = opts.get("compute", STATISTICS)
    with jax.enable_x64(True):
        v64, x64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (v, x))

        def run(v):
            return {
                m: (
                    per_example_statistics(
                        module, v, x64, y, bn_mode=m, method="layerwise", loss=ce64, weight_decay=DECAY_IN[m], compute=compute
                    ),
                    per_example_grads(module, v, x64, y, bn_mode=m, loss=ce64),
                )
                for m in modes
            }

        out = jax.device_get(jax.jit(run)(v64))
    params = jax.device_get(v64["params"])
    decayed = lambda lam: (lambda path, g, w: g + lam * w[None] if path[-1].key == "kernel" else g)
    return {m: (st, jax.tree_util.tree_map_with_path(decayed(DECAY_IN[m]), rows, params)) for m, (st, rows) in out.items()}


def reference(rows):
    """``(sq, gram, second, mean)`` of per-example gradient rows, float64 NumPy."""
    rows = jax.tree.map(lambda a: np.asarray(a, np.float64), rows)
    f = np.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(rows)], axis=1)
    second = jax.tree.map(lambda a: np.mean(a**2, axis=0), rows)
    mean = jax.tree.map(lambda a: np.mean(a, axis=0), rows)
    return np.sum(f**2, axis=1), f @ f.T, second, mean, rows


def assert_stats_close(stats, rows, rtol, what):
    sq, gram, second, mean, rows = reference(rows)
    scale = np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    np.testing.assert_array_less(np.abs(np.asarray(stats.sq_norms, np.float64) - sq), rtol * sq + 1e-300, err_msg=f"{what} sq_norms")
    np.testing.assert_array_less(np.abs(np.asarray(stats.gram, np.float64) - gram), rtol * scale + 1e-300, err_msg=f"{what} gram")
    if stats.second_moment is not None:
        assert_tree_close(stats.second_moment, second, rtol, f"{what} second_moment")
    row_scale = jax.tree.map(lambda a: np.abs(a).max(axis=0), rows)
    assert_tree_close(stats.mean_grad, mean, rtol, f"{what} mean_grad", scale=row_scale)
    if stats.projections is not None:  # <g_i, ḡ> = the Gram's row mean; bound |g_i| |ḡ|
        g_bar = np.concatenate([np.ravel(a) for a in jax.tree.leaves(mean)])
        bound = rtol * np.sqrt(sq) * np.linalg.norm(g_bar) + 1e-300
        np.testing.assert_array_less(np.abs(np.asarray(stats.projections, np.float64) - gram.mean(axis=1)), bound, err_msg=f"{what} projections")


@pytest.mark.parametrize("name", list(CASES))
def test_layerwise_equals_materialized_on_the_model_zoo(name):
    """Squared norms, Gram, second moment and mean equal those of the materialized
    per-example gradients (float64), in running and frozen mode, on every model family."""
    for m, (stats, rows) in results(name).items():
        assert stats.gram.dtype == np.float64
        assert_stats_close(stats, rows, F64_RTOL, f"{name}/{m}")


def test_modes_differ_and_switched_off_parameters_get_zero():
    """Guards against vacuity: running and frozen statistics differ on a BN model (> 1e-2
    relative); the bn_ablation superset's switched-off β gets exactly zero statistics,
    its γ does not."""
    r = results("convnet_bn")
    a, b = r["running"][0].sq_norms, r["frozen"][0].sq_norms
    assert np.abs(a - b).max() > 1e-2 * np.abs(a).max()
    stats = results("deep_fc_ablation")["frozen"][0]
    for k in ("norm1", "norm2", "norm3"):
        assert np.all(stats.second_moment[k]["bias"] == 0) and np.all(stats.mean_grad[k]["bias"] == 0)
        assert np.any(stats.second_moment[k]["scale"] != 0)


def test_every_layer_term_is_visible():
    """Each layer's share of the 3C3D and All-CNN-C Grams is above 1e-6 of the entries'
    scale, so leaving any layer out (or getting its Δ wrong) would fail the float64
    comparison by > 1e4 x F64_RTOL."""
    for name in ("3c3d_bn", "allcnnc_vanilla"):
        _, rows = results(name)["frozen"]
        _, gram, _, _, rows = reference(rows)
        scale = np.sqrt(np.outer(np.diag(gram), np.diag(gram))).max()
        for layer, leaves in rows.items():
            f = np.concatenate([a.reshape(a.shape[0], -1) for a in leaves.values()], axis=1)
            assert np.abs(f @ f.T).max() > 1e4 * F64_RTOL * scale, f"{name}/{layer}"


@functools.lru_cache(maxsize=None)
def float32_results():
    """float32 with weight decay on mlp_bn: the full statistics, the public functions
    (``per_example_gram`` layer-wise, ``per_example_sq_norms`` by default), and
    ``mean_gradient``; the coupled mode (materialized, in chunks); the mse loss on the
    weight-norm MLP. One compilation."""
    module, v, x, y, _ = case("mlp_bn")
    wn_module, wn_v, wn_x, wn_y, _ = case("mlp_weight_norm")

    def run(v, wn_v):
        kw = dict(weight_decay=DECAY)  # bn_mode: the default, 'frozen'
        return dict(
            frozen=(per_example_statistics(module, v, x, y, **kw), per_example_grads(module, v, x, y, **kw)),
            gram=per_example_gram(module, v, x, y, method="layerwise", **kw),
            sq=per_example_sq_norms(module, v, x, y, **kw),
            mean=mean_gradient(module, v, x, y, bn_mode="frozen", **kw),
            # Chunks of 5: 8 = 5 + 3, the last one padded. (The chunked Gram is
            # per_example_gram's, tested in test_per_example.py.)
            batch=(
                per_example_statistics(module, v, x, y, bn_mode="batch", chunk_size=5, compute=("sq_norms", "second_moment", "mean_grad"), **kw),
                per_example_grads(module, v, x, y, bn_mode="batch", **kw),
            ),
            mse=(
                per_example_statistics(wn_module, wn_v, wn_x, wn_y, loss="mse", **kw),
                per_example_grads(wn_module, wn_v, wn_x, wn_y, loss="mse", **kw),
            ),
        )

    return jax.device_get(jax.jit(run)(v, wn_v))


def test_float32_with_weight_decay_mse_and_the_coupled_mode():
    r = float32_results()
    for key in ("frozen", "mse"):
        assert_stats_close(*r[key], F32_RTOL, f"float32 {key}")
        assert r[key][0].gram.dtype == np.float32
    stats, rows = r["batch"]
    sq, _, second, mean, rows = reference(rows)
    np.testing.assert_allclose(stats.sq_norms, sq, rtol=F32_RTOL)
    assert stats.gram is None
    assert_tree_close(stats.second_moment, second, F32_RTOL, "coupled second moment")
    assert_tree_close(stats.mean_grad, mean, F32_RTOL, "coupled mean", scale=jax.tree.map(lambda a: np.abs(a).max(0), rows))


def test_public_functions_and_mean_gradient_agree():
    """``per_example_gram(method='layerwise')``, ``per_example_sq_norms`` (default
    ``'auto'``) and ``mean_gradient`` equal the materialized rows' values; ``compute=``
    leaves the other fields None."""
    r = float32_results()
    stats, rows = r["frozen"]
    sq, gram, _, _, rows = reference(rows)
    np.testing.assert_array_less(np.abs(r["gram"] - gram), F32_RTOL * np.sqrt(np.outer(sq, sq)))
    np.testing.assert_allclose(r["sq"], sq, rtol=F32_RTOL)
    assert_tree_close(stats.mean_grad, r["mean"], F32_RTOL, "mean_grad vs mean_gradient", scale=jax.tree.map(lambda a: np.abs(a).max(0), rows))
    module, v, x, y, _ = case("mlp_bn")
    only = jax.eval_shape(lambda v: per_example_statistics(module, v, x, y, compute=("mean_grad",)), v)
    assert only.gram is None and only.sq_norms is None and only.second_moment is None
    assert jax.tree.map(lambda a: a.shape, only.mean_grad) == jax.tree.map(lambda a: a.shape, v["params"])


def test_layer_plan_names_each_layer_treatment():
    """3C3D at 9x9: conv1 (T = 25 positions) forms its per-example kernel gradients,
    T = 1 layers (the dense ones, and conv2/conv3 at 1x1 resolution) use the
    outer-product identity, norm layers their own per-example VJPs. Without the second
    moment and the mean (whose einsum costs as much as forming G), All-CNN-C's conv4-6
    (T = 25 and 9 positions, 3x3x192 -> 192) take the position-pair form, its conv1-2
    (T = 81) the per-example kernel; the conv7-9 at 1x1 the identity. With the mean, as
    in the zoo test's case, conv4 forms G too."""
    module, v, x, _, _ = case("3c3d_bn")
    plan = dict(layer_plan(module, v, x))
    assert plan["conv1"] == "per-example kernel"
    assert plan["conv2"] == plan["conv3"] == plan["dense1"] == plan["dense3"] == "identity"
    assert plan["norm1"] == "per-example vjp"
    module, v, x, _, _ = case("allcnnc_vanilla")
    plan = dict(layer_plan(module, v, x, compute=("sq_norms", "gram")))
    assert plan["conv1"] == plan["conv2"] == "per-example kernel"
    assert plan["conv4"] == plan["conv5"] == plan["conv6"] == "patch-gram"
    assert plan["conv7"] == plan["conv9"] == "identity"
    assert dict(layer_plan(module, v, x, compute=CASES["allcnnc_vanilla"][4]["compute"]))["conv4"] == "per-example kernel"


class _WithTemperature(nn.Module):
    """A dense net with a parameter outside any Dense/Conv/Norm layer."""

    @nn.compact
    def __call__(self, x, train):
        t = self.param("temperature", nn.initializers.ones, ())
        return nn.Dense(CLASSES)(x) * t


def test_unsupported_layer_raises_and_auto_falls_back():
    module = _WithTemperature()
    x, y = data((5,), 4)
    v = module.init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(ValueError, match="temperature"):
        jax.eval_shape(lambda v: per_example_statistics(module, v, x, y, method="layerwise"), v)
    got, want = jax.jit(lambda v: (per_example_sq_norms(module, v, x, y), per_example_sq_norms(module, v, x, y, method="materialize")))(v)
    np.testing.assert_array_equal(got, want)  # 'auto' took the materialized path


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bn_mode="eval"), "now called 'running'"),
        (dict(bn_mode="bogus"), "bn_mode must be one of"),
        (dict(bn_mode="batch", method="layerwise"), "coupled"),
        (dict(method="ghost"), "method must be one of"),
        (dict(compute=("norms",)), "compute must be"),
        (dict(compute=()), "compute must be"),
    ],
)
def test_errors(kwargs, match):
    module, v, x, y, _ = case("mlp_bn")
    with pytest.raises(ValueError, match=match):
        per_example_statistics(module, v, x, y, **kwargs)


def test_layerwise_refuses_a_mask():
    module, v, x, y, _ = case("mlp_bn")
    mask = random_mask(jax.random.PRNGKey(0), v["params"], 0.5)
    with pytest.raises(ValueError, match="mask"):
        per_example_gram(module, v, x, y, mask=mask, method="layerwise")
