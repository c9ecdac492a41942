"""The gradient-conditioning study's analysis: key points, metric lookup, plots, summary,
costs -- on synthetic run folders written with the real writers (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxnorm.analysis.conditioning import (
    CONDITIONING_METRICS,
    collect_costs,
    conditioning_summary_md,
    find_conditioning_runs,
    key_points,
    metric_at,
    metric_at_key_points,
    write_conditioning_report,
)
from jaxnorm.results import append_jsonl, write_json

STEPS = np.arange(2, 122, 2)  # 60 train records, every 2 steps
ETAS = (1e-5, 1e-4, 1e-3, 1e-2)


def sigmoid_loss(center):
    """2 -> 0.5 with the steepest fall at ``center``."""
    return 0.5 + 1.5 / (1.0 + np.exp((STEPS - center) / 6.0))


def write_run(root, arch, norm, depth, loss, *, params=1000, diverge_at=None, kappa=None, seed=0, sweep=None):
    """A run folder as experiments/conditioning.py writes it: train lines every 2 steps,
    conditioning lines every 10 (kappa_w = ``kappa(step)``, confusion = 0.1), step
    conditioning lines every 2 (kappa_sgd NaN at step 0), costs.json; with ``sweep`` (a
    function of the step -> (kappa_w values on ETAS, limit)) sweep lines every 20."""
    folder = root / (f"{arch}-{norm}-d{depth}" + (f"_s{seed}" if seed else ""))
    write_json(folder / "config.json", {"norm": norm, "tag": arch, "model": "deep_fc", "model_kwargs": {"depth": depth},
                                        "learning_rate": 0.01, "seed": seed, "name": folder.name})
    kappa = kappa or (lambda s: 100.0 + s)
    last = STEPS[-1] if diverge_at is None else diverge_at - 1
    lines = [{"kind": "conditioning", "step": s, "kappa_w": kappa(s), "confusion": 0.1, "n_batches": 4.0, "batch_size": 64.0}
             for s in range(0, int(last) + 1, 10)]
    lines += [{"kind": "step_conditioning", "step": s, "kappa_sgd": float("nan") if s == 0 else 5.0, "cosine_sgd": 0.5,
               "grad_norm": 1.0, "kappa_same_batch": float("nan") if s == 0 else 2.0 + seed + (norm != "vanilla")} for s in range(0, int(last) + 1, 2)]
    for s in range(0, int(last) + 1, 20) if sweep else ():
        values, limit = sweep(s)
        rec = {"kind": "conditioning_sweep", "step": s, "etas": list(ETAS), "kappa_w_limit": limit,
               **{f"kappa_w@{e:.3g}": v for e, v in zip(ETAS, values)}, **{f"kappa_x@{e:.3g}": 3.0 for e in ETAS}}
        flat = [i for i in range(1, len(values)) if abs(values[i] / values[i - 1] - 1) < 0.05]  # toy plateau: indices 0-2
        rec.update(kappa_w_plateau=float(np.median(values[:3])) if len(flat) >= 2 else float("nan"), kappa_x_plateau=3.0,
                   kappa_w_contains_limit=float(len(flat) >= 2 and abs(values[0] / limit - 1) < 0.05))
        lines.append(rec)
    lines += [{"kind": "train", "step": int(s), "epoch": int(s) // 22, "loss": float(v), "ce": float(v), "acc": 0.5, "steps": 2}
              for s, v in zip(STEPS, loss) if s <= last]
    lines += [{"kind": "eval", "split": "test", "epoch": 5, "step": int(last), "loss": 1.0, "acc": 0.8, "n": 100}]
    status = {"status": "finished", "step": int(last)}
    if diverge_at is not None:
        d = {"step": diverge_at, "reason": f"non-finite loss (nan) at step {diverge_at}"}
        lines.append({"kind": "divergence", "epoch": 0, **d})
        status = {"status": "diverged", "step": diverge_at, "divergence": d}
    append_jsonl(folder / "metrics.jsonl", sorted(lines, key=lambda m: m["step"]))
    write_json(folder / "status.json", status)
    write_json(folder / "costs.json", {"params": params, "seconds": {"kappa_w": 1e-3 * params ** 0.5, "batch_gradient": 1e-4},
                                       "repeats": 3, "backend": "cpu"})
    return folder


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "conditioning" / "toy"
    write_run(root, "ortho_relu", "vanilla", 11, sigmoid_loss(60), params=5000)
    write_run(root, "resnet", "bn_gamma_beta", 4, sigmoid_loss(30), params=800, kappa=lambda s: 7.0)
    write_run(root, "convnet", "vanilla", 26, sigmoid_loss(60), params=90000, diverge_at=5)  # 2 train records
    return root


def test_key_points_find_the_steepest_fall_and_the_lowest_smoothed_loss(study):
    runs = {r.name: r for r in find_conditioning_runs(study)}
    assert list(runs) == ["ortho_relu-vanilla-d11", "convnet-vanilla-d26", "resnet-bn_gamma_beta-d4"]  # architecture order
    r = runs["ortho_relu-vanilla-d11"]
    assert (r.arch, r.norm, r.depth, r.params) == ("ortho_relu", "vanilla", 11, 5000)
    kp, note = key_points(r, window=20)
    assert note == "" and kp["window"] == 20
    # Symmetric sigmoid, symmetric window: the moving average falls fastest at its centre.
    assert abs(kp["steepest_step"] - 60) <= 2
    steps, loss = r.train_loss()
    rates = [(loss[i:i + 20].mean() - loss[i + 1:i + 21].mean()) / 2 for i in range(len(loss) - 20)]
    assert kp["rate"] == pytest.approx(max(rates))
    # Monotone loss: the lowest moving average is the last window's, at its mean step.
    assert kp["lowest_step"] == pytest.approx(STEPS[-20:].mean())
    assert kp["lowest_loss"] == pytest.approx(sigmoid_loss(60)[-20:].mean())
    # The steepest point of the earlier drop is earlier.
    assert key_points(runs["resnet-bn_gamma_beta-d4"])[0]["steepest_step"] < 40

    kp_small, note = key_points(r, window=100)
    assert kp_small["window"] == 59 and "window 59 (of 100" in note

    none, note = key_points(runs["convnet-vanilla-d26"])
    assert none is None and "only 2 finite training-loss record(s) (diverged)" in note


def test_metric_at_takes_the_nearest_finite_sample(study):
    r = next(r for r in find_conditioning_runs(study) if r.depth == 11)
    assert metric_at(r, "kappa_w", 61) == 160.0
    assert metric_at(r, "kappa_w", 66) == 170.0
    assert metric_at(r, "kappa_w", 10_000) == 100.0 + 120
    assert metric_at(r, "kappa_sgd", 0) == 5.0  # the NaN at step 0 is not a sample
    assert metric_at(r, "not_recorded", 10) is None
    points = metric_at_key_points(find_conditioning_runs(study), "kappa_w")
    assert [p["run"].name for p in points] == ["ortho_relu-vanilla-d11", "resnet-bn_gamma_beta-d4"]  # d26: no key points
    assert points[0]["at_steepest"] == 160.0 and points[1]["at_lowest"] == 7.0


def test_report_writes_every_plot_and_a_summary_that_notes_what_it_left_out(study):
    written = write_conditioning_report(study)
    for metric in ("kappa_w", "confusion", "kappa_sgd", "cosine_sgd"):
        for kind in ("curves", "scatter"):
            assert written[f"{kind}_{metric}"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (kind, metric)
    assert "curves_grad_norm" not in written and "curves_n_batches" not in written
    assert written["costs"].is_file()
    summary = written["summary"].read_text()
    assert "3 runs (1 diverged)" in summary
    for name in ("ortho_relu-vanilla-d11", "resnet-bn_gamma_beta-d4", "convnet-vanilla-d26"):
        assert f"| {name} |" in summary
    assert "`convnet-vanilla-d26`: no key points: only 2 finite training-loss record(s) (diverged)" in summary
    assert "diverged at step 5" in summary
    steepest = summary.split("## Metrics at the point of steepest descent")[1].split("##")[0]
    assert "| run | kappa_w | kappa_sgd | kappa_same_batch | cosine_sgd | confusion |" in steepest
    assert "| ortho_relu-vanilla-d11 | 160 | 5 | 2 | 0.5 | 0.1 |" in steepest
    assert "convnet-vanilla-d26" not in steepest
    assert "## Metric cost" in summary


def test_costs_are_collected_per_metric_sorted_by_parameter_count(study):
    costs = collect_costs(find_conditioning_runs(study))
    assert list(costs) == ["kappa_w", "batch_gradient"]
    assert [e["params"] for e in costs["kappa_w"]] == [800, 5000, 90000]
    first = costs["kappa_w"][0]
    assert (first["run"], first["params"], first["norm"], first["depth"]) == ("resnet-bn_gamma_beta-d4", 800, "bn_gamma_beta", 4)
    assert first["seconds"] == pytest.approx(1e-3 * math.sqrt(800))


def test_empty_or_unrecorded_studies_do_not_crash(tmp_path):
    written = write_conditioning_report(tmp_path / "nothing")
    assert list(written) == ["summary"] and "No runs found" in written["summary"].read_text()
    root = tmp_path / "one"
    write_run(root, "looks_linear", "vanilla", 4, sigmoid_loss(60)[:2], diverge_at=4)
    written = write_conditioning_report(root)
    assert "scatter_kappa_w" not in written and "curves_kappa_w" in written
    assert "no key points" in written["summary"].read_text()


def test_every_metric_has_a_label():
    from jaxnorm.observers import METRICS

    assert set(METRICS) | {"kappa_sgd", "cosine_sgd"} <= set(CONDITIONING_METRICS)


def test_steepest_descent_and_lowest_loss_never_share_a_window(tmp_path):
    """A loss that falls fastest at its end (the case where both points used to be the last
    window) gets a steepest point whose rate window ends before the lowest window; a flat
    or rising loss has no descent phase: no steepest point, a note, and no crash."""
    root = tmp_path / "c"
    accelerating = 2.0 - 1.5 * ((STEPS - STEPS[0]) / (STEPS[-1] - STEPS[0])) ** 2
    write_run(root, "ortho_relu", "vanilla", 4, accelerating)
    write_run(root, "ortho_relu", "bn_gamma_beta", 4, 1.0 + 1e-3 * STEPS)
    runs = {r.norm: r for r in find_conditioning_runs(root)}
    kp, note = key_points(runs["vanilla"], window=20)
    assert note == "" and kp["lowest_step"] == pytest.approx(STEPS[-20:].mean())
    # rate i spans records i .. i+20; the lowest window starts at record 40: i <= 19.
    assert kp["steepest_step"] == pytest.approx((STEPS[19:39].mean() + STEPS[20:40].mean()) / 2)
    kp, note = key_points(runs["bn_gamma_beta"], window=20)
    assert kp["steepest_step"] is None and kp["rate"] is None and kp["lowest_step"] == pytest.approx(STEPS[:20].mean())
    assert "no descent phase" in note
    # The summary alone (the full report's plots are test_report_writes_every_plot_...'s).
    summary = conditioning_summary_md(list(runs.values()), 20, title="t")
    assert "no descent phase" in summary and "| 0/1) |" not in summary


def test_over_seeds_tables_pair_bn_with_no_bn_by_seed(tmp_path):
    """Two seeds of one architecture without and with BN: intervals over n = 2, the paired
    comparison (BN's κ_SGD on one batch is 2 + seed + 1 vs 2 + seed: ×1.5/×1.33 -- so a
    ratio > 1 and 'does not hold here' when the interval excludes 1), the sweep table and
    the sweep plots."""
    from jaxnorm.analysis.conditioning_stats import by_config, plot_sweeps, quantity_at

    root = tmp_path / "c"
    smooth = lambda s: ([50.0, 50.5, 51.0, 400.0], 50.2)  # converged plateau on the first three η
    kinked = lambda s: ([900.0, 300.0, 100.0, 30.0], 20.0)  # ∝ 1/√η: no plateau
    for seed in (0, 1):
        write_run(root, "ortho_relu", "vanilla", 4, sigmoid_loss(60), seed=seed, sweep=smooth)
        write_run(root, "ortho_relu", "bn_gamma_beta", 4, sigmoid_loss(50), seed=seed, sweep=kinked)
    runs = find_conditioning_runs(root)
    assert [len(g) for g in by_config(runs).values()] == [2, 2]
    r = runs[0]
    assert quantity_at(r, "kappa_w_plateau", 0.0) == 50.5 and quantity_at(r, "kappa_w_plateau", None) != quantity_at(r, "kappa_w_plateau", None)
    # The sweep plots and the summary only: every other plot is test_report_writes_every_plot_...'s.
    assert all(plot_sweeps(runs, q, tmp_path / f"sweep_{q}.png").is_file() for q in ("kappa_w", "kappa_x"))
    summary = conditioning_summary_md(runs, 20, title="t")
    assert "## Over seeds (n = 2 per configuration" in summary
    sweep = summary.split("### The η sweep")[1].split("###")[0]
    assert "| FC orthogonal ReLU, no BN, d4 | 14 | 14/14 | 14/14 | 14/14 |" in sweep  # 7 sweeps (steps 0, 20, .., 120) x 2 seeds
    assert "| FC orthogonal ReLU, BN, d4 | 14 | 0/14 | 0/14 | 14/14 |" in sweep
    bn = summary.split("### BN vs no BN")[1].split("###")[0]
    row = next(l for l in bn.splitlines() if "κ_SGD, same batch" in l)
    assert "p = " in row and ("not significant (n = 2)" in row or "does not hold here" in row)
    assert "×1.41" in row  # geometric mean of 3/2 and 4/3
    assert "### The thesis's correlation claims" in summary
