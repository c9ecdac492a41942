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

PROBE_KEYS = {"loss", "grad_norm", "loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta_smoothness"}
PNGS = ("landscape.png", "predictiveness.png", "beta_smoothness.png", "ics.png")


def _lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


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
    assert summary.count("| finished |") == 3 and "vanilla / BN" in summary and "¹" in summary
    assert "smoothness: vanilla / BN" in capsys.readouterr().out

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
