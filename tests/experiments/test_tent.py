"""The TENT study (``experiments/tent.py``): the quick study end to end, the paired
comparison and tables on hand-made records, divergence, bad input."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from experiments import tent

EVAL_KEYS = {"kind", "corruption", "severity", "mode", "error", "entropy", "n", "updates", "psnr"}


def test_quick_study_writes_records_plots_and_summary(tmp_path):
    tent.main(["--quick", "--results", str(tmp_path)])
    cfg = tent.TentConfig().quick()
    root = tmp_path / "tent" / "digits-quick"
    config = json.loads((root / "config.json").read_text())
    assert config["corruptions"] == list(cfg.corruptions) and config["train"]["norm"] == "bn_gamma_beta"
    assert json.loads((root / "train" / "status.json").read_text())["status"] == "finished"
    lines = [json.loads(l) for l in (root / "metrics.jsonl").read_text().splitlines()]
    streams = [("none", 0)] + [(c, s) for c in cfg.corruptions for s in cfg.severities]
    assert [(l["corruption"], l["severity"], l["mode"]) for l in lines] == [(c, s, m) for c, s in streams for m in cfg.modes]
    batches = math.ceil(cfg.test_subset / cfg.batch_size)
    for l in lines:
        assert set(l) == EVAL_KEYS and l["kind"] == "eval" and l["n"] == cfg.test_subset
        assert 0 <= l["error"] <= 1 and 0 <= l["entropy"] <= math.log(10) + 1e-6
        assert l["updates"] == (batches if l["mode"] == "tent" else 0)
        assert (l["psnr"] is None) == (l["corruption"] == "none")
    correct = np.load(root / "correct.npz")
    for l in lines:
        ok = correct[f"{l['mode']}/{l['corruption']}/{l['severity']}"]
        assert ok.dtype == bool and ok.shape == (cfg.test_subset,) and 1 - ok.mean() == pytest.approx(l["error"])
    assert set(np.load(root / "examples.npz").files) == {f"{c}/{s}" for c, s in streams}
    plots = root / "plots"
    names = ("errors.png", "severity.png", "examples.png")
    for png in names:
        assert (plots / png).stat().st_size > 5_000  # the quick examples grid is 2 x 3 tiny images
    summary = (plots / "summary.md").read_text()
    assert "Claim" in summary and "TENT vs test-batch statistics" in summary and f"TENT made {batches} updates" in summary

    # --plot-only redraws everything from the stored files.
    for f in plots.iterdir():
        f.unlink()
    tent.main(["--quick", "--plot-only", "--results", str(tmp_path)])
    assert all((plots / png).stat().st_size > 5_000 for png in names)
    assert (plots / "summary.md").read_text() == summary


def test_a_diverging_stream_is_recorded_and_the_study_goes_on(tmp_path):
    """NaN weights: every stream's logits are non-finite; each becomes a divergence line,
    and the report is still written."""
    cfg = tent.TentConfig(corruptions=("contrast",), severities=(2,), modes=("running",)).quick()
    module = tent.build_model(cfg.train, 10)
    variables = jax.jit(module.init, static_argnames="train")(jax.random.PRNGKey(0), np.zeros((2, 8, 8, 1), np.float32), train=False)
    variables = {**variables, "params": jax.tree.map(lambda p: p * np.nan, variables["params"])}
    records = tent.evaluate(cfg, module, variables, tmp_path, log=lambda s: None)
    assert [(r["kind"], r["corruption"]) for r in records] == [("divergence", "none"), ("divergence", "contrast")]
    assert all(r["reason"] == "non-finite logits" and r["stage"] == "eval" for r in records)
    tent.write_report(tmp_path, cfg, records)
    assert "**Divergence** (eval)" in (tmp_path / "plots" / "summary.md").read_text()


def test_paired_counts_and_tables():
    cfg = tent.TentConfig(corruptions=("contrast", "brightness"), severities=(1, 2))
    t, f = True, False
    correct = {
        "tent/contrast/1": np.array([t, t, f, t]), "batch/contrast/1": np.array([t, f, f, f]),
        "tent/contrast/2": np.array([f, t, t, t]), "batch/contrast/2": np.array([t, t, t, t]),
        "tent/brightness/1": np.array([t, t, t, t]), "batch/brightness/1": np.array([f, f, f, f]),
    }  # fmt: skip
    p = tent.paired(correct, "tent", "batch", cfg)  # brightness 2 is missing: skipped
    assert (p["better"], p["worse"], p["n"]) == (2 + 0 + 4, 0 + 1 + 0, 12)
    assert p["significant"] == (5 > 2 * math.sqrt(7))
    records = [
        {"kind": "eval", "corruption": c, "severity": s, "mode": m, "error": 1 - correct[f"{m}/{c}/{s}"].mean()}
        for m in ("tent", "batch") for c, s in (("contrast", 1), ("contrast", 2), ("brightness", 1))
    ] + [{"kind": "divergence", "stage": "eval", "corruption": "brightness", "severity": 2, "mode": "tent"}]  # fmt: skip
    table = tent.error_table(records, ["batch", "tent"], list(cfg.corruptions), list(cfg.severities))
    np.testing.assert_allclose(table[1, 0], [0.25, 0.25])
    np.testing.assert_allclose(table[0, :, 0], [0.75, 1.0])
    assert np.isnan(table[0, 1, 1]) and np.isnan(table[1, 1, 1])
    assert math.isnan(tent.clean_error(records, "tent"))


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
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        tent.TentConfig(**changes)


def test_bad_command_line_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        tent.main(["--config", "nope", "--results", str(tmp_path)])
    with pytest.raises(ValueError, match="no stored records"):
        tent.main(["--plot-only", "--results", str(tmp_path)])
    # tfds names are accepted for the tfds source only
    assert tent.get_config("cifar10").corruptions == tent.BENCHMARK_15
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        tent.TentConfig(corruptions=("fog",), source="functions")
