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
    assert bn["final_test_acc_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))  # sample std of 0.60, 0.62
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
    assert rows["vanilla"]["beats_vanilla"] is None
    assert rows["bn"]["beats_vanilla"] is True
    assert rows["bn_beta"]["beats_vanilla"] is False
    assert all(r["diverged"] == 0 for r in rows.values())


def test_explicit_target_and_single_seed(tmp_path):
    write_run(tmp_path / "a", "vanilla", 0)
    write_run(tmp_path / "b", "bn_gamma_beta", 0)
    rows = {r["variant"]: r for r in summarize(find_runs(tmp_path), target_acc=0.45)}
    assert rows["vanilla"]["epochs_to_target"] == 3  # 0.30, 0.40, 0.50
    assert rows["bn_gamma_beta"]["epochs_to_target"] == 1
    assert rows["vanilla"]["final_test_acc_std"] == 0.0 and rows["vanilla"]["n"] == 1
    md = summary_markdown(find_runs(tmp_path), target_acc=0.45)
    assert "±" not in md.split("|---", 1)[1]  # one seed: no ± in the cells


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
    assert "0.6100 ± 0.0141" in bn_line and "-20.00" in bn_line and "yes" in bn_line


def test_diverged_counted(tmp_path):
    write_run(tmp_path / "a", "bn", 0, diverge_after=1)
    write_run(tmp_path / "b", "bn", 1)
    (row,) = summarize(find_runs(tmp_path))
    assert row["diverged"] == 1
    assert row["final_test_acc"] == pytest.approx((0.40 + 0.62) / 2)  # diverged run: its last evaluation
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
    assert rows["bn+bn_only"]["beats_vanilla"] is True  # 0.3 > tagged vanilla's 0.1
    assert rows["bn+bn_only"]["gap_to_upper_pp"] == pytest.approx(-10.0)  # vs tagged bn_gamma_beta 0.4
    assert rows["vanilla+bn_only"]["beats_vanilla"] is None
    assert rows["bn"]["gap_to_upper_pp"] == pytest.approx(-10.0)  # untagged vs untagged 0.7
