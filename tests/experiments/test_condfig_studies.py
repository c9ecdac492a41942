"""The studies of the gradient-conditioning thesis's other figures (samplers, mask
effectiveness, mirrored weights) end to end in ``--quick`` mode: they train through the
engine, measure, and write a report with intervals over their three seeds. Their numerics
are tested in tests/diagnostics (test_condfig_toys.py, test_mask_effectiveness.py,
test_input_conditioning.py); this checks the scripts that wire them together."""

from __future__ import annotations

import importlib
import json

import pytest


@pytest.mark.parametrize("name, extra", [pytest.param("samplers", None, marks=pytest.mark.extended), pytest.param("masking", "masking.json", marks=pytest.mark.extended), pytest.param("mirrored", None, marks=pytest.mark.extended)])
def test_quick_study_trains_measures_and_reports(tmp_path, capsys, name, extra):
    study = importlib.import_module(f"experiments.{name}")
    assert study.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    root = tmp_path / name / "digits-quick"
    runs = sorted(p.parent for p in root.glob("*/status.json"))
    assert len(runs) >= 3 and all(json.loads((r / "status.json").read_text())["status"] == "finished" for r in runs)
    if extra:
        assert all((r / extra).is_file() for r in runs)
    plots = root / "plots"
    summary = (plots / "summary.md").read_text()
    assert list(plots.glob("*.png")) and " ± " in summary  # intervals over the seeds
    assert all(f"![{png.stem}]({png.name})" in summary for png in plots.glob("*.png"))  # summary.md shows its figures
    assert "plots and summary.md in" in capsys.readouterr().out
