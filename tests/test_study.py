"""The shared study protocol and command line (jaxnorm.study) on a toy study."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxnorm.results import read_jsonl
from jaxnorm.study import RunGroup, main, parse_shard, setup_with, shard_of
from tests.train.helpers import tiny_config


@dataclasses.dataclass(frozen=True)
class ToySetup:
    name: str = "toy"
    steps: int = 6
    lrs: tuple = (0.1, 0.05)
    seeds: tuple = (0,)

    def quick(self):
        return dataclasses.replace(self, name=self.name + "-quick", steps=3)


class ToyStudy:
    name = "toy"
    setups = {"toy": ToySetup(), "other": ToySetup(name="other")}
    default = "toy"

    def __init__(self):
        self.after_calls, self.analyzed = [], []

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int)

    def groups(self, setup, seeds, root):
        base = tiny_config(root.parent.parent, study=f"{self.name}/{setup.name}", max_steps=setup.steps, epochs=1, checkpoint_every_epochs=0)
        configs = tuple(base.replace(name=f"lr{lr}_s{s}", learning_rate=lr, seed=s) for lr in setup.lrs for s in seeds)
        return [RunGroup(configs[:1], observers=list, after=self.after_calls.append), RunGroup(configs[1:], observers=list)]

    def analyze(self, setup, root):
        runs = sorted(p.name for p in root.iterdir() if (p / "metrics.jsonl").exists()) if root.exists() else []
        if not runs:
            raise ValueError(f"no stored runs under {root}")
        self.analyzed.append((setup, runs))
        return f"{len(runs)} runs"


def test_main_trains_every_group_then_analyzes(tmp_path, capsys):
    study = ToyStudy()
    assert main(study, ["--quick", "--results", str(tmp_path), "--no-progress", "--seeds", "0", "1"]) == 0
    root = tmp_path / "toy" / "toy-quick"
    setup, runs = study.analyzed[-1]
    assert setup.steps == 3 and runs == ["lr0.05_s0", "lr0.05_s1", "lr0.1_s0", "lr0.1_s1"]
    assert all(max(m["step"] for m in read_jsonl(root / r / "metrics.jsonl")) == 3 for r in runs)
    assert len(study.after_calls) == 1 and study.after_calls[0][0].run_dir.name == "lr0.1_s0"
    stored = json.loads((root / "study.json").read_text())
    assert stored["seeds"] == [0, 1] and stored["setup"]["steps"] == 3
    assert "4 runs" in capsys.readouterr().out


def test_explicit_flags_win_over_quick():
    assert setup_with(ToySetup(), {"steps": 30}, quick=True).steps == 30
    assert setup_with(ToySetup(), {"steps": None}, quick=True).steps == 3
    assert setup_with(ToySetup(), {"unrelated": 1}, quick=False) == ToySetup()


def test_shards_split_the_groups(tmp_path):
    study = ToyStudy()
    assert main(study, ["--quick", "--results", str(tmp_path), "--no-progress", "--shard", "2/2"]) == 0
    root = tmp_path / "toy" / "toy-quick"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["lr0.05_s0"] and not study.analyzed
    assert shard_of(range(5), "1/2") == [0, 2, 4] and parse_shard("3/3") == (3, 3)


@pytest.mark.parametrize("shard", ["0/2", "3/2", "x", "1-2"])
def test_a_bad_shard_is_an_argparse_error(shard, capsys):
    with pytest.raises(SystemExit) as e:
        main(ToyStudy(), ["--shard", shard])
    assert e.value.code == 2 and "--shard" in capsys.readouterr().err


def test_unknown_config_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(ToyStudy(), ["--config", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_plot_only_without_runs_prints_one_line(tmp_path, capsys):
    assert main(ToyStudy(), ["--plot-only", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: no stored runs" in err and "Traceback" not in err


def test_a_config_error_inside_fit_is_one_line(tmp_path, capsys):
    class Broken(ToyStudy):
        def groups(self, setup, seeds, root):
            return [RunGroup((tiny_config(tmp_path, dataset="nope"),), observers=list)]

    assert main(Broken(), ["--results", str(tmp_path), "--no-progress"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_ctrl_c_exits_130(tmp_path, capsys):
    class Interrupted(ToyStudy):
        def groups(self, setup, seeds, root):
            raise KeyboardInterrupt

    assert main(Interrupted(), ["--results", str(tmp_path)]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


# --- issue 13: stored setups, one-line errors, --debug, the engine's info lines -------


def _study_json(tmp_path, name="toy-quick"):
    return json.loads((tmp_path / "toy" / name / "study.json").read_text())


def test_a_changed_setup_is_refused_before_anything_is_written(tmp_path, capsys):
    args = ["--quick", "--results", str(tmp_path), "--no-progress"]
    assert main(ToyStudy(), args) == 0
    before = _study_json(tmp_path)
    metrics = (tmp_path / "toy" / "toy-quick" / "lr0.1_s0" / "metrics.jsonl").read_text()
    assert main(ToyStudy(), [*args, "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "steps (stored 3, given 5)" in err and "--overwrite" in err and "Traceback" not in err
    assert _study_json(tmp_path) == before
    assert (tmp_path / "toy" / "toy-quick" / "lr0.1_s0" / "metrics.jsonl").read_text() == metrics


def test_seeds_and_grids_may_grow_and_study_json_holds_the_union(tmp_path):
    args = ["--quick", "--results", str(tmp_path), "--no-progress"]
    assert main(ToyStudy(), [*args, "--seeds", "1"]) == 0
    assert main(ToyStudy(), [*args, "--seeds", "0"]) == 0
    assert _study_json(tmp_path)["seeds"] == [1, 0]
    study = ToyStudy()
    study.setups = {"toy": ToySetup(lrs=(0.1, 0.05, 0.2))}
    assert main(study, [*args, "--seeds", "0"]) == 0
    assert _study_json(tmp_path)["setup"]["lrs"] == [0.1, 0.05, 0.2]


def test_overwrite_replaces_the_setup_and_removes_the_old_setups_runs(tmp_path):
    args = ["--quick", "--results", str(tmp_path), "--no-progress"]
    assert main(ToyStudy(), args) == 0
    study = ToyStudy()
    study.setups = {"toy": ToySetup(lrs=(0.2, 0.3))}
    assert main(study, [*args, "--steps", "4"]) == 2 and study.analyzed == []
    assert main(study, [*args, "--steps", "4", "--overwrite"]) == 0
    root = tmp_path / "toy" / "toy-quick"
    assert _study_json(tmp_path)["setup"]["steps"] == 4
    assert sorted(p.name for p in root.iterdir() if (p / "config.json").exists()) == ["lr0.2_s0", "lr0.3_s0"]


def test_plot_only_analyzes_the_stored_setup_not_the_flags(tmp_path):
    study = ToyStudy()
    assert main(study, ["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    assert main(study, ["--quick", "--results", str(tmp_path), "--plot-only", "--steps", "99"]) == 0
    setup, _ = study.analyzed[-1]
    assert setup.steps == 3


def test_errors_are_one_line_and_debug_reraises(tmp_path, capsys):
    class Broken(ToyStudy):
        def groups(self, setup, seeds, root):
            raise FileNotFoundError("no such dataset file\n  (second line)")

    assert main(Broken(), ["--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "python -m experiments.toy: error: no such dataset file (second line)\n"
    with pytest.raises(FileNotFoundError):
        main(Broken(), ["--results", str(tmp_path), "--debug"])


def test_the_cli_prints_jaxnorm_info_lines_bare_and_only_while_it_runs(tmp_path, capsys):
    import logging

    class Logging(ToyStudy):
        def groups(self, setup, seeds, root):
            logging.getLogger("jaxnorm.train").info("toy/run: finished earlier")
            return super().groups(setup, seeds, root)

    assert main(Logging(), ["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    assert "toy/run: finished earlier\n" in capsys.readouterr().err.splitlines(keepends=True)
    assert main(Logging(), ["--quick", "--results", str(tmp_path), "--quiet"]) == 0
    assert "finished earlier" not in capsys.readouterr().err
    assert not logging.getLogger("jaxnorm").handlers  # nothing left configured after the command


def test_an_info_line_is_printed_once_when_the_root_logger_has_a_handler(tmp_path, capsys):
    """absl (imported by orbax) may give the root logger a stderr handler; the CLI's line
    must not be printed a second time through it."""
    import logging
    import sys

    class Logging(ToyStudy):
        def groups(self, setup, seeds, root):
            logging.getLogger("jaxnorm.train").info("toy/run: finished earlier")
            return super().groups(setup, seeds, root)

    root_handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root_handler)
    try:
        assert main(Logging(), ["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert capsys.readouterr().err.count("finished earlier") == 1
    assert logging.getLogger("jaxnorm").propagate  # restored after the command
