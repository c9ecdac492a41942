"""jaxnorm.analysis.stats against closed forms and invariants.

Closed forms used: the t distribution with 1 degree of freedom is the Cauchy, quantile
tan(π(q − 1/2)) and P(|T| > 1) = 1/2; with 2 degrees of freedom its quantile is
(2q − 1)/√(2q(1 − q)); the sign test of m non-zero differences, k of them positive, is
the two-sided binomial(m, 1/2) tail.
"""

import math

import numpy as np
import pytest

from jaxnorm.analysis.stats import Interval, mean_interval, paired_test, verdict

# Every quantity below is a few float64 operations from its closed form: a relative
# error of a few ulps; 1e-12 bounds it with room and would catch a wrong quantile
# (e.g. a normal 1.96 instead of t) by orders of magnitude.
REL = 1e-12


def _t975(df):
    return {1: math.tan(math.pi * 0.475), 2: 0.95 / math.sqrt(2 * 0.975 * 0.025)}[df]


def test_mean_interval_is_the_t_interval():
    iv = mean_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1
    assert iv.mean == pytest.approx(2.0, rel=REL) and iv.n == 3 and iv.excluded == 0
    assert iv.half_width == pytest.approx(_t975(2) / math.sqrt(3), rel=REL)
    iv = mean_interval([0.0, 2.0])  # mean 1, sample std √2: half-width t_{.975,1}·√2/√2
    assert iv.half_width == pytest.approx(_t975(1), rel=REL)


def test_interval_covers_the_mean_symmetrically_and_is_affine_equivariant():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.standard_normal(n)
        iv = mean_interval(x)
        assert iv.low < iv.mean < iv.high
        assert iv.mean - iv.low == pytest.approx(iv.high - iv.mean, rel=REL)
        moved = mean_interval(3.0 - 2.0 * x)  # mean maps along, half-width scales by |−2|
        assert moved.mean == pytest.approx(3.0 - 2.0 * iv.mean, rel=1e-10)
        assert moved.half_width == pytest.approx(2.0 * iv.half_width, rel=1e-10)


def test_zero_variance_one_value_and_none():
    iv = mean_interval([0.7, 0.7, 0.7])
    assert iv.mean == pytest.approx(0.7) and iv.half_width == 0.0 and iv.format() == "0.7000 ± 0.0000"
    one = mean_interval([0.5])
    assert one.n == 1 and math.isnan(one.half_width) and one.format() == "0.5000 (n = 1: no interval)"
    none = mean_interval([])
    assert none.n == 0 and math.isnan(none.mean) and none.format() == "—"


def test_non_finite_values_are_excluded_and_counted_never_averaged():
    iv = mean_interval([1.0, float("nan"), 3.0, float("inf"), None])
    assert (iv.n, iv.excluded) == (2, 3) and iv.mean == pytest.approx(2.0)
    assert iv.half_width == pytest.approx(_t975(1) * math.sqrt(2) / math.sqrt(2), rel=REL)
    assert mean_interval([float("nan")] * 3).format() == "—"


def test_paired_test_closed_forms():
    # differences 0, 2: T = 1 with 1 degree of freedom, a Cauchy: p = P(|T| > 1) = 1/2
    p = paired_test([1.0, 5.0], [1.0, 3.0])
    assert p.diff.mean == pytest.approx(1.0) and p.p_t == pytest.approx(0.5, rel=1e-12)
    assert p.diff.half_width == pytest.approx(_t975(1), rel=REL)
    assert (p.positive, p.negative, p.ties) == (1, 0, 1) and p.p_sign == pytest.approx(1.0)  # one non-zero: 2·½
    # sign test: 3 of 3 positive -> 2/8; 4 of 5 -> 2·(1 + 5)/32
    assert paired_test([1.0, 2.0, 3.5], [0.0, 0.0, 0.0]).p_sign == pytest.approx(0.25)
    assert paired_test([1, 2, 3, 4, -1], [0] * 5).p_sign == pytest.approx(12 / 32)


def test_paired_interval_excludes_zero_exactly_when_p_is_below_five_percent():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 8))
        a, b = rng.standard_normal(n) + rng.normal(0, 1.5), rng.standard_normal(n)
        p = paired_test(a, b)
        if abs(p.p_t - 0.05) > 1e-9:  # at the boundary either reading is right
            assert (p.excludes_zero() != 0) == (p.p_t < 0.05)
        q = paired_test(b, a)  # swapping the two negates the difference, keeps the p-values
        assert q.diff.mean == pytest.approx(-p.diff.mean) and q.p_t == pytest.approx(p.p_t, rel=1e-9)
        assert q.p_sign == pytest.approx(p.p_sign) and q.excludes_zero() == -p.excludes_zero()


def test_paired_zero_variance_uses_the_limits():
    same = paired_test([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])  # e.g. 100% training accuracy on every seed
    assert same.p_t == 1.0 and same.diff.half_width == 0.0 and same.excludes_zero() == 0 and same.ties == 3
    assert same.p_sign == 1.0
    shifted = paired_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert shifted.p_t == 0.0 and shifted.excludes_zero() == 1
    rounded = paired_test([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])  # 0.1 up to the last bit: still no variance
    assert rounded.p_t == 0.0 and rounded.diff.half_width == 0.0 and rounded.diff.mean == pytest.approx(0.1)


def test_paired_pairs_with_a_non_finite_side_are_excluded_and_counted():
    p = paired_test([1.0, float("nan"), 3.0, 4.0], [0.0, 0.0, float("inf"), 1.0])
    assert (p.n, p.diff.excluded) == (2, 2) and p.diff.mean == pytest.approx(2.0)
    one = paired_test([1.0, float("nan")], [0.0, 0.0])
    assert one.n == 1 and math.isnan(one.p_t) and one.excludes_zero() == 0 and "no test" in one.format()
    assert paired_test([], []).format() == "—"
    with pytest.raises(ValueError, match="same length"):
        paired_test([1.0], [1.0, 2.0])


def test_verdict_combines_criteria():
    lower = paired_test([0.1, 0.2, 0.15], [0.5, 0.6, 0.58])  # a loss, lower
    higher = paired_test([0.99, 0.98, 0.995], [0.9, 0.91, 0.92])  # an accuracy, higher
    tied = paired_test([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert verdict((lower, -1), (higher, +1)) == "yes"
    assert verdict((lower, -1), (tied, +1)) == "not significant"
    assert verdict((higher, -1), (higher, +1)) == "no"  # significantly worse on one criterion
    assert verdict((paired_test([0.1], [0.2]), -1)) == "no test"
    assert isinstance(lower.diff, Interval) and "sign 0+/3−, p = 0.25" in lower.format()
    assert "(p < 0.001;" in paired_test([1.0, 2.0, 3.0], [0.0, 1.01, 2.0]).format()
