"""Rerunning a study (issue 13): a second demo reads its finished runs back instead of
training them again, a changed command never rewrites what is stored, and
``--plot-only`` describes the stored runs, not the current flags."""

from __future__ import annotations

import json
import pathlib

import pytest

from experiments import ablation, init_scale
from jaxnorm.layers import ABLATION_VARIANTS
from tests.conftest import ABLATION_QUICK_ARGS


def _files(root: pathlib.Path) -> dict[str, bytes]:
    """Every file of the runs below ``root`` (not the report), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "plots" not in p.relative_to(root).parts and not p.name.startswith(".")}


@pytest.mark.extended
def test_a_second_demo_says_the_runs_are_done_and_does_not_retrain(ablation_quick, capsys):
    # The first run is the shared quick ablation of tests/conftest.py (trained once per worker).
    results, _ = ablation_quick
    root = results / "ablation" / "digits-quick"
    runs = sorted(p.parent for p in root.rglob("config.json"))
    assert all(any((r / "checkpoints").iterdir()) for r in runs)  # the digits config checkpoints (resumable)
    stored, first = _files(root), (root / "plots" / "summary.md").read_text()
    capsys.readouterr()
    assert ablation.main([*ABLATION_QUICK_ARGS, "--results", str(results)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert _files(root) == stored and (root / "plots" / "summary.md").read_text() == first
    for run in runs:  # the engine's one line per skipped run, printed by the CLI
        assert len([line for line in err if run.name in line]) == 1, err
    assert {r.name.rsplit("_s", 1)[0] for r in runs} == set(ABLATION_VARIANTS)


def _status(run):
    return json.loads((run / "status.json").read_text())


@pytest.mark.extended
def test_a_changed_flag_never_rewrites_a_lecture_study_and_plot_only_describes_what_is_stored(tmp_path, capsys):
    args = ["--quick", "--norms", "vanilla", "--scales", "2", "--results", str(tmp_path), "--no-progress"]
    root = tmp_path / "init_scale" / "digits-quick"
    assert init_scale.main(args) == 0
    stored, study = _files(root), json.loads((root / "study.json").read_text())
    assert study["setup"]["learning_rate"] == 0.005
    capsys.readouterr()

    assert init_scale.main([*args, "--lr", "0.5"]) == 2  # refused before anything is written
    err = capsys.readouterr().err
    assert "learning_rate (stored 0.005, given 0.5)" in err and "--overwrite" in err and "Traceback" not in err
    assert _files(root) == stored

    assert init_scale.main([*args, "--lr", "0.5", "--plot-only"]) == 0
    summary = (root / "plots" / "summary.md").read_text()
    assert "lr 0.005" in summary and "lr 0.5" not in summary

    assert init_scale.main(args) == 0  # the same command again: nothing retrained
    assert _files(root) == stored

    grown = ["--quick", "--norms", "vanilla", "--scales", "2", "1", "--results", str(tmp_path), "--no-progress"]
    assert init_scale.main(grown) == 0  # a grid may grow: the c = 2 run is kept, c = 1 added
    assert json.loads((root / "study.json").read_text())["setup"]["scales"] == [2.0, 1.0]
    assert all(_files(root)[k] == v for k, v in stored.items() if k.startswith("vanilla_c2_s0/"))
    assert _status(root / "vanilla_c1_s0")["status"] in ("finished", "diverged")

    assert init_scale.main([*args, "--lr", "0.5", "--overwrite"]) == 0  # deletes and retrains
    assert json.loads((root / "study.json").read_text())["setup"]["learning_rate"] == 0.5
    assert json.loads((root / "vanilla_c2_s0" / "config.json").read_text())["learning_rate"] == 0.5
    assert not (root / "vanilla_c1_s0").exists()  # the replaced setup's run is gone
