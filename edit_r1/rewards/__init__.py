"""Rewards: the reward-server client, weighted combinations, and the registry of reward functions."""

from edit_r1.rewards.base import RewardFn, RewardSample
from edit_r1.rewards.combine import AsyncRewardScorer, CombinedReward, RewardOutput, parse_reward_spec
from edit_r1.rewards.registry import REWARD_FACTORIES, build_combined_reward, build_reward_fn

__all__ = [
    "REWARD_FACTORIES",
    "AsyncRewardScorer",
    "CombinedReward",
    "RewardFn",
    "RewardOutput",
    "RewardSample",
    "build_combined_reward",
    "build_reward_fn",
    "parse_reward_spec",
]
