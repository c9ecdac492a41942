"""The smoothness study (``experiments/smoothness.py``) on the engine: the quick study end
to end (fit's run folders, the observer's lines, the noisy run's recalibrated
evaluation, plots and summary, --plot-only from the stored files), a diverging run,
the analysis' numbers, and bad input. The probe itself is tested in
tests/observers/test_smoothness.py, the noise and population statistics in
tests/test_layers.py."""

from __future__ import annotations

import json
import math

import pytest

from experiments import smoothness
from jaxnorm.analysis import smoothness as analysis
from jaxnorm.analysis.runs import Run

PROBE_KEYS = {"loss", "grad_norm", "loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta_smoothness"}
PNGS = ("landscape.png", "predictiveness.png", "beta_smoothness.png", "ics.png")


def _lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


@pytest.mark.extended
def test_quick_study_writes_runs_plots_and_summary(tmp_path, capsys):
    assert smoothness.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    setup = smoothness.SETUPS["digits"].quick()
    root = tmp_path / "smoothness" / "digits-quick"
    assert json.loads((root / "study.json").read_text())["setup"]["eta_factors"] == list(setup.eta_factors)
    for variant in setup.variants:
        run = root / f"{variant}_s0"
        config = json.loads((run / "config.json").read_text())
        assert config["tag"] == variant and config["norm"] == smoothness.VARIANTS[variant].norm
        noise = config["model_kwargs"].get("norm_options", {})
        assert noise == ({"noise_mean": 1.0, "noise_var": 2.0} if variant == "noisy_bn" else {})
        lines = _lines(run / "metrics.jsonl")
        probes = [l for l in lines if l["kind"] == "smoothness"]
        assert [l["step"] for l in probes] == [0, 10, 20]
        for p in probes:
            assert PROBE_KEYS <= set(p) and all(math.isfinite(p[k]) for k in PROBE_KEYS)
            assert p["loss_min"] <= p["loss_max"] and p["grad_change_min"] <= p["grad_change_max"] and p["beta_smoothness"] > 0
        assert max(l["step"] for l in lines if l["kind"] == "train") == 20
        assert [l["split"] for l in lines if l["kind"] == "eval"] == ["test"]
        recal = run / "recalibrated_eval.json"
        assert recal.exists() == (variant == "noisy_bn")
    recal = json.loads((root / "noisy_bn_s0" / "recalibrated_eval.json").read_text())
    assert recal["split"] == "test" and recal["n"] == 359 and 0 <= recal["acc"] <= 1
    plots = root / "plots"
    assert all((plots / png).stat().st_size > 10_000 for png in PNGS)
    summary = (plots / "summary.md").read_text()
    assert summary.count("| finished |") == 3 and "¹" in summary
    # One seed: every comparison is listed, none tested.
    assert "| 1 | effective β-smoothness (Fig. 4c) | vanilla vs bn |" in summary and summary.count("no test (n = 1)") == len(analysis.COMPARISONS)
    assert "smoothness (up to 1 seeds per variant): vanilla vs bn loss_range" in capsys.readouterr().out

    # --plot-only redraws everything from the stored files; a rerun trains nothing and
    # keeps the recalibrated evaluation.
    for f in plots.iterdir():
        f.unlink()
    assert smoothness.main(["--quick", "--plot-only", "--results", str(tmp_path)]) == 0
    assert all((plots / png).stat().st_size > 10_000 for png in PNGS)
    assert (plots / "summary.md").read_text() == summary
    stamp = (root / "noisy_bn_s0" / "recalibrated_eval.json").stat().st_mtime_ns
    assert smoothness.main(["--quick", "--results", str(tmp_path), "--no-progress", "--variants", "noisy_bn"]) == 0
    assert (root / "noisy_bn_s0" / "recalibrated_eval.json").stat().st_mtime_ns == stamp


@pytest.mark.extended
def test_a_diverging_run_is_recorded_and_the_report_still_written(tmp_path):
    argv = ["--quick", "--variants", "vanilla", "--lr", "1e4", "--results", str(tmp_path), "--no-progress"]
    assert smoothness.main(argv) == 0
    root = tmp_path / "smoothness" / "digits-quick"
    lines = _lines(root / "vanilla_s0" / "metrics.jsonl")
    assert lines[-1]["kind"] == "divergence" and "non-finite" in lines[-1]["reason"]
    assert "| diverged |" in (root / "plots" / "summary.md").read_text()


def test_summarize_medians_and_the_final_window():
    recs = [
        {"kind": "smoothness", "step": i, "loss_min": 1.0, "loss_max": 1.0 + r, "grad_change_max": 2 * r, "beta_smoothness": 10 * r}
        for i, r in enumerate([1.0, 3.0, 2.0])
    ] + [
        {"kind": "train", "step": 10, "loss": 9.0, "acc": 0.1, "steps": 10},
        {"kind": "train", "step": 16, "loss": 0.6, "acc": 0.7, "steps": 6},
        {"kind": "train", "step": 20, "loss": 0.4, "acc": 0.8, "steps": 4},
        {"kind": "eval", "split": "test", "loss": 0.6, "acc": 0.7},
    ]
    s = analysis.summarize(recs, window=10)
    assert (s["loss_range"], s["grad_change"], s["beta_smoothness"], s["max_beta_smoothness"]) == (2.0, 4.0, 20.0, 30.0)
    # The last 10 steps: 6 steps at 0.6 and 4 at 0.4.
    assert s["train_loss"] == pytest.approx(0.52) and s["train_acc"] == pytest.approx(0.74)
    assert (s["eval_acc"], s["status"]) == (0.7, "finished")
    assert analysis.summarize(recs)["train_loss"] == 0.4
    assert analysis.summarize(recs, {"acc": 0.9})["eval_acc"] == 0.9
    assert math.isnan(analysis.summarize([])["loss_range"])
    assert analysis.summarize(recs + [{"kind": "divergence", "step": 21}])["status"] == "diverged"


def _run(tmp_path, variant, seed, loss_range, grad_change, beta, train_loss, acc):
    """A stored run with two probes (so the medians are the given values) and a final window."""
    probes = [{"kind": "smoothness", "step": s, "loss_min": 1.0, "loss_max": 1.0 + loss_range, "grad_change_max": grad_change,
               "beta_smoothness": beta} for s in (0, 20)]
    train = [{"kind": "train", "step": 20, "loss": train_loss, "acc": 0.9, "steps": 20}, {"kind": "eval", "split": "test", "acc": acc}]
    return Run(path=tmp_path / f"{variant}_s{seed}", config={"norm": "bn_gamma_beta", "tag": variant, "seed": seed},
               metrics=probes + train, trajectories={}, status={"status": "finished"})


def test_summary_intervals_and_paired_comparisons_by_hand(tmp_path):
    """Three seeds. Loss range: vanilla/BN ratios 100, 80 and 160 per seed -> geometric mean
    (100·80·160)^(1/3) = 108.6x, its log-interval above 0: holds. Gradient change: the
    ratios 1.1, 0.9, 1.0 -> not significant. β: vanilla half of BN's at every seed (a
    constant log ratio: half-width 0, p = 0): does not hold here. Held-out accuracy:
    noisy BN − BN = 0.01 on every seed: a difference, so "about the same" does not hold."""
    vals = {  # seed: (loss_range, grad_change, beta, train_loss, acc) per variant
        "vanilla": [(4.0, 1.1, 2.0, 0.3, 0.9), (2.4, 0.9, 3.0, 0.2, 0.92), (8.0, 1.0, 4.0, 0.25, 0.91)],
        "bn": [(0.04, 1.0, 4.0, 0.03, 0.97), (0.03, 1.0, 6.0, 0.02, 0.96), (0.05, 1.0, 8.0, 0.04, 0.95)],
        "noisy_bn": [(0.1, 1.0, 5.0, 0.05, 0.98), (0.1, 1.0, 5.0, 0.05, 0.97), (0.1, 1.0, 5.0, 0.05, 0.96)],
    }
    runs = {v: [_run(tmp_path, v, s, *x) for s, x in enumerate(xs)] for v, xs in vals.items()}
    rows = {(r["a"], r["b"], r["number"]): r for r in analysis.comparisons({v: analysis.per_seed(rs, None) for v, rs in runs.items()})}
    lr = rows[("vanilla", "bn", "loss_range")]
    assert math.exp(lr["test"].diff.mean) == pytest.approx((100 * 80 * 160) ** (1 / 3)) and lr["verdict"] == "holds"
    assert rows[("vanilla", "bn", "grad_change")]["verdict"] == "not significant (n = 3)"
    beta = rows[("vanilla", "bn", "beta_smoothness")]
    assert (beta["test"].p_t, beta["test"].diff.half_width, beta["verdict"]) == (0.0, 0.0, "does not hold here")
    assert rows[("noisy_bn", "bn", "eval_acc")]["verdict"] == "does not hold here (higher)"
    assert rows[("vanilla", "noisy_bn", "train_loss")]["verdict"] == "holds"
    summary = analysis.summary_markdown({"setup": {}}, runs)
    # vanilla's loss range 4, 2.4, 8: mean 4.8, half-width t(0.975, 2) · s / √3 = 4.303 · 2.884 / 1.732 = 7.2.
    assert "| vanilla | 3 | 4.8 ± 7.2 |" in summary
    assert "| 1 | loss range along the gradient (loss Lipschitzness, Fig. 4a) | vanilla vs bn | 109× [" in summary


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"variants": ("bn", "weird")}, "unknown variant"),
        ({"variants": ()}, "at least one"),
        ({"eta_factors": ()}, "eta_factors"),
        ({"eta_factors": (0.5, -1.0)}, "eta_factors"),
        ({"eta_factors": (float("nan"),)}, "eta_factors"),
        ({"every": 0}, "every"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 1}, "batch_size"),
        ({"noise_mean": -1.0}, "noise_mean"),
        ({"probe_examples": 0}, "probe_examples"),
    ],
)
def test_bad_setup_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        smoothness.SmoothnessSetup(**changes)


def test_bad_command_line_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        smoothness.main(["--config", "nope", "--results", str(tmp_path)])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    for argv, match in ((["--quick", "--every", "0"], "every must be"), (["--plot-only"], "no stored runs")):
        assert smoothness.main(argv + ["--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err
