"""Group advantages and low-variance group filtering / bans (docs/algorithm.md#4-advantages,
#5-low-variance-group-filtering)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edit_r1.algo import group_advantages, group_filter

KEY_A = ("make it red", "img/1.png")
KEY_A_OTHER_IMAGE = ("make it red", "img/2.png")
KEY_B = ("remove the dog", "img/3.png")


def test_per_group_std_formula():
    keys = [KEY_A, KEY_B, KEY_A, KEY_B, KEY_A, KEY_B]
    rewards = [0.1, 0.9, 0.5, 0.7, 0.9, 0.8]
    stats = group_advantages(keys, rewards, global_std=False)
    a = np.array([0.1, 0.5, 0.9])
    b = np.array([0.9, 0.7, 0.8])
    expected_a = (a - a.mean()) / (a.std() + 1e-4)
    expected_b = (b - b.mean()) / (b.std() + 1e-4)
    np.testing.assert_allclose(stats.advantages[[0, 2, 4]].numpy(), expected_a)
    np.testing.assert_allclose(stats.advantages[[1, 3, 5]].numpy(), expected_b)
    np.testing.assert_allclose(stats.group_std[[0, 1]].numpy(), [a.std(), b.std()])
    np.testing.assert_allclose(stats.group_mean[[0, 1]].numpy(), [a.mean(), b.mean()])


def test_global_std_formula():
    keys = [KEY_A, KEY_A, KEY_B, KEY_B]
    rewards = np.array([0.2, 0.4, 0.6, 1.0])
    stats = group_advantages(keys, rewards, global_std=True)
    expected = (rewards - np.array([0.3, 0.3, 0.8, 0.8])) / (rewards.std() + 1e-4)
    np.testing.assert_allclose(stats.advantages.numpy(), expected)
    np.testing.assert_allclose(stats.group_std.numpy(), [0.1, 0.1, 0.2, 0.2], atol=1e-12)


def test_groups_are_keyed_by_instruction_and_image():
    stats = group_advantages(
        [KEY_A, KEY_A, KEY_A_OTHER_IMAGE, KEY_A_OTHER_IMAGE], [0.0, 1.0, 0.5, 0.5], global_std=False
    )
    assert stats.group_mean.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert stats.group_std.tolist() == [0.5, 0.5, 0.0, 0.0]
    assert stats.advantages[2:].tolist() == [0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(
    groups=st.lists(
        st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=1, max_size=8),
        min_size=1,
        max_size=6,
    ),
    global_std=st.booleans(),
)
def test_advantages_sum_to_zero_per_group_and_failures_get_zero(groups, global_std):
    keys = [("prompt", str(g)) for g, rewards in enumerate(groups) for _ in rewards]
    rewards = [r for group in groups for r in group]
    stats = group_advantages(keys, rewards, global_std=global_std)
    assert torch.isfinite(stats.advantages).all()
    offset = 0
    for group in groups:
        advantages = stats.advantages[offset : offset + len(group)]
        finite = [not math.isnan(r) for r in group]
        assert abs(advantages[finite].sum().item()) < 1e-9
        assert advantages[[not f for f in finite]].abs().sum() == 0
        offset += len(group)


def test_failed_rewards_are_excluded_from_statistics():
    keys = [KEY_A] * 4 + [KEY_B] * 2
    rewards = [0.2, float("nan"), 0.6, float("inf"), 0.1, 0.3]
    stats = group_advantages(keys, rewards, global_std=True)
    assert stats.valid.tolist() == [True, False, True, False, True, True]
    assert stats.group_mean[0].item() == pytest.approx(0.4)
    assert stats.group_std[0].item() == pytest.approx(0.2)
    finite = np.array([0.2, 0.6, 0.1, 0.3])
    assert stats.denominator[0].item() == pytest.approx(finite.std() + 1e-4)
    assert stats.advantages[1].item() == 0.0 and stats.advantages[3].item() == 0.0


def test_group_without_any_score_has_nan_statistics_and_zero_advantages():
    stats = group_advantages([KEY_A, KEY_A, KEY_B], [float("nan"), float("nan"), 0.5], global_std=False)
    assert math.isnan(stats.group_mean[0].item()) and math.isnan(stats.group_std[0].item())
    assert stats.advantages.tolist() == [0.0, 0.0, 0.0]


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="2 group keys for 3 rewards"):
        group_advantages([KEY_A, KEY_B], [0.1, 0.2, 0.3], global_std=True)


def hand_made_groups():
    """Four groups of three: learnable, solved (low std, high mean), hopeless (low std, low mean), noisy-high."""
    groups = {
        ("learnable", "1.png"): [0.2, 0.5, 0.8],
        ("solved", "2.png"): [0.95, 0.96, 0.95],
        ("hopeless", "3.png"): [0.10, 0.11, 0.10],
        ("noisy-high", "4.png"): [0.8, 1.0, 0.99],
    }
    keys = [key for key, rewards in groups.items() for _ in rewards]
    rewards = [r for group in groups.values() for r in group]
    return keys, rewards


def test_filter_keeps_only_informative_groups_and_bans_only_solved_ones():
    keys, rewards = hand_made_groups()
    stats = group_advantages(keys, rewards, global_std=True)
    keep, banned = group_filter(stats, keys, std_threshold=0.05, mean_threshold=0.9)
    # noisy-high has mean 0.93 > 0.9: masked this epoch although its std is large
    assert keep.tolist() == [True] * 3 + [False] * 9
    assert banned == {("solved", "2.png")}


def test_filter_never_keeps_failed_rewards():
    keys = [KEY_A] * 3
    stats = group_advantages(keys, [0.1, float("nan"), 0.7], global_std=False)
    keep, banned = group_filter(stats, keys, std_threshold=0.05, mean_threshold=0.9)
    assert keep.tolist() == [True, False, True]
    assert banned == set()


def test_filter_thresholds_are_strict():
    keys = [KEY_A, KEY_A, KEY_B, KEY_B]
    stats = group_advantages(keys, [0.4, 0.6, 0.9, 0.9], global_std=False)  # A: std 0.1, B: std 0, mean 0.9
    keep, banned = group_filter(stats, keys, std_threshold=0.1, mean_threshold=0.9)
    assert keep.tolist() == [False] * 4  # std == threshold is not "> threshold"
    assert banned == set()  # mean == threshold is not "> threshold"


def test_filter_disabled_keeps_every_scored_sample_and_bans_nothing():
    keys, rewards = hand_made_groups()
    rewards[4] = float("nan")
    stats = group_advantages(keys, rewards, global_std=True)
    keep, banned = group_filter(stats, keys, std_threshold=0.05, mean_threshold=0.9, enabled=False)
    assert keep.tolist() == [i != 4 for i in range(12)]
    assert banned == set()


def test_global_advantages_standardise_over_the_epoch_and_mask_failures() -> None:
    from edit_r1.algo import global_advantages

    rewards = torch.tensor([0.2, float("nan"), 0.6, 1.0])
    finite = torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64)
    expected = (finite - finite.mean()) / (finite.std(correction=0) + 1e-4)
    out = global_advantages(rewards)
    assert out[1] == 0
    assert torch.allclose(out[[0, 2, 3]], expected, atol=1e-6)
    assert torch.equal(
        global_advantages(torch.tensor([float("nan")] * 2)), torch.zeros(2, dtype=torch.float64)
    )


def test_zero_std_ratio_counts_groups_with_identical_rewards() -> None:
    from edit_r1.algo import zero_std_ratio as _zero_std_ratio

    rewards = torch.tensor([0.3, 0.3, 0.3, 0.1, 0.9, float("nan"), float("nan")], dtype=torch.float64)
    assert _zero_std_ratio(rewards, [0, 0, 0, 1, 1, 2, 2]) == 0.5  # group 2 has no finite reward
    assert _zero_std_ratio(rewards[:3], [0, 0, 0]) == 1.0
