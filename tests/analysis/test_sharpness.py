"""The edge-of-stability analysis (jaxnorm.analysis.sharpness): its statistics by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxnorm.analysis.sharpness import OUTLIER_MARGIN, outlier_ratio, summarize


def test_summary_counts_late_records_near_the_edge():
    s = summarize([5, 30, 19, 20.5, 21, 25], 0.1)  # 2/η = 20; late = the last three: 20.5, 21, 25
    assert s["max_over_edge"] == pytest.approx(1.5)
    assert s["late_within_10pct"] == pytest.approx(2 / 3)
    assert s["late_median_over_edge"] == pytest.approx(21 / 20)
    assert all(math.isnan(v) for v in summarize([], 0.1).values())
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        summarize([1.0], 0.0)


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
