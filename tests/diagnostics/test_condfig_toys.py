"""The toys behind the conditioning thesis's figures without counterpart: the Lemma 2.2
simulation, the shattered-gradients statistics, mirrored-pair distances, and the
samplers' bootstrap -- each against an independent computation (NumPy, closed forms)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.analysis.samplers import expected_extreme
from jaxnorm.analysis.toys import lag_correlation, spectral_slope, summarize_lemma as summarize
from jaxnorm.diagnostics.lemma_simulation import simulate
from jaxnorm.diagnostics.mirrored import mirror_distances
from jaxnorm.diagnostics.shattered import input_gradient_curve
from jaxnorm.inits import looks_linear
from jaxnorm.models import get_model


def test_expected_extreme_matches_the_exact_order_statistic():
    """E[max of k draws with replacement from n values] = Σ_j v_(j)((j/n)^k − ((j−1)/n)^k)
    (v sorted ascending), the min likewise from the top. 20000 bootstrap subsets: the
    standard error is < std(v)/√20000 ≈ 0.007·std; tolerance 0.05·std (7 SE). (n, m)
    terms: the mean over columns of each column's value."""
    v = np.random.default_rng(0).normal(size=12)
    s, n, k = np.sort(v), 12, 5
    j = np.arange(1, n + 1)
    exact_max = float(np.sum(s * ((j / n) ** k - ((j - 1) / n) ** k)))
    exact_min = -float(np.sum(np.sort(-v) * ((j / n) ** k - ((j - 1) / n) ** k)))
    tol = 0.05 * v.std()
    assert abs(expected_extreme(v, k, "max", draws=20000) - exact_max) < tol
    assert abs(expected_extreme(v, k, "min", draws=20000) - exact_min) < tol
    two = np.stack([v, 2 * v], axis=1)  # column 2's max is twice column 1's (same subsets)
    np.testing.assert_allclose(expected_extreme(two, k, "max", draws=20000), 1.5 * expected_extreme(v, k, "max", draws=20000), rtol=1e-12)
    with pytest.raises(ValueError, match="'max' or 'min'"):
        expected_extreme(v, k, "mean")


def test_lemma_simulation_fields_and_the_independent_reading_is_a_coin_flip():
    """Gaps and agreements are well formed; under the 'independent' reading E[‖u‖² − <u,v>] = 0
    exactly (v = u + zero-mean noise), so the result's direction is a coin flip: over 400
    distribution pairs the fraction in the condition's direction lies within 5 binomial
    standard errors (5·0.025) of 1/2; the 'shrink' reading (v = (1 − a)u + noise) puts
    it above 1/2 by more than that."""
    sim = simulate(0, distributions=400, samples=40, dim=8, perturbation="independent")
    assert all(v.shape == (400,) for v in sim.values())
    assert np.all(sim["condition_gap"] >= 0)
    for k in ("condition_agreement", "result_agreement"):
        assert np.all((sim[k] >= 0) & (sim[k] <= 1))
    assert abs(summarize(sim)["same_direction"] - 0.5) < 5 * 0.025
    shrink = simulate(0, distributions=400, samples=40, dim=8, perturbation="shrink")
    assert summarize(shrink)["same_direction"] > 0.5 + 5 * 0.025
    with pytest.raises(ValueError, match="unknown perturbation"):
        simulate(0, perturbation="gaussian")


def test_shattered_statistics_on_known_signals():
    """lag_correlation equals np.corrcoef of the shifted curve; spectral_slope of white
    noise is ≈ 0 and of its running sum (brown noise) ≈ −2 (4096 points: the slope's
    standard error is ~0.03; tolerance 0.3)."""
    w = np.random.default_rng(1).normal(size=4096)
    np.testing.assert_allclose(lag_correlation(w, 3), np.corrcoef(w[:-3], w[3:])[0, 1], rtol=1e-12)
    assert abs(spectral_slope(w)) < 0.3
    assert abs(spectral_slope(np.cumsum(w)) + 2.0) < 0.3
    with pytest.raises(ValueError, match="lag must lie"):
        lag_correlation(w[:3], 2)


def test_input_gradient_curve_is_the_derivative():
    """A 3-layer tanh MLP without BN (smooth): f'(x) against central differences in
    float32 (h = 1e-2: truncation ~h²·f''' ≈ 1e-4, round-off ~1e-7/h; tolerance 2e-3)."""
    module = get_model("mlp", num_classes=1, depth=3, width=8, activation="tanh", norm="vanilla")
    x = jnp.linspace(-2.0, 2.0, 16).reshape(-1, 1)
    # One compiled program for everything (eagerly, every op would compile on its own).
    got, fd = jax.jit(lambda x: (
        input_gradient_curve(module, v := module.init(jax.random.PRNGKey(0), x, train=False), x),
        (module.apply(v, x + 1e-2, train=False) - module.apply(v, x - 1e-2, train=False))[:, 0] / 2e-2))(x)  # fmt: skip
    np.testing.assert_allclose(got, fd, atol=2e-3)
    with pytest.raises(ValueError, match="one input"):
        input_gradient_curve(module, None, jnp.zeros((4, 2)))


def test_mirror_distances():
    """Looks-linear kernels: every pair sum is exactly 0; any kernel: |K[:n] + K[n:]| / rms(K)
    as NumPy computes it; the first layer (not mirrored) is skipped."""
    k = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    d = jax.jit(lambda k: mirror_distances({"dense1": {"kernel": jnp.ones((5, 6))}, "dense3": {"kernel": k},
                                            "dense2": {"kernel": looks_linear()(jax.random.PRNGKey(0), (6, 4))}}))(k)  # fmt: skip
    assert list(d) == ["dense2", "dense3"]
    assert float(jnp.max(d["dense2"])) == 0.0
    np.testing.assert_allclose(d["dense3"], np.abs(k[:3] + k[3:]) / math.sqrt(np.mean(k.astype(np.float64) ** 2)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(2n, m\)"):
        mirror_distances({"dense2": {"kernel": jnp.ones((3, 2))}})
