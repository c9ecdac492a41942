"""jaxnorm.observers.weight_norms: which layers are scale-invariant (checked against the
invariance itself), the norms against numpy, the observer under fit/fit_many (compiled,
vmapped over runs), and the invariant behind the effective learning rate: with plain SGD
and no weight decay the norm of a scale-invariant layer never shrinks."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.models import get_model
from jaxnorm.objective import cross_entropy
from jaxnorm.observers.weight_norms import WeightNorms, frobenius_norms, kernels, scale_invariant_layers
from jaxnorm.train import fit_many
from tests.train.helpers import tiny_config


def norm_rtol(w) -> float:
    """Relative tolerance of a float32 ‖W‖_F against float64: the sum of n squares is off
    by ~√n·u typically (u = 2⁻²⁴; the order of a vectorized reduction differs by CPU), the
    square root halves it; 10x headroom. A wrong or missing layer is off by O(1)."""
    return 10 * np.sqrt(np.size(w)) * 2.0**-24


def _init(module, x):
    return jax.jit(lambda key: module.init(key, x, train=False))(jax.random.PRNGKey(1))


def test_the_bias_free_layers_are_exactly_the_scale_invariant_ones():
    """In a BN MLP the bias-free layers (dense1, dense2) feed BatchNorm: scaling W by c
    leaves the training-mode output unchanged up to BN's ε (var ≫ ε = 1e-5 here, so the
    logits move by ≪ 1e-4) and divides the gradient by c (rtol 1e-3: the same ε). The
    output layer has a bias and is not scale-invariant; a vanilla MLP has no such layer;
    abstract params (eval_shape) give the same list."""
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
    y = jnp.arange(16) % 3
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=3, width=6)
    variables = _init(module, x)
    params = variables["params"]
    assert scale_invariant_layers(params) == ["dense1", "dense2"]
    assert scale_invariant_layers(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(1), x, train=False))["params"]) == ["dense1", "dense2"]
    vanilla = get_model("mlp", norm="vanilla", num_classes=3, depth=3, width=6)
    assert scale_invariant_layers(jax.eval_shape(lambda: vanilla.init(jax.random.PRNGKey(1), x, train=False))["params"]) == []
    assert set(kernels(params)) == {"dense1", "dense2", "dense3"}

    def loss(params):
        logits, _ = module.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(cross_entropy(logits, y)), logits

    c = 3.0
    scale = lambda layer: {**params, layer: {**params[layer], "kernel": c * params[layer]["kernel"]}}
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, logits), g = value_and_grad(params)
    for layer in ("dense1", "dense2"):
        (_, logits_c), g_c = value_and_grad(scale(layer))
        np.testing.assert_allclose(logits_c, logits, atol=1e-4)
        np.testing.assert_allclose(g_c[layer]["kernel"], g[layer]["kernel"] / c, rtol=1e-3, atol=1e-6)
    assert not np.allclose(value_and_grad(scale("dense3"))[0][1], logits, atol=1e-2)


def test_the_observer_records_frobenius_norms_with_the_annotation():
    """Jitted: the norms equal numpy's float64 norms (float32 sums of ≤ 36 squares:
    rel 1e-6), the annotation is found at the first call, or taken as given."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    params = _init(get_model("mlp", norm="bn_gamma_beta", num_classes=3, depth=3, width=6), x)["params"]
    observer = WeightNorms(5)
    assert observer.annotations == {}
    got = jax.jit(lambda p: observer(types.SimpleNamespace(params=p)))(params)  # reads state.params only
    assert observer.annotations == {"scale_invariant": ["dense1", "dense2"]}
    for layer, v in got.items():
        w = np.asarray(params[layer]["kernel"], np.float64)
        assert float(v) == pytest.approx(np.linalg.norm(w), rel=norm_rtol(w))
    assert set(frobenius_norms(params)) == {"dense1", "dense2", "dense3"}
    given = WeightNorms(5, scale_invariant=["dense2"])
    assert given.annotations == {"scale_invariant": ["dense2"]}
    given(types.SimpleNamespace(params=params))
    assert given.annotations == {"scale_invariant": ["dense2"]}


def test_under_fit_many_the_norms_of_scale_invariant_layers_never_shrink_without_decay(tmp_path):
    """Two runs (λ = 0 and λ = 0.05) trained as one vmapped program with plain SGD.
    Every line (step 0 included) carries the annotation; the last line equals the final
    state's kernel norms (rel 1e-6). λ = 0: the gradient of a scale-invariant W is
    orthogonal to W, so ‖W − ηg‖² = ‖W‖² + η²‖g‖² ≥ ‖W‖²: the recorded norms of dense1
    and dense2 never decrease (up to the float32 rounding of the norm, rel 1e-6, and
    BN's ε, which tilts g by ~ε/var ≪ 1e-4). λ = 0.05 ends smaller than λ = 0 in every
    layer (the paired run: same initialization and data)."""
    base = tiny_config(tmp_path, momentum=0.0, epochs=2, checkpoint_every_epochs=0, learning_rate=0.2)
    configs = [base.replace(name=f"wd{wd}", weight_decay=wd) for wd in (0.0, 0.05)]
    out = fit_many(configs, observers=[WeightNorms(2)], strategy="vmap", progress=False)
    lines = {c.weight_decay: [m for m in r.metrics if m["kind"] == "weight_norms"] for c, r in zip(configs, out)}
    for wd, r in zip((0.0, 0.05), out):
        recs = lines[wd]
        assert [m["step"] for m in recs] == list(range(0, r.step + 1, 2)) and r.step == 16
        assert all(m["scale_invariant"] == ["dense1", "dense2"] for m in recs)
        for layer, w in kernels(r.state.params).items():
            assert recs[-1][layer] == pytest.approx(np.linalg.norm(np.asarray(w, np.float64)), rel=norm_rtol(w))
        assert recs[0] == {**lines[0.0][0]}  # the same initialization
    for layer in ("dense1", "dense2"):
        series = np.array([m[layer] for m in lines[0.0]])
        assert np.all(np.diff(series) >= -1e-6 * series[:-1]), series
        assert series[-1] > series[0] * (1 + 1e-4)  # and it does grow
    assert all(lines[0.05][-1][k] < lines[0.0][-1][k] for k in ("dense1", "dense2", "dense3"))


def test_bad_arguments_are_refused():
    for every in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            WeightNorms(every)
    params = {"dense1": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match=r"\['conv9'\] are not kernels"):
        WeightNorms(1, scale_invariant=["conv9"])(types.SimpleNamespace(params=params))
