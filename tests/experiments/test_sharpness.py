"""The edge-of-stability study (``experiments/sharpness.py``) on the engine: quick mode end
to end, the recorded sharpness against a dense Hessian of the trained weights, a diverging
run beside a finishing one in one program, and the CIFAR-10 setup on mocked tfds."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import sharpness
from jaxnorm.analysis import sharpness as analysis
from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.observers.stopping import StopWhen
from jaxnorm.results import read_jsonl, read_npz
from jaxnorm.study import run_study

TINY = {"depth": 2, "width": 4, "activation": "tanh", "kernel_init": "glorot_normal"}


def lines(run, kind):
    return [m for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == kind]


@pytest.mark.extended
def test_quick_study_writes_records_plots_and_summary(tmp_path):
    assert sharpness.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    root = tmp_path / "sharpness" / "digits-quick"
    setup = sharpness.SETUPS["digits"].quick()
    assert json.loads((root / "study.json").read_text())["setup"]["steps"] == setup.steps and setup.seeds == (0,)
    for norm in setup.norms:
        for lr in setup.step_sizes:
            run = root / sharpness.run_name(norm, lr, 0)
            config = json.loads((run / "config.json").read_text())
            assert (config["full_batch"], config["loss"], config["momentum"], config["learning_rate"]) == (True, "mse", 0.0, lr)
            sharp = lines(run, "sharpness")
            # The quick window is the whole run: it cannot end before the cap.
            assert [l["step"] for l in sharp] == list(range(0, setup.steps + 1, setup.every))
            assert all(np.isfinite(l["sharpness"]) and l["sharpness"] > 0 and l["bn_mode"] == "batch" for l in sharp)
            train = lines(run, "train")
            assert [l["step"] for l in train] == list(range(setup.every, setup.steps + 1, setup.every))  # one host sync per sharpness interval
            assert all(l["steps"] == setup.every for l in train)
            # The stop line is there exactly when the rule holds on the stored records.
            settled = analysis.settles(sharp, learning_rate=lr, window=setup.window, tol=setup.edge_tol)
            assert [l["step"] for l in lines(run, "stop_rule")] == ([setup.steps] if settled else [])
            t = read_npz(run / "trajectories.npz")
            # At the cap the observer records the end density: no separate measurement.
            assert t["spectrum/steps"].tolist() == [0, setup.steps] and not (run / analysis.END_SPECTRUM).exists()
            for i in range(2):
                assert np.trapezoid(t["spectrum/density"][i], t["spectrum/grid"][i]) == pytest.approx(1.0, abs=1e-3)
    for png in ("sharpness.png", "density.png"):
        assert (root / "plots" / png).stat().st_size > 10_000
    summary = (root / "plots" / "summary.md").read_text()
    rows = [l for l in summary.splitlines() if l.startswith("| vanilla | 0.1 | 0 |") or l.startswith("| bn_gamma_beta | 0.1 | 0 |")]
    assert len(rows) == len(setup.norms) * len(setup.step_sizes)
    # Order-12 densities cannot resolve λ11: the outlier ratio is n/a, not a number.
    assert all(r.endswith(f"| n/a | n/a | finished (step {setup.steps}) |") for r in rows)
    groups = [l for l in summary.splitlines() if l.startswith("| vanilla | 0.1 | 20.0 | 1 |") or l.startswith("| bn_gamma_beta | 0.1 | 20.0 | 1 |")]
    assert len(groups) == 2 and all(g.endswith("| no test (n = 1) |") for g in groups)


def test_each_norm_and_step_size_is_one_program_that_stops_at_the_edge(tmp_path):
    """The groups: one per (norm, η) with all seeds; the sharpness observer is wrapped in
    the stop rule of its own η, window and tolerance (a rule bound to another η would
    stop a run that is nowhere near its edge)."""
    setup = dataclasses.replace(sharpness.SETUPS["digits"].quick(), step_sizes=(0.1, 0.2), seeds=(0, 1))
    groups = sharpness.STUDY.groups(setup, [0, 1], tmp_path)
    assert [(g.configs[0].norm, g.configs[0].learning_rate, [c.seed for c in g.configs]) for g in groups] == [
        (n, lr, [0, 1]) for n in setup.norms for lr in setup.step_sizes
    ]
    stop, density = groups[1].observers()
    assert isinstance(stop, StopWhen) and isinstance(stop.observer, sharpness.Sharpness) and density.every == setup.steps
    at = lambda s: [{"step": t, "sharpness": s} for t in range(0, setup.window + 1, setup.every)]
    assert stop.rule(at(2 / 0.2)) and not stop.rule(at(2 / 0.1))  # settled at 2/0.2 = 10, not at 20


def test_a_diverging_program_beside_a_settling_one_and_the_sharpness_of_the_trained_weights(tmp_path, monkeypatch):
    """η = 0.1 and η = 20 (far past the edge of a tiny net), each its own program: the
    η = 20 run leaves divergence_factor x its first loss, gets a divergence line, no
    records after it and no end spectrum, and its program ends there; the η = 0.1 run
    meets its stop rule (here: replaced by "two records", so that it stops at step 10 of
    30 whatever its sharpness) and its program ends at step 10, with the end density
    measured from the final state. Its last recorded sharpness is the top eigenvalue of the dense Hessian (float64 eigh) of the full-batch
    MSE at its final weights, written out independently: 40 warm-started Lanczos steps on
    310 parameters, to 1e-3 relative (measured 2e-7: the eigen-gap leaves float32
    rounding only; 1e-3 is the Sharpness observer tests' margin)."""
    setup = dataclasses.replace(
        sharpness.SETUPS["digits"], name="tiny", subset=8, model_kwargs=TINY, norms=("vanilla",), step_sizes=(0.1, 20.0),
        steps=30, every=10, lanczos_order=40, density_order=8, density_vectors=1, divergence_factor=2.0, seeds=(0,),
    )
    monkeypatch.setattr(sharpness.analysis, "settles", lambda records, learning_rate, **kw: learning_rate < 1 and len(records) >= 2)
    results = run_study(sharpness.STUDY, setup, seeds=[0], results=str(tmp_path), progress=False)
    monkeypatch.undo()
    root = tmp_path / "sharpness" / "tiny"
    ok, bad = results
    assert (ok.status, bad.status) == ("finished", "diverged") and ok.traces["train_step"] == 1 and ok.step == 10
    div = lines(bad.run_dir, "divergence")
    assert len(div) == 1 and div[0]["step"] < setup.steps and ("loss above 2 x" in div[0]["reason"] or "non-finite" in div[0]["reason"])
    assert all(l["step"] < div[0]["step"] for l in lines(bad.run_dir, "sharpness"))
    assert read_npz(bad.run_dir / "trajectories.npz")["spectrum/steps"].tolist() == [0]
    assert not (bad.run_dir / analysis.END_SPECTRUM).exists()
    assert [l["step"] for l in lines(ok.run_dir, "stop_rule")] == [10]
    assert read_npz(ok.run_dir / "trajectories.npz")["spectrum/steps"].tolist() == [0]
    end = read_npz(ok.run_dir / analysis.END_SPECTRUM)
    assert int(end["step"]) == 10 and np.trapezoid(end["density"][0], end["grid"][0]) == pytest.approx(1.0, abs=1e-3)

    ds = load("digits", "train")
    x = normalize(jnp.asarray(ds.images[:8]), ds.mean, ds.std)
    y = jax.nn.one_hot(jnp.asarray(ds.labels[:8]), 10)
    module = sharpness.build_model(sharpness.STUDY.configs(setup, "vanilla", 0.1, [0], root)[0], 10)
    flat, unravel = ravel_pytree(ok.state.params)
    loss = lambda f: jnp.mean(0.5 * jnp.sum((module.apply({"params": unravel(f)}, x, train=False) - y) ** 2, axis=-1))
    top = float(np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64))[-1])
    last = lines(ok.run_dir, "sharpness")[-1]
    assert last["step"] == 10 and last["sharpness"] == pytest.approx(top, rel=1e-3)

    assert sharpness.STUDY.analyze(setup, root).endswith("vanilla η=20: — (n = 0), does not hold here (diverged)")
    summary = (root / "plots" / "summary.md").read_text()
    row = next(l for l in summary.splitlines() if l.startswith("| vanilla | 20 | 0 |"))
    assert row.endswith(f"| diverged (step {div[0]['step']}) |") and "| - | - |" in row
    assert next(l for l in summary.splitlines() if l.startswith("| vanilla | 0.1 | 0 |")).endswith("| finished (step 10) |")
    group = next(l for l in summary.splitlines() if l.startswith("| vanilla | 20 | 0.1 | 1 | 1 |"))
    assert group.endswith("| does not hold here (diverged) |")


@pytest.mark.extended
def test_cifar10_5k_setup_runs_quick_on_mocked_tfds(tmp_path):
    """Cohen et al.'s setting (fc-tanh 200-200, 5k CIFAR-10 images, MSE) through the real
    tfds path under mock_data, in quick mode (one norm: the compile is the cost): records and
    plots as for digits."""
    import tensorflow_datasets as tfds

    setup = sharpness.SETUPS["cifar10_5k"]
    assert (setup.dataset, setup.subset, setup.loss, setup.model_kwargs["width"], setup.model_kwargs["activation"]) == ("cifar10", 5000, "mse", 200, "tanh")
    with tfds.testing.mock_data(num_examples=80):
        assert sharpness.main(["--config", "cifar10_5k", "--quick", "--norms", "vanilla", "--results", str(tmp_path), "--no-progress"]) == 0
    root = tmp_path / "sharpness" / "cifar10_5k-quick"
    run = root / sharpness.run_name("vanilla", setup.quick().step_sizes[0], 0)
    assert [l["step"] for l in lines(run, "sharpness")] == [0, 10, 20]
    assert (root / "plots" / "summary.md").exists()


def test_bad_setups_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        dataclasses.replace(sharpness.SETUPS["digits"], loss="hinge")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dataclasses.replace(sharpness.SETUPS["digits"], steps=0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        dataclasses.replace(sharpness.SETUPS["digits"], window=0)
    with pytest.raises(ValueError, match="edge_tol must lie in"):
        dataclasses.replace(sharpness.SETUPS["digits"], edge_tol=1.5)
    with pytest.raises(ValueError, match="step_sizes must be finite and > 0"):
        dataclasses.replace(sharpness.SETUPS["digits"], step_sizes=(0.1, -1.0))
    with pytest.raises(SystemExit) as e:
        sharpness.main(["--loss", "hinge", "--results", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'hinge'" in capsys.readouterr().err
    assert sharpness.main(["--plot-only", "--results", str(tmp_path)]) == 2
    assert "no study.json" in capsys.readouterr().err
