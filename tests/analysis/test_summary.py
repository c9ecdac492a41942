import math

import pytest

from jaxnorm.analysis import find_runs, summarize, summary_markdown
from jaxnorm.analysis.summary import epochs_to_target

from .synthetic import VARIANTS, write_run, write_study


@pytest.fixture
def runs(tmp_path):
    write_study(tmp_path)
    return find_runs(tmp_path)


def test_summary_numbers(runs):
    rows = {r["variant"]: r for r in summarize(runs)}
    assert list(rows) == list(VARIANTS)
    # best final test acc of the group is 0.82 -> target round(0.9 * 0.82, 2) = 0.74
    assert all(r["target"] == pytest.approx(0.74) for r in rows.values())
    bn = rows["bn"]
    assert bn["n"] == 2 and sorted(bn["seeds"]) == [0, 1]
    assert bn["final_test_acc"] == pytest.approx(0.61)
    # sample std of 0.60, 0.62 is 0.01·√2; t_{.975,1} = tan(0.475π) (Cauchy); half-width t·s/√2
    assert bn["final_test_acc_ci"].half_width == pytest.approx(math.tan(0.475 * math.pi) * 0.01, rel=1e-9)
    assert bn["final_test_acc_ci"].n == 2
    assert bn["best_test_acc"] == pytest.approx(0.61)
    assert bn["final_train_acc"] == pytest.approx(0.71)
    # train loss: 2/(e+1) + 0.1*i + 0.1*seed, bn is i=1: final (2/3+0.1, 2/3+0.2), best is the final
    assert bn["final_train_loss"] == pytest.approx(2 / 3 + 0.15)
    assert bn["best_train_loss"] == pytest.approx(2 / 3 + 0.15)
    # bn_gamma_beta: seed 0 reaches 0.74 at epoch index 1 (-> 2), seed 1 at index 2 (-> 3)
    up = rows["bn_gamma_beta"]
    assert up["epochs_to_target"] == pytest.approx(2.5) and up["reached"] == 2
    assert up["final_test_acc"] == pytest.approx(0.81)
    assert up["gap_to_upper_pp"] == pytest.approx(0.0)
    assert rows["bn_gamma"]["epochs_to_target"] is None and rows["bn_gamma"]["reached"] == 0
    assert rows["bn"]["gap_to_upper_pp"] == pytest.approx(-20.0)
    assert rows["bn_beta"]["gap_to_upper_pp"] == pytest.approx(-40.0)
    assert rows["vanilla"]["beats_vanilla"] is None and rows["vanilla"]["vs_train_loss"] is None
    # Training loss 2/(e+1) + 0.1·i + 0.1·seed: every variant's paired difference to vanilla
    # is 0.1·i on both seeds (zero variance: p = 0), so loss is significantly *higher*
    # (worse) for every BN variant: "no", whatever the accuracy does.
    assert rows["bn"]["vs_train_loss"].diff.mean == pytest.approx(0.1) and rows["bn"]["vs_train_loss"].p_t == 0.0
    assert all(rows[v]["beats_vanilla"] == "no" for v in VARIANTS[1:])
    # test accuracy beside it: bn − vanilla = 0.10 on both seeds
    assert rows["bn"]["vs_test_acc"].diff.mean == pytest.approx(0.10) and rows["bn"]["vs_test_acc"].n == 2
    assert all(r["diverged"] == 0 for r in rows.values())


def _pair(tmp_path, variant, seeds, loss, acc, base_loss, base_acc):
    for s, l, a, bl, ba in zip(seeds, loss, acc, base_loss, base_acc):
        write_run(tmp_path / f"{variant}_s{s}", variant, s, loss=[l], test=[a - 0.1])  # train_eval acc = test + 0.1
        write_run(tmp_path / f"vanilla_s{s}", "vanilla", s, loss=[bl], test=[ba - 0.1])


def test_beats_vanilla_needs_both_paired_intervals_to_exclude_zero(tmp_path):
    # loss lower on every seed by 0.3 ± noise, accuracy higher by about 0.05: yes
    _pair(tmp_path / "a", "bn", [0, 1, 2], [0.2, 0.25, 0.22], [0.95, 0.96, 0.94], [0.5, 0.56, 0.5], [0.9, 0.9, 0.9])
    (_, bn) = summarize(find_runs(tmp_path / "a"))
    assert bn["beats_vanilla"] == "yes" and bn["vs_train_loss"].excludes_zero() == -1 and bn["vs_train_acc"].p_t < 0.05
    # loss lower, accuracy differences +0.05, -0.04, +0.06: interval contains zero -> not significant
    _pair(tmp_path / "b", "bn", [0, 1, 2], [0.2, 0.25, 0.22], [0.95, 0.86, 0.96], [0.5, 0.56, 0.5], [0.9, 0.9, 0.9])
    (_, bn) = summarize(find_runs(tmp_path / "b"))
    assert bn["beats_vanilla"] == "not significant" and bn["vs_train_acc"].excludes_zero() == 0
    md = summary_markdown(find_runs(tmp_path / "b"))
    line = next(l for l in md.splitlines() if l.startswith("| bn |"))
    assert "| not significant |" in line and "p = " in line and "sign 3+/0−" not in line and "Tübingen" in md


def test_beats_vanilla_with_diverged_seeds(tmp_path):
    # the variant diverges on a seed where vanilla trained: never "yes"
    write_run(tmp_path / "a" / "v0", "vanilla", 0)
    write_run(tmp_path / "a" / "v1", "vanilla", 1)
    write_run(tmp_path / "a" / "b0", "bn", 0, loss=[0.1, 0.05, 0.01])
    write_run(tmp_path / "a" / "b1", "bn", 1, diverge_after=1)
    (_, bn) = summarize(find_runs(tmp_path / "a"))
    assert bn["beats_vanilla"] == "no" and bn["vs_train_loss"].n == 1 and bn["vs_train_loss"].diff.excluded == 1
    # vanilla diverged on every seed, the variant on none: the variant trains where vanilla cannot
    for s in (0, 1):
        write_run(tmp_path / "b" / f"v{s}", "vanilla", s, diverge_after=1)
        write_run(tmp_path / "b" / f"b{s}", "bn", s)
    (_, bn) = summarize(find_runs(tmp_path / "b"))
    assert bn["beats_vanilla"] == "yes (vanilla diverged)"


def test_explicit_target_and_single_seed(tmp_path):
    write_run(tmp_path / "a", "vanilla", 0)
    write_run(tmp_path / "b", "bn_gamma_beta", 0)
    rows = {r["variant"]: r for r in summarize(find_runs(tmp_path), target_acc=0.45)}
    assert rows["vanilla"]["epochs_to_target"] == 3  # 0.30, 0.40, 0.50
    assert rows["bn_gamma_beta"]["epochs_to_target"] == 1
    assert math.isnan(rows["vanilla"]["final_test_acc_ci"].half_width) and rows["vanilla"]["n"] == 1
    assert rows["bn_gamma_beta"]["beats_vanilla"] == "no test"
    md = summary_markdown(find_runs(tmp_path), target_acc=0.45)
    assert "±" not in md.split("|---", 1)[1]  # one seed: no ± in the cells
    assert "| 0.5000 |" in md and "(n = 1: no test)" in md and "one seed: its value, no interval" in md


def test_epochs_to_target_boundary(tmp_path):
    write_run(tmp_path / "a", "bn", 0, test=[0.1, 0.5, 0.5])
    (run,) = find_runs(tmp_path)
    assert epochs_to_target(run, 0.5) == 2
    assert epochs_to_target(run, 0.51) is None


def test_summary_markdown_caption_and_rows(runs):
    md = summary_markdown(runs)
    assert "0.74" in md and "90%" in md and "lr = 0.1" in md
    for v in VARIANTS:
        assert f"| {v} |" in md
    bn_line = next(l for l in md.splitlines() if l.startswith("| bn |"))
    half = math.tan(0.475 * math.pi) * 0.01  # t_{.975,1} · (0.01·√2) / √2
    assert f"0.6100 ± {half:.4f}" in bn_line and "| -20.00 ± 0.00 |" in bn_line and "| no |" in bn_line


def test_diverged_counted(tmp_path):
    write_run(tmp_path / "a", "bn", 0, diverge_after=1)
    write_run(tmp_path / "b", "bn", 1)
    (row,) = summarize(find_runs(tmp_path))
    assert row["diverged"] == 1
    # the diverged seed is left out of the mean and counted, never averaged in
    assert row["final_test_acc"] == pytest.approx(0.62) and row["final_test_acc_ci"].n == 1
    assert row["final_test_acc_ci"].excluded == 1
    assert "1/2" in summary_markdown(find_runs(tmp_path))


def test_tagged_rows_are_compared_with_the_baselines_of_their_tag(tmp_path):
    import json

    from jaxnorm.analysis import find_runs, summarize
    from tests.analysis.synthetic import write_run

    for v, acc in (("vanilla", 0.5), ("bn", 0.6), ("bn_gamma_beta", 0.7)):
        write_run(tmp_path / "plain" / v, v, 0, test=[acc, acc])
    for v, acc in (("vanilla", 0.1), ("bn", 0.3), ("bn_gamma_beta", 0.4)):
        folder = write_run(tmp_path / "tagged" / v, v, 0, test=[acc, acc])
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "tag": "bn_only"}))
    rows = {r["variant"]: r for r in summarize(find_runs(tmp_path))}
    assert rows["bn+bn_only"]["vs_test_acc"].diff.mean == pytest.approx(0.2)  # 0.3 vs tagged vanilla's 0.1
    assert rows["bn+bn_only"]["beats_vanilla"] == "no test"  # one seed
    assert rows["bn+bn_only"]["gap_to_upper_pp"] == pytest.approx(-10.0)  # vs tagged bn_gamma_beta 0.4
    assert rows["vanilla+bn_only"]["beats_vanilla"] is None
    assert rows["bn"]["gap_to_upper_pp"] == pytest.approx(-10.0)  # untagged vs untagged 0.7


def test_a_seed_twice_in_a_row_counts_in_the_mean_but_is_not_paired(tmp_path):
    write_run(tmp_path / "v0", "vanilla", 0)
    write_run(tmp_path / "b0", "bn", 0, test=[0.5, 0.6, 0.7])
    write_run(tmp_path / "b0_again", "bn", 0, test=[0.5, 0.6, 0.9])  # another config, same seed and lr
    (_, bn) = summarize(find_runs(tmp_path))
    assert bn["n"] == 2 and bn["final_test_acc"] == pytest.approx(0.8) and bn["final_test_acc_ci"].n == 2
    assert bn["vs_test_acc"].n == 0 and bn["beats_vanilla"] == "no test"
