"""The logit-scale split of a loss gap (``jaxnorm.analysis.logit_scale``): the
cross-entropy against scipy's, the invariances the split rests on, the report section
on synthetic run folders, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from jaxnorm.analysis import find_runs
from jaxnorm.analysis.logit_scale import (
    ce_at_scale,
    comparisons,
    logit_scale,
    logit_scale_markdown,
    normalized_margin,
    seed_statistics,
    split_gap,
)
from jaxnorm.results import RunDir, write_npz

from .synthetic import write_run


def _logits(seed, n=200, k=10, scale=3.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    z = rng.standard_normal((n, k))
    z[np.arange(n), labels] += 2.0  # mostly correctly ranked, as a trained net's
    return scale * z, labels


def _separable(seed):
    """Logits that rank every example correctly (a net at 100% training accuracy)."""
    z, y = _logits(seed)
    z[np.arange(len(y)), y] = z.max(axis=1) + 1.0
    return z, y


def test_ce_at_the_own_scale_is_scipys_cross_entropy():
    z, y = _logits(0)
    reference = -np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y])
    assert ce_at_scale(z, y, logit_scale(z)) == pytest.approx(reference, rel=1e-12)


def test_scale_and_shape_separate_exactly():
    z, y = _logits(1)
    shifted = 2.5 * z + np.linspace(-4, 4, len(y))[:, None]  # a per-example shift does not change the loss
    assert logit_scale(shifted) == pytest.approx(2.5 * logit_scale(z), rel=1e-12)
    assert normalized_margin(shifted, y) == pytest.approx(normalized_margin(z, y), rel=1e-12)
    for t in (0.5, 2.0, 10.0):
        assert ce_at_scale(shifted, y, t) == pytest.approx(ce_at_scale(z, y, t), rel=1e-12)
    # At 100% accuracy a larger scale only lowers the loss.
    sep, y = _separable(1)
    losses = [ce_at_scale(sep, y, t) for t in (1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in zip(losses, losses[1:]))


def test_normalized_margin_of_a_hand_example():
    z = np.array([[2.0, 0.0, -2.0], [0.0, 1.0, -1.0]])
    y = np.array([0, 0])
    s = np.sqrt(np.mean((z - z.mean(axis=1, keepdims=True)) ** 2))  # both rows centred already
    assert normalized_margin(z, y) == pytest.approx(np.mean([2.0 / s, -1.0 / s]), rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.array([1.0, 2.0]), "examples, classes"),
    (np.array([[1.0, np.nan]]), "NaN or inf"),
])  # fmt: skip
def test_bad_logits_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        logit_scale(bad)


def test_constant_logits_have_no_direction():
    with pytest.raises(ValueError, match="no direction"):
        ce_at_scale(np.ones((3, 4)), np.zeros(3, int), 1.0)


def _study(tmp_path, factors):
    """Runs whose logits are seed s's base logits times ``factors[variant]``: the variants
    differ only in scale, so at the common scale they must not differ at all."""
    for seed in (0, 1, 2):
        z, y = _separable(10 + seed)
        for variant, factor in factors.items():
            folder = write_run(tmp_path / "lr0.1" / f"{variant}_s{seed}", variant, seed,
                               loss=[1.0, 0.5, ce_at_scale(z, y, factor * logit_scale(z))])
            write_npz(RunDir(folder).final_logits, {"logits": factor * z, "labels": y, "step": 30, "split": "train_eval"})
    return find_runs(tmp_path)


def test_a_gap_that_is_only_scale_is_all_scale(tmp_path):
    runs = _study(tmp_path, {"bn": 1.0, "bn_gamma": 3.0, "bn_beta": 1.5})
    stats = seed_statistics(runs)
    for s in (0, 1, 2):
        for a, b in (("bn_gamma", "bn_beta"), ("bn_gamma", "bn"), ("bn_beta", "bn")):
            total, shape = split_gap(stats[a][s], stats[b][s])
            assert abs(shape) < 1e-12 and total != 0  # one logit direction per seed: no gap at equal scale
        assert stats["bn_gamma"][s]["ce"] < stats["bn_beta"][s]["ce"]  # the larger scale has the lower loss
        assert stats["bn_gamma"][s]["ce"] == pytest.approx(stats["bn_gamma"][s]["stored_ce"], rel=1e-12)
    table = logit_scale_markdown(runs)
    row = next(line for line in table.splitlines() if line.startswith("| bn_gamma − bn_beta |"))
    total, not_scale, scale = (float(cell.split()[0]) for cell in row.split(" | ")[1:4])
    assert total < 0 and abs(not_scale) < 1e-4 and scale == pytest.approx(total, abs=1e-4)


def test_runs_without_logits_give_no_section_and_diverged_runs_are_left_out(tmp_path):
    write_run(tmp_path / "lr0.1" / "bn_s0", "bn", 0)
    assert logit_scale_markdown(find_runs(tmp_path)) is None
    z, y = _logits(3)
    folder = write_run(tmp_path / "lr0.1" / "bn_gamma_s0", "bn_gamma", 0, diverge_after=2)
    write_npz(RunDir(folder).final_logits, {"logits": z, "labels": y, "step": 20, "split": "train_eval"})
    assert seed_statistics(find_runs(tmp_path)) == {}


def test_the_compared_pairs():
    assert comparisons(["vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta"]) == [
        ("bn_gamma", "bn"), ("bn_beta", "bn"), ("bn_gamma_beta", "bn"), ("bn_gamma", "bn_beta")]
    assert comparisons(["bn+first", "bn_gamma+first", "bn_gamma"]) == [("bn_gamma+first", "bn+first")]
