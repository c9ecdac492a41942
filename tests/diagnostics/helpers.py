"""Tiny models, inputs and independent references shared by the diagnostics tests.

Nothing here calls :mod:`jaxnorm.diagnostics`: the references are written from the
definitions (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022), so that a test
compares the library against something computed another way.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.models import get_model

B = 8  # batch size of every model test
CLASSES = 4
SHAPE = (8, 8, 1)  # digits-shaped inputs

# name -> (registry name, model kwargs). All tiny: a few hundred parameters, so one
# compilation is ~1 s on CPU.
MODELS = {
    # BN after two 3x3 convs (statistics over batch x space), dense head.
    "conv_bn": ("convnet", dict(depth=3, width=4, norm="bn_gamma_beta")),
    # Dense BN with ghost groups of 4: examples 0-3 and 4-7 have their own statistics.
    "mlp_ghost": ("mlp", dict(depth=3, width=8, norm="bn_gamma_beta", norm_options={"group_size": 4})),
    "mlp_bn": ("mlp", dict(depth=3, width=8, norm="bn_gamma_beta")),
    "mlp_dropout": ("mlp", dict(depth=3, width=8, norm="bn_gamma_beta", dropout_rate=0.5)),
    "mlp_vanilla": ("mlp", dict(depth=3, width=8, norm="vanilla")),
    "mlp_layer": ("mlp", dict(depth=3, width=8, norm="layer")),
}


def batch(seed: int = 0, b: int = B):
    """Standard-normal inputs ``(b, 8, 8, 1)`` and integer labels in [0, CLASSES)."""
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(b,) + SHAPE), jnp.float32)
    y = jnp.asarray(r.integers(0, CLASSES, size=b), jnp.int32)
    return x, y


def draw_variables(shapes, r: np.random.Generator):
    """Generic values for a variables tree of ``shapes`` (``jax.eval_shape`` of an init),
    drawn from ``r`` in NumPy: kernels ~ N(0, 1/fan_in), biases and β ~ N(0, 0.2²), γ and
    weight norm's g ~ 1 + N(0, 0.2²), the ``bn_ablation`` superset's switches 1, running
    means ~ N(0, 0.5²) and variances ~ U(0.5, 2), so no gradient entry is trivially 0 and
    the ``running`` mode differs from the ``frozen`` one."""

    def draw(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            a = r.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        elif leaf in ("scale", "g", "use_scale", "use_bias", "use_norm"):
            a = 1 + 0.2 * r.normal(size=s.shape) if leaf in ("scale", "g") else np.ones(s.shape)
        elif leaf == "var":
            a = r.uniform(0.5, 2.0, size=s.shape)
        elif leaf == "mean":
            a = 0.5 * r.normal(size=s.shape)
        else:
            a = 0.2 * r.normal(size=s.shape)
        return jnp.asarray(a, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@functools.lru_cache(maxsize=None)
def model(name: str):
    """``(module, variables)`` with generic values drawn here in NumPy (no init compile):
    kernels ~ N(0, 1/fan_in), biases and β ~ N(0, 0.2²), γ ~ 1 + N(0, 0.2²), running means
    ~ N(0, 0.5²) and variances ~ U(0.5, 2), so no gradient entry is trivially 0 and the
    ``running`` mode differs from the ``frozen`` one."""
    reg, kwargs = MODELS[name]
    module = get_model(reg, num_classes=CLASSES, **kwargs)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), jnp.zeros((1,) + SHAPE))
    r = np.random.default_rng(zlib.crc32(name.encode()))

    return module, draw_variables(shapes, r)


def ce(logits, y):
    """Softmax cross-entropy per example, from log_softmax (not the library's loss)."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), y[:, None], axis=1)[:, 0]


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def flat64(tree, batch_dims: int = 0) -> np.ndarray:
    """Leaves raveled after ``batch_dims`` leading axes, concatenated in leaf order (float64)."""
    leaves = [np.asarray(l, np.float64) for l in jax.tree.leaves(tree)]
    return np.concatenate([l.reshape(l.shape[:batch_dims] + (-1,)) for l in leaves], axis=-1)


def assert_tree_close(got, want, rtol: float, what: str = "", scale=None) -> None:
    """Leafwise ``max|got - want| <= rtol * max|scale|`` with ``scale = want`` by default (a
    scale-relative bound: gradient leaves differ in magnitude by orders, so an elementwise
    rtol would be dominated by entries that are ~0 by cancellation). Pass ``scale`` when
    ``want`` is itself a cancelling sum: rounding is relative to the summands."""
    g, w = jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_flatten_with_path(want)[0]
    assert [p for p, _ in g] == [p for p, _ in w], f"{what}: tree structures differ"
    scales = jax.tree.leaves(want if scale is None else scale)
    for (path, a), (_, b), c in zip(g, w, scales):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, f"{what} {jax.tree_util.keystr(path)}: shape {a.shape} != {b.shape}"
        ref = max(np.abs(np.asarray(c, np.float64)).max(), 1e-30)
        err = np.abs(a - b).max()
        assert err <= rtol * ref, f"{what} {jax.tree_util.keystr(path)}: max error {err:.3g} > {rtol} x {ref:.3g}"


def bn_inputs(module, variables, x):
    """The input of every BN layer ``norm{k}`` in the training-mode forward pass: the
    output of weight layer k (``conv{k}`` or ``dense{k}``), captured with flax's
    ``capture_intermediates`` (not the library's interceptor)."""
    _, state = module.apply(
        variables, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    inter = state["intermediates"]
    out = {}
    for norm in variables.get("batch_stats", {}):
        k = norm[len("norm") :]
        (layer,) = [n for n in inter if n in (f"conv{k}", f"dense{k}")]
        out[norm] = np.asarray(inter[layer]["__call__"][0], np.float64)
    return out


def group_moments(a: np.ndarray, group_size):
    """Per-ghost-group mean and biased variance over all axes but the last: ``(groups, C)``
    each, float64."""
    b, c = a.shape[0], a.shape[-1]
    g = b if group_size is None else group_size
    a = a.reshape(b // g, -1, c)
    return a.mean(axis=1), a.var(axis=1)
