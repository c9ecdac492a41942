"""``experiments/toys.py`` never replaces stored results of another setup (checked before
anything is computed, so this test runs no simulation)."""

import json

from experiments import toys


def test_results_of_another_setup_are_refused_before_any_computation(tmp_path, capsys):
    root = tmp_path / "toys" / "default-quick"
    root.mkdir(parents=True)
    stored = {"name": "default-quick", "seeds": [7]}
    (root / "setup.json").write_text(json.dumps(stored))
    assert toys.main(["--quick", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds results of another setup" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((root / "setup.json").read_text()) == stored and sorted(p.name for p in root.iterdir()) == ["setup.json"]
