"""The main job and the README's code stay runnable."""

import pathlib
import re

import pytest

from experiments import smoke

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.extended
def test_smoke_trains_small_models_and_reports_success(capsys):
    # Two cheap cases through the real entry point; a falling loss is the pass criterion.
    assert smoke.main(["--only", "mlp", "convnet", "--steps", "4", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "all models trained" in out
    assert out.count("moved") >= 3  # BN cases update their running statistics


def test_smoke_case_reports_stuck_loss_as_failure(monkeypatch):
    # A zero learning rate cannot reduce the loss: main() must return non-zero, not pass silently.
    monkeypatch.setattr(smoke, "CASES", [("mlp-2", "mlp", {"depth": 2, "width": 8}, False, ("vanilla",), 0.0)])
    assert smoke.main(["--steps", "3", "--batch-size", "8"]) == 1


def test_readme_api_snippet_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("## The API in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["logits"].shape == (8, 10)
    assert sorted(scope["updates"]["batch_stats"]) == ["norm1", "norm2", "norm3", "norm4", "norm5"]


def test_readme_quick_start_is_the_two_make_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [l.split("#")[0].strip() for l in re.search(r"```bash\n(.*?)```", quick, re.S).group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
