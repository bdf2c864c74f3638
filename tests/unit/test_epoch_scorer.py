"""The epoch scorer built from plain parts (a list-backed dataset, the real group sampler, fixed
rewards): advantages, keep-mask, bans and metrics come back as one EpochStats value."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edit_r1 import distributed
from edit_r1.data import GroupBatchSampler
from edit_r1.rewards import RewardOutput
from edit_r1.settings import GroupFilterSettings
from edit_r1.tracking import Timer
from edit_r1.training import EpochScorer, Rollout


class ListDataset:
    """Just what the scorer reads of a dataset: the group key of every item."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self.group_keys = keys


def rollout(group_ids: list[int]) -> Rollout:
    return Rollout(x0=torch.zeros(len(group_ids), 1, 1), cond=None, group_ids=torch.tensor(group_ids),
                   rewards=Future())  # fmt: skip


def scorer(keys, *, enabled: bool, group_size: int = 2) -> tuple[EpochScorer, GroupBatchSampler]:
    sampler = GroupBatchSampler(keys, batch_size=2, k=group_size, num_replicas=1, rank=0)
    filtering = GroupFilterSettings(global_std=False, enabled=enabled, std_threshold=0.05, mean_threshold=0.9)
    parts = SimpleNamespace(dataset=ListDataset(keys), sampler=sampler, group_rewards={}, filtering=filtering)
    built = EpochScorer(**vars(parts), group_size=group_size, resolution=32,
                        dist=distributed.init_distributed(device="cpu"), timer=Timer())  # fmt: skip
    return built, sampler


def test_scores_an_epoch_into_one_value_and_bans_the_solved_group():
    keys = [("a", "1"), ("b", "2"), ("c", "3")]
    built, sampler = scorer(keys, enabled=True)
    rollouts = [rollout([0, 0]), rollout([1, 1]), rollout([2, 2])]
    totals = [np.array([1.0, 1.0]), np.array([0.2, 0.6]), np.array([np.nan, 0.5])]
    outputs = [RewardOutput(total=t, components={"rule": t}) for t in totals]
    stats = built.score(rollouts, outputs)
    assert stats.group_ids == [0, 0, 1, 1, 2, 2]
    assert stats.mask.tolist() == [False, False, True, True, False, False]  # solved; kept; one-scored
    assert torch.allclose(stats.local_advantages[2:4], torch.tensor([-1.0, 1.0]), atol=1e-3)
    assert stats.advantages[4] == 0  # a failed score has no advantage
    assert sampler.banned == {("a", "1")}
    assert stats.metrics["reward_failed"] == 1.0 and stats.metrics["kept_ratio"] == pytest.approx(2 / 6)
    assert stats.metrics["reward_rule"] == pytest.approx(np.nanmean(np.concatenate(totals)))
    assert stats.metrics["trained_prompt_num"] == 3.0 and built.trained_groups == {0, 1, 2}


def test_groups_of_one_are_standardised_over_the_epoch():
    keys = [("a", "1"), ("b", "2")]
    built, _ = scorer(keys, enabled=False, group_size=1)
    outputs = [RewardOutput(total=np.array([0.0, 1.0]), components={})]
    stats = built.score([rollout([0, 1])], outputs)
    assert stats.mask.all() and torch.allclose(
        stats.advantages, torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-3
    )
