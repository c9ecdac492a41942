"""The ReLU-sparsity observer against a hand computation, and its report."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.analysis import find_runs, plot_sparsity, sparsity_series, sparsity_table_md
from jaxnorm.models import get_model
from jaxnorm.train import ReluSparsity, create_state, fit, make_optimizer
from tests.train.helpers import tiny_config


def test_sparsity_equals_the_fraction_of_normalized_outputs_below_zero():
    model = get_model("mlp", depth=2, width=8, norm="bn_beta")
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 5))
    state = create_state(jax.random.PRNGKey(1), model, make_optimizer(0.1), x[:1])
    beta = jnp.linspace(-1.0, 1.0, 8)
    state = state.replace(params={**state.params, "norm1": {"bias": beta}})
    got = ReluSparsity(model, x, every=1, skip={"norm2"})(state)
    h = np.asarray(x, np.float64) @ np.asarray(state.params["dense1"]["kernel"], np.float64)
    y = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) + np.asarray(beta)
    assert set(got) == {"norm1"}
    np.testing.assert_allclose(float(got["norm1"]), np.mean(y <= 0), atol=1e-6)  # a count: exact up to ties


def test_fit_writes_sparsity_lines_and_the_report_plots_them(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=8)
    from jaxnorm.data import load, normalize

    ds = load(cfg.dataset, "train")
    module = get_model(cfg.model, norm=cfg.norm, num_classes=10, **cfg.model_kwargs)
    probe = normalize(ds.images[:64], ds.mean, ds.std)
    r = fit(cfg, observers=[ReluSparsity(module, probe, every=4, skip={"norm3"})], progress=False)
    lines = [m for m in r.metrics if m["kind"] == "relu_sparsity"]
    assert [m["step"] for m in lines] == [0, 4, 8]
    assert all(set(m) == {"kind", "step", "norm1", "norm2"} for m in lines)
    assert all(0.0 <= m["norm1"] <= 1.0 for m in lines)
    (run,) = find_runs(tmp_path)
    series = sparsity_series(run)
    np.testing.assert_array_equal(series["norm2"][0], [0, 4, 8])
    assert plot_sparsity([run], tmp_path / "s.png").exists()
    table = sparsity_table_md([run])
    assert "| bn_gamma_beta |" in table and f"{lines[-1]['norm1']:.3f}" in table


def test_no_sparsity_records_means_no_plot(tmp_path):
    fit(tiny_config(tmp_path, max_steps=2, checkpoint_every_epochs=0), observers=[], progress=False)
    (run,) = find_runs(tmp_path)
    assert plot_sparsity([run], tmp_path / "none.png") is None and sparsity_table_md([run]) == ""
