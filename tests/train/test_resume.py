"""Kill a run, resume it: bit-identical to an uninterrupted run. Bad checkpoints: clear errors."""

import json

import numpy as np
import pytest

from jaxnorm.train import CheckpointError, Checkpointer, fit, read_jsonl, read_npz
from tests.train.helpers import bitwise_equal, fit_killed_at, tiny_config


@pytest.mark.parametrize("augment", [False, True])
def test_resumed_run_is_bit_identical(tmp_path, monkeypatch, augment):
    from jaxnorm.data import AugmentConfig

    extra = {"augment": AugmentConfig(crop_padding=1, flip=False, color_jitter=True)} if augment else {}
    whole = fit(tiny_config(tmp_path, name="whole", epochs=3, **extra), progress=False)

    cfg = tiny_config(tmp_path, name="killed", epochs=3, **extra)
    fit_killed_at(cfg, kill_step=12, monkeypatch=monkeypatch)  # mid epoch 2; checkpoint at step 8
    status = json.loads((tmp_path / "test" / "killed" / "status.json").read_text())
    assert status["status"] == "failed" and "Killed" in status["error"]
    assert Checkpointer(tmp_path / "test" / "killed" / "checkpoints").latest_step() == 8

    resumed = fit(cfg, progress=False)
    assert resumed.step == whole.step == 24
    assert bitwise_equal(resumed.state, whole.state)
    strip = lambda ms: [{k: v for k, v in m.items()} for m in ms]
    assert strip(read_jsonl(resumed.run_dir / "metrics.jsonl")) == strip(read_jsonl(whole.run_dir / "metrics.jsonl"))
    a, b = read_npz(resumed.run_dir / "trajectories.npz"), read_npz(whole.run_dir / "trajectories.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    first = fit(cfg, progress=False)
    again = fit(cfg, progress=False)
    assert again.step == first.step and bitwise_equal(first.state, again.state)
    assert [m for m in again.metrics if m["kind"] == "train"] == [m for m in first.metrics if m["kind"] == "train"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    r = fit(cfg, progress=False)
    ckpt_dir = r.run_dir / "checkpoints" / "8"
    for f in ckpt_dir.rglob("*"):
        if f.is_file() and "state" in str(f):
            f.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="could not be restored"):
        fit(cfg, progress=False)
    assert (r.run_dir / "metrics.jsonl").exists()  # nothing written so far is deleted


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(tmp_path / "empty").restore({"x": np.zeros(2)})
