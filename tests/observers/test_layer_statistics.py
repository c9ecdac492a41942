"""``LayerStatistics`` / ``layer_statistics``: per-layer activation RMS, gradient norm and
weight norm against a float64 NumPy pass (hand-written backward pass without a norm,
central differences with BN/LayerNorm), the (c/2)-per-layer law of a ReLU net at
initialization, the observer inside ``fit_many``, and every documented error."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import load
from jaxnorm.models import get_model
from jaxnorm.observers.layer_statistics import LayerStatistics, layer_statistics
from jaxnorm.train import build_model, fit_many
from tests.train.helpers import tiny_config

EPS = 1e-5  # jaxnorm.norms' default epsilon


def _forward(p, x, norm: str, stats=None):
    """Float64 forward pass of the MLP (dense -> norm -> relu; logits last): the layer
    inputs zs (zs[0] = x), pre-activations hs and the logits. ``stats``: BN's running
    statistics (None: the batch's)."""
    depth = sum(k.startswith("dense") for k in p)
    zs, hs = [np.asarray(x, np.float64).reshape(len(x), -1)], []
    for i in range(1, depth + 1):
        h = zs[-1] @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"].get("bias", 0.0)
        if i < depth and norm != "vanilla":
            if norm == "layer":  # per example over the features
                mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
            elif stats is None:  # BN, batch statistics per feature
                mu, var = h.mean(0, keepdims=True), h.var(0, keepdims=True)
            else:
                mu, var = stats[f"norm{i}"]["mean"], stats[f"norm{i}"]["var"]
            h = (h - mu) / np.sqrt(var + EPS) * p[f"norm{i}"]["scale"] + p[f"norm{i}"]["bias"]
        hs.append(h)
        zs.append(np.maximum(h, 0.0) if i < depth else h)
    return zs, hs


def _loss(logits, y):
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    return -np.mean(logp[np.arange(len(y)), y])


def numpy_statistics(params, x, y, norm: str, stats=None):
    """The reference: float64 forward; ‖∂L/∂W_i‖ by the hand-written backward pass for
    ``vanilla`` (δ_D = (softmax − onehot)/B, ∂L/∂W_i = z_{i−1}ᵀ δ_i, δ_{i−1} = (δ_i
    W_iᵀ) ⊙ 1[h_{i−1} > 0]) and by central differences otherwise (h = 1e-6: truncation
    ~h² ‖∂³L‖ and cancellation ~1e-16/h, both < 1e-8 relative here)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    stats = None if stats is None else jax.tree.map(lambda a: np.asarray(a, np.float64), stats)
    depth = sum(k.startswith("dense") for k in p)
    zs, hs = _forward(p, x, norm, stats)
    logits, y = zs[-1], np.asarray(y)
    out = {
        "loss": _loss(logits, y),
        "acc": np.mean(logits.argmax(1) == y),
        "activation_rms": np.array([np.sqrt(np.mean(z**2)) for z in zs[1:]]),
        "weight_norm": np.array([np.linalg.norm(p[f"dense{i}"]["kernel"]) for i in range(1, depth + 1)]),
    }
    if norm == "vanilla":
        e = np.exp(logits - logits.max(1, keepdims=True))
        delta, grads = (e / e.sum(1, keepdims=True) - np.eye(logits.shape[1])[y]) / len(y), []
        for i in range(depth, 0, -1):
            grads.append(np.linalg.norm(zs[i - 1].T @ delta))
            if i > 1:
                delta = (delta @ p[f"dense{i}"]["kernel"].T) * (hs[i - 2] > 0)
        out["grad_norm"] = np.array(grads[::-1])
    else:
        grads, h = [], 1e-6
        for i in range(1, depth + 1):
            w, g = p[f"dense{i}"]["kernel"], np.zeros_like(p[f"dense{i}"]["kernel"])
            for idx in np.ndindex(w.shape):
                w0 = w[idx]
                w[idx] = w0 + h
                up = _loss(_forward(p, x, norm, stats)[0][-1], y)
                w[idx] = w0 - h
                down = _loss(_forward(p, x, norm, stats)[0][-1], y)
                w[idx] = w0
                g[idx] = (up - down) / (2 * h)
            grads.append(np.linalg.norm(g))
        out["grad_norm"] = np.array(grads)
    return out


def _tiny(norm, rng, batch=16, features=12, width=6, classes=5):
    module = get_model("mlp", norm=norm, num_classes=classes, depth=3, width=width, kernel_init="scaled_normal", kernel_init_kwargs={"c": 2.0})
    x = jnp.asarray(rng.normal(size=(batch, features)), jnp.float32)
    y = jnp.asarray(np.arange(batch) % classes, jnp.int32)
    variables = module.init(jax.random.PRNGKey(1), x, train=False)
    # Random biases/γ/β (and running statistics), so nothing is trivially 0 or 1.
    params = jax.tree.map(lambda a: a if a.ndim == 2 else jnp.asarray(1.0 + 0.3 * rng.normal(size=a.shape), jnp.float32), variables["params"])
    stats = jax.tree.map(lambda a: jnp.asarray(np.abs(1.0 + 0.3 * rng.normal(size=a.shape)), jnp.float32), variables.get("batch_stats", {}))
    return module, {"params": params, **({"batch_stats": stats} if stats else {})}, x, y


@pytest.mark.parametrize(
    "norm, bn_mode", [("vanilla", "batch"), ("bn_gamma_beta", "batch"), ("bn_gamma_beta", "running"), ("layer", "batch")]
)
def test_matches_a_float64_numpy_pass(norm, bn_mode):
    """Compiled (jit) float32 against float64 through 3 layers of a 12-6-6-5 net: float32
    roundings of sums of <= 16 terms through 3 layers and their backward pass; relative
    1e-4 is ~1000 roundings (measured worst ~1e-6)."""
    module, variables, x, y = _tiny(norm, np.random.default_rng(0))
    got = jax.jit(lambda v: layer_statistics(module, v, x, y, bn_mode=bn_mode))(variables)
    stats = variables.get("batch_stats") if bn_mode == "running" else None
    want = numpy_statistics(variables["params"], x, y, norm, stats)
    assert set(got) == set(want) == {"loss", "acc", "activation_rms", "grad_norm", "weight_norm"}
    assert got["activation_rms"].shape == got["grad_norm"].shape == got["weight_norm"].shape == (3,)
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k], np.float64), v, rtol=1e-4, err_msg=k)


def test_running_statistics_are_not_updated():
    module, variables, x, y = _tiny("bn_gamma_beta", np.random.default_rng(1))
    before = jax.tree.map(np.asarray, variables)
    jax.jit(lambda v: layer_statistics(module, v, x, y))(variables)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(variables)))


def test_relu_activations_scale_by_c_over_2_per_layer():
    """The init-scale study's premise, measured by the observer's function: W ~ N(0, c/n)
    (``scaled_normal``), zero biases: E[mean z_{i+1}² | z_i] = (c/2) mean z_i² (half of a
    symmetric Gaussian pre-activation survives the ReLU). Width 256, 10 hidden layers,
    64 Gaussian inputs: the mean of the 10 per-layer ratios over c/2 had std 0.029 over
    20 seeds, so 15% is ~5σ. And since relu is positively homogeneous and one seed's
    kernels are the same draws times √c, z_i(c) = (c/2)^{i/2} z_i(2) to float32 rounding
    (11 layers of 256-term sums: ~11·√256·6e-8 ≈ 1e-5 typical; 1e-4)."""
    x = jnp.asarray(np.random.default_rng(100).normal(size=(64, 256)), jnp.float32)
    y = jnp.zeros(64, jnp.int32)
    rms = {}
    for c in (1.0, 2.0, 3.0):
        # 256 classes: every kernel is (256, 256).
        module = get_model("mlp", depth=11, width=256, num_classes=256, kernel_init="scaled_normal", kernel_init_kwargs={"c": c})
        variables = module.init(jax.random.PRNGKey(0), x, train=False)
        rms[c] = np.asarray(jax.jit(lambda v: layer_statistics(module, v, x, y))(variables)["activation_rms"], np.float64)
        ms = np.concatenate([[np.mean(np.square(np.asarray(x, np.float64)))], rms[c][:-1] ** 2])  # input, hidden layers 1..10
        assert np.mean(ms[1:] / ms[:-1]) == pytest.approx(c / 2, rel=0.15)
    layers = np.arange(1, 12)
    for c in (1.0, 3.0):
        np.testing.assert_allclose(rms[c] / rms[2.0], (c / 2) ** (layers / 2), rtol=1e-4)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])  # 'auto' is loop on CPU, vmap on GPU/TPU
def test_observer_in_fit_many_records_every_probe(tmp_path, strategy):
    """Two seeds trained as one program, the observer every 4 steps of 16: trajectories
    ``(5, D)`` at steps 0, 4, ..., 16, and the last row is the observer's function of the
    final state. That is another compiled program than the stacked one inside fit_many,
    so float32 sums (up to 64·32 = 2048 terms) may be reassociated: worst ~2048·6e-8 ≈
    1.2e-4 per reduction, typical ~√2048·6e-8 ≈ 3e-6; measured < 1e-6. rtol 1e-4 still
    tells the final state from the probe before it (4 steps earlier: measured relative
    changes 0.26 in the loss, 0.012 in the weight norms)."""
    base = tiny_config(tmp_path, norm="bn_gamma_beta", momentum=0.0, epochs=2, checkpoint_every_epochs=0, eval_splits=())
    configs = [base.replace(name=f"s{s}", seed=s) for s in (0, 1)]
    ds = load("digits", "train")
    module = build_model(base, ds.num_classes)
    obs = LayerStatistics(module, ds.images[:32], ds.labels[:32], ds.mean, ds.std, every=4)
    results = fit_many(configs, observers=[obs], strategy=strategy, progress=False)
    weights = []
    for r in results:
        with np.load(r.run_dir / "trajectories.npz") as f:
            t = dict(f)
        assert t["layer_statistics/steps"].tolist() == [0, 4, 8, 12, 16]
        for k in ("activation_rms", "grad_norm", "weight_norm"):
            assert t[f"layer_statistics/{k}"].shape == (5, 3) and np.all(t[f"layer_statistics/{k}"] > 0), k
        assert t["layer_statistics/loss"].shape == t["layer_statistics/acc"].shape == (5,)
        final = jax.device_get(jax.jit(obs)(r.state))
        kernels = [np.linalg.norm(np.asarray(r.state.params[f"dense{i}"]["kernel"], np.float64)) for i in (1, 2, 3)]
        np.testing.assert_allclose(t["layer_statistics/weight_norm"][-1], kernels, rtol=1e-4)
        for k in ("activation_rms", "grad_norm", "weight_norm", "loss"):
            np.testing.assert_allclose(t[f"layer_statistics/{k}"][-1], final[k], rtol=1e-4, err_msg=k)
        weights.append(t["layer_statistics/weight_norm"])
    assert not np.array_equal(*weights)  # each run its own record


class _NoWeights(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        return x.reshape((x.shape[0], -1)) * self.param("a", nn.initializers.ones, ())


def test_documented_errors():
    module, variables, x, y = _tiny("vanilla", np.random.default_rng(2))
    images, labels = np.zeros((4, 3, 4, 1), np.float32), np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        LayerStatistics(module, images, labels, [0.0], [1.0], every=0)
    with pytest.raises(ValueError, match="one label per image"):
        LayerStatistics(module, images, labels[:3], [0.0], [1.0])
    with pytest.raises(ValueError, match="now called 'running'"):
        LayerStatistics(module, images, labels, [0.0], [1.0], bn_mode="eval")
    with pytest.raises(ValueError, match="unknown loss"):
        LayerStatistics(module, images, labels, [0.0], [1.0], loss="hinge")
    with pytest.raises(ValueError, match="bn_mode"):
        layer_statistics(module, variables, x, y, bn_mode="frozen")
    no_weights = _NoWeights()
    with pytest.raises(ValueError, match="no top-level Dense/Conv"):
        layer_statistics(no_weights, no_weights.init(jax.random.PRNGKey(0), x, train=False), x, y % 12)
