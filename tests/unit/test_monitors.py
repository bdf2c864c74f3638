"""The reward-hacking monitors of an evaluation, on hand-made images and tensors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from edit_r1.monitors import (
    VelocityNorms,
    per_item_gap,
    row_mean_square,
    same_reward,
    similarity_arrays,
    summarise,
)


def _scene(size: int = 32) -> np.ndarray:
    """A grey background with a red square."""
    image = np.full((size, size, 3), 128, np.uint8)
    image[4:14, 4:14] = (220, 40, 40)
    return image


def test_similarity_arrays_per_item():
    scene = _scene()
    arrays = similarity_arrays([scene, np.zeros_like(scene)], [scene, scene])
    assert set(arrays) == {"source_ssim", "source_psnr", "changed_share"}
    np.testing.assert_allclose(arrays["source_ssim"][0], 1.0)
    assert arrays["source_ssim"][1] < 0.1 and arrays["changed_share"][1] == 1.0


def test_velocity_norms_observe_without_changing_the_velocity():
    meter = VelocityNorms()
    velocity = lambda z, s: 2.0 * z  # noqa: E731 - ||v|| / sqrt(d) = 2 |z| for constant rows
    reference = lambda z, s: 1.0 * z  # noqa: E731
    observed = meter.wrap(velocity, reference)
    for scale in (1.0, 3.0):  # two solver steps
        z = torch.stack([torch.full((4, 2), scale), torch.full((4, 2), -scale)])
        assert torch.equal(observed(z, torch.tensor(0.5)), 2.0 * z)
    rows = meter.per_row()
    np.testing.assert_allclose(rows["velocity_rms"], [4.0, 4.0])  # mean of 2 and 6
    np.testing.assert_allclose(rows["velocity_rms_ref"], [2.0, 2.0])
    np.testing.assert_allclose(rows["velocity_ratio"], [2.0, 2.0])  # inflated twofold at every step
    assert set(VelocityNorms().per_row()) == set()


def test_row_mean_square_is_x0_norm_per_sample():
    x0 = torch.stack([torch.full((3, 2), 2.0), torch.zeros(3, 2)])
    np.testing.assert_allclose(row_mean_square(x0), [4.0, 0.0])


def test_reward_gap_and_means_ignore_failed_scores():
    gap = per_item_gap(np.array([0.9, 0.8, np.nan]), np.array([0.5, 0.6, 0.1]))
    metrics = summarise({"reward_gap": gap, "source_ssim": np.array([1.0, 0.5, np.nan])})
    assert metrics["monitor/reward_gap"] == pytest.approx(0.3)  # (0.4 + 0.2) / 2: the failed item left out
    assert metrics["monitor/source_ssim"] == pytest.approx(0.75)
    assert summarise({"reward_gap": per_item_gap(np.array([np.nan]), np.array([0.5]))}) == {
        "monitor/reward_gap": None
    }


def test_same_reward_ignores_zero_weights_but_not_a_second_server():
    train = {"mllm_score_continue": 1.0}
    logged_rule = {"mllm_score_continue": 1.0, "toy_color": 0.0}
    assert same_reward(train, logged_rule, same_server=True)
    assert not same_reward(train, logged_rule, same_server=False)  # a second judge: a real gap
    assert not same_reward({**train, "source_consistency": 0.3}, logged_rule, same_server=True)


def test_the_evaluation_table_reads_a_runs_metrics(tmp_path, capsys):
    from edit_r1.monitors import main

    rows = [
        {"step": 0, "eval_reward_mean": 0.5, "monitor/source_ssim": 0.9, "reward_mean": 0.4},
        {"step": 1, "reward_mean": 0.6},  # no evaluation in this epoch
        {"step": 2, "eval_reward_mean": 0.7, "monitor/source_ssim": 0.25, "monitor/reward_gap": None},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    main([str(tmp_path)])
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["epoch", "eval_mean", "reward_gap", "source_ssim"]
    assert [line.split() for line in lines] == [["0", "0.500", "-", "0.900"], ["2", "0.700", "-", "0.250"]]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])


def test_a_reference_that_never_moved_gives_a_nan_ratio_without_a_warning() -> None:
    meter = VelocityNorms()
    meter.observe(torch.ones(2, 4), torch.stack([torch.zeros(4), torch.full((4,), 2.0)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = meter.per_row()["velocity_ratio"]
    assert np.isnan(ratio[0]) and ratio[1] == pytest.approx(0.5)
