"""experiments/cluster/: the SLURM job-array template, its submitter and the multi-GPU-host
launcher, run for real where this machine can (bash; a stand-in ``sbatch``).

The merged-report test runs every shard of a quick ablation as a separate process through
``local_gpus.sh`` (two "GPUs": on this CPU machine the processes share the cores), then its
report, and checks that the runs and ``summary.md`` equal those of the same study trained
unsharded, by the same shard script as shard 1 of 1.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = REPO / "experiments" / "cluster"
STUDY_ARGS = ["--quick", "--quick-steps", "2", "--quick-subset", "128", "--variants", "vanilla", "bn", "--seeds", "0", "1"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _bash(script: str, *args, env=None, timeout=60, cwd=REPO):
    return subprocess.run(["bash", str(CLUSTER / script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_run_shard_builds_the_study_command():
    proc = _bash("run_shard.sh", 2, 3, "ablation", "--config", "digits", env={"JAXNORM_DRY_RUN": "1", "PYTHON": "py"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "py -m experiments.ablation --config digits --shard 2/3 --no-progress"
    bad = _bash("run_shard.sh", 1, 2)
    assert bad.returncode == 2 and "usage" in bad.stderr


@pytest.mark.parametrize("task, low, count, shard", [("1", "1", "4", "1/4"), ("4", "1", "4", "4/4"), ("0", "0", "3", "1/3"), ("2", "0", "3", "3/3")])
def test_slurm_array_task_is_its_shard(task, low, count, shard):
    env = {"JAXNORM_DRY_RUN": "1", "PYTHON": "py", "SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_MIN": low,
           "SLURM_ARRAY_TASK_COUNT": count, "SLURM_SUBMIT_DIR": str(REPO)}
    proc = _bash("slurm_study.sbatch", "sharpness", "--quick", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"py -m experiments.sharpness --quick --shard {shard} --no-progress"


def test_slurm_script_outside_an_array_says_how_to_submit():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(CLUSTER / "slurm_study.sbatch"), "ablation"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "sbatch --array=1-N" in proc.stderr


def test_submit_queues_the_array_then_the_report_after_it(tmp_path):
    """A stand-in sbatch on PATH records each call and answers a job id, as --parsable does."""
    log = tmp_path / "calls"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\n'
                    'n=$(wc -l < "$SBATCH_LOG"); echo "$((4000 + n));cluster"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "SBATCH_LOG": str(log), "SBATCH_OPTS": "--partition=gpu"}
    proc = _bash("submit_slurm.sh", 5, "ablation", "--config", "cifar10_3c3d", "--results", "/shared/r", env=env)
    assert proc.returncode == 0, proc.stderr
    array, report = log.read_text().splitlines()
    assert array == f"--parsable --partition=gpu --array=1-5 {CLUSTER}/slurm_study.sbatch ablation --config cifar10_3c3d --results /shared/r"
    assert report.startswith("--parsable --partition=gpu --dependency=afterok:4001 --job-name=jaxnorm-report")
    assert report.endswith("--wrap python -m experiments.ablation --config cifar10_3c3d --results /shared/r --plot-only ")
    assert "array job 4001 (5 shards of ablation); report job 4002 after it" in proc.stdout


def _runs(root: pathlib.Path) -> dict[str, str]:
    return {str(p.parent.relative_to(root)): p.read_text() for p in sorted(root.rglob("metrics.jsonl"))}


@pytest.mark.extended
def test_sharded_on_two_local_gpus_merges_to_the_unsharded_report(tmp_path):
    env = {"PYTHON": sys.executable, "NUM_GPUS": "2", "LOG_DIR": str(tmp_path / "logs"), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    sharded = tmp_path / "sharded"
    proc = _bash("local_gpus.sh", "ablation", *STUDY_ARGS, "--results", sharded, env=env, timeout=900)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs}"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["ablation-shard-1-of-2.log", "ablation-shard-2-of-2.log"]
    for k in (1, 2):
        assert f"shard {k}/2 trained" in (tmp_path / "logs" / f"ablation-shard-{k}-of-2.log").read_text()
    assert "all 2 shards of ablation finished" in proc.stdout

    whole = tmp_path / "whole"
    one = _bash("run_shard.sh", 1, 1, "ablation", *STUDY_ARGS, "--results", whole, env=env, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]

    a, b = sharded / "ablation" / "digits-quick", whole / "ablation" / "digits-quick"
    runs = _runs(a)
    assert sorted(runs) == ["lr1/bn_s0", "lr1/bn_s1", "lr1/vanilla_s0", "lr1/vanilla_s1"]
    assert runs == _runs(b)  # every run's records, byte for byte
    summary = (a / "plots" / "summary.md").read_text()
    assert summary.replace(str(sharded), "<results>") == (b / "plots" / "summary.md").read_text().replace(str(whole), "<results>")
    assert sorted(p.name for p in (a / "plots").iterdir()) == sorted(p.name for p in (b / "plots").iterdir())


@pytest.mark.extended
def test_local_gpus_reports_a_failed_shard_and_skips_the_report(tmp_path):
    env = {"PYTHON": sys.executable, "NUM_GPUS": "2", "LOG_DIR": str(tmp_path / "logs"), "JAX_PLATFORMS": "cpu"}
    proc = _bash("local_gpus.sh", "ablation", "--config", "no-such-config", env=env, timeout=300)
    assert proc.returncode == 1
    assert "shard(s) 1 2 of 2 failed" in proc.stderr and "writing the report" not in proc.stdout
    assert "invalid choice" in (tmp_path / "logs" / "ablation-shard-1-of-2.log").read_text()
