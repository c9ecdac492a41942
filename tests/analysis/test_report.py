from jaxnorm.analysis import find_runs, write_report

from .synthetic import VARIANTS, write_run, write_study


def test_write_report_end_to_end(tmp_path):
    write_study(tmp_path, lrs=(0.1, 1.0))
    written = write_report(tmp_path)
    out = tmp_path / "plots"
    expected = {"curves_lr0.1.png", "curves_lr1.png", "activity.md", "summary.md"}
    for lr in ("0.1", "1"):
        for v in ("bn_gamma", "bn_beta", "bn_gamma_beta"):  # only variants with γ/β records
            for s in (0, 1):
                expected.add(f"gamma_beta_{v}_s{s}_lr{lr}.png")
    assert {p.name for p in written.values()} == expected
    assert {p.name for p in out.iterdir()} == expected
    assert all(p.parent == out and p.stat().st_size > 0 for p in written.values())
    summary = (out / "summary.md").read_text()
    for v in VARIANTS:
        assert v in summary
    assert summary.index("lr = 0.1") < summary.index("lr = 1") < summary.index("activity")
    activity = (out / "activity.md").read_text()
    assert "norm1" in activity and "bn_gamma_beta" in activity
    # The plots folder now below root holds no runs: a second report would find the same
    # ones (its clearing of the folder's earlier files is tests/analysis/test_incomplete_runs.py's).
    assert len(find_runs(tmp_path)) == 2 * len(VARIANTS) * 2


def test_write_report_single_seed_and_out_dir(tmp_path):
    write_run(tmp_path / "res" / "x", "bn_gamma", 0, lr=0.022)
    write_run(tmp_path / "res" / "y", "vanilla", 0, lr=0.022, diverge_after=1)
    written = write_report(tmp_path / "res", out_dir=tmp_path / "o")
    assert {p.name for p in written.values()} == {"curves_lr0.022.png", "gamma_beta_bn_gamma_lr0.022.png",
                                                  "activity.md", "summary.md"}
    assert "| vanilla |" in (tmp_path / "o" / "summary.md").read_text()
