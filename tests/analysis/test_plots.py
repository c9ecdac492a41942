import matplotlib.pyplot as plt
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


def test_curves_band_is_the_t_interval_and_the_loss_panel_is_log(tmp_path):
    import math

    from jaxnorm.analysis.curves import draw_curves, mean_band

    write_study(tmp_path)  # two seeds: test accuracy of seed 1 = seed 0 + 0.02
    runs = [r for r in find_runs(tmp_path) if r.variant == "bn"]
    mean, half, n = mean_band(np.array([[0.4, 0.5, 0.6], [0.42, 0.52, 0.62]]))
    # sample std 0.01·√2 over two seeds: half-width t_{.975,1}·0.01, t_{.975,1} = tan(0.475π)
    assert np.allclose(mean, [0.41, 0.51, 0.61]) and np.allclose(half, math.tan(0.475 * math.pi) * 0.01) and (n == 2).all()
    fig, axes = draw_curves(runs)
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    assert all(len(ax.collections) == 1 for ax in axes)  # one band per panel (one variant)
    # the log panel draws the geometric mean over seeds: exp of the mean of log(loss)
    losses = np.array([r.eval_series("train_eval", "loss")[1] for r in runs])
    assert np.allclose(axes[0].lines[0].get_ydata(), np.exp(np.log(losses).mean(0)), rtol=1e-12)
    assert np.all(axes[0].collections[0].get_paths()[0].vertices[:, 1] > 0)  # the band stays positive
    plt.close(fig)


def test_a_single_evaluation_is_drawn_as_a_marker(tmp_path):
    from jaxnorm.analysis.curves import draw_curves

    for s in (0, 1):  # a --quick run: one evaluation per run
        write_run(tmp_path / f"bn{s}", "bn", s, test=[0.5 + 0.01 * s], loss=[1.0 + 0.1 * s])
    write_run(tmp_path / "v", "vanilla", 0, test=[0.3], loss=[2.0])
    fig, axes = draw_curves(find_runs(tmp_path))
    for ax in axes:
        markers = [l for l in ax.lines if l.get_marker() == "o" and len(l.get_xdata()) == 1]
        assert len(markers) == 2, ax.get_title()  # bn (with an error bar) and vanilla
        assert ax.get_xlim() == (0.0, 2.0)  # epoch 1 in the middle, integer ticks around it
    plt.close(fig)
