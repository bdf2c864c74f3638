"""The pairwise preference reward: pair plans, both-order averaging, win rates over whole groups."""

from __future__ import annotations

import numpy as np
import pytest

from edit_r1.rewards.pairwise import PairwiseJudgeReward, plan_pairs, symmetric_preference, win_rates
from edit_r1.rewards.registry import build_combined_reward, build_group_rewards, split_reward_spec


def test_all_pairs_and_a_seeded_subset() -> None:
    group_ids = [7, 3, 7, 3, 7, 3, 7, 7]  # group 7 has 5 samples, group 3 has 3
    pairs = plan_pairs(group_ids, 0, seed=1)
    assert len(pairs) == 5 * 4 // 2 + 3 * 2 // 2
    assert all(group_ids[i] == group_ids[j] and i < j for i, j in pairs)
    subset = plan_pairs(group_ids, 1, seed=1)
    assert subset == plan_pairs(group_ids, 1, seed=1)  # every rank plans the same pairs
    assert subset != plan_pairs(group_ids, 1, seed=2)
    assert set(subset) < set(pairs)
    for sample in range(len(group_ids)):  # every sample is in at least pairs_per_sample pairs
        assert sum(sample in pair for pair in subset) >= 1
    assert plan_pairs(group_ids, 4, seed=1) == pairs  # >= k - 1 partners for the big group: all pairs


def test_both_orders_cancel_a_position_bias_and_win_rates_average() -> None:
    quality = np.array([0.6, 0.1, 0.4])

    def biased(first: float, second: float) -> float:  # a judge that favours the first image by 0.2
        return float(np.clip(0.5 + (first - second) / 2 + 0.2, 0, 1))

    pairs = [(0, 1), (0, 2), (1, 2)]
    first = np.array([biased(quality[i], quality[j]) for i, j in pairs])
    second = np.array([biased(quality[j], quality[i]) for i, j in pairs])
    p = symmetric_preference(first, second)
    assert p == pytest.approx([0.5 + (quality[i] - quality[j]) / 2 for i, j in pairs])
    w = win_rates(3, pairs, p)
    assert w == pytest.approx([(0.75 + 0.6) / 2, (0.25 + 0.35) / 2, (0.4 + 0.65) / 2])
    assert w.mean() == pytest.approx(0.5)  # a complete group's win rates always average 1/2
    w_failed = win_rates(4, pairs, np.array([np.nan, 0.7, 0.3]))
    assert w_failed[0] == pytest.approx(0.7) and np.isnan(w_failed[3])  # no pair: masked, never 0


class BrightnessJudge:
    """Prefers the brighter edit, shown-first bias 0.1; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pairs) -> np.ndarray:
        self.calls += len(pairs)
        return np.array(
            [np.clip(0.6 + (p.first_image.mean() - p.second_image.mean()) / 255, 0, 1) for p in pairs]
        )


def _task(gid: int):
    return np.zeros((4, 4, 3), np.uint8), f"instruction {gid}", ""


def test_groups_spread_over_ranks_are_judged_whole() -> None:
    group_ids = [0, 1, 0, 1, 0, 1, 0, 1]  # rank 0 holds rows 0-3, rank 1 rows 4-7 (gathered order)
    images = [np.full((4, 4, 3), 20 * n, np.uint8) for n in range(8)]
    single_judge = BrightnessJudge()
    single = PairwiseJudgeReward(single_judge, seed=3)(images, group_ids, _task, epoch=0)
    assert single.pairs == 2 * 6 and single.judge_calls == 24 == single_judge.calls
    # Brighter edits win more often: within group 0 (rows 0, 2, 4, 6) the order is preserved.
    assert list(np.argsort(single.rewards[[0, 2, 4, 6]])) == [0, 1, 2, 3]
    assert single.rewards[[0, 2, 4, 6]].mean() == pytest.approx(0.5)

    judges = [BrightnessJudge(), BrightnessJudge()]
    locals_: list[np.ndarray] = []

    def run(rank: int, gather):
        reward = PairwiseJudgeReward(judges[rank], seed=3)
        return reward(images, group_ids, _task, epoch=0, rank=rank, world_size=2, gather=gather)

    # Two "ranks": each computes its own share; the gather stacks both ranks' vectors.
    for rank in range(2):
        run(rank, lambda values: locals_.append(values) or np.stack([values, values]))
    both = np.stack(locals_)
    results = [run(rank, lambda values, both=both: both) for rank in range(2)]
    for result in results:
        assert result.rewards == pytest.approx(single.rewards)
    assert judges[0].calls == judges[1].calls == 24  # (2 runs each) x half of the 24 calls


def test_reward_spec_splits_group_rewards_and_weights_them() -> None:
    per_batch, group = split_reward_spec("toy_color:0.5,pairwise_mllm:2")
    assert per_batch == {"toy_color": 0.5} and group == {"pairwise_mllm": 2.0}
    assert list(build_combined_reward({"pairwise_mllm": 1.0, "toy_color": 1.0}).weights) == ["toy_color"]
    rewards = build_group_rewards(group, {"server": "127.0.0.1:9", "pairs_per_sample": 3}, seed=5)
    weight, reward = rewards["pairwise_mllm"]
    assert weight == 2.0 and (reward.pairs_per_sample, reward.seed) == (3, 5)
