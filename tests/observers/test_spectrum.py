"""The ``SpectralDensity`` observer: the Hessian's SLQ density on a probe set during ``fit``.

Against the dense Hessian of the same loss (tiny MLPs on 8 digits, width 4: 310 and 314
parameters), with Lanczos order = the number of parameters, where the Ritz values are the
eigenvalues: the density integrates to 1, each vector's weights sum to 1, the nodes lie in
[λ_min, λ_max] and the extreme nodes are λ_min and λ_max; and inside ``fit``: recorded
before the first step and at the last one, the last record that of the final state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.observers.spectrum import SpectralDensity
from jaxnorm.results import read_npz
from jaxnorm.train import build_model, create_state, fit, make_optimizer
from tests.train.helpers import tiny_config

DIGITS = load("digits", "train")
PROBE = (DIGITS.images[:8], DIGITS.labels[:8])


def tiny(norm):
    cfg = tiny_config("unused", norm=norm, model_kwargs={"depth": 2, "width": 4})
    module = build_model(cfg, DIGITS.num_classes)
    return module, create_state(jax.random.PRNGKey(0), module, make_optimizer(0.1), PROBE[0][:1])


def dense_eigenvalues(module, state) -> np.ndarray:
    """The dense Hessian's eigenvalues (float64 eigh) of the full-batch MSE objective,
    written out independently: BN on the batch's statistics (train mode), differentiated."""
    x = normalize(jnp.asarray(PROBE[0]), DIGITS.mean, DIGITS.std)
    y = jax.nn.one_hot(jnp.asarray(PROBE[1]), DIGITS.num_classes)
    flat, unravel = ravel_pytree(state.params)

    def loss(f):
        logits, _ = module.apply({"params": unravel(f), "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(0.5 * jnp.sum((logits - y) ** 2, axis=-1))

    return np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64))


@pytest.mark.parametrize("norm", ["vanilla", "bn_gamma_beta"])
def test_full_order_density_against_the_dense_hessian(norm):
    """Order = number of parameters (the Ritz values are the eigenvalues, up to float32
    Lanczos rounding: measured 2.4e-7 of the spectral radius, asserted 1e-4). The density's integral by the trapezoid rule: the grid extends 5σ
    past the extreme nodes (Gaussian tail mass < 1e-6) with spacing ~0.3σ (trapezoid
    error exponentially small): 1 to float32 rounding of 400 sums (< 1e-4), asserted to
    1e-3. The weights are the squared first row of an orthogonal matrix: 1 to P·6e-8."""
    module, state = tiny(norm)
    p = ravel_pytree(state.params)[0].size
    obs = SpectralDensity(module, *PROBE, DIGITS.mean, DIGITS.std, every=1, order=p, num_vectors=2, loss="mse")
    rec = jax.device_get(jax.jit(obs)(state))
    assert rec["nodes"].shape == rec["weights"].shape == (2, p) and rec["grid"].shape == rec["density"].shape == (400,)
    eig = dense_eigenvalues(module, state)
    scale = np.max(np.abs(eig))
    assert np.trapezoid(rec["density"], rec["grid"]) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(rec["weights"].sum(axis=1), 1.0, atol=1e-4)
    assert rec["nodes"].min() >= eig[0] - 1e-4 * scale and rec["nodes"].max() <= eig[-1] + 1e-4 * scale
    for nodes in rec["nodes"]:
        assert nodes.max() == pytest.approx(eig[-1], abs=1e-4 * scale)
        assert nodes.min() == pytest.approx(eig[0], abs=1e-4 * scale)
    assert np.all(rec["density"] >= 0) and rec["grid"][0] < eig[0] and rec["grid"][-1] > eig[-1]


def test_the_gauss_newton_density_is_that_of_the_dense_jacobian_product():
    """curvature='ggn' with the mse loss: G = JᵀJ / b (J the logits' Jacobian over the
    probe batch), positive semi-definite; full order, the Ritz values are its eigenvalues
    (tolerances as above)."""
    module, state = tiny("vanilla")
    p = ravel_pytree(state.params)[0].size
    obs = SpectralDensity(module, *PROBE, DIGITS.mean, DIGITS.std, every=1, order=p, num_vectors=1, loss="mse", curvature="ggn")
    rec = jax.device_get(jax.jit(obs)(state))
    flat, unravel = ravel_pytree(state.params)
    x = obs.x.reshape((-1,) + obs.x.shape[2:])
    jac = np.asarray(jax.jit(jax.jacfwd(lambda f: module.apply({"params": unravel(f)}, x, train=True)))(flat), np.float64)
    jac = jac.reshape(-1, p)
    eig = np.linalg.eigvalsh(jac.T @ jac / len(x))
    scale = eig[-1]
    assert rec["nodes"].max() == pytest.approx(scale, abs=1e-4 * scale) and rec["nodes"].min() >= -1e-4 * scale
    with pytest.raises(ValueError, match="curvature"):
        SpectralDensity(module, *PROBE, DIGITS.mean, DIGITS.std, every=1, curvature="kfac")


def test_recorded_at_init_and_at_the_end_of_fit(tmp_path):
    """``every`` = the run's steps: records at step 0 and at the last step; the last is the
    observer's view of the final state (re-measured here by a separately compiled call:
    bitwise equal on the machine it was written on; another CPU may reassociate the two
    programs' float32 sums differently, so 1e-4 of the spectral width is asserted)."""
    cfg = tiny_config(tmp_path, norm="bn_gamma_beta", model_kwargs={"depth": 2, "width": 4}, full_batch=True, loss="mse",
                      momentum=0.0, train_subset=8, epochs=3, checkpoint_every_epochs=0, eval_subset=8)
    module = build_model(cfg, DIGITS.num_classes)
    obs = SpectralDensity(module, *PROBE, DIGITS.mean, DIGITS.std, every=3, order=30, num_vectors=2, num_points=50, loss="mse")
    result = fit(cfg, observers=[obs], progress=False)
    t = read_npz(result.run_dir / "trajectories.npz")
    assert t["spectrum/steps"].tolist() == [0, 3]
    assert t["spectrum/density"].shape == (2, 50) and t["spectrum/nodes"].shape == (2, 2, 30)
    end = jax.device_get(jax.jit(obs)(result.state))
    width = float(np.ptp(end["nodes"]))
    np.testing.assert_allclose(t["spectrum/nodes"][1], end["nodes"], atol=1e-4 * width)
    assert not np.allclose(t["spectrum/nodes"][0], t["spectrum/nodes"][1], atol=1e-4 * width)  # the weights moved


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "every must be >= 1"),
        ({"order": 0}, "order must be >= 1"),
        ({"num_vectors": 0}, "num_vectors must be >= 1"),
        ({"num_points": 0}, "num_points must be >= 1"),
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"batch_size": 1}, "batch_size must lie in"),
        ({"batch_size": 9}, "batch_size must lie in"),
        ({"bn_mode": "frozen"}, "frozen"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    module, _ = tiny("vanilla")
    with pytest.raises(ValueError, match=match):
        SpectralDensity(module, *PROBE, DIGITS.mean, DIGITS.std, **{"every": 1, **kwargs})


def test_an_order_above_the_parameter_count_is_refused_at_the_first_call():
    module, state = tiny("vanilla")
    obs = SpectralDensity(module, *PROBE, DIGITS.mean, DIGITS.std, every=1, order=10_000)
    with pytest.raises(ValueError, match="Lanczos order must lie in"):
        obs(state)
