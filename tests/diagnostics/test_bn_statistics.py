"""``jaxnorm.diagnostics.bn_statistics``: norm-layer inputs, population statistics
(Ioffe & Szegedy's Alg. 2) and evaluation with running/population/test-batch statistics,
against float64 NumPy forwards of a tiny net with two BN layers; the compiled path;
every documented error.

Tolerances: float32 forwards of O(1) values through two or three layers of at most 12
features against float64: each output is a few dot products of <= 12 terms, a relative
error of a few 1e-7 per operation; 2e-5 leaves two orders of headroom on any CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.diagnostics.bn_statistics import evaluate_in_mode, norm_inputs, population_batch_stats
from jaxnorm.models import get_model

TOL = dict(rtol=2e-5, atol=2e-5)
EPS = 1e-5


def f64(a):
    return np.asarray(a, np.float64)


@pytest.fixture(scope="module")
def net():
    """dense1 (4 -> 6) -> BN -> ReLU -> dense2 (6 -> 6) -> BN -> ReLU -> dense3 (6 -> 3);
    random γ/β and running statistics, so no layer is the identity."""
    module = get_model("mlp", depth=3, width=6, num_classes=3, norm="bn_gamma_beta")
    x = jax.random.normal(jax.random.PRNGKey(0), (12, 4)) * 2.0 + 1.0
    variables = module.init(jax.random.PRNGKey(1), x[:2], train=False)
    params = dict(variables["params"])
    params["norm1"] = {"scale": jnp.linspace(0.5, 1.5, 6), "bias": jnp.linspace(-0.3, 0.3, 6)}
    params["norm2"] = {"scale": jnp.linspace(1.2, 0.7, 6), "bias": jnp.linspace(0.2, -0.1, 6)}
    stats = {
        "norm1": {"mean": jnp.linspace(-1, 1, 6), "var": jnp.linspace(0.5, 2, 6)},
        "norm2": {"mean": jnp.linspace(0, 0.5, 6), "var": jnp.linspace(1, 3, 6)},
    }
    return module, {"params": params, "batch_stats": stats}, x


def _bn(h, mean, var, p):
    return (h - mean) / np.sqrt(var + EPS) * f64(p["scale"]) + f64(p["bias"])


def numpy_forward(variables, x, stats=None):
    """float64 forward: BN on ``stats`` ({layer: (mean, var)}) or, where None, on the
    batch's biased statistics. Returns (logits, {layer: input})."""
    p = variables["params"]
    inputs = {}
    h = f64(x) @ f64(p["dense1"]["kernel"])  # no bias: BN follows
    for layer, nxt in (("norm1", "dense2"), ("norm2", "dense3")):
        inputs[layer] = h
        mean, var = stats[layer] if stats else (h.mean(0), h.var(0))
        h = np.maximum(_bn(h, mean, var, p[layer]), 0) @ f64(p[nxt]["kernel"])
        h = h + (f64(p[nxt]["bias"]) if "bias" in p[nxt] else 0)
    return h, inputs


def running(variables):
    return {k: (f64(v["mean"]), f64(v["var"])) for k, v in variables["batch_stats"].items()}


def test_norm_inputs_in_both_modes_and_filters(net):
    module, variables, x = net
    got = jax.jit(lambda v, x: norm_inputs(module, v, x))(variables, x)
    _, want = numpy_forward(variables, x)
    assert sorted(got) == ["norm1", "norm2"]
    for k in want:
        np.testing.assert_allclose(f64(got[k]), want[k], **TOL)
    got = norm_inputs(module, variables, x, bn_mode="running")
    _, want = numpy_forward(variables, x, running(variables))
    np.testing.assert_allclose(f64(got["norm2"]), want["norm2"], **TOL)
    assert sorted(norm_inputs(module, variables, x, layers=["norm2"])) == ["norm2"]
    assert norm_inputs(module, variables, x, kinds=("layer",)) == {}
    ln = get_model("mlp", depth=2, width=6, num_classes=3, norm="layer")
    assert sorted(norm_inputs(ln, ln.init(jax.random.PRNGKey(0), x, train=False), x, kinds=("layer",))) == ["norm1"]


def test_population_stats_of_one_batch_are_the_mean_and_unbiased_variance(net):
    """One batch of all n: each layer's input mean and (n−1) variance, the second layer's
    input computed with the first layer on batch statistics (training's forward); eval
    mode with them equals NumPy normalizing with them; the caller's tree is untouched."""
    module, variables, x = net
    before = np.array(variables["batch_stats"]["norm1"]["var"])  # a copy: the fixture's own values
    stats = jax.jit(lambda v, x: population_batch_stats(module, v, x, batch_size=12))(variables, x)
    _, inputs = numpy_forward(variables, x)
    pop = {k: (h.mean(0), h.var(0, ddof=1)) for k, h in inputs.items()}
    for k, (mean, var) in pop.items():
        np.testing.assert_allclose(f64(stats[k]["mean"]), mean, **TOL)
        np.testing.assert_allclose(f64(stats[k]["var"]), var, **TOL)
    x_test = jax.random.normal(jax.random.PRNGKey(5), (7, 4))
    got = module.apply({**variables, "batch_stats": stats}, x_test, train=False)
    np.testing.assert_allclose(f64(got), numpy_forward(variables, x_test, pop)[0], **TOL)
    # Compared with the values before the call, not with NumPy's linspace: jnp.linspace may
    # round an element differently (1 ulp) depending on XLA's code generation.
    np.testing.assert_array_equal(variables["batch_stats"]["norm1"]["var"], before)


def test_population_stats_over_batches_follow_algorithm_2(net):
    """Batches x[0:4], x[4:8], x[8:12] (and 5 of 12: x[0:5], x[5:10], the rest dropped):
    the mean of the batch means and m/(m − 1) times the mean of the biased variances."""
    module, variables, x = net
    for m in (4, 5):
        stats = population_batch_stats(module, variables, x, batch_size=m)
        per_batch = [numpy_forward(variables, x[i : i + m])[1] for i in range(0, 12 - m + 1, m)]
        for k in ("norm1", "norm2"):
            hs = np.stack([b[k] for b in per_batch])
            np.testing.assert_allclose(f64(stats[k]["mean"]), hs.mean(axis=1).mean(axis=0), **TOL)
            np.testing.assert_allclose(f64(stats[k]["var"]), m / (m - 1) * hs.var(axis=1).mean(axis=0), **TOL)


def test_population_stats_of_a_conv_layer_count_every_position():
    """Conv BN: m = batch × height × width values per channel."""
    module = get_model("convnet", depth=2, width=3, stages=1, num_classes=2, norm="bn_gamma_beta")
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 4, 4, 1)) + 0.5
    variables = module.init(jax.random.PRNGKey(3), x[:2], train=False)
    stats = population_batch_stats(module, variables, x, batch_size=3)
    for name, mean in jax.tree_util.tree_leaves_with_path(stats):
        layer = name[0].key
        hs = np.stack([f64(norm_inputs(module, variables, x[i : i + 3])[layer]) for i in (0, 3)])  # (2, 3, 4, 4, c)
        m = 3 * 4 * 4
        want = hs.mean(axis=(1, 2, 3)).mean(0) if name[1].key == "mean" else m / (m - 1) * hs.var(axis=(1, 2, 3)).mean(0)
        np.testing.assert_allclose(f64(mean), want, **TOL)


def _ce(logits, y):
    y = np.asarray(y)
    return np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y])


def test_evaluate_running_and_batch_modes(net):
    """'running': eval mode on the given statistics, the same for any chunking (padding
    not counted); 'batch': each batch by its own biased statistics, the incomplete batch
    dropped; compiled."""
    module, variables, x = net
    y = jnp.arange(12) % 3
    ev = jax.jit(lambda v, x, y, mode, b: evaluate_in_mode(module, v, x, y, bn_mode=mode, batch_size=b), static_argnums=(3, 4))
    logits = numpy_forward(variables, x, running(variables))[0]
    for b in (None, 5, 12, 100):
        r = ev(variables, x, y, "running", b)
        assert int(r["n"]) == 12
        np.testing.assert_allclose(float(r["loss"]), _ce(logits, y), **TOL)
        assert float(r["acc"]) == pytest.approx(np.mean(logits.argmax(1) == np.asarray(y)))
    r = ev(variables, x, y, "batch", 5)  # batches [0:5], [5:10]; 2 dropped
    logits = np.concatenate([numpy_forward(variables, x[i : i + 5])[0] for i in (0, 5)])
    assert int(r["n"]) == 10
    np.testing.assert_allclose(float(r["loss"]), _ce(logits, y[:10]), **TOL)
    assert float(r["acc"]) == pytest.approx(np.mean(logits.argmax(1) == np.asarray(y[:10])))


def test_errors(net):
    module, variables, x = net
    y = jnp.arange(12) % 3
    for b in (1, 13, 2.0, True):
        with pytest.raises(ValueError, match="2 <= batch_size <= 12"):
            population_batch_stats(module, variables, x, batch_size=b)
        with pytest.raises(ValueError, match="2 <= batch_size <= 12"):
            evaluate_in_mode(module, variables, x, y, bn_mode="batch", batch_size=b)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate_in_mode(module, variables, x, y, bn_mode="running", batch_size=0)
    with pytest.raises(ValueError, match="'population' is not|must be one of"):
        evaluate_in_mode(module, variables, x, y, bn_mode="population")
    with pytest.raises(ValueError, match="is now called 'running'"):
        norm_inputs(module, variables, x, bn_mode="eval")
    with pytest.raises(ValueError, match=r"no norm layer named \['norm9'\].*\['norm1', 'norm2'\]"):
        norm_inputs(module, variables, x, layers=["norm9"])
    for norm in ("vanilla", "layer"):
        plain = get_model("mlp", depth=2, width=5, num_classes=3, norm=norm)
        with pytest.raises(ValueError, match="no BatchNorm layer"):
            population_batch_stats(plain, plain.init(jax.random.PRNGKey(0), x, train=False), x, batch_size=4)
