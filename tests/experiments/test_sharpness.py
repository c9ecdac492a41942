"""The edge-of-stability study (``experiments/sharpness.py``) in quick mode, and its summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import sharpness


def test_quick_study_writes_records_plot_and_summary(tmp_path):
    sharpness.main(["--quick", "--results", str(tmp_path)])
    root = tmp_path / "sharpness" / "digits-quick"
    cfg = sharpness.SharpnessConfig().quick()
    for norm in cfg.norms:
        for lr in cfg.step_sizes:
            run = root / f"{norm}_lr{lr:g}"
            all_lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            lines = [l for l in all_lines if l["kind"] == "sharpness"]
            assert [l["step"] for l in lines] == list(range(0, cfg.steps + 1, cfg.every))
            assert all(np.isfinite(l["sharpness"]) and l["sharpness"] > 0 for l in lines)
            spectra = {l["when"]: l for l in all_lines if l["kind"] == "spectrum"}
            assert set(spectra) == {"init", "end"}
            for sp in spectra.values():
                assert sp["top"] == sorted(sp["top"], reverse=True) and sp["outlier_ratio"] == pytest.approx(sp["top"][0] / sp["top"][-1])
            arrays = np.load(run / "spectrum.npz")
            assert np.trapezoid(arrays["end/density"], arrays["end/grid"]) == pytest.approx(1.0, abs=1e-2)
    for png in ("sharpness.png", "density.png"):
        assert (root / "plots" / png).stat().st_size > 10_000
    summary = (root / "plots" / "summary.md").read_text()
    assert summary.count("| finished |") == len(cfg.norms) * len(cfg.step_sizes)


def test_sharpness_is_the_top_eigenvalue_of_the_loss(tmp_path):
    """The recorded sharpness at step 0 equals the top eigenvalue of the dense Hessian of
    the same full-batch loss (a tiny net: 8 examples, width 4), to float32 Lanczos accuracy."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    cfg = sharpness.SharpnessConfig(subset=8, steps=0, every=1, model_kwargs={"depth": 2, "width": 4, "activation": "tanh", "kernel_init": "glorot_normal"}, lanczos_order=40)
    recs = sharpness.run_one(cfg, "vanilla", 0.1, tmp_path, log=lambda s: None)
    from jaxnorm.data import load
    from jaxnorm.data.augmentation import normalize
    from jaxnorm.models import get_model

    ds = load("digits", "train")
    x = normalize(jnp.asarray(ds.images[:8]), ds.mean, ds.std)
    y = jnp.asarray(ds.labels[:8])
    module = get_model("mlp", norm="vanilla", num_classes=10, **cfg.model_kwargs)
    params = module.init(jax.random.PRNGKey(0), x[:2], train=False)["params"]
    flat, unravel = ravel_pytree(params)
    loss = lambda f: jnp.mean(sharpness.LOSSES["mse"](module.apply({"params": unravel(f)}, x, train=False), y))
    top = float(np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))[-1])
    assert recs[0]["sharpness"] == pytest.approx(top, rel=1e-3)


def test_summary_counts_late_records_near_the_edge():
    recs = [{"kind": "sharpness", "step": i, "loss": 1.0, "sharpness": s} for i, s in enumerate([5, 30, 19, 20.5, 21, 25])]
    s = sharpness.summarize(recs, 0.1)  # 2/η = 20; late = the last three: 20.5, 21, 25
    assert s["max_over_edge"] == pytest.approx(1.5)
    assert s["late_within_10pct"] == pytest.approx(2 / 3)
    assert s["late_median_over_edge"] == pytest.approx(21 / 20)
    assert np.isnan(sharpness.summarize([], 0.1)["max_over_edge"])


def test_unknown_loss_is_refused(tmp_path):
    cfg = sharpness.SharpnessConfig(loss="hinge")
    with pytest.raises(ValueError, match="unknown loss"):
        sharpness.run_one(cfg, "vanilla", 0.1, tmp_path)


def test_cifar10_5k_config_runs_quick_on_mocked_tfds(tmp_path):
    """Cohen et al.'s setting (fc-tanh 200-200, 5k CIFAR-10 images, MSE) through the real
    tfds path under mock_data, in quick mode: records and plots as for digits."""
    import tensorflow_datasets as tfds

    cfg = sharpness.CONFIGS["cifar10_5k"]
    assert (cfg.dataset, cfg.subset, cfg.loss, cfg.model_kwargs["width"], cfg.model_kwargs["activation"]) == ("cifar10", 5000, "mse", 200, "tanh")
    with tfds.testing.mock_data(num_examples=80):
        sharpness.main(["cifar10_5k", "--quick", "--results", str(tmp_path)])
    root = tmp_path / "sharpness" / "cifar10_5k-quick"
    lines = [json.loads(l) for l in (root / f"vanilla_lr{cfg.quick().step_sizes[0]:g}" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "sharpness"] == [0, 10, 20]
    assert (root / "plots" / "summary.md").exists()


def test_a_run_whose_loss_explodes_is_diverged_with_no_late_statistics(tmp_path):
    """GD far past the edge (η = 20 on a tiny net): the loss leaves divergence_factor × its
    initial value (or becomes non-finite); the run stops with a divergence line, and the
    summary shows no late statistics for it."""
    cfg = sharpness.SharpnessConfig(
        subset=8, steps=200, every=10, lanczos_order=4, density_order=4, density_vectors=1, outlier_k=3,
        step_sizes=(20.0,), norms=("vanilla",), divergence_factor=2.0,
        model_kwargs={"depth": 2, "width": 4, "activation": "tanh", "kernel_init": "glorot_normal"},
    )
    recs = sharpness.run_one(cfg, "vanilla", 20.0, tmp_path, log=lambda s: None)
    assert recs[-2]["kind"] == "divergence" and ("loss above 2 x" in recs[-2]["reason"] or "non-finite" in recs[-2]["reason"])
    assert recs[-2]["step"] < cfg.steps
    sharpness.write_report(tmp_path, cfg, {("vanilla", 20.0): recs})
    row = [l for l in (tmp_path / "plots" / "summary.md").read_text().splitlines() if l.startswith("| vanilla")][0]
    assert row.endswith("| diverged |") and "| - | - |" in row
