"""Multi-process training: 2 local processes x 4 simulated CPU devices train one ``fit``
run data-parallel over 8 devices (``jax.distributed.initialize`` with a coordinator on
127.0.0.1, gloo collectives), are SIGKILLed after the first checkpoint, restarted, and
must end where one process with 8 devices ends; only process 0 writes the run folder.

The processes are tests/train/multiprocess_worker.py. Every wait has a timeout and every
started process group is SIGKILLed in a ``finally``, so a hang fails the test instead of
blocking the suite.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxnorm.results import read_json, read_jsonl
from jaxnorm.train import fit
from jaxnorm.train.parallel import PrimaryProcessError, make_mesh, on_primary
from tests.train.multiprocess_worker import config

REPO = pathlib.Path(__file__).resolve().parents[2]
PROCESSES, DEVICES_PER_PROCESS = 2, 4
# Generous: on the shared 2-core machine one phase (two interpreters importing jax and
# jaxnorm, compiling, training 16 steps) takes 20-60 s of wall time.
TIMEOUT_S = 300
# The first checkpoint is at step 8 (end of epoch 0); the workers stall at their next host
# sync (step 9), after process 0 appended that step's metrics: lines past the checkpoint.
STALL_AFTER_STEP = 8

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="the reference run needs 8 (simulated) devices")


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # The suite's XLA flags (conftest.py) but 4 devices per process.
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={DEVICES_PER_PROCESS}".strip()
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Processes:
    """The workers of one launch, each in its own process group (SIGKILLed on exit)."""

    def __init__(self, results: pathlib.Path, out: pathlib.Path, *extra: str):
        out.mkdir(parents=True, exist_ok=True)
        self.out, port = out, _free_port()
        self.procs: list[subprocess.Popen] = []
        for i in range(PROCESSES):
            cmd = [
                sys.executable, "-m", "tests.train.multiprocess_worker", str(results), str(out),
                "--process-id", str(i), "--num-processes", str(PROCESSES), "--port", str(port), *extra,
            ]  # fmt: skip
            with open(out / f"log_{i}.txt", "w") as log:
                self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def logs(self) -> str:
        return "\n".join(f"--- process {i}:\n" + (self.out / f"log_{i}.txt").read_text()[-3000:] for i in range(PROCESSES))

    def wait(self, until=None) -> None:
        """Until every worker exited 0 (or, with ``until``, until ``until()`` holds while
        they run); fails on a worker's error or after TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            codes = [p.poll() for p in self.procs]
            if any(c not in (None, 0) for c in codes) or (until is not None and any(c is not None for c in codes)):
                pytest.fail(f"a worker ended early (exit codes {codes}):\n{self.logs()}")
            if until() if until is not None else all(c == 0 for c in codes):
                return
            time.sleep(0.2)
        pytest.fail(f"the workers did not get there within {TIMEOUT_S} s:\n{self.logs()}")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the group we started (start_new_session)
            p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def _leaves(path: pathlib.Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Launch 1: errors tried, training killed (SIGKILL, both processes) after the first
    checkpoint; launch 2: the same command resumes, then calls fit again (read back).
    Also the reference: this process, 8 devices."""
    tmp = tmp_path_factory.mktemp("multiproc")
    results = tmp / "results"
    with _Processes(results, tmp / "killed", "--try-errors", "--stall-after-step", str(STALL_AFTER_STEP)) as killed:
        killed.wait(until=lambda: all((tmp / "killed" / f"stalled_{i}").exists() for i in range(PROCESSES)))
        killed.kill()
        killed_pids = [p.pid for p in killed.procs]
    run = results / "multiproc" / "run"
    after_kill = {
        "files": sorted(p.name for p in run.iterdir()),
        "status": read_json(run / "status.json"),
        "lock": read_json(run / ".lock"),
        "metrics": read_jsonl(run / "metrics.jsonl"),
        "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir()),
    }
    with _Processes(results, tmp / "resumed", "--again") as resumed:
        resumed.wait()
    reference = fit(config(str(tmp / "reference"), 8), progress=False)
    return {"tmp": tmp, "run": run, "after_kill": after_kill, "killed_pids": killed_pids, "reference": reference}


def _result(runs, launch: str, i: int) -> dict:
    return json.loads((runs["tmp"] / launch / f"result_{i}.json").read_text())


def test_killed_run_left_a_checkpoint_and_lines_past_it(runs):
    k = runs["after_kill"]
    assert k["status"]["status"] == "running" and k["checkpoints"] == ["8"]
    assert max(m["step"] for m in k["metrics"] if m["kind"] == "train") == 9  # to be rewound on resume
    assert ".lock" in k["files"]  # SIGKILL: process 0 could not remove it (stale: taken over)


def test_resumed_two_process_run_equals_one_process_with_8_devices(runs):
    ref = runs["reference"]
    ref_leaves = [np.asarray(x) for x in jax.tree.leaves((ref.state.params, ref.state.batch_stats, ref.state.opt_state))]
    per_process = [_leaves(runs["tmp"] / "resumed" / f"params_{i}.npz") for i in range(PROCESSES)]
    # Every process holds the same (replicated) state, bit for bit.
    assert all(np.array_equal(a, b) for a, b in zip(*per_process))
    # Against one process: the same function, the same global batches and sharding; only
    # the all-reduce differs (gloo across processes, XLA's within one), i.e. the order of
    # float32 sums. Measured after 16 steps: 9.5e-7 max abs, on a running variance of 4.7
    # (a few float32 ulps; every other leaf <= 2.4e-7, leaves at most 4.7 in size), the
    # size of the 1-vs-8-devices difference (test_parallel.py), whose 1e-5 bound leaves
    # ~10x headroom. A wrong step, batch or resume point moves the state by > 1e-3.
    assert len(per_process[0]) == len(ref_leaves)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(per_process[0], ref_leaves)) < 1e-5
    for i in range(PROCESSES):
        r = _result(runs, "resumed", i)
        assert (r["status"], r["step"]) == ("finished", 16)
    # The metrics: the same records at the same steps as the reference (the killed run's
    # lines past its checkpoint rewound: no step twice), losses to rounding.
    mine = read_jsonl(runs["run"] / "metrics.jsonl")
    theirs = ref.metrics
    key = lambda m: (m["kind"], m.get("split"), m.get("step"))
    assert [key(m) for m in mine] == [key(m) for m in theirs]
    assert len({key(m) for m in mine}) == len(mine)
    np.testing.assert_allclose([m["loss"] for m in mine if "loss" in m], [m["loss"] for m in theirs if "loss" in m], rtol=1e-5)


def test_only_process_0_wrote_the_run_folder(runs):
    run, ref_run = runs["run"], runs["reference"].run_dir
    status = read_json(run / "status.json")
    assert status["status"] == "finished" and status["pid"] == _result(runs, "resumed", 0)["pid"]
    # Before the kill too: process 0 held the lock and wrote the heartbeat.
    assert runs["after_kill"]["lock"]["pid"] == runs["after_kill"]["status"]["pid"] == runs["killed_pids"][0]
    # One set of files, the single-process run's, and no lock left behind.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref_run.iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["16", "8"]
    for i in range(PROCESSES):
        assert "Traceback" not in (runs["tmp"] / "resumed" / f"log_{i}.txt").read_text()


def test_a_finished_run_is_read_back_on_every_process(runs):
    first = _leaves(runs["tmp"] / "resumed" / "params_0.npz")
    for i in range(PROCESSES):
        again = _result(runs, "resumed", i)["again"]
        assert (again["status"], again["step"], again["traces"]) == ("finished", 16, {})  # nothing compiled
        assert all(np.array_equal(a, b) for a, b in zip(first, _leaves(runs["tmp"] / "resumed" / f"again_{i}.npz")))


def test_errors_and_signals_reach_every_process_without_a_hang(runs):
    errors = [json.loads((runs["tmp"] / "killed" / f"errors_{i}.json").read_text()) for i in range(PROCESSES)]
    for e in errors:  # refused by every process, before any file is written
        assert e["devices"].startswith("ValueError: num_devices=3 with 2 processes") and "multiple of 2" in e["devices"]
    assert not (runs["run"].parent / "devices").exists()
    # A folder that is not a jaxnorm run: process 0 refuses it, the others are told why.
    assert errors[0]["foreign"].startswith("RunExistsError:") and "is not a jaxnorm run" in errors[0]["foreign"]
    assert errors[1]["foreign"].startswith("PrimaryProcessError: process 0 could not prepare the run folders: RunExistsError:")
    foreign = runs["run"].parent / "foreign"
    # A SIGTERM that process 1 alone received after step 3: both stop there (no hang),
    # process 0 records the interruption.
    for e in errors:
        assert e["interrupted"].startswith("KeyboardInterrupt: SIGTERM received")
    status = read_json(runs["run"].parent / "interrupted" / "status.json")
    assert (status["status"], status["step"], status["pid"]) == ("interrupted", 3, runs["killed_pids"][0])
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "a user's file"


# ----------------------------------------------------- in this process (no subprocesses)


def test_mesh_over_processes_refuses_uneven_counts(monkeypatch):
    # Two processes seen from process 0: its 8 devices, none of the other's.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="num_devices=3 with 2 processes.*multiple of 2"):
        make_mesh(3)
    with pytest.raises(ValueError, match="asks 4 devices of each of the 2 processes, but one has only 0"):
        make_mesh(8)


def test_on_primary_in_one_process_is_a_plain_call():
    assert on_primary(lambda: 41 + 1, "add") == 42
    with pytest.raises(KeyError, match="raised as is"):
        on_primary(lambda: {}["raised as is"], "look up")
    assert issubclass(PrimaryProcessError, RuntimeError)


@pytest.mark.parametrize(
    "env, calls",
    [
        ({}, 0),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, 1),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, 1),
        ({"TPU_WORKER_HOSTNAMES": "w0"}, 0),  # a single-host TPU VM
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "2"}, 1),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node01", "SLURM_NTASKS": "1"}, 0),  # one task
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, 0),  # a batch script, outside any srun step
        ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"}, 1),
    ],
)
def test_initialize_distributed_only_when_launched_as_several(monkeypatch, env, calls):
    from jaxnorm.train import parallel

    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: seen.append((a, k)))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    parallel.initialize_distributed()
    assert seen == [((), {})] * calls
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)  # already: never twice
    parallel.initialize_distributed()
    assert len(seen) == calls
