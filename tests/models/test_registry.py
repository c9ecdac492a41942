"""Tests for the model registry and the contract every registered model shares:
``init(key, x, train=False)``, ``apply(..., train=True, mutable=['batch_stats'],
rngs={'dropout': key})``, BatchNorm statistics updated in train mode only, and finite
gradients of a cross-entropy loss through the train-mode forward pass."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnorm
from jaxnorm.models import (
    MNIST1DCNN,
    MNIST1DGRU,
    MNIST1DMLP,
    AllCNNC,
    ConvNet,
    DeepFC,
    MLP,
    MNIST1DLinear,
    ThreeCThreeD,
    get_model,
    model_names,
    register_model,
)
from jaxnorm.models import registry

EXPECTED = {
    "3c3d": ThreeCThreeD,
    "allcnnc": AllCNNC,
    "mlp": MLP,
    "deep_fc": DeepFC,
    "convnet": ConvNet,
    "mnist1d_linear": MNIST1DLinear,
    "mnist1d_mlp": MNIST1DMLP,
    "mnist1d_cnn": MNIST1DCNN,
    "mnist1d_gru": MNIST1DGRU,
}


def test_model_names_contains_the_zoo():
    names = model_names()
    assert names == sorted(names)
    assert set(EXPECTED) <= set(names)
    assert jaxnorm.model_names() == names


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_get_model_builds_the_registered_class(name):
    m = get_model(name)
    assert type(m) is EXPECTED[name]
    m = get_model(name, num_classes=7)
    assert m.num_classes == 7


def test_get_model_unknown_name_lists_known():
    with pytest.raises(ValueError) as err:
        get_model("resnet9000")
    msg = str(err.value)
    assert "resnet9000" in msg
    for name in EXPECTED:
        assert name in msg


def test_get_model_unknown_keyword():
    with pytest.raises(ValueError) as err:
        get_model("3c3d", num_clases=10)
    msg = str(err.value)
    assert "num_clases" in msg
    assert "num_classes" in msg and "bn_positions" in msg  # lists what it takes
    # flax's own fields are not options either.
    with pytest.raises(ValueError):
        get_model("mlp", parent=None)


def test_register_model_refuses_duplicate():
    before = dict(registry._MODELS)

    class Other(nn.Module):
        num_classes: int = 10

    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(Other)
    assert registry._MODELS == before
    assert type(get_model("mlp")) is MLP


def test_register_model_new_name(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("tiny_test_model")
    class Tiny(nn.Module):
        features: int = 3

        @nn.compact
        def __call__(self, x, train):
            return nn.Dense(self.features)(x)

    assert "tiny_test_model" in model_names()
    m = get_model("tiny_test_model", features=5)
    assert isinstance(m, Tiny) and m.features == 5
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_model")(Tiny)


# --------------------------------------------------------------------------------------
# The shared contract, for every registered model (small configurations).

SMALL = {
    # The DeepOBS nets take 16x16 inputs too (3c3d: 16 -> 12 -> 6 -> 4 -> 2 -> 1; allcnnc:
    # 16 -> 8 -> 4 -> 2): the same layers at a quarter of the cost.
    "3c3d": (dict(num_classes=10), (2, 16, 16, 3)),
    "allcnnc": (dict(num_classes=10), (2, 16, 16, 3)),
    "mlp": (dict(num_classes=5, depth=3, width=16), (3, 4, 4, 3)),
    "deep_fc": (dict(num_classes=5, depth=4, width=16), (3, 12)),
    "convnet": (dict(num_classes=5, depth=6, width=8), (2, 8, 8, 3)),
    # MNIST-1D sequences (batch, 40, 1); the GRU on 12 steps (one scan compile either way).
    "mnist1d_linear": (dict(num_classes=5), (3, 40, 1)),
    "mnist1d_mlp": (dict(num_classes=5, width=8), (3, 40, 1)),
    "mnist1d_cnn": (dict(num_classes=5, channels=4), (3, 40, 1)),
    "mnist1d_gru": (dict(num_classes=5, hidden=2), (3, 12, 1)),
}
# Models with no hidden layer: the default placement (a norm after every weight layer but
# the last) puts none, so the shared contract below runs with these explicit flags.
NO_HIDDEN_LAYER = {"mnist1d_linear": (1,)}


def _small(name, **extra):
    kwargs, shape = SMALL.get(name, ({}, (2, 32, 32, 3)))
    return get_model(name, **kwargs, **extra), shape


@pytest.mark.parametrize("name", model_names())
def test_train_mode_updates_batch_stats_and_gradients_are_finite(name):
    model, shape = _small(name, norm="bn_gamma_beta")
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    labels = jnp.arange(shape[0]) % model.num_classes
    if name in NO_HIDDEN_LAYER:
        default = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), x, train=False))
        assert not default.get("batch_stats")  # nowhere to put one by default
        model = model.clone(bn_positions=NO_HIDDEN_LAYER[name])
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), x)
    params, stats = variables["params"], variables["batch_stats"]
    assert len(stats) >= 1  # default placement puts at least one BN in every model with a hidden layer
    # init never moves the running statistics.
    for s in stats.values():
        np.testing.assert_array_equal(s["mean"], 0.0)
        np.testing.assert_array_equal(s["var"], 1.0)

    def loss_fn(p, st, key):
        logits, updates = model.apply(
            {"params": p, "batch_stats": st}, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        assert logits.shape == (shape[0], model.num_classes)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    (loss, new_stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, stats, jax.random.PRNGKey(2))
    assert np.isfinite(float(loss))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))  # numpy: no per-shape compiles
    for path, g in leaves:
        assert np.all(np.isfinite(g)), f"non-finite gradient at {jax.tree_util.keystr(path)}"
    for path, g in leaves:
        if "kernel" in jax.tree_util.keystr(path):
            assert np.abs(g).max() > 0, f"zero gradient at {jax.tree_util.keystr(path)}"
    # Every BN layer's running statistics moved (batch of random inputs: mean != 0).
    assert set(new_stats) == set(stats)
    for k in stats:
        assert not np.allclose(new_stats[k]["mean"], stats[k]["mean"]), k
        assert not np.allclose(new_stats[k]["var"], stats[k]["var"]), k

    # Eval mode uses the statistics and leaves them unchanged.
    out, upd = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["batch_stats"]))(
        {"params": params, "batch_stats": new_stats}
    )
    assert out.shape == (shape[0], model.num_classes)
    assert np.all(np.isfinite(np.asarray(out)))
    for k in stats:
        np.testing.assert_array_equal(upd["batch_stats"][k]["mean"], new_stats[k]["mean"])
        np.testing.assert_array_equal(upd["batch_stats"][k]["var"], new_stats[k]["var"])


@pytest.mark.parametrize("name", model_names())
def test_vanilla_has_no_batch_stats(name):
    model, shape = _small(name)  # default norm
    assert model.norm == "vanilla"
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    assert "batch_stats" not in variables or not variables["batch_stats"]
    assert not any(k.startswith("norm") for k in variables["params"])


@pytest.mark.parametrize("name", model_names())
def test_unknown_norm_rejected(name):
    model, shape = _small(name, norm="batchnorm")
    with pytest.raises(ValueError, match="unknown norm"):
        model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
