import numpy as np
import pytest

from jaxnorm.analysis import activity_metrics, activity_table_md, zero_crossings

GAMMA = np.array([
    # ch0: d = 0, .2, -.2, .3 -> zeros ignored, + - + = 2 crossings, final |d| .3
    # ch1: constant at neutral -> 0 crossings, final |d| 0
    # ch2: d = 0, -.1, 0, -.5 -> - - = 0 crossings (a touch of zero is not a crossing), final |d| .5
    [1.0, 1.0, 1.0],
    [1.2, 1.0, 0.9],
    [0.8, 1.0, 1.0],
    [1.3, 1.0, 0.5],
])
BETA = np.array([[0.1, -0.1], [-0.1, 0.1], [0.1, -0.1]])  # 2 crossings each, final |d| = 0.1 (not > 0.1)


def _traj(gamma=GAMMA, beta=BETA):
    return {"gamma_beta/steps": np.arange(len(gamma)) * 5, "gamma_beta/norm1/gamma": gamma,
            "gamma_beta/norm1/beta": beta, "gamma_beta/norm10/beta": beta, "gamma_beta/norm2/beta": beta[:, :1]}


def test_zero_crossings_ignores_exact_zeros():
    assert zero_crossings(GAMMA - 1.0).tolist() == [2, 0, 0]
    assert zero_crossings(np.array([[1.0], [0.0], [0.0], [-1.0], [0.0], [2.0]])).tolist() == [2]


def test_activity_metrics_known_values():
    rows = activity_metrics(_traj())
    assert [(r["layer"], r["param"]) for r in rows] == [
        ("norm1", "gamma"), ("norm1", "beta"), ("norm2", "beta"), ("norm10", "beta")]
    g = rows[0]
    assert g["channels"] == 3 and g["records"] == 4
    assert g["mean_abs_dev"] == pytest.approx(0.8 / 3)
    assert g["median_abs_dev"] == pytest.approx(0.3)
    assert g["max_abs_dev"] == pytest.approx(0.5)
    assert g["zero_crossings"] == pytest.approx(2 / 3)
    assert g["frac_active"] == pytest.approx(2 / 3)
    b = rows[1]
    assert b["mean_abs_dev"] == pytest.approx(0.1) and b["zero_crossings"] == pytest.approx(2.0)
    assert b["frac_active"] == 0.0


def test_activity_metrics_do_not_depend_on_channel_order():
    perm = _traj(gamma=GAMMA[:, [2, 0, 1]], beta=BETA[:, ::-1])
    for a, b in zip(activity_metrics(_traj()), activity_metrics(perm)):
        assert a == pytest.approx(b)


def test_no_trajectories_and_markdown():
    assert activity_metrics({}) == []
    md = activity_table_md([{"variant": "bn_gamma", **r} for r in activity_metrics(_traj())])
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 4 and lines[0].startswith("| variant | layer |")
    assert "| bn_gamma | norm1 | gamma | 3 | 0.2667 | 0.3 | 0.5 | 0.6667 | 0.6667 |" in md
