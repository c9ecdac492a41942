"""The TENT study (``experiments/tent.py``) on the shared study protocol: the quick study
end to end (training, TENT's lr chosen on the held-out streams, the ``after`` evaluation into
the run folder, its skip on a rerun and refusal of other settings, --plot-only), the
analysis (``jaxnorm.analysis.tent``: the choice rule, paired tests over seeds and over
predictions) on hand-made records, divergence, bad input."""

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
SELECT_KEYS = {"kind", "corruption", "severity", "mode", "error", "entropy", "n", "updates"}


@pytest.mark.extended
def test_quick_study_writes_records_plots_and_summary(tmp_path, capsys):
    assert tent.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    cfg = tent.TentSetup().quick()
    root = tmp_path / "tent" / "digits-quick"
    run, out = root / "train", root / "train" / "adaptation"
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert json.loads((run / "config.json").read_text())["norm"] == "bn_gamma_beta"
    assert json.loads((root / "study.json").read_text())["setup"]["corruptions"] == list(cfg.corruptions)
    assert json.loads((out / "settings.json").read_text()) == cfg.eval_settings()
    every = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    lines, select = [l for l in every if l["kind"] == "eval"], [l for l in every if l["kind"] == "select"]
    assert len(lines) + len(select) == len(every)
    streams = [("none", 0)] + [(c, s) for c in cfg.corruptions for s in cfg.severities]
    assert [(l["corruption"], l["severity"], l["mode"]) for l in lines] == [(c, s, m) for c, s in streams for m in cfg.modes]
    # The held-out streams: batch, then TENT at every lr of the grid, per corrupted stream.
    assert [(l["corruption"], l["severity"], l["mode"], l.get("tent_lr")) for l in select] == [
        (c, s, m, lr) for c, s in streams[1:] for m, lr in [("batch", None)] + [("tent", v) for v in cfg.tent_lrs]
    ]  # fmt: skip
    selection = json.loads((out / "selection.json").read_text())
    assert len(cfg.tent_lrs) == 2 and selection["lrs"] == list(cfg.tent_lrs)
    assert selection["chosen"] == report.choose_lr(select, cfg.tent_lrs)[0]
    assert (selection["split"], selection["start"], selection["n"]) == ("train", cfg.train.train_subset, cfg.select_size)
    batches = math.ceil(cfg.test_subset / cfg.batch_size)
    for l in lines + select:
        assert set(l) == (EVAL_KEYS if l in lines else SELECT_KEYS) | ({"tent_lr"} if l["mode"] == "tent" else set())
        assert 0 <= l["error"] <= 1 and 0 <= l["entropy"] <= math.log(10) + 1e-6 and l["n"] == cfg.test_subset
        assert l["updates"] == (batches if l["mode"] == "tent" else 0)
    for l in lines:
        assert (l["psnr"] is None) == (l["corruption"] == "none")
        assert l.get("tent_lr", selection["chosen"]) == selection["chosen"]  # the test streams use the chosen lr
    correct = np.load(out / "correct.npz")
    for l in lines:
        ok = correct[f"{l['mode']}/{l['corruption']}/{l['severity']}"]
        assert ok.dtype == bool and ok.shape == (cfg.test_subset,) and 1 - ok.mean() == pytest.approx(l["error"])
    assert set(np.load(out / "examples.npz").files) == {f"{c}/{s}" for c, s in streams}
    plots = root / "plots"
    names = ("errors.png", "severity.png", "examples.png", "selection.png")
    for png in names:
        assert (plots / png).stat().st_size > 5_000  # the quick examples grid is 2 x 3 tiny images
    summary = (plots / "summary.md").read_text()
    assert "Claim" in summary and "TENT vs test-batch statistics" in summary and f"TENT made {batches} updates" in summary
    assert f"Chosen: seed 0: {selection['chosen']:g}." in summary and "no test (n = 1)" in summary
    assert "mean corrupted error (n = 1) running" in capsys.readouterr().out

    # A rerun with the same settings skips the evaluation; other settings are refused.
    stamp = (out / "metrics.jsonl").stat().st_mtime_ns
    assert tent.main(["--quick", "--results", str(tmp_path), "--no-progress"]) == 0
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert tent.main(["--quick", "--tent-steps", "2", "--results", str(tmp_path), "--no-progress"]) == 2
    # Refused before anything is written, by the stored study.json (issue 13); the
    # adaptation step's own check of settings.json stays behind it (another lr grid: a
    # list, which study.json may merge).
    assert "tent_steps (stored 1, given 2)" in capsys.readouterr().err
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp
    from types import SimpleNamespace

    from jaxnorm.study import setup_with

    other = setup_with(tent.STUDY.setups["digits"], {"tent_lrs": (0.5,)}, quick=True)
    with pytest.raises(ValueError, match=r"holds an evaluation with other settings \(tent_lrs\)"):
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
    [(records, correct, _, selection)] = tent.evaluate(cfg, module, [variables], log=lambda s: None)
    assert selection == {}  # no tent mode: nothing to choose
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
    # Exact McNemar: two-sided binomial tail of 6 of 7 discordant pairs, 2 · (7 + 1) / 2^7.
    assert p["p"] == pytest.approx(2 * 8 / 2**7) and not p["significant"]
    two = report.paired([correct, correct], "tent", "batch", corruptions, severities)  # a second seed: pairs pooled
    assert (two["better"], two["worse"], two["n"]) == (12, 2, 24)
    assert two["p"] == pytest.approx(2 * (91 + 14 + 1) / 2**14) and two["significant"]  # C(14, 12) + C(14, 13) + C(14, 14)
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


class _Seed:
    """A stand-in for a stored run: records of two modes on one stream."""

    def __init__(self, seed, errors):
        self.seed, self.selection = seed, {}
        self.records = [{"kind": "eval", "corruption": "contrast", "severity": 1, "mode": m, "error": e} for m, e in errors.items()]


def test_modes_are_compared_paired_by_seed():
    """tent − batch per seed: −0.02, −0.03, −0.025 → mean −0.025, interval below zero:
    holds; the reverse does not hold; one seed has no test."""
    seeds = [_Seed(s, {"batch": b, "tent": b + d}) for s, (b, d) in enumerate([(0.10, -0.02), (0.30, -0.03), (0.20, -0.025)])]
    t = report.compare(seeds, "tent", "batch", ["contrast"], [1])
    assert (t.n, t.diff.mean) == (3, pytest.approx(-0.025)) and report.verdict_word(t) == "holds"
    assert report.verdict_word(report.compare(seeds, "batch", "tent", ["contrast"], [1])) == "does not hold here"
    assert report.verdict_word(report.compare(seeds[:1], "tent", "batch", ["contrast"], [1])) == "no test (n = 1)"
    mixed = [_Seed(0, {"batch": 0.1, "tent": 0.08}), _Seed(1, {"batch": 0.1, "tent": 0.13})]
    assert report.verdict_word(report.compare(mixed, "tent", "batch", ["contrast"], [1])) == "not significant (n = 2)"


def test_the_lr_is_the_lowest_mean_held_out_error_ties_to_the_smaller_diverged_never():
    sel = lambda lr, e: {"kind": "select", "mode": "tent", "tent_lr": lr, "error": e}
    batch = {"kind": "select", "mode": "batch", "error": 0.0}  # the reference is no candidate
    # Binary fractions: the means are exact, so the tie below is a tie.
    records = [batch, sel(1e-3, 0.25), sel(1e-3, 0.5), sel(1e-2, 0.125), sel(1e-2, 0.375), sel(3e-2, 0.5), sel(3e-2, 0.25)]
    lr, mean = report.choose_lr(records, (1e-3, 1e-2, 3e-2))
    assert lr == 1e-2 and mean == {1e-3: 0.375, 1e-2: 0.25, 3e-2: 0.375}
    assert report.choose_lr(records, (3e-2, 1e-3))[0] == 1e-3  # 0.375 each: the smaller
    diverged = {"kind": "divergence", "stage": "select", "mode": "tent", "tent_lr": 1e-2}
    lr, mean = report.choose_lr(records + [diverged], (1e-3, 1e-2, 3e-2))
    assert lr == 1e-3 and mean[1e-2] is None
    assert report.choose_lr([diverged], (1e-2, 3e-2))[0] == 1e-2  # every lr diverged (or none ran): the smallest


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
        ({"tent_lrs": (-1.0,)}, "tent_lrs"),
        ({"tent_lrs": ()}, "tent_lrs"),
        ({"tent_lrs": (1e-2, 1e-2)}, "tent_lrs"),
        ({"select_corruptions": ("fog",)}, "held-out streams"),
        ({"select_size": 1}, "select_size"),
        ({"train": tent.TentSetup().train.replace(train_subset=None)}, "train_subset"),
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
