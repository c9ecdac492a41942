"""The edge-of-stability analysis (jaxnorm.analysis.sharpness): its statistics by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxnorm.analysis.sharpness import OUTLIER_MARGIN, edge_verdict, outlier_ratio, settles, summarize, window_median
from jaxnorm.analysis.stats import mean_interval

# η = 0.1, 2/η = 20; records every 10 steps: starts above the edge (catapult), dips,
# comes back to it and stays (ratios 1.5, 0.25, 0.95, 1.025, 1.05, 0.975, 1.25).
STEPS = [0, 10, 20, 30, 40, 50, 60]
SHARP = [30, 5, 19, 20.5, 21, 19.5, 25]


def test_summary_reach_settle_and_last_window_by_hand():
    s = summarize(STEPS, SHARP, 0.1, window=20)
    assert s["max_over_edge"] == pytest.approx(1.5)
    assert s["reached"] == 0  # 30 ≥ 0.9 · 20 at step 0: the net starts above the edge
    # Window of 20 steps = the records after t − 20. At t = 20: (5, 19) -> median 0.6; t = 30:
    # (19, 20.5) -> 0.9875, within 1 ± 0.1: settled at 30.
    assert s["settled"] == 30
    # The last window, steps 50 and 60: ratios 0.975 and 1.25, median 1.1125.
    assert s["window_over_edge"] == pytest.approx(1.1125)
    assert s["window_within"] == pytest.approx(0.5)
    late = summarize(STEPS[1:], SHARP[1:], 0.1, window=20, tol=0.01)
    # Without the first record and with a 1% band: 19 < 0.99 · 20, 20.5 at step 30 is the first
    # at the edge; no window median (0.9875, 1.0375, 1.0125, 1.1125) lies within 1 ± 0.01.
    assert (late["reached"], late["settled"]) == (30, None)
    empty = summarize([], [], 0.1, window=20)
    assert empty["reached"] is None and math.isnan(empty["window_over_edge"])


def test_the_stop_rule_needs_a_full_window_at_the_edge():
    recs = [{"step": t, "sharpness": s} for t, s in zip(STEPS, SHARP)]
    assert [settles(recs[: j + 1], learning_rate=0.1, window=20) for j in range(len(recs))] == [False, False, False, True, True, True, False]
    assert math.isnan(window_median(np.array([0, 10]), np.array([1.0, 1.0]), 20))  # 10 steps: no full window yet
    for kwargs, match in (({"learning_rate": 0.0, "window": 20}, "learning_rate"), ({"learning_rate": 0.1, "window": 0}, "window"),
                          ({"learning_rate": 0.1, "window": 20, "tol": 1.0}, "tolerance")):
        with pytest.raises(ValueError, match=match):
            settles(recs, **kwargs)
    with pytest.raises(ValueError, match="one value per record"):
        summarize([0, 1], [1.0], 0.1, window=1)


def test_edge_verdict_is_an_equivalence_test():
    assert edge_verdict(mean_interval([0.97, 1.0, 1.02]), 0.1, 0, 3) == "holds"
    assert edge_verdict(mean_interval([0.3, 0.32, 0.31]), 0.1, 0, 3) == "does not hold here"
    assert edge_verdict(mean_interval([0.8, 1.0, 0.95]), 0.1, 1, 4) == "not significant (n = 3); 1 of 4 diverged"
    assert edge_verdict(mean_interval([1.0]), 0.1, 0, 1) == "no test (n = 1)"
    assert edge_verdict(mean_interval([]), 0.1, 3, 3) == "does not hold here (diverged)"


def test_outlier_ratio_is_n_a_below_k_plus_the_margin():
    k = 3
    nodes = np.linspace(-1.0, 2.0, k + OUTLIER_MARGIN)[::-1].copy()  # any order: sorted inside
    np.random.default_rng(0).shuffle(nodes)
    top = np.sort(nodes)[::-1]
    assert outlier_ratio(nodes, k) == pytest.approx(top[0] / top[k - 1])
    assert outlier_ratio(nodes[:-1], k) is None
    assert outlier_ratio(nodes[:5], k, margin=0) == pytest.approx(np.sort(nodes[:5])[-1] / np.sort(nodes[:5])[-3])
    with pytest.raises(ValueError, match="k >= 2"):
        outlier_ratio(nodes, 1)
    with pytest.raises(ValueError, match="1-d"):
        outlier_ratio(nodes[None], k)
