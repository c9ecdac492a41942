"""The ``jaxnorm`` console command (jaxnorm.cli): study discovery and forwarding,
``jaxnorm runs`` on a folder with a run in every state, ``jaxnorm report``."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

import jaxnorm.cli as cli
from jaxnorm.analysis.run_table import config_differences, format_table, run_rows
from jaxnorm.results import STALE_AFTER_S, append_jsonl, read_json, write_json
from jaxnorm.study import check_stored_setup
from jaxnorm.train import TrainConfig
from tests.analysis.synthetic import write_run
from tests.test_study import ToyStudy

REPO = pathlib.Path(__file__).resolve().parents[1]
TOY = ToyStudy()


def _entries(**studies):
    return {name: cli.StudyEntry(name, value) for name, value in studies.items()}


@pytest.fixture
def toy_installed(monkeypatch):
    monkeypatch.setattr(cli, "discover_studies", lambda: _entries(toy="tests.test_cli:TOY", ablation="experiments.ablation:STUDY"))


@pytest.fixture
def nothing_installed(monkeypatch):
    monkeypatch.setattr(cli, "discover_studies", dict)


# --- the fixture folder: one run in every state ------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _run(root, rel, *, lr=0.1, norm="bn", status=None, lines=(), **changes):
    folder = root / rel
    config = TrainConfig().to_dict() | {"learning_rate": lr, "norm": norm, "max_steps": 40, "name": folder.name,
                                        "study": str(pathlib.Path(rel).parent), "results_dir": str(root), **changes}
    write_json(folder / "config.json", config)
    if lines:
        append_jsonl(folder / "metrics.jsonl", lines)
    if status is not None:
        write_json(folder / "status.json", status)
    return folder


def _train(step, loss, acc):
    return {"kind": "train", "step": step, "epoch": 0, "loss": loss, "ce": loss, "acc": acc, "steps": 20}


def _eval(split, epoch, loss, acc):
    return {"kind": "eval", "split": split, "epoch": epoch, "step": 20 * (epoch + 1), "loss": loss, "acc": acc, "n": 100}


HOST = socket.gethostname()
#: What each run of the fixture must list as: (state, step, train loss, train acc, eval, config).
EXPECTED = {
    "a/diverged": ("diverged", "13/40", "nan", "0.125", "-", "learning_rate=1 norm=bn"),
    "a/failed": ("failed", "10/40", "2", "0.25", "-", "learning_rate=0.1 norm=bn"),
    "a/finished": ("finished", "40/40", "0.25", "0.9375", "test:0.5/0.875 train_eval:0.25/0.9375", "learning_rate=0.1 norm=bn"),
    "a/interrupted": ("interrupted", "20/40", "1.5", "0.5", "test:1.75/0.5 train_eval:1.5/0.5625", "learning_rate=0.1 norm=vanilla"),
    "a/no_records": ("no records", "-/40", "-", "-", "-", "learning_rate=0.1 norm=bn"),
    "b/running": ("running", "20/40", "1", "0.625", "-", "learning_rate=0.1 norm=bn"),
    "b/stale_here": ("interrupted", "20/40", "1", "0.625", "-", "learning_rate=0.1 norm=bn"),
    "b/stale_remote": ("interrupted", "20/40", "1", "0.625", "-", "learning_rate=0.1 norm=bn"),
    "b/unknown": ("unknown", "20/40", "1", "0.625", "-", "learning_rate=0.1 norm=bn"),
    "b/unreadable": ("unreadable", "-", "-", "-", "-", None),  # config: the reason
}


def write_every_state(root) -> pathlib.Path:
    """A run folder below ``root`` for every state of ``jaxnorm runs``, written with the
    real writers and the real TrainConfig().to_dict(); their bookkeeping (name, study,
    results_dir, log_every_steps) differs too, which the listing must leave out."""
    running = {"status": "running", "step": 20, "total_steps": 40, "host": HOST}
    half = [_train(20, 1.0, 0.625)]
    _run(root, "a/finished", status={"status": "finished", "step": 40, "total_steps": 40, "pid": 1, "host": HOST},
         lines=[_train(20, 1.0, 0.5), _eval("train_eval", 0, 1.0, 0.5), _eval("test", 0, 1.25, 0.375),
                _train(40, 0.25, 0.9375), _eval("train_eval", 1, 0.25, 0.9375), _eval("test", 1, 0.5, 0.875)])
    _run(root, "a/diverged", lr=1.0, status={"status": "diverged", "step": 13, "total_steps": 40, "divergence": {"step": 13, "reason": "nan"}},
         lines=[_train(10, 2.0, 0.25), _train(13, math.nan, 0.125), {"kind": "divergence", "step": 13, "epoch": 0, "reason": "non-finite loss (nan)"}])
    _run(root, "a/interrupted", norm="vanilla", log_every_steps=5, status={"status": "interrupted", "step": 20, "total_steps": 40, "reason": "SIGINT"},
         lines=[_train(20, 1.5, 0.5), _eval("train_eval", 0, 1.5, 0.5625), _eval("test", 0, 1.75, 0.5)])
    _run(root, "a/failed", status={"status": "failed", "step": 10, "total_steps": 40, "error": "RuntimeError: boom"}, lines=[_train(10, 2.0, 0.25)])
    _run(root, "a/no_records")
    _run(root, "b/running", status={**running, "pid": os.getpid(), "heartbeat": time.time()}, lines=half)
    _run(root, "b/stale_here", status={**running, "pid": _dead_pid(), "heartbeat": time.time()}, lines=half)
    _run(root, "b/stale_remote", status={**running, "pid": 7, "host": "elsewhere.invalid", "heartbeat": time.time() - 2 * STALE_AFTER_S}, lines=half)
    _run(root, "b/unknown", lines=half)
    (root / "b" / "unreadable").mkdir(parents=True)
    (root / "b" / "unreadable" / "config.json").write_text("{not json")
    return root


def _table(text: str) -> tuple[list[str], dict[str, tuple]]:
    """``(header, {run: cells})`` of a ``jaxnorm runs`` table, checking that every cell
    starts where its header does (the columns are aligned)."""
    lines = text.splitlines()
    header = re.split(r"\s{2,}", lines[0])
    starts = [lines[0].index(h) for h in header]
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line)
        assert len(cells) == len(header), line
        assert all(line[i:].startswith(c) and line[i - 1 : i] in ("", " ") for i, c in zip(starts, cells)), line
        rows[cells[0]] = tuple(cells[1:])
    return header, rows


def test_runs_lists_every_state_with_step_last_metrics_and_config_differences(tmp_path, capsys):
    root = write_every_state(tmp_path / "res")
    assert cli.main(["runs", str(root)]) == 0
    out = capsys.readouterr().out
    header, rows = _table(out)
    assert header == ["run", "state", "step", "train loss", "train acc", "eval", "config"]
    assert sorted(rows) == sorted(EXPECTED)
    for run, expected in EXPECTED.items():
        got = rows[run]
        assert got[:5] == expected[:5], run
        if expected[5] is None:
            assert got[5].startswith("config.json unreadable: Expecting property name"), got
        else:
            assert got[5] == expected[5], run


def test_runs_json_filter_and_notes(tmp_path, capsys):
    root = write_every_state(tmp_path / "res")
    assert cli.main(["runs", str(root), "--json"]) == 0
    rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)}  # strict JSON: no NaN token
    assert {r: rows[r]["state"] for r in rows} == {r: e[0] for r, e in EXPECTED.items()}
    assert rows["a/diverged"]["train"] == {"step": 13, "loss": "nan", "acc": 0.125}
    assert rows["a/diverged"]["note"] == "diverged at step 13"
    assert rows["a/finished"]["eval"] == {"test": {"epoch": 1, "step": 40, "loss": 0.5, "acc": 0.875},
                                          "train_eval": {"epoch": 1, "step": 40, "loss": 0.25, "acc": 0.9375}}
    assert rows["a/finished"]["differences"] == {"learning_rate": 0.1, "norm": "bn"}
    assert rows["b/stale_here"]["note"].startswith("interrupted at step 20 of 40 (process ") and "is gone" in rows["b/stale_here"]["note"]
    assert "elsewhere.invalid silent for" in rows["b/stale_remote"]["note"]
    assert rows["b/running"]["note"] == "running at step 20 of 40" and rows["a/no_records"]["step"] is None
    # Filtered, the differences are taken among the runs listed: norm is bn in both.
    assert cli.main(["runs", str(root), "--status", "finished,diverged"]) == 0
    _, listed = _table(capsys.readouterr().out)
    assert {r: c[5] for r, c in listed.items()} == {"a/diverged": "learning_rate=1", "a/finished": "learning_rate=0.1"}
    assert cli.main(["runs", str(root), "--status", "running"]) == 0
    assert list(_table(capsys.readouterr().out)[1]) == ["b/running"]


def test_runs_errors_and_empty_folders(tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"jaxnorm runs: error: {tmp_path / 'missing'} is not a folder.\n"
    write_every_state(tmp_path / "res")
    assert cli.main(["runs", str(tmp_path / "res"), "--status", "finished,done"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxnorm runs: error: unknown state(s) ['done']; known: ['finished',") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["runs", str(tmp_path / "res"), "--status", " , "])
    assert e.value.code == 2 and "jaxnorm runs: error: argument --status: give one or more states" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["runs", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == f"no runs under {tmp_path / 'empty'}\n"
    assert cli.main(["runs", str(tmp_path / "res"), "--status", "failed,running", "--json"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == ["a/failed", "b/running"]
    assert cli.main(["runs", str(tmp_path / "empty"), "--json"]) == 0 and json.loads(capsys.readouterr().out) == []


def test_runs_defaults_to_results_and_a_run_folder_lists_itself(tmp_path, capsys, monkeypatch):
    write_every_state(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["runs"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(EXPECTED)
    (row,) = run_rows(tmp_path / "results" / "a" / "finished")
    assert (row.run, row.state, row.differences) == (".", "finished", {})  # one run differs from nothing


def test_config_differences_compare_values_not_spellings():
    a, b = {"x": [1, 2], "y": 1, "name": "p"}, {"x": [1, 2], "y": 2, "name": "q", "z": None}
    assert config_differences([a, b]) == ["y", "z"]  # z: missing from one, so not the same in all; name: bookkeeping
    assert config_differences([a, dict(a)]) == [] and config_differences([]) == []
    assert format_table([]) == "run  state  step  train loss  train acc  eval  config\n"


# --- the command: discovery, overview, forwarding ----------------------------------------


def _registered() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"jaxnorm": "jaxnorm.cli:main"}
    return project["entry-points"][cli.GROUP]


def test_pyproject_registers_every_study_and_each_loads():
    """Every module of experiments/ with a top-level ``STUDY`` is registered under its
    name, and each entry loads to that study (the listing is not a hand-kept copy)."""
    studies = {}
    for path in sorted((REPO / "experiments").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "STUDY" for t in n.targets) for n in tree.body):
            studies[path.stem] = f"experiments.{path.stem}:STUDY"
    assert len(studies) >= 12 and _registered() == studies
    for name, value in studies.items():
        study = cli.StudyEntry(name, value).load()
        assert study.name == name and study.default in study.setups


def test_overview_lists_the_studies_with_descriptions_without_importing_them(toy_installed, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "experiments.ablation", raising=False)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "experiments.ablation" not in sys.modules
    assert re.search(r"^  ablation +The BatchNorm ablation study of", out, re.M)
    assert re.search(r"^  toy +The ``jaxnorm`` console command \(jaxnorm.cli\): study", out, re.M)  # the doc of the module it lives in
    assert re.search(r"^  runs +list the runs", out, re.M) and re.search(r"^  report +redraw plots", out, re.M)
    assert cli.main(["--help"]) == 0 and capsys.readouterr().out == out


def test_unknown_study_option_and_nothing_installed(toy_installed, capsys, monkeypatch):
    assert cli.main(["nope", "--quick"]) == 2
    assert capsys.readouterr().err == ("jaxnorm: error: unknown study or command 'nope' (studies: toy, ablation; "
                                       "commands: runs, report).\n")
    assert cli.main(["--nope"]) == 2 and capsys.readouterr().err.startswith("jaxnorm: error: unknown option '--nope'")
    monkeypatch.setattr(cli, "discover_studies", lambda: _entries(broken="experiments.no_such_module:STUDY", bare="json:dumps"))
    assert cli.main(["broken"]) == 2
    assert capsys.readouterr().err.startswith("jaxnorm: error: study 'broken' (experiments.no_such_module:STUDY) cannot be loaded: ModuleNotFoundError")
    assert cli.main(["bare"]) == 2
    assert capsys.readouterr().err.startswith("jaxnorm: error: json:dumps (study 'bare') is not a study: it has no name, setups")
    monkeypatch.setattr(cli, "discover_studies", dict)
    assert cli.main(["ablation"]) == 2
    assert capsys.readouterr().err == ("jaxnorm: error: no study 'ablation': no studies are installed (the jaxnorm.studies "
                                       "entry points); run `pip install -e .` in the checkout.\n")
    assert cli.main([]) == 0 and "(none: no studies are installed" in capsys.readouterr().out


def test_a_study_runs_under_jaxnorm_study_with_a_positional_config(toy_installed, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["ablation", "--help"])
    help_text = capsys.readouterr().out
    assert e.value.code == 0 and help_text.startswith("usage: jaxnorm ablation [-h]") and "  CONFIG  " in help_text
    results = str(tmp_path / "none")
    assert cli.main(["toy", "other", "--plot-only", "--results", results]) == 2  # nothing trained: the toy's analysis refuses
    assert capsys.readouterr().err == f"jaxnorm toy: error: no stored runs under {tmp_path / 'none' / 'toy' / 'other'}\n"
    with pytest.raises(SystemExit) as e:
        cli.main(["toy", "other", "--config", "toy", "--plot-only"])
    assert e.value.code == 2 and "jaxnorm toy: error: the setup is named twice: 'other' and --config 'toy'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["toy", "nosuch"])
    assert e.value.code == 2 and "jaxnorm toy: error: argument CONFIG: invalid choice: 'nosuch'" in capsys.readouterr().err


def test_the_console_script_finds_installed_entry_points(tmp_path):
    """``python -m jaxnorm.cli`` (what the ``jaxnorm`` script runs) with the pyproject's
    entry points installed as package metadata on the path: the real discovery."""
    site = tmp_path / "site"
    dist = site / "jaxnorm_cli_fixture-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jaxnorm-cli-fixture\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[{cli.GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in _registered().items()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "jaxnorm.cli", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = re.findall(r"^  (\w+) +(\S.*)$", out.stdout.split("\ncommands:")[0], re.M)
    assert [name for name, _ in listed] == sorted(_registered()) and all(desc for _, desc in listed)


# --- report ------------------------------------------------------------------------------


def _ablation_root(results, config="digits", seeds=(0, 1)):
    """A quick ablation study root: its ``study.json`` as run_study writes it, synthetic runs."""
    from experiments import ablation

    setup = ablation.STUDY.setups[config].quick()
    root = results / "ablation" / setup.name
    write_json(root / "study.json", check_stored_setup(ablation.STUDY, setup, seeds, root))
    for v in ("vanilla", "bn"):
        for s in seeds:  # no γ/β trajectories: their plots are the slow part, and not what is tested here
            write_run(root / "lr1" / f"{v}_s{s}", v, s, lr=0.1, traj={}, study=f"ablation/{setup.name}/lr1")
    return setup, root


def test_report_redraws_a_study_root_as_plot_only_does(toy_installed, tmp_path, capsys):
    from experiments import ablation

    setup, root = _ablation_root(tmp_path / "res")
    assert cli._stored_setup(ablation.STUDY, read_json(root / "study.json"), root) == setup
    assert ablation.main(["digits", "--quick", "--plot-only", "--results", str(tmp_path / "res")]) == 0
    verdict = capsys.readouterr().out.splitlines()[0]
    summary = (root / "plots" / "summary.md").read_text()
    (root / "plots" / "summary.md").unlink()
    assert cli.main(["report", str(root)]) == 0
    assert capsys.readouterr().out == f"{root}: {verdict}\n  plots and summary.md in {root / 'plots'}\n"
    assert (root / "plots" / "summary.md").read_text() == summary


def test_report_of_a_folder_of_study_roots_reports_each_and_goes_on_after_an_error(toy_installed, tmp_path, capsys):
    _, digits = _ablation_root(tmp_path / "res")
    _, other = _ablation_root(tmp_path / "res", config="digits_bn_only")
    bad = tmp_path / "res" / "zeta" / "x"
    write_json(bad / "study.json", {"study": "zeta", "setup": {}, "seeds": [0]})
    write_run(tmp_path / "res" / "adhoc" / "run", "bn", 0, traj={})
    assert cli.main(["report", str(tmp_path / "res")]) == 2
    out, err = capsys.readouterr()
    reported, last = out.splitlines()[:-1], out.splitlines()[-1]
    assert [line.split(":")[0] for line in reported if not line.startswith(" ")] == [str(digits), str(other)]
    assert last.startswith("not reported: 1 run outside the study roots, in adhoc/run")
    assert not (tmp_path / "res" / "adhoc" / "run" / "plots").exists()
    assert (digits / "plots" / "summary.md").is_file() and (other / "plots" / "summary.md").is_file()
    assert err == f"jaxnorm report {bad}: error: {bad / 'study.json'} is the 'zeta' study, which is not installed (installed: toy, ablation).\n"


def test_report_errors(toy_installed, tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"jaxnorm report: error: {tmp_path / 'missing'} is not a folder.\n"
    (tmp_path / "empty" / "plots").mkdir(parents=True)
    (tmp_path / "empty" / "plots" / "mine.png").write_bytes(b"x")
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"jaxnorm report: error: no runs and no study.json under {tmp_path / 'empty'}; nothing to report.\n"
    assert (tmp_path / "empty" / "plots" / "mine.png").read_bytes() == b"x"  # nothing cleared
    from experiments import ablation

    root = tmp_path / "res" / "ablation" / "digits-quick"
    stored = check_stored_setup(ablation.STUDY, ablation.STUDY.setups["digits"].quick(), (0,), root)
    write_json(root / "study.json", {**stored, "setup": {**stored["setup"], "config": "imagenet"}})
    assert cli.main(["report", str(root)]) == 2
    assert capsys.readouterr().err == (f"jaxnorm report {root}: error: {root / 'study.json'} records a setup that no setup of the "
                                       "'ablation' study takes; redraw it with the version of the study that trained it.\n")


def test_report_of_a_plain_folder_writes_the_generic_report(tmp_path, capsys, nothing_installed):
    root = tmp_path / "res"
    write_every_state(root)
    (root / "b" / "unreadable" / "config.json").unlink()
    assert cli.main(["report", str(root)]) == 0
    assert capsys.readouterr().out == f"{len(EXPECTED) - 1} runs; plots and summary.md in {root / 'plots'}\n"
    summary = (root / "plots" / "summary.md").read_text()
    assert summary.startswith(f"# Summary of {root}\n\n{len(EXPECTED) - 1} runs, 8 not finished.")


def test_positional_config_in_the_shared_command_line(tmp_path):
    from jaxnorm.study import main

    study = ToyStudy()
    with pytest.raises(ValueError, match="no stored runs"):
        main(study, ["other", "--plot-only", "--debug", "--results", str(tmp_path)])
    assert not study.analyzed
    study = _AnalyzeOnly()
    assert main(study, ["other", "--plot-only", "--results", str(tmp_path)]) == 0
    assert study.analyzed[-1].name == "other"
    assert main(study, ["--plot-only", "--results", str(tmp_path)]) == 0 and study.analyzed[-1].name == "toy"


class _AnalyzeOnly(ToyStudy):
    def analyze(self, setup, root):
        self.analyzed.append(setup)
        return ""


def test_study_entry_descriptions_read_the_source():
    entry = cli.StudyEntry("ablation", "experiments.ablation:STUDY")
    assert entry.description().startswith('The BatchNorm ablation study of "Dissecting BatchNorm')
    assert cli.StudyEntry("x", "no_such_module_jaxnorm:X").description() == ""
    assert dataclasses.replace(entry, value=" experiments.ablation : STUDY ").load() is entry.load()
