"""Float64 NumPy references of 1-D layers (MNIST-1D baselines, the 1-D convnet), each
carrying a first-order bound on how far a float32 evaluation can be from it.

A float32 sum of n products errs by at most ``γ_n Σ|a_k||b_k|`` (``γ_n = n·u/(1 - n·u)``,
u = 2⁻²⁴, for any summation order, FMA or not; Higham, “Accuracy and Stability of
Numerical Algorithms”, §3.1). The references run on pairs ``t = (value, bound)``: a
linear layer passes the incoming bound through ``|W|`` and adds its own rounding,
``γ_{n+1}·(|W|ᵀ|value| + |b|)`` (the +1: its bias); ReLU is 1-Lipschitz; an average
adds ``γ_k`` of its magnitude; a sum adds u of its magnitude. The comparison is at 2x
the bound (second-order terms) plus the output's own rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

U32 = 2.0**-24


def count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def shapes_of(model, shape, dtype=jnp.float32):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape, dtype), train=False))


def inputs(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def conv1d(x, w, b, stride, pad):
    """(b, L, C) * (k, C, O) cross-correlation, zero padding ``pad`` each side, as PyTorch's Conv1d."""
    x = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
    k = w.shape[0]
    n = (x.shape[1] - k) // stride + 1
    out = np.stack([np.einsum("bkc,kco->bo", x[:, t * stride : t * stride + k], w) for t in range(n)], axis=1)
    return out + b


def np64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def gamma(n):
    """Higham's γ_n = n·u / (1 - n·u): the relative error bound of a float32 sum of n terms."""
    return n * U32 / (1 - n * U32)


def dense(t, p):
    v, e = t
    w, b = p["kernel"], p["bias"]
    return v @ w + b, e @ np.abs(w) + gamma(w.shape[0] + 1) * (np.abs(v) @ np.abs(w) + np.abs(b))


def conv(t, p, stride, pad):
    v, e = t
    w, b = p["kernel"], p["bias"]
    aw = np.abs(w)
    zero = np.zeros_like(b)
    rounding = gamma(w.shape[0] * w.shape[1] + 1) * conv1d(np.abs(v), aw, np.abs(b), stride, pad)
    return conv1d(v, w, b, stride, pad), conv1d(e, aw, zero, stride, pad) + rounding


def relu(t):
    return np.maximum(t[0], 0.0), t[1]


def flatten(t):
    return tuple(a.reshape(len(a), -1) for a in t)


def add(t, s):
    v = t[0] + s[0]
    return v, t[1] + s[1] + U32 * np.abs(v)


def pool(t):
    """Average pool, window 2, stride 2, over the length."""
    v, e = t
    return 0.5 * (v[:, 0::2] + v[:, 1::2]), 0.5 * (e[:, 0::2] + e[:, 1::2]) + gamma(2) * 0.5 * (np.abs(v[:, 0::2]) + np.abs(v[:, 1::2]))


def mean_over_length(t):
    v, e = t
    return v.mean(axis=1), e.mean(axis=1) + gamma(v.shape[1]) * np.abs(v).mean(axis=1)


def draw_fan_in(model, x, seed=0):
    """Variables with kernels ~ U(±sqrt(3 / fan_in)) (variance 1/fan_in: activations stay
    O(1) through the layers) and biases ~ U(±0.5), drawn in NumPy."""
    r = np.random.default_rng(seed)

    def one(path, s):
        a = np.sqrt(3.0 / np.prod(s.shape[:-1])) if path[-1].key == "kernel" else 0.5
        return jnp.asarray(r.uniform(-a, a, s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(one, shapes_of(model, x.shape))


def assert_within_forward_bound(out, reference, params, x):
    ref, bound = reference(np64(params), (np.asarray(x, np.float64), np.zeros(x.shape)))
    bound = 2 * bound + U32 * np.abs(ref)  # 2x: second-order terms; + the output's own rounding
    err = np.abs(np.asarray(out, np.float64) - ref)
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound):.3g}"
    # Not vacuous: a one-step shift of the input (an off-by-one in padding or stride would
    # look like one) moves the output by far more than the bound.
    shifted, _ = reference(np64(params), (np.roll(np.asarray(x, np.float64), 1, axis=1), np.zeros(x.shape)))
    assert np.max(np.abs(shifted - ref)) > 30 * np.max(bound)


def assert_batchnorm_over_batch_and_length(model, x, slots):
    """Train-mode output of each BatchNorm slot ``norm{k}`` (after ``conv{k}``) of ``model``
    (``norm='bn'``): per channel, over batch AND length, mean 0 and variance σ²/(σ² + ε)."""
    v = jax.tree.map(jnp.zeros_like, shapes_of(model, x.shape))
    v = {**draw_fan_in(model, x), "batch_stats": v["batch_stats"]}
    _, state = jax.jit(
        lambda v: model.apply(v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"])
    )(v)
    for slot in slots:
        y = np.asarray(state["intermediates"][slot]["__call__"][0], np.float64)
        z = np.asarray(state["intermediates"][f"conv{slot[4:]}"]["__call__"][0], np.float64)
        assert y.ndim == 3 and y.shape == z.shape
        n = y.shape[0] * y.shape[1]
        mean, var = y.mean(axis=(0, 1)), y.var(axis=(0, 1))
        s2 = z.var(axis=(0, 1))
        # x̂ = (z - μ)/sqrt(σ² + ε), ε = 1e-5. float32 statistics of n values err by at most
        # ~n·u relative, and |x̂| <= sqrt(n): |mean| <= 4·n·u·sqrt(n), |var - target| <= 8·n·u·n.
        np.testing.assert_array_less(np.abs(mean), 4 * n * U32 * np.sqrt(n))
        np.testing.assert_array_less(np.abs(var - s2 / (s2 + 1e-5)), 8 * n * U32 * n)
        # Not over the batch alone per position, nor per example over length (instance
        # norm), nor over the channels (layer norm): each of those means is far from 0.
        for axis in (0, 1, 2):
            assert np.abs(y.mean(axis=axis)).max() > 1e-2, axis
