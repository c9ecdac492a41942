"""Runs you can trust (issue 13, the engine's side): a run's identity is its
training-relevant config; validation before anything is written; one writer per run
folder; a heartbeat in status.json; Ctrl-C between steps; one log line per run read
back; a corrupt newest checkpoint falls back; files follow the umask; bad values are
refused at construction."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jaxnorm.train.loop as fit_module
from jaxnorm.data import Dataset, load
from jaxnorm.results import read_json
from jaxnorm.train import (
    BOOKKEEPING_FIELDS,
    CheckpointError,
    Checkpointer,
    RunExistsError,
    RunLockedError,
    TrainConfig,
    fit,
    fit_many,
)
from jaxnorm.train.run_folder import RunDir, run_lock
from tests.train.helpers import fit_killed_at, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEARTBEAT_KEYS = {"status", "step", "total_steps", "pid", "host", "heartbeat"}


def _status(run_dir) -> dict:
    return json.loads((run_dir / "status.json").read_text())


# --------------------------------------------------------------------- 1. run identity


def test_bookkeeping_fields_do_not_change_a_runs_identity(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, max_steps=2)
    first = fit(cfg, progress=False)
    # The same folder as a relative path from another working directory, another tag and
    # other intervals: the same run, read back (and its config.json says so now).
    monkeypatch.chdir(tmp_path / "test")
    again = fit(
        cfg.replace(results_dir="..", tag="relabelled", log_every_steps=1, eval_every_epochs=2, record_every_steps=1, checkpoint_every_epochs=2),
        progress=False,
    )
    assert again.status == "finished" and again.traces == {}  # not retrained
    stored = read_json(first.run_dir / "config.json")
    assert stored["results_dir"] == ".." and stored["tag"] == "relabelled"
    assert set(BOOKKEEPING_FIELDS) >= {"results_dir", "study", "name", "tag", "log_every_steps"}


def test_a_moved_run_resumes_from_its_new_folder(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "a", epochs=3)
    fit_killed_at(cfg, kill_step=12, monkeypatch=monkeypatch)  # checkpoint at step 8
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # rsync to a cluster
    shutil.rmtree(tmp_path / "a")
    r = fit(cfg.replace(results_dir=str(tmp_path / "b")), progress=False)
    assert r.status == "finished" and r.step == 24 and r.run_dir == tmp_path / "b" / "test" / "run"
    train_steps = [m["step"] for m in r.metrics if m["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 24  # nothing twice, in order


def test_a_different_config_is_refused_naming_the_fields(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2)
    fit(cfg, progress=False)
    with pytest.raises(RunExistsError) as e:
        fit(cfg.replace(learning_rate=0.2, seed=3, tag="other"), progress=False)
    msg = str(e.value)
    assert "learning_rate: stored 0.1, new 0.2" in msg and "seed: stored 0, new 3" in msg
    assert "tag" not in msg  # bookkeeping
    assert "overwrite=True" in msg and "--overwrite" in msg and "another name" in msg


# ------------------------------------------------------- 2. validation before writes


def _small_digits(tmp_path, **changes):
    return tiny_config(tmp_path, max_steps=2, **changes)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"dataset": "nope"}, ValueError, "unknown dataset"),
        ({"model": "nope"}, ValueError, "nope"),
        ({"norm": "nope"}, ValueError, "nope"),
        ({"model": "3c3d", "model_kwargs": {}}, ValueError, r"'3c3d' .* cannot be initialized on 'digits' inputs of shape \(8, 8, 1\)"),
        ({"train_subset": 16}, ValueError, "exceeds"),
        ({"num_devices": 64}, ValueError, "devices"),
        ({"eval_splits": ("nope",)}, ValueError, "nope"),
        ({"frozen": "no_such_param"}, ValueError, "no_such_param"),
    ],
)
def test_config_errors_are_raised_before_anything_is_written(tmp_path, changes, error, match):
    with pytest.raises(error, match=match):
        fit(_small_digits(tmp_path, **changes), progress=False)
    assert not (tmp_path / "test" / "run").exists()


def test_non_finite_data_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    def load_with_nan(name, split="train", **kw):
        ds = load(name, split, **kw)
        images = np.array(ds.images)
        images[5, 0, 0, 0] = np.nan
        return Dataset(images, np.array(ds.labels), ds.num_classes, ds.name, ds.split, ds.mean, ds.std)

    monkeypatch.setattr(fit_module, "load", load_with_nan)
    with pytest.raises(ValueError, match="non-finite values.*example 5"):
        fit(_small_digits(tmp_path), progress=False)
    assert not (tmp_path / "test" / "run").exists()


def test_a_start_that_went_wrong_does_not_block_the_corrected_rerun(tmp_path, monkeypatch):
    # config.json without status.json (what a config error inside fit used to leave):
    run = tmp_path / "test" / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(_small_digits(tmp_path, learning_rate=0.5).to_dict()))
    assert fit(_small_digits(tmp_path), progress=False).status == "finished"
    # failed before its first checkpoint (epoch 1 ends at step 8), then a changed config:
    cfg = tiny_config(tmp_path, name="failed")
    fit_killed_at(cfg, kill_step=3, monkeypatch=monkeypatch)
    assert _status(tmp_path / "test" / "failed")["status"] == "failed"
    r = fit(cfg.replace(learning_rate=0.05), progress=False)
    assert r.status == "finished" and read_json(r.run_dir / "config.json")["learning_rate"] == 0.05
    # ... but a failed run with a checkpoint is something to resume, not to replace:
    cfg = tiny_config(tmp_path, name="resumable", epochs=3)
    fit_killed_at(cfg, kill_step=12, monkeypatch=monkeypatch)
    with pytest.raises(RunExistsError, match="learning_rate"):
        fit(cfg.replace(learning_rate=0.05), progress=False)


# ------------------------------------------------------------------------- 3. the lock

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from jaxnorm.train.run_folder import RunDir, run_lock
    with run_lock(RunDir(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    cfg = _small_digits(tmp_path)
    run = tmp_path / "test" / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host {socket.gethostname()}") as e:
            fit(cfg, progress=False)
        assert isinstance(e.value, RunExistsError) and str(run / ".lock") in str(e.value)
        assert not (run / "config.json").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock stays behind
        holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    r = fit(cfg, progress=False)  # stale (same host, pid gone): taken over
    assert r.status == "finished" and not (run / ".lock").exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    run = tmp_path / "test" / "run"
    run.mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time()}))
    with pytest.raises(RunLockedError, match="pid 1 on host elsewhere"):
        fit(_small_digits(tmp_path), progress=False)
    assert json.loads((run / ".lock").read_text())["host"] == "elsewhere"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_of_writers_that_all_find_a_stale_lock_exactly_one_takes_it_over(tmp_path):
    import threading

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "time": 0.0}))
    start, attempted, outcomes = threading.Barrier(8), threading.Barrier(8), []

    def writer():
        start.wait()
        try:
            with run_lock(run):
                outcomes.append("took over")
                attempted.wait()
        except RunLockedError:
            outcomes.append("refused")
            attempted.wait()

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * 7 + ["took over"]
    assert not run.lock.exists()


def test_an_unreadable_lock_is_stale_only_once_old(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.lock.write_text("")  # its writer died between creating and filling it, or is filling it now
    with pytest.raises(RunLockedError):
        with run_lock(run):
            pass
    os.utime(run.lock, (time.time() - 3600, time.time() - 3600))
    with run_lock(run):
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    assert not run.lock.exists()


def test_the_lock_is_released_on_every_exit_path(tmp_path, monkeypatch):
    cfg = _small_digits(tmp_path)
    fit(cfg, progress=False)
    run = tmp_path / "test" / "run"
    assert not (run / ".lock").exists()
    with pytest.raises(RunExistsError, match="different config"):
        fit(cfg.replace(learning_rate=0.3), progress=False)
    assert not (run / ".lock").exists()
    fit_killed_at(tiny_config(tmp_path, name="killed"), kill_step=3, monkeypatch=monkeypatch)
    assert not (tmp_path / "test" / "killed" / ".lock").exists()
    with run_lock(RunDir(run)):  # held by this process: a fit in it is refused too
        with pytest.raises(RunLockedError, match="this process"):
            fit(cfg, progress=False)
        assert (run / ".lock").exists()
    assert not (run / ".lock").exists()


# -------------------------------------------------------------------- 4. the heartbeat


def test_status_carries_a_heartbeat_written_at_sync_points(tmp_path, monkeypatch):
    written = []
    real = fit_module.write_status

    def spy(run, status, step, total_steps, **extra):
        real(run, status, step, total_steps, **extra)
        written.append(read_json(run.status))

    monkeypatch.setattr(fit_module, "write_status", spy)
    monkeypatch.setattr(fit_module._Loop, "HEARTBEAT_S", 0.0)  # no throttle: every sync point
    r = fit(tiny_config(tmp_path), progress=False)  # 16 steps, log every 3, epoch ends at 8
    running = [w for w in written if w["status"] == "running"]
    assert [w["step"] for w in running] == [0, 3, 6, 8, 9, 12, 15, 16]
    assert written[-1]["status"] == "finished" and written[-1]["step"] == 16
    for w in written:
        assert HEARTBEAT_KEYS <= set(w) and w["pid"] == os.getpid() and w["host"] == socket.gethostname()
        assert w["total_steps"] == 16
    beats = [w["heartbeat"] for w in written]
    assert beats == sorted(beats) and abs(beats[-1] - time.time()) < 60
    assert "program" in _status(r.run_dir)


def test_the_heartbeat_is_throttled_to_once_a_second(tmp_path, monkeypatch):
    written = []
    real = fit_module.write_status
    monkeypatch.setattr(fit_module, "write_status", lambda *a, **k: (written.append(a[1]), real(*a, **k)))
    t0 = time.monotonic()
    fit(tiny_config(tmp_path, log_every_steps=1), progress=False)  # 16 sync points
    elapsed = time.monotonic() - t0
    # the start beat, then at most one a second, then the final status
    assert written.count("running") <= 1 + int(elapsed / fit_module._Loop.HEARTBEAT_S) + 1


# ----------------------------------------------------------------------- 5. interrupts

_INTERRUPTIBLE = textwrap.dedent(
    """
    import sys
    from tests.train.helpers import tiny_config
    from jaxnorm.train import fit
    cfg = tiny_config(sys.argv[1], epochs=100, eval_every_epochs=100, checkpoint_every_epochs=10)
    try:
        fit(cfg, progress=False)
    except KeyboardInterrupt as e:
        print("KeyboardInterrupt:", e, flush=True)
        sys.exit(130)
    sys.exit(0)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_between_steps_and_it_resumes(tmp_path, sig):
    run = tmp_path / "test" / "run"
    child = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            ckpts = run / "checkpoints"
            if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
                break
            time.sleep(0.05)
        assert child.poll() is None, "the run ended before it could be interrupted"
        child.send_signal(sig)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, out  # the KeyboardInterrupt, not a segfault (139 / -11)
    assert f"{signal.Signals(sig).name} received" in out
    status = _status(run)
    assert status["status"] == "interrupted" and 0 < status["step"] < 800 and HEARTBEAT_KEYS <= set(status)
    assert not (run / ".lock").exists()
    kept = Checkpointer(run / "checkpoints")
    resumed_from = kept.latest_step()
    kept.close()
    assert resumed_from is not None and resumed_from <= status["step"]
    # The rerun resumes from that checkpoint; checkpointing only at the end is bookkeeping
    # (the same run), and keeps the test short.
    r = fit(tiny_config(tmp_path, epochs=100, eval_every_epochs=100, checkpoint_every_epochs=100), progress=False)
    assert r.status == "finished" and r.step == 800
    train_steps = [m["step"] for m in r.metrics if m["kind"] == "train"]
    assert train_steps[0] == 3 and train_steps == sorted(set(train_steps))  # kept, resumed, nothing twice


def test_signal_handlers_are_restored_after_fit(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    fit(_small_digits(tmp_path), progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_signal_during_fit_is_acted_on_between_steps(tmp_path, monkeypatch):
    """In-process: a SIGINT delivered inside a step (here: from its metrics' sync) is
    recorded, and the run stops at the next step boundary as 'interrupted'."""
    real_sync = fit_module._Loop.sync
    sent = []

    def sync_then_signal(self, step, epoch):
        synced = real_sync(self, step, epoch)
        if step >= 3 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return synced

    monkeypatch.setattr(fit_module._Loop, "sync", sync_then_signal)
    with pytest.raises(KeyboardInterrupt, match="SIGINT received"):
        fit(tiny_config(tmp_path), progress=False)
    status = _status(tmp_path / "test" / "run")
    assert status["status"] == "interrupted" and status["step"] == sent[0]


# ------------------------------------------------------------- 6. finished runs skipped


def test_runs_read_back_are_logged_one_line_each(tmp_path, caplog):
    cfgs = [_small_digits(tmp_path, name=f"r{s}", seed=s) for s in (0, 1)]
    fit_many(cfgs, progress=False)
    with caplog.at_level(logging.INFO, logger="jaxnorm.train"):
        again = fit_many(cfgs, progress=False)
    assert [r.traces for r in again] == [{}, {}]
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "jaxnorm.train"]
    assert lines == [f"test/r{s}: finished earlier (step 2); read from {tmp_path / 'test' / f'r{s}'}" for s in (0, 1)]


# ---------------------------------------------------------- 7. corrupt newest checkpoint


def _corrupt(ckpt_dir):
    for f in ckpt_dir.rglob("*"):
        if f.is_file() and "state" in str(f):
            f.write_bytes(b"\x00garbage")


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=3)
    fit_killed_at(cfg, kill_step=18, monkeypatch=monkeypatch)  # checkpoints at 8 and 16
    ckpts = tmp_path / "test" / "run" / "checkpoints"
    _corrupt(ckpts / "16")
    with pytest.warns(UserWarning, match="step 16 .* previous intact one, step 8"):
        r = fit(cfg, progress=False)
    assert r.status == "finished" and r.step == 24
    kept = Checkpointer(ckpts)
    assert kept.steps() == [16, 24]  # the bad 16 removed and saved again
    kept.close()


def test_only_all_corrupt_checkpoints_are_an_error(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=3)
    fit_killed_at(cfg, kill_step=18, monkeypatch=monkeypatch)
    ckpts = tmp_path / "test" / "run" / "checkpoints"
    _corrupt(ckpts / "16")
    _corrupt(ckpts / "8")
    with pytest.raises(CheckpointError, match=r"none of the checkpoints .* \(steps \[16, 8\]\)"):
        fit(cfg, progress=False)
    assert _status(tmp_path / "test" / "run")["status"] == "failed"  # left as it was


# ------------------------------------------------------------------------ 8. file modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        r = fit(_small_digits(tmp_path), progress=False)
    finally:
        os.umask(old)
    for name in ("config.json", "status.json", "metrics.jsonl", "trajectories.npz"):
        assert (r.run_dir / name).stat().st_mode & 0o777 == mode, name


# ------------------------------------------------------------- 9. values at construction


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"momentum": 1.0}, r"momentum must lie in \[0, 1\)"),
        ({"momentum": 5.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"max_steps": 2.0}, "max_steps must be an integer"),
        ({"checkpoint_every_epochs": -1}, "checkpoint_every_epochs"),
        ({"train_subset": 0}, "train_subset"),
        ({"name": "../escape"}, "name"),
        ({"name": "/abs"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a//b"}, "name"),
        ({"name": "a/../../b"}, "name"),
        ({"study": ".."}, "study"),
        ({"tag": 3}, "tag"),
    ],
)
def test_bad_values_are_refused_at_construction(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, **changes)


def test_nested_names_and_numpy_integers_are_accepted(tmp_path):
    cfg = tiny_config(tmp_path, study="ablation/digits", name="lr1/bn_s0", batch_size=np.int64(32), seed=np.int32(2))
    assert type(cfg.batch_size) is int and cfg.to_dict()["batch_size"] == 32 and cfg.to_dict()["seed"] == 2
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_fit_result_repr_is_short(tmp_path):
    r = fit(_small_digits(tmp_path), progress=False)
    text = repr(r)
    assert len(text) < 300 and "\n" not in text
    assert text.startswith("FitResult(status='finished', step=2, run_dir=") and "records" in text and "params=" in text
