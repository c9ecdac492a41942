"""The initialization-scale analysis (``jaxnorm.analysis.init_scale``): the outcome
classifier on synthetic loss curves, and the report on synthetic run folders written
with the real writers of ``jaxnorm.results`` in the layout ``fit`` writes (nothing
trains here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxnorm.analysis import init_scale as A
from jaxnorm.analysis.plotting import embed_figures
from jaxnorm.results import rewrite_jsonl, write_json, write_npz

LN10 = math.log(10)
ramp = lambda a, b, n=50: list(np.geomspace(a, b, n))


@pytest.mark.parametrize(
    "losses, chance, want",
    [
        ([2.3, 2.2, float("nan")], None, "diverged"),
        ([2.3, 2.0, float("inf"), 1.0], None, "diverged"),
        ([float("nan")], None, "diverged"),
        ([2.3, 2.0, 30.0, 1.0], None, "diverged"),  # finite explosion: 30 > 10 x 2.3
        ([2.0, 20.1], None, "diverged"),
        ([2.0, 20.0], None, "no progress"),  # exactly 10 x: not above it; and 20 > 0.9 x 2
        ([0.5, 6.0], LN10, "no progress"),  # explosion is measured against max(initial, chance) = 2.30
        ([LN10] * 50, LN10, "no progress"),  # flat at chance: vanishing signal
        ([LN10 + 0.05 * math.sin(i) for i in range(50)], LN10, "no progress"),  # flat and noisy
        ([2.3], None, "no progress"),  # one value: nothing happened yet
        (ramp(2.3, 0.1), LN10, "trained"),
        (ramp(2.3, 0.5, 45) + [0.5, 0.5, 0.5, 0.5, 2.5], LN10, "trained"),  # a spike in the tail is averaged (final 0.9)
        ([2.0, 1.79], None, "trained"),  # just past the 10% progress threshold (1.8)
        ([2.0, 1.81], None, "no progress"),  # just short of it
        ([1e4] + [2.2] * 49, LN10, "no progress"),  # far above chance at first (c = 3): must still beat chance
        ([1e4] + [2.2] * 49, None, "trained"),  # ... which without a chance level counts as progress
    ],
)
def test_classify_synthetic_curves(losses, chance, want):
    assert A.classify(losses, chance=chance) == want


def test_classify_thresholds_are_arguments():
    curve = [2.0, 1.5]  # 25% below the start
    assert A.classify(curve, progress_fraction=0.2) == "trained"
    assert A.classify(curve, progress_fraction=0.3) == "no progress"
    assert A.classify([2.0, 5.0, 1.0], explode_factor=2.0) == "diverged"
    assert A.classify([2.0, 5.0, 1.0], explode_factor=3.0) == "trained"
    tail_spike = [2.0] + [0.2] * 8 + [5.0]  # final = mean of the last 1 or 5 values
    assert A.classify(tail_spike, tail_fraction=0.1) == "no progress"
    assert A.classify(tail_spike, tail_fraction=0.5) == "trained"


@pytest.mark.parametrize(
    "losses, kwargs, match",
    [
        ([], {}, "non-empty 1-D"),
        ([[2.3, 2.0]], {}, "non-empty 1-D"),
        ([2.3, -0.1], {}, ">= 0"),
        ([2.3], {"chance": 0.0}, "chance"),
        ([2.3], {"chance": float("nan")}, "chance"),
        ([2.3], {"explode_factor": 1.0}, "explode_factor"),
        ([2.3], {"progress_fraction": 0.0}, "progress_fraction"),
        ([2.3], {"progress_fraction": 1.0}, "progress_fraction"),
        ([2.3], {"tail_fraction": 0.0}, "tail_fraction"),
        ([2.3], {"tail_fraction": 1.5}, "tail_fraction"),
    ],
)
def test_classify_refuses_bad_input(losses, kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.classify(losses, **kwargs)


# --------------------------------------------------------------------------- stored runs

DEPTH, STEPS, EVERY, PROBE_EVERY = 4, 40, 10, 20


def write_run(root, norm, c, seed, losses, *, diverge_at=None, weight_growth=1.0, act=None, acc=None):
    """A run folder as fit + LayerStatistics write it: train lines every EVERY steps
    (until ``diverge_at``, then a divergence line and a diverged status), probes at 0,
    PROBE_EVERY, ... (none at or after ``diverge_at``), the final weight norms
    ``weight_growth`` x the initial ones, and a test eval line (accuracy ``acc``, by
    default 0.9 − 0.1 c) when finished."""
    run = root / f"{norm}_c{c:g}_s{seed}"
    config = {
        "dataset": "digits", "model": "mlp", "norm": norm, "seed": seed, "learning_rate": 0.005, "batch_size": 64,
        "max_steps": STEPS, "log_every_steps": EVERY, "eval_splits": ["test"], "train_subset": None, "name": run.name,
        "model_kwargs": {"num_classes": 10, "depth": DEPTH, "width": 8, "activation": "relu", "kernel_init": "scaled_normal",
                         "kernel_init_kwargs": {"c": float(c)}},
    }  # fmt: skip
    write_json(run / "config.json", config)
    stop = STEPS + 1 if diverge_at is None else diverge_at
    lines = [{"kind": "train", "step": s, "epoch": 0, "loss": l, "ce": l, "acc": 0.5, "steps": EVERY} for s, l in zip(range(EVERY, stop, EVERY), losses[1:])]
    if diverge_at is None:
        lines.append({"kind": "eval", "split": "test", "epoch": 0, "step": STEPS, "loss": losses[-1], "acc": 0.9 - 0.1 * c if acc is None else acc, "n": 100})
        write_json(run / "status.json", {"status": "finished", "step": STEPS})
    else:
        d = {"step": diverge_at, "reason": f"non-finite loss (nan) at step {diverge_at}"}
        lines.append({"kind": "divergence", "epoch": 0, **d})
        write_json(run / "status.json", {"status": "diverged", "step": diverge_at, "divergence": d})
    rewrite_jsonl(run / "metrics.jsonl", lines)
    steps = np.arange(0, stop, PROBE_EVERY)
    layers = np.arange(1, DEPTH + 1)
    w0 = np.sqrt(c * 8.0) * np.ones(DEPTH)
    growth = np.linspace(1.0, weight_growth, len(steps))[:, None]
    act = (c / 2) ** (layers / 2) if act is None else act
    write_npz(run / "trajectories.npz", {
        "layer_statistics/steps": steps,
        "layer_statistics/loss": np.asarray(losses[: len(steps)], np.float64),
        "layer_statistics/acc": np.full(len(steps), 0.1),
        "layer_statistics/activation_rms": np.tile(act, (len(steps), 1)),
        "layer_statistics/grad_norm": np.tile(np.full(DEPTH, 0.5) * c, (len(steps), 1)),
        "layer_statistics/weight_norm": w0 * growth,
    })  # fmt: skip
    return run


@pytest.fixture
def study_root(tmp_path):
    root = tmp_path / "init_scale" / "toy"
    write_json(root / "study.json", {"study": "init_scale", "setup": {"name": "toy", "norms": ["vanilla", "layer"], "explode_factor": 10.0, "progress_fraction": 0.1}, "seeds": [0]})
    write_run(root, "vanilla", 1, 0, [LN10] * 5)  # no progress: flat at chance
    write_run(root, "vanilla", 2, 0, [3.0, 1.5, 0.8, 0.5, 0.4])  # trained, weights kept
    write_run(root, "vanilla", 3, 0, [1e5, 1e5, 1e5], diverge_at=25)  # diverged between train lines
    write_run(root, "layer", 1, 0, [2.4, 1.6, 1.2, 1.0, 0.9], weight_growth=2.0, act=np.full(DEPTH, 0.71))  # trained, grew
    write_run(root, "layer", 3, 0, [2.6, 1.4, 1.0, 0.8, 0.7], act=np.full(DEPTH, 0.71))
    return root


def test_stored_runs_are_read_in_setup_order(study_root):
    runs = A.load_runs(study_root)
    assert [(r.norm, r.c, r.seed) for r in runs] == [("vanilla", 1, 0), ("vanilla", 2, 0), ("vanilla", 3, 0), ("layer", 1, 0), ("layer", 3, 0)]
    assert runs[0].chance == pytest.approx(LN10)
    assert runs[0].arrays["activation_rms"].shape == (3, DEPTH)


def test_summaries_of_the_stored_runs(study_root):
    s = {(r.norm, r.c): A.summarize(r) for r in A.load_runs(study_root)}
    assert {k: v["outcome"] for k, v in s.items()} == {
        ("vanilla", 1): "no progress", ("vanilla", 2): "trained", ("vanilla", 3): "diverged", ("layer", 1): "trained", ("layer", 3): "trained",
    }  # fmt: skip
    assert s[("vanilla", 2)]["initial_loss"] == 3.0 and s[("vanilla", 2)]["final_loss"] == 0.4  # probe at step 0; last train line
    assert s[("vanilla", 2)]["eval_acc"] == pytest.approx(0.7)
    assert s[("vanilla", 3)]["diverged_at"] == 25 and math.isnan(s[("vanilla", 3)]["eval_acc"])
    assert math.isnan(s[("vanilla", 3)]["ratio_min"])  # no ratio for a diverged run
    assert s[("vanilla", 2)]["ratio_min"] == s[("vanilla", 2)]["ratio_max"] == 1.0
    assert s[("layer", 1)]["ratio_max"] == pytest.approx(2.0)
    assert s[("vanilla", 1)]["act_first"] == pytest.approx(0.5**0.5) and s[("vanilla", 1)]["act_logits"] == pytest.approx(0.25)


def test_loss_curve_and_weight_ratio(tmp_path):
    # The curve starts with the probe's step-0 loss and a divergence appends NaN; the
    # weight ratio is the last probe over the first, NaN when the run diverged.
    write_run(tmp_path, "vanilla", 2, 0, [3.0, 1.5, 0.8, 0.5, 0.4], weight_growth=1.5)
    write_run(tmp_path, "vanilla", 3, 0, [1e5, 1e5, 1e5], diverge_at=25)
    runs = {r.c: r for r in A.load_runs(tmp_path)}
    assert A.loss_curve(runs[2.0]) == [3.0, 1.5, 0.8, 0.5, 0.4]
    curve = A.loss_curve(runs[3.0])
    assert curve[:3] == [1e5, 1e5, 1e5] and math.isnan(curve[-1]) and len(curve) == 4
    assert A.final_loss(runs[2.0]) == 0.4  # 40 steps: the last 4 are in the last line
    np.testing.assert_allclose(A.weight_ratio(runs[2.0]), 1.5)
    assert np.isnan(A.weight_ratio(runs[3.0])).all() and A.weight_ratio(runs[3.0]).shape == (DEPTH,)


def test_final_loss_weighs_the_lines_by_their_steps(tmp_path):
    """fit's lines cover unequal windows (a sync every k steps and at each epoch end).
    The last 10% of 100 steps needs 10 steps: the 2-step line (loss 1) and the whole
    18-step line before it (loss 2), weighted by their steps."""
    run = write_run(tmp_path, "vanilla", 2, 0, [3.0, 1.5, 0.8, 0.5, 0.4])
    lines = [{"kind": "train", "step": 80, "loss": 9.0, "steps": 80}, {"kind": "train", "step": 98, "loss": 2.0, "steps": 18}, {"kind": "train", "step": 100, "loss": 1.0, "steps": 2}]
    rewrite_jsonl(run / "metrics.jsonl", lines)
    (r,) = A.load_runs(tmp_path)
    assert A.final_loss(r) == pytest.approx((2 * 1.0 + 18 * 2.0) / 20)
    assert A.final_loss(r, tail_fraction=0.01) == 1.0


def test_report_writes_plots_summary_and_verdict(study_root):
    verdict = A.write_report(study_root)
    assert verdict == "init_scale: vanilla: c=1 no progress, c=2 trained, c=3 diverged; layer: c=1 trained, c=3 trained; claim 1 holds"
    for png in ("loss.png", "layers_init.png", "layers_training.png", "weight_ratio.png"):
        assert (study_root / "plots" / png).stat().st_size > 10_000, png
    summary = (study_root / "plots" / "summary.md").read_text()
    assert summary == embed_figures(A.summary_markdown(study_root), study_root / "plots")  # and its figures
    # Per (norm, c): outcome counts; one seed: values without an interval.
    assert "| vanilla | 3 | 1 | 1/1 | 0/1 | 0/1 | 1e+05 | — | — | 25 |" in summary
    assert "| vanilla | 2 | 1 | 0/1 | 0/1 | 1/1 | 3 | 0.4 | 0.7 | - |" in summary
    assert "c = 1 no progress: no progress 1/1, holds" in summary and "Claim 1 holds here" in summary
    # Per run.
    assert "| vanilla | 3 | 0 | diverged | 1e+05 | - | - | 25 | - | - |" in summary
    assert "| vanilla | 2 | 0 | trained | 3 | 0.4 | 0.700 | - | 1 | 1 |" in summary
    # Claim 2: one seed gives no test; the layer c = 1 run grew 2x, which persists 0/1.
    assert "| layer | 1 | 1 | 2 | 2 | 2 | 0/1 | no test (n = 1) |" in summary
    assert "| layer − vanilla | 1 | +1.000 (n = 1: no test) | no test (n = 1) |" in summary
    # Claim 3 over the c both norms have (1 and 3): layer's accuracies 0.8 and 0.6, vanilla's 0.8 and chance 0.1.
    assert "| layer | 1 | c=1: trained 1/1; c=3: trained 1/1 | 1/1 | 0.2 | 1.29 | -0.500 (n = 1: no test) | no test (n = 1) |" in summary
    # The law column: (c/2)^((D-2)/2) for vanilla, measured / law = 1 for these synthetic profiles.
    assert "| vanilla | 1 | 1 | 0.707 | 0.354 | 0.5 | 0.5 | 1 | 0.25 |" in summary


def test_three_seeds_give_intervals_and_paired_tests(tmp_path):
    """Three seeds per (norm, c) with known values: the t-interval half-widths are
    t_{0.975, 2} · sd / √3 (t = 4.3027), the paired differences' likewise; a difference
    the same in every seed has half-width 0 and p = 0 (stats.paired_test's limit)."""
    root = tmp_path / "init_scale" / "toy"
    write_json(root / "study.json", {"study": "init_scale", "setup": {"name": "toy", "norms": ["vanilla", "layer"]}, "seeds": [0, 1, 2]})
    for seed, growth in enumerate((2.0, 2.2, 2.4)):
        write_run(root, "vanilla", 1, seed, [LN10] * 5, acc=0.1)
        write_run(root, "vanilla", 2, seed, [3.0, 1.5, 0.8, 0.5, 0.4], acc=0.8 + 0.01 * seed)
        write_run(root, "layer", 1, seed, [2.4, 1.6, 1.2, 1.0, 0.9], weight_growth=growth, act=np.full(DEPTH, 0.71), acc=0.6)
        write_run(root, "layer", 2, seed, [2.4, 1.6, 1.2, 1.0, 0.9], act=np.full(DEPTH, 0.71), acc=0.7)
    summary = A.summary_markdown(root)
    # vanilla c = 2 accuracy 0.80, 0.81, 0.82: sd 0.01, half-width 4.3027 · 0.01 / √3 = 0.0248.
    assert "| vanilla | 2 | 3 | 0/3 | 0/3 | 3/3 | 3 ± 0 | 0.4 ± 0 | 0.81 ± 0.025 | - |" in summary
    # layer c = 1 weight ratio 2.0, 2.2, 2.4 in every layer vs vanilla's 1: Δ 1.2 ± 4.3027 · 0.2 / √3 = 0.497,
    # t = 1.2 / (0.2 / √3) = 10.39 on 2 degrees of freedom: p = 0.0091.
    assert "| layer − vanilla | 1 | +1.200 ± 0.497 (p = 0.0091; sign 3+/0−, p = 0.25) | holds |" in summary
    assert "| layer | 1 | 3 | 2.2 ± 0.5 | 2.2 ± 0.5 | 2.2 ± 0.5 | 0/3 | does not hold |" in summary
    assert "| vanilla | 2 | 3 | 1 ± 0 | 1 ± 0 | 1 ± 0 | 3/3 | holds |" in summary
    # Spread over c = 1, 2: vanilla 0.7, 0.71, 0.72 (0.1 at c = 1), layer 0.1 in every seed.
    assert "| vanilla | 3 | c=1: no progress 3/3; c=2: trained 3/3 | 0/3 | 0.71 ± 0.025 | 5.76 ± 0 | - | - |" in summary
    assert "| layer | 3 | c=1: trained 3/3; c=2: trained 3/3 | 3/3 | 0.1 ± 0 | 1 ± 0 |" in summary
    assert "-0.610 ± 0.025 (p < 0.001; sign 0+/3−, p = 0.25) | holds |" in summary
    assert "c = 1 no progress: no progress 3/3, holds; c = 2 trained: trained 3/3, holds" in summary


def test_several_seeds_are_counted(study_root):
    write_run(study_root, "vanilla", 2, 1, [LN10] * 5)  # seed 1 of c = 2 makes no progress
    summary = A.summary_markdown(study_root)
    assert "c = 2 trained: no progress 1/2, trained 1/2, holds in 1 of 2 seeds" in summary and "Claim 1 does not hold here" in summary
    assert "c=2 trained/no progress" in A.verdict(study_root)


def test_no_runs_and_foreign_runs_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no stored runs under"):
        A.write_report(tmp_path / "nothing")
    write_json(tmp_path / "other" / "config.json", {"norm": "vanilla", "model_kwargs": {}})
    rewrite_jsonl(tmp_path / "other" / "metrics.jsonl", [{"kind": "train", "step": 1, "loss": 1.0}])
    with pytest.raises(ValueError, match="not an init_scale run"):
        A.load_runs(tmp_path)
