"""fit(): the results layout, the γ/β recorder, divergence, run-folder safety, observers."""

import json

import jax
import numpy as np
import pytest

from jaxnorm.train import RunExistsError, TrainConfig, fit, read_jsonl, read_npz
from jaxnorm.results import append_jsonl
from tests.train.helpers import tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("fit"))
    return cfg, fit(cfg, progress=False)


def test_run_folder_holds_config_metrics_trajectories_status_checkpoints(finished):
    cfg, r = finished
    assert r.status == "finished" and r.step == 16  # 256 // 32 = 8 steps x 2 epochs
    assert json.loads((r.run_dir / "config.json").read_text()) == cfg.to_dict()
    assert json.loads((r.run_dir / "status.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in (r.run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["16", "8"]
    assert TrainConfig.from_dict(json.loads((r.run_dir / "config.json").read_text())) == cfg


def test_metrics_have_train_lines_every_log_interval_and_eval_per_epoch(finished):
    cfg, r = finished
    train = [m for m in r.metrics if m["kind"] == "train"]
    # syncs at every global step that is a multiple of 3, and at each epoch end (8, 16)
    assert [m["step"] for m in train] == [3, 6, 8, 9, 12, 15, 16]
    assert sum(m["steps"] for m in train) == 16
    evals = [m for m in r.metrics if m["kind"] == "eval"]
    assert {(m["epoch"], m["split"]) for m in evals} == {(e, s) for e in (0, 1) for s in ("train_eval", "test")}
    test_n = {m["n"] for m in evals if m["split"] == "test"}
    assert test_n == {359}
    assert train[-1]["loss"] < train[0]["loss"]  # it learns
    assert all(m["loss"] == pytest.approx(m["ce"]) for m in train)  # weight_decay = 0


def test_gamma_beta_recorder_every_5_steps_ends_at_the_final_values(finished):
    cfg, r = finished
    t = read_npz(r.run_dir / "trajectories.npz")
    np.testing.assert_array_equal(t["gamma_beta/steps"], [0, 5, 10, 15])
    for layer in ("norm1", "norm2"):
        g = t[f"gamma_beta/{layer}/gamma"]
        assert g.shape == (4, 32)
        np.testing.assert_array_equal(g[0], np.ones(32))  # γ starts at 1
        np.testing.assert_array_equal(t[f"gamma_beta/{layer}/beta"][0], np.zeros(32))
    # The record at step 15 is not the final state (step 16) but moved away from the start.
    assert np.abs(t["gamma_beta/norm1/gamma"][-1] - 1).max() > 1e-4


def test_recorder_matches_state_at_a_recorded_step(tmp_path):
    r = fit(tiny_config(tmp_path, max_steps=10, record_every_steps=5), progress=False)
    t = read_npz(r.run_dir / "trajectories.npz")
    assert t["gamma_beta/steps"][-1] == 10 == r.step
    np.testing.assert_array_equal(t["gamma_beta/norm2/gamma"][-1], np.asarray(r.state.params["norm2"]["scale"]))
    np.testing.assert_array_equal(t["gamma_beta/norm2/beta"][-1], np.asarray(r.state.params["norm2"]["bias"]))


def test_ablated_variants_record_only_what_they_learn(tmp_path):
    r = fit(tiny_config(tmp_path, norm="bn_beta", max_steps=5, checkpoint_every_epochs=0), progress=False)
    t = read_npz(r.run_dir / "trajectories.npz")
    assert "gamma_beta/norm1/beta" in t and not any(k.endswith("/gamma") for k in t)
    r = fit(tiny_config(tmp_path, norm="vanilla", name="v", max_steps=5, checkpoint_every_epochs=0), progress=False)
    assert list(read_npz(r.run_dir / "trajectories.npz")) == ["gamma_beta/steps"]


def test_compiled_functions_trace_once(finished):
    cfg, r = finished
    assert r.traces == {"train_step": 1, "evaluate": 2}  # evaluate: once per split shape


def test_divergence_stops_cleanly_and_is_recorded(tmp_path):
    cfg = tiny_config(tmp_path, learning_rate=1e4, momentum=0.0, log_every_steps=2)
    r = fit(cfg, progress=False)
    assert r.status == "diverged"
    d = r.divergence
    assert d["step"] >= 1 and "non-finite loss" in d["reason"]
    lines = read_jsonl(r.run_dir / "metrics.jsonl")
    assert lines[-1]["kind"] == "divergence" and lines[-1]["step"] == d["step"]
    assert all(m["step"] < d["step"] for m in lines if m["kind"] == "train")
    status = json.loads((r.run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and status["divergence"]["step"] == d["step"]
    t = read_npz(r.run_dir / "trajectories.npz")
    assert np.all(t["gamma_beta/steps"] < d["step"])  # nothing recorded from the diverged steps
    # (the state recorded just before the bad step may already hold inf: it is what was there)
    assert all(np.all(np.isfinite(v[0])) for v in t.values())


def test_existing_runs_are_never_overwritten_silently(tmp_path, finished):
    cfg = tiny_config(tmp_path, max_steps=2)
    fit(cfg, progress=False)
    with pytest.raises(RunExistsError, match="different config"):
        fit(cfg.replace(learning_rate=0.2), progress=False)
    with pytest.raises(RunExistsError, match="already holds"):
        fit(cfg, resume=False, progress=False)
    r = fit(cfg.replace(learning_rate=0.2), overwrite=True, progress=False)
    assert r.status == "finished"
    (tmp_path / "test" / "other").mkdir(parents=True)
    (tmp_path / "test" / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="not a jaxnorm run"):
        fit(cfg.replace(name="other"), progress=False)
    assert (tmp_path / "test" / "other" / "notes.txt").read_text() == "mine"


def test_metric_observer_lines(tmp_path):
    class GradNormProbe:
        name, every, sink = "param_norm", 4, "metrics"

        def __call__(self, state):
            return {"norm": sum(jax.numpy.sum(x**2) for x in jax.tree.leaves(state.params)) ** 0.5}

    r = fit(tiny_config(tmp_path, max_steps=8), observers=[GradNormProbe()], progress=False)
    lines = [m for m in r.metrics if m["kind"] == "param_norm"]
    assert [m["step"] for m in lines] == [0, 4, 8]
    expected = float(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(r.state.params)) ** 0.5)
    assert lines[-1]["norm"] == pytest.approx(expected, rel=1e-5)
    assert not (r.run_dir / "trajectories.npz").exists()


def test_reader_ignores_a_cut_short_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"kind": "train", "step": 1}])
    with open(path, "a") as f:
        f.write('{"kind": "train", "st')  # a write cut short by a kill
    assert read_jsonl(path) == [{"kind": "train", "step": 1}]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"eval_bn_mode": "population"}, "eval_bn_mode"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_config_validation(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, **changes)


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="exceeds"):
        fit(tiny_config(tmp_path, train_subset=16, batch_size=32), progress=False)


def test_quick_shrinks_any_config(tmp_path):
    q = tiny_config(tmp_path, epochs=100, batch_size=128, train_subset=None).quick(steps=6, subset=64)
    assert (q.max_steps, q.train_subset, q.eval_subset, q.epochs, q.batch_size) == (6, 64, 64, 1, 64)


def test_a_config_file_from_before_new_fields_still_resumes(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2)
    fit(cfg, progress=False)
    path = tmp_path / "test" / "run" / "config.json"
    old = json.loads(path.read_text())
    old.pop("eval_subset")  # as written by a version without that field (default None)
    path.write_text(json.dumps(old))
    assert fit(cfg, progress=False).status == "finished"
