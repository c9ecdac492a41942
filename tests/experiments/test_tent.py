"""The TENT study (``experiments/tent.py``) on the shared study protocol: the quick study
end to end (training, the ``after`` evaluation into the run folder, its skip on a rerun
and refusal of other settings, --plot-only), the analysis (``jaxnorm.analysis.tent``) on
hand-made records, divergence, bad input."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from experiments import tent
from jaxnorm.analysis import tent as report
from jaxnorm.train import build_model

EVAL_KEYS = {"kind", "corruption", "severity", "mode", "error", "entropy", "n", "updates", "psnr"}


def test_quick_study_writes_records_plots_and_summary(tmp_path, capsys):
    assert tent.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    cfg = tent.TentSetup().quick()
    root = tmp_path / "tent" / "digits-quick"
    run, out = root / "train", root / "train" / "adaptation"
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert json.loads((run / "config.json").read_text())["norm"] == "bn_gamma_beta"
    assert json.loads((root / "study.json").read_text())["setup"]["corruptions"] == list(cfg.corruptions)
    assert json.loads((out / "settings.json").read_text()) == cfg.eval_settings()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    streams = [("none", 0)] + [(c, s) for c in cfg.corruptions for s in cfg.severities]
    assert [(l["corruption"], l["severity"], l["mode"]) for l in lines] == [(c, s, m) for c, s in streams for m in cfg.modes]
    batches = math.ceil(cfg.test_subset / cfg.batch_size)
    for l in lines:
        assert set(l) == EVAL_KEYS and l["kind"] == "eval" and l["n"] == cfg.test_subset
        assert 0 <= l["error"] <= 1 and 0 <= l["entropy"] <= math.log(10) + 1e-6
        assert l["updates"] == (batches if l["mode"] == "tent" else 0)
        assert (l["psnr"] is None) == (l["corruption"] == "none")
    correct = np.load(out / "correct.npz")
    for l in lines:
        ok = correct[f"{l['mode']}/{l['corruption']}/{l['severity']}"]
        assert ok.dtype == bool and ok.shape == (cfg.test_subset,) and 1 - ok.mean() == pytest.approx(l["error"])
    assert set(np.load(out / "examples.npz").files) == {f"{c}/{s}" for c, s in streams}
    plots = root / "plots"
    names = ("errors.png", "severity.png", "examples.png")
    for png in names:
        assert (plots / png).stat().st_size > 5_000  # the quick examples grid is 2 x 3 tiny images
    summary = (plots / "summary.md").read_text()
    assert "Claim" in summary and "TENT vs test-batch statistics" in summary and f"TENT made {batches} updates" in summary
    assert "mean corrupted error running" in capsys.readouterr().out

    # A rerun with the same settings skips the evaluation; other settings are refused.
    stamp = (out / "metrics.jsonl").stat().st_mtime_ns
    assert tent.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert tent.main(["--quick", "--tent-lr", "0.5", "--results", str(tmp_path), "--no-progress"]) == 2
    # Refused before anything is written, by the stored study.json (issue 13); the
    # adaptation step's own check of settings.json stays behind it.
    assert "tent_lr (stored 0.01, given 0.5)" in capsys.readouterr().err
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp
    from types import SimpleNamespace

    from jaxnorm.study import setup_with

    other = setup_with(tent.STUDY.setups["digits"], {"tent_lr": 0.5}, quick=True)
    with pytest.raises(ValueError, match=r"holds an evaluation with other settings \(tent_lr\)"):
        tent.adapt_trained(other, [SimpleNamespace(run_dir=run, status="finished")])
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp

    # --plot-only redraws everything from the stored files (the evaluated settings, not the flags).
    for f in plots.iterdir():
        f.unlink()
    assert tent.main(["--quick", "--plot-only", "--results", str(tmp_path)]) == 0
    assert all((plots / png).stat().st_size > 5_000 for png in names)
    assert (plots / "summary.md").read_text() == summary


def test_a_diverging_stream_is_recorded_and_the_report_says_so(tmp_path):
    """NaN weights: every stream's logits are non-finite; each becomes a divergence line,
    and the report is still written."""
    cfg = tent.TentSetup(corruptions=("contrast",), severities=(2,), modes=("running",)).quick()
    module = build_model(cfg.train, 10)
    variables = jax.jit(module.init, static_argnames="train")(jax.random.PRNGKey(0), np.zeros((2, 8, 8, 1), np.float32), train=False)
    variables = {**variables, "params": jax.tree.map(lambda p: p * np.nan, variables["params"])}
    records, correct, _ = tent.evaluate(cfg, module, variables, log=lambda s: None)
    assert [(r["kind"], r["corruption"]) for r in records] == [("divergence", "none"), ("divergence", "contrast")]
    assert all(r["reason"] == "non-finite logits" and r["stage"] == "eval" for r in records) and not correct
    run = tmp_path / "train"
    (run / "adaptation").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.train.to_dict()))
    (run / "status.json").write_text(json.dumps({"status": "finished"}))
    (run / "adaptation" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "adaptation" / "settings.json").write_text(json.dumps(cfg.eval_settings()))
    (tmp_path / "study.json").write_text(json.dumps({"study": "tent", "setup": {"name": cfg.name, **cfg.eval_settings()}, "seeds": [0]}))
    report.analyze_tent(tmp_path)
    assert "**Divergence** (eval)" in (tmp_path / "plots" / "summary.md").read_text()


def test_paired_counts_pool_seeds_and_tables_average_them():
    corruptions, severities = ("contrast", "brightness"), (1, 2)
    t, f = True, False
    correct = {
        "tent/contrast/1": np.array([t, t, f, t]), "batch/contrast/1": np.array([t, f, f, f]),
        "tent/contrast/2": np.array([f, t, t, t]), "batch/contrast/2": np.array([t, t, t, t]),
        "tent/brightness/1": np.array([t, t, t, t]), "batch/brightness/1": np.array([f, f, f, f]),
    }  # fmt: skip
    p = report.paired([correct], "tent", "batch", corruptions, severities)  # brightness 2 is missing: skipped
    assert (p["better"], p["worse"], p["n"]) == (2 + 0 + 4, 0 + 1 + 0, 12)
    assert p["significant"] == (5 > 2 * math.sqrt(7))
    two = report.paired([correct, correct], "tent", "batch", corruptions, severities)  # a second seed: pairs pooled
    assert (two["better"], two["worse"], two["n"]) == (12, 2, 24) and two["significant"] == (10 > 2 * math.sqrt(14))
    records = [
        {"kind": "eval", "corruption": c, "severity": s, "mode": m, "error": 1 - correct[f"{m}/{c}/{s}"].mean()}
        for m in ("tent", "batch") for c, s in (("contrast", 1), ("contrast", 2), ("brightness", 1))
    ] + [{"kind": "divergence", "stage": "eval", "corruption": "brightness", "severity": 2, "mode": "tent"}]  # fmt: skip
    table = report.error_table(records, ["batch", "tent"], list(corruptions), list(severities))
    np.testing.assert_allclose(table[1, 0], [0.25, 0.25])
    np.testing.assert_allclose(table[0, :, 0], [0.75, 1.0])
    assert np.isnan(table[0, 1, 1]) and np.isnan(table[1, 1, 1])
    other_seed = {**records[0], "error": 0.75}  # tent/contrast/1 of a second seed
    assert report.error_table(records + [other_seed], ["tent"], ["contrast"], [1])[0, 0, 0] == pytest.approx(0.5)
    assert math.isnan(report.clean_error(records, "tent"))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"corruptions": ("fog",)}, "unknown corruption 'fog'"),
        ({"source": "web"}, "source"),
        ({"corruptions": ()}, "at least one"),
        ({"severities": (0,)}, "severities"),
        ({"modes": ("train",)}, "unknown adaptation mode"),
        ({"tent_optimizer": "lbfgs"}, "unknown TENT optimizer"),
        ({"batch_size": 1}, "batch_size"),
        ({"passes": 0}, "passes"),
        ({"tent_lr": -1.0}, "tent_lr"),
    ],
)
def test_bad_setup_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        tent.TentSetup(**changes)


def test_bad_command_line_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tent.main(["--config", "nope", "--results", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert tent.main(["--plot-only", "--results", str(tmp_path)]) == 2
    assert "no stored TENT study" in capsys.readouterr().err
    assert tent.main(["--quick", "--corruptions", "fog", "--results", str(tmp_path)]) == 2
    assert "unknown corruption 'fog'" in capsys.readouterr().err
    # tfds names are accepted for the tfds source only
    assert tent.SETUPS["cifar10"].corruptions == tent.BENCHMARK_15
