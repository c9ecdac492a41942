import pytest

from jaxnorm.analysis import find_runs, group_runs
from jaxnorm.results import write_json

from .synthetic import VARIANTS, write_run, write_study


def test_find_runs_recursive_sorted_and_skips_folders_without_metrics(tmp_path):
    write_study(tmp_path, lrs=(0.1, 1.0))
    write_json(tmp_path / "abl" / "empty" / "config.json", {"norm": "bn", "learning_rate": 0.1, "seed": 0})
    runs = find_runs(tmp_path)
    assert len(runs) == 2 * 5 * 2
    assert [r.path for r in runs] == sorted(r.path for r in runs)
    assert {r.variant for r in runs} == set(VARIANTS)
    assert all(r.status["status"] == "finished" and r.metrics for r in runs)
    r = next(r for r in runs if r.variant == "bn_gamma_beta")
    assert "gamma_beta/norm1/gamma" in r.trajectories and "gamma_beta/steps" in r.trajectories


def test_group_runs_by_config_not_by_folder_name(tmp_path):
    # folder names lie about lr: grouping must follow config.json
    write_run(tmp_path / "x" / "lr999" / "a", "bn", 0, lr=0.1)
    write_run(tmp_path / "y" / "b", "vanilla", 1, lr=0.1)
    write_run(tmp_path / "c", "bn", 0, lr=0.01)
    groups = group_runs(find_runs(tmp_path))
    assert list(groups) == [(0.01,), (0.1,)]
    assert sorted(r.variant for r in groups[(0.1,)]) == ["bn", "vanilla"]
    by_two = group_runs(find_runs(tmp_path), by=("learning_rate", "seed"))
    assert set(by_two) == {(0.01, 0), (0.1, 0), (0.1, 1)}


def test_diverged_flag_and_eval_series(tmp_path):
    write_run(tmp_path / "d", "bn", 0, diverge_after=1)
    (run,) = find_runs(tmp_path)
    assert run.diverged and run.divergence["step"] == 13
    epochs, acc = run.eval_series("test", "acc")
    assert epochs.tolist() == [0] and acc.tolist() == pytest.approx([0.4])
