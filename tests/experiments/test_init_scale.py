"""The initialization-scale study (``experiments/init_scale.py``) on the engine: its runs as
TrainConfigs, a study killed with SIGKILL mid-training and started again ends with the
same files as an uninterrupted one (and those files are the study's records), a
diverging run, bad setups and command lines. The observer and the analysis have their
own tests (tests/observers/test_layer_statistics.py, tests/analysis/test_init_scale.py)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import init_scale
from jaxnorm.analysis import init_scale as analysis
from jaxnorm.results import read_jsonl, read_npz

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_groups_are_one_program_per_norm_and_c(tmp_path):
    """Seeds of one (norm, c) train together; c is the init option of the 'mlp'; every
    run is plain SGD with fit's divergence factor = the classifier's explode factor."""
    assert init_scale.SETUPS["digits"].seeds == (0, 1, 2)  # every number of the summary with an interval
    setup = init_scale.SETUPS["digits"].quick()
    assert setup.seeds == (0,)  # --quick: one seed
    root = tmp_path / "init_scale" / setup.name
    groups = init_scale.STUDY.groups(setup, [0, 1], root)
    assert len(groups) == len(setup.norms) * len(setup.scales)
    for g, (norm, c) in zip(groups, [(n, c) for n in setup.norms for c in setup.scales]):
        assert [(cfg.norm, cfg.seed, cfg.name) for cfg in g.configs] == [(norm, s, f"{norm}_c{c:g}_s{s}") for s in (0, 1)]
        cfg = g.configs[0]
        assert cfg.model == "mlp" and dict(cfg.model_kwargs) == {
            "num_classes": 10, "depth": 3, "width": 16, "activation": "relu", "kernel_init": "scaled_normal", "kernel_init_kwargs": {"c": c},
        }  # fmt: skip
        assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.learning_rate) == ("sgd", 0.0, 0.0, setup.learning_rate)
        assert (cfg.max_steps, cfg.epochs, cfg.train_subset, cfg.batch_size) == (20, 5, 256, 64)  # 4 steps per epoch
        assert cfg.divergence_factor == setup.explode_factor and cfg.eval_splits == ("test",) and cfg.log_every_steps == setup.every
        assert pathlib.Path(cfg.results_dir) / cfg.study == root
        (obs,) = g.observers()
        assert (obs.name, obs.sink, obs.every, len(obs.y)) == ("layer_statistics", "trajectories", setup.probe_every, setup.probe_size)


# --------------------------------------------------------------------------- kill and resume

#: One run (vanilla, c = 2) of the quick net for 1000 steps (250 epochs of 4 steps),
#: checkpointed every 25 epochs: long enough to be killed between two checkpoints.
KILL_ARGS = ["--quick", "--norms", "vanilla", "--scales", "2", "--steps", "1000", "--checkpoint-every", "25", "--no-progress"]
RUN = pathlib.Path("init_scale", "digits-quick", "vanilla_c2_s0")


def _launch(results: pathlib.Path) -> subprocess.Popen:
    # Output to a file, not a pipe: nobody reads a pipe while it runs, and a full one blocks.
    results.mkdir(parents=True)
    with open(results / "log.txt", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "experiments.init_scale", *KILL_ARGS, "--results", str(results)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _log(results: pathlib.Path) -> str:
    return (results / "log.txt").read_text()


def _checkpoints(run: pathlib.Path) -> list[int]:
    folder = run / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _status(run: pathlib.Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _last_train_step(run: pathlib.Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return -1
    steps = []
    for line in lines:
        try:
            m = json.loads(line)
        except ValueError:  # a line being written
            continue
        if m.get("kind") == "train":
            steps.append(m["step"])
    return max(steps, default=-1)


def _final_state(run: pathlib.Path, step: int):
    import jax
    import orbax.checkpoint as ocp

    return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore((run / "checkpoints" / str(step) / "state").absolute()))


@pytest.mark.extended
def test_a_study_killed_mid_training_resumes_to_the_same_results(tmp_path):
    """Two processes run the same command: one is SIGKILLed once it has checkpointed and
    trained past that checkpoint (its status.json still says 'running', its latest
    checkpoint is short of the end), then the command is run again; its metrics.jsonl,
    trajectories.npz, status.json, final checkpoint and summary.md are bit-identical to
    those of the uninterrupted process (the same compiled programs on the same machine)."""
    killed_root, whole_root = tmp_path / "killed", tmp_path / "whole"
    killed, whole = _launch(killed_root), _launch(whole_root)
    try:
        run = killed_root / RUN
        deadline = time.monotonic() + 240
        while True:
            assert killed.poll() is None, f"the run ended before it could be killed:\n{_log(killed_root)}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            ckpts, status = _checkpoints(run), _status(run)
            if ckpts and status.get("status") == "running" and _last_train_step(run) > ckpts[-1]:
                break
            time.sleep(0.01)
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        at_kill = _checkpoints(run)
        assert _status(run)["status"] == "running" and at_kill and at_kill[-1] < 1000, (_status(run), at_kill)
        assert _last_train_step(run) > at_kill[-1]  # lines past the checkpoint, which the resumed run must drop

        again = subprocess.run([sys.executable, "-m", "experiments.init_scale", *KILL_ARGS, "--results", str(killed_root)], cwd=REPO, capture_output=True, text=True, timeout=240)
        assert again.returncode == 0, again.stdout + again.stderr
        assert whole.wait(timeout=240) == 0, _log(whole_root)
    finally:  # a failed assertion leaves no process behind
        for proc in (killed, whole):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    a, b = killed_root / RUN, whole_root / RUN
    # The heartbeat (time, pid, host) tells the two processes apart; everything else is equal.
    writer = ("heartbeat", "pid", "host")
    sa, sb = ({k: v for k, v in _status(r).items() if k not in writer} for r in (a, b))
    assert sa["status"] == "finished" and sa == sb and sa["step"] == 1000
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    ta, tb = read_npz(a / "trajectories.npz"), read_npz(b / "trajectories.npz")
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k], equal_nan=True) for k in ta)
    sa, sb = _final_state(a, 1000), _final_state(b, 1000)
    import jax

    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)))
    summary = lambda root: (root / RUN.parent / "plots" / "summary.md").read_text()
    assert summary(killed_root) == summary(whole_root)

    # What the uninterrupted study stored is the study's record.
    config = json.loads((b / "config.json").read_text())
    assert (config["model"], config["norm"], config["model_kwargs"]["kernel_init_kwargs"], config["max_steps"]) == ("mlp", "vanilla", {"c": 2.0}, 1000)
    probes = list(range(0, 1001, 10))
    assert tb["layer_statistics/steps"].tolist() == probes
    for k in ("activation_rms", "grad_norm", "weight_norm"):
        assert tb[f"layer_statistics/{k}"].shape == (len(probes), 3) and np.all(tb[f"layer_statistics/{k}"] > 0), k
    # W ~ N(0, c/n): ‖W_0‖_F² ≈ c · fan_out (fan_in · fan_out entries of variance c / fan_in);
    # the 160-entry last layer's relative spread is √(2/160) ≈ 0.11: 0.35 is 3σ.
    np.testing.assert_allclose(tb["layer_statistics/weight_norm"][0] ** 2 / (2.0 * np.array([16, 16, 10])), 1.0, rtol=0.35)
    metrics = read_jsonl(b / "metrics.jsonl")
    assert [m["split"] for m in metrics if m["kind"] == "eval"] == ["test"]
    assert all(math.isfinite(m["loss"]) and 0 <= m["acc"] <= 1 for m in metrics if m["kind"] in ("train", "eval"))
    for png in ("loss.png", "layers_init.png", "layers_training.png", "weight_ratio.png"):
        assert (whole_root / RUN.parent / "plots" / png).stat().st_size > 10_000, png
    text = summary(whole_root)
    for claim in ("c = 3 gives NaN, c = 2 trains, c = 1 makes no progress", "persist", "normalization removes the sensitivity to c"):
        assert claim in text
    assert "| vanilla | 2 | 0 | trained |" in text  # 1000 steps train even the 3-layer net


@pytest.mark.extended
def test_a_diverging_run_is_recorded_and_the_report_still_written(tmp_path, capsys):
    """c = 10⁸ in the quick net: the loss starts ~10¹² and SGD drives it past 10x its first
    step's within a few steps (or to NaN): fit stops the run with a divergence record;
    the analysis classifies it as diverged, with no eval line and no weight ratio."""
    args = ["--quick", "--norms", "vanilla", "--scales", "1e8", "--results", str(tmp_path), "--no-progress"]
    assert init_scale.main(args) == 0
    root = tmp_path / "init_scale" / "digits-quick"
    run = root / "vanilla_c1e+08_s0"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "diverged" and status["step"] < 20
    metrics = read_jsonl(run / "metrics.jsonl")
    assert metrics[-1]["kind"] == "divergence" and not any(m["kind"] == "eval" for m in metrics)
    (r,) = analysis.load_runs(root)
    assert analysis.summarize(r)["outcome"] == "diverged" and np.isnan(analysis.weight_ratio(r)).all()
    summary = (root / "plots" / "summary.md").read_text()
    assert "| vanilla | 1e+08 | 0 | diverged |" in summary
    assert "init_scale: vanilla: c=1e+08 diverged" in capsys.readouterr().out
    # --plot-only reads the same files back: the same summary.
    assert init_scale.main(args + ["--plot-only"]) == 0
    assert (root / "plots" / "summary.md").read_text() == summary
    assert json.loads((root / "study.json").read_text())["setup"]["scales"] == [1e8]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"norms": ("vanilla", "weird")}, "unknown norm"),
        ({"norms": ()}, "at least one"),
        ({"scales": ()}, "at least one"),
        ({"scales": (1.0, -2.0)}, "scales"),
        ({"scales": (float("nan"),)}, "scales"),
        ({"scales": (2.0, 2.0)}, "repeat"),
        ({"depth": 1}, "depth"),
        ({"activation": "sigmoid"}, "unknown activation"),
        ({"every": 0}, "every"),
        ({"steps": 150}, "multiple of probe_every"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 1}, "batch_size"),
        ({"progress_fraction": 1.5}, "progress_fraction"),
        ({"explode_factor": 0.5}, "explode_factor"),
    ],
)
def test_bad_setup_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        init_scale.InitScaleSetup(**changes)


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        init_scale.main(["--config", "nope", "--results", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert init_scale.main(["--quick", "--scales", "0", "--results", str(tmp_path)]) == 2
    assert "scales must be finite numbers > 0" in capsys.readouterr().err
    assert init_scale.main(["--plot-only", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no stored runs under" in err and "Traceback" not in err
