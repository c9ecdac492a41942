"""Statistics over seeds: a mean with its 95% t-interval, and the paired comparison of two
variants trained with the same seeds.

Issue 14 asks every summary to report a distribution over seeds instead of one seed,
and every comparison between variants to be paired by seed and carry a test. The
comparison a table needs is the one of "Dissecting BatchNorm: An Ablation Study on the
Core Components" (master thesis, University of Tübingen, 2023), §3.2: a BatchNorm
modification is beneficial when it improves on the Vanilla net's training loss and
training accuracy. Here "improves" is decided by a test, not by the sign of a
difference of means.

Contract:

* :func:`mean_interval` -- mean of the finite values and the half-width of the
  two-sided t-interval, ``t_{(1+c)/2, n-1} · s / √n`` (``s`` the sample std, ddof = 1;
  the quantile from :mod:`scipy.stats`). Non-finite values (NaN, ±inf: what a diverged
  seed leaves, or what a caller puts for one) are dropped and counted in
  ``excluded``, never averaged. ``n = 1``: the mean, no interval (half-width NaN);
  ``n = 0``: NaN mean.
* :func:`paired_test` -- for values ``a[i]``, ``b[i]`` of the same seed ``i``: the mean
  paired difference ``a − b`` with its t-interval (as above, over the differences), the
  two-sided paired t-test p-value (:func:`scipy.stats.ttest_rel`) and the two-sided sign
  test (:func:`scipy.stats.binomtest` on the signs of the non-zero differences, ties
  dropped). A pair with a non-finite side is dropped and counted in ``excluded``. The
  interval excludes zero exactly when the t-test's p < 1 − confidence (same statistic,
  same t distribution).
* Zero variance of the differences (every seed's difference the same ``d``, up to the
  rounding of the subtraction, 4·eps·max(|a|, |b|)): the t
  statistic is ±∞ (``d ≠ 0``) or 0/0 (``d = 0``); scipy returns NaN for both. Here the
  limits are used: half-width 0 and p = 0 for ``d ≠ 0``, p = 1 for ``d = 0`` (two
  variants that both reach 100% training accuracy on every seed are "not different",
  never "significant").
* The sign test's smallest two-sided p with ``m`` non-zero differences is ``2^(1−m)``:
  0.25 for 3 seeds, so with three seeds only the t-test can reach 5%; the sign test is
  reported as the distribution-free check, not used for the verdict.

A paired bootstrap over test examples would need each run's per-example test
predictions; the runs do not store them (``metrics.jsonl`` holds the accuracy only),
so it is not offered.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as _sp

__all__ = ["CONFIDENCE", "Interval", "Paired", "mean_interval", "paired_test", "verdict"]

#: The confidence of every interval of the reports.
CONFIDENCE = 0.95


def _constant(values: np.ndarray) -> bool:
    return bool(values.size) and bool(np.all(values == values[0]))


def _mean(values: np.ndarray) -> float:
    # Equal values give their value exactly (a float mean of three 0.7 is 0.69999...98,
    # and a std of 3e-16 would read as a nonzero interval).
    return math.nan if not values.size else float(values[0]) if _constant(values) else float(values.mean())


def _t_half_width(values: np.ndarray, confidence: float) -> float:
    n = values.size
    if n < 2:
        return math.nan
    sd = 0.0 if _constant(values) else float(values.std(ddof=1))
    return float(_sp.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean over seeds with the half-width of its t-interval.

    Attributes:
      mean: mean of the finite values (NaN if none).
      half_width: t-interval half-width (NaN when ``n < 2``).
      n: how many values went in.
      excluded: how many non-finite values were dropped.
      confidence: the interval's confidence.
    """

    mean: float
    half_width: float
    n: int
    excluded: int = 0
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 4, scale: float = 1.0, sign: bool = False, say_single: bool = True) -> str:
        """``0.1234 ± 0.0012``; ``0.1234 (n = 1: no interval)`` for one value (``0.1234``
        without ``say_single``: for a table whose n column and caption say it); ``—`` for
        none. ``scale`` multiplies both (e.g. 100 for percentage points), ``sign`` writes
        ``+`` for positive means."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "—"
        m = f"{self.mean * scale:{'+' if sign else ''}.{digits}f}"
        if self.n < 2:
            return f"{m} (n = 1: no interval)" if say_single else m
        return f"{m} ± {self.half_width * scale:.{digits}f}"


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of the finite ``values`` and its two-sided t-interval (module docstring);
    ``None`` entries count as non-finite."""
    raw = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    fin = raw[np.isfinite(raw)]
    return Interval(_mean(fin), _t_half_width(fin, confidence), int(fin.size), int(raw.size - fin.size), confidence)


@dataclasses.dataclass(frozen=True)
class Paired:
    """The paired comparison ``a − b`` over seeds (module docstring).

    Attributes:
      diff: the mean paired difference with its t-interval (``diff.n`` pairs used,
        ``diff.excluded`` pairs dropped for a non-finite side).
      p_t: two-sided paired t-test p-value (NaN for fewer than 2 pairs).
      positive, negative, ties: signs of the differences.
      p_sign: two-sided sign-test p-value over the non-zero differences (1 if all tie,
        NaN without pairs).
    """

    diff: Interval
    p_t: float
    positive: int
    negative: int
    ties: int
    p_sign: float

    @property
    def n(self) -> int:
        return self.diff.n

    def excludes_zero(self) -> int:
        """+1 if the interval lies above zero, −1 if below, 0 if it contains zero or
        there is none (fewer than 2 pairs)."""
        d = self.diff
        if d.n < 2 or not math.isfinite(d.half_width):
            return 0
        return 1 if d.low > 0 else -1 if d.high < 0 else 0

    def format(self, digits: int = 4, scale: float = 1.0) -> str:
        """``-0.0123 ± 0.0040 (p = 0.004; sign 3+/0−, p = 0.25)``; one pair: its
        difference and ``no test``; no pair: ``—``."""
        if self.n == 0:
            return "—"
        head = self.diff.format(digits, scale, sign=True)
        if self.n < 2:
            return f"{self.diff.mean * scale:+.{digits}f} (n = 1: no test)"
        return f"{head} (p {_fmt_p(self.p_t)}; sign {self.positive}+/{self.negative}−, p {_fmt_p(self.p_sign)})"


def _fmt_p(p: float) -> str:
    """``= 0.012``, ``< 0.001``, ``= —`` (no test)."""
    if not math.isfinite(p):
        return "= —"
    return f"= {p:.2g}" if p >= 1e-3 else "< 0.001"


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Paired:
    """``a − b`` paired by position (``a[i]``, ``b[i]``: the same seed); module docstring."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}.")
    x = np.asarray([math.nan if v is None else float(v) for v in a], dtype=np.float64)
    y = np.asarray([math.nan if v is None else float(v) for v in b], dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    # A spread of the differences within their rounding (each a − b is exact to
    # eps·max(|a|, |b|)) is no variance: 0.3 − 0.2 and 0.4 − 0.3 differ in the last bit.
    scale = float(np.max(np.maximum(np.abs(x[ok]), np.abs(y[ok])))) if d.size else 0.0
    flat = d.size > 0 and float(np.ptp(d)) <= 4 * np.finfo(np.float64).eps * scale
    if flat:
        d = np.full_like(d, float(d.mean()))
    diff = Interval(_mean(d), _t_half_width(d, confidence), int(d.size),
                    int(ok.size - d.size), confidence)
    pos, neg = int(np.sum(d > 0)), int(np.sum(d < 0))
    if d.size < 2:
        p_t = math.nan
    elif _constant(d):  # the limits of the t statistic (module docstring)
        p_t = 0.0 if d[0] != 0 else 1.0
    else:
        p_t = float(_sp.ttest_rel(x[ok], y[ok]).pvalue)
    p_sign = math.nan if not d.size else 1.0 if pos + neg == 0 else float(_sp.binomtest(pos, pos + neg, 0.5).pvalue)
    return Paired(diff, p_t, pos, neg, int(d.size - pos - neg), p_sign)


def verdict(*tests: tuple[Paired, int]) -> str:
    """One word for several paired criteria, each ``(test, favourable sign)`` (−1: lower
    is better, e.g. a loss; +1: higher is better): ``yes`` when every interval excludes
    zero on its favourable side, ``no`` when some interval excludes zero on the
    unfavourable side, ``no test`` when some criterion has fewer than 2 pairs, else
    ``not significant``."""
    signs = [(t.excludes_zero(), fav, t.n) for t, fav in tests]
    if any(s == -fav for s, fav, _ in signs):
        return "no"
    if any(n < 2 for _, _, n in signs):
        return "no test"
    if all(s == fav for s, fav, _ in signs):
        return "yes"
    return "not significant"
