import numpy as np
import pytest

from jaxnorm.analysis import find_runs, plot_curves, plot_gamma_beta

from .synthetic import write_run, write_study


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contour_plot_range_symmetric_and_channels_sorted(tmp_path):
    gamma = np.array([[1.0, 1.0, 1.0], [1.8, 0.5, 1.1], [1.3, 0.7, 1.0]])  # max |γ-1| = 0.8
    beta = np.array([[0.0, 0.0], [0.2, -0.05], [-0.1, 0.1]])  # max |β| = 0.2
    traj = {"gamma_beta/steps": np.array([0, 5, 10]), "gamma_beta/norm1/gamma": gamma,
            "gamma_beta/norm1/beta": beta, "gamma_beta/norm2/gamma": 1 + 0.1 * gamma}
    write_run(tmp_path / "r", "bn_gamma_beta", 0, traj=traj)
    (run,) = find_runs(tmp_path)
    out = plot_gamma_beta(run, tmp_path / "gb.png")
    assert _is_png(out["path"])
    assert out["ranges"]["gamma"] == pytest.approx((0.2, 1.8))
    assert out["ranges"]["beta"] == pytest.approx((-0.2, 0.2))
    for kind, neutral in (("gamma", 1.0), ("beta", 0.0)):
        lo, hi = out["ranges"][kind]
        assert (lo + hi) / 2 == pytest.approx(neutral)
    assert out["orders"]["gamma"]["norm1"].tolist() == [1, 2, 0]  # final values 1.3, 0.7, 1.0
    assert out["orders"]["beta"]["norm1"].tolist() == [0, 1]
    assert set(out["orders"]["gamma"]) == {"norm1", "norm2"}


def test_contour_plot_only_gamma_and_no_records(tmp_path):
    gamma = np.array([[1.0, 1.0], [0.9, 1.2]])
    out = plot_gamma_beta({"gamma_beta/steps": np.array([0, 5]), "gamma_beta/norm1/gamma": gamma}, tmp_path / "g.png")
    assert set(out["ranges"]) == {"gamma"} and _is_png(tmp_path / "g.png")
    with pytest.raises(ValueError):
        plot_gamma_beta({}, tmp_path / "none.png")


def test_curves_png_with_seeds(tmp_path):
    write_study(tmp_path)
    path = plot_curves(find_runs(tmp_path), tmp_path / "out" / "curves.png", "lr 0.1")
    assert _is_png(path)


def test_curves_diverged_runs(tmp_path):
    write_run(tmp_path / "a", "vanilla", 0, diverge_after=1)  # one evaluation, then diverged
    write_run(tmp_path / "b", "bn", 0, diverge_after=0)  # diverged before any evaluation
    write_run(tmp_path / "c", "bn", 1)
    write_run(tmp_path / "d", "bn_gamma_beta", 0)
    assert _is_png(plot_curves(find_runs(tmp_path), tmp_path / "c.png"))
