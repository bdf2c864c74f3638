"""The within-group order statistics of :mod:`edit_r1.toyworld.rollout_groups` and the CLI's checks."""

import numpy as np
import pytest

from edit_r1.toyworld.__main__ import main
from edit_r1.toyworld.rollout_groups import group_summary, success_bands, within_group_spearman


def test_within_group_spearman_averages_over_groups_and_skips_groups_without_order():
    first = np.array([[0.1, 0.5, 0.3], [0.2, 0.4, 0.3], [0.3, 0.3, 0.3]])  # group 2 does not vary
    second = np.array([[0.9, 0.3, 0.2], [0.8, 0.2, 0.5], [0.7, 0.1, 0.9]])
    value, used = within_group_spearman(first, second)
    # group 0 in opposite order (-1), group 1 in the same order (+1), group 2 left out
    assert used == 2 and value == pytest.approx(0.0)
    assert within_group_spearman(first[:, :1], second[:, :1]) == (pytest.approx(-1.0), 1)


def test_within_group_spearman_sees_an_order_the_pooled_correlation_hides():
    # Between groups success and preservation rise together; inside each group they trade off.
    offsets = np.arange(6)[None, :]
    success = offsets + np.array([[0.0], [0.1], [0.2]])
    preservation = offsets - np.array([[0.0], [0.1], [0.2]])
    assert within_group_spearman(success, preservation) == (pytest.approx(-1.0), 6)
    pooled = np.corrcoef(success.ravel(), preservation.ravel())[0, 1]
    assert pooled > 0.9


def test_within_group_spearman_without_any_order_or_with_bad_shapes():
    value, used = within_group_spearman(np.ones((4, 3)), np.ones((4, 3)))
    assert used == 0 and np.isnan(value)
    with pytest.raises(ValueError, match="shapes"):
        within_group_spearman(np.ones((4, 3)), np.ones((4, 2)))


def test_group_summary_names_every_pair_and_score():
    rng = np.random.default_rng(0)
    scores = {name: rng.random((8, 5)) for name in ("judge", "truth", "success", "preservation")}
    scores["preservation"] = 1.0 - scores["success"]  # the trade-off, exactly
    summary = group_summary(scores)
    assert summary["spearman_success_vs_preservation"] == pytest.approx(-1.0)
    assert summary["groups_judge_vs_truth"] == 5
    assert summary["within_std_success"] == pytest.approx(
        round(float(scores["success"].std(axis=0).mean()), 3)
    )
    assert {"mean_judge", "mean_truth", "within_std_judge", "spearman_truth_vs_preservation"} <= set(summary)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rollout-groups", "--group-size", "1"], "--group-size 1"),
        (["rollout-groups", "--items", "300"], "--items 300"),
        (["rollout-groups", "--policy", "/nonexistent/transformer"], "not a transformer folder"),
        (
            ["policy-judge", "--test-policy", "/x", "--out", "/tmp/y"],
            "--out needs at least one --train-policy",
        ),
        (["policy-judge", "--test-policy", "/nonexistent/transformer"], "not a transformer folder"),
    ],
)
def test_cli_rejects_bad_arguments_with_a_message(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(argv)


def test_success_bands_split_the_edits_and_average_their_preservation():
    success = np.array([[0.0, 0.01, 0.2], [0.5, 0.9, 0.04]])
    preservation = np.array([[0.9, 1.0, 0.8], [0.6, 0.7, 0.95]])
    bands = success_bands(success, preservation)
    assert bands["kept"] == {"share": 0.5, "preservation": pytest.approx(0.95)}
    assert bands["partial"] == {"share": round(1 / 6, 3), "preservation": pytest.approx(0.8)}
    assert bands["edited"] == {"share": round(2 / 6, 3), "preservation": pytest.approx(0.65)}
    assert success_bands(np.zeros(3), np.ones(3))["edited"] == {"share": 0.0, "preservation": None}
