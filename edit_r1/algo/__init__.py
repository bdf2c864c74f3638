"""Training algorithms (pure tensor code): DiffusionNFT and Flow-GRPO behind one interface,
plus the shared group statistics and policy synchronisation (``docs/algorithm.md``)."""

from .advantages import (
    GroupStats,
    global_advantages,
    group_advantages,
    group_filter,
    group_ids,
    zero_std_ratio,
)
from .base import Algorithm, PolicyForward, TrainBatch
from .grpo import GRPO, GRPOSettings, clipped_policy_loss, transition_kl
from .nft import ADV_MODES, NFT, NFTSettings, nft_loss, positive_weight, transform_advantages
from .policy_sync import DECAY_TYPES, EMA, ema_decay, old_policy_decay, update_old_policy
from .registry import ALGORITHMS, AlgorithmSettings, algorithm_class, build_algorithm

__all__ = [
    "ADV_MODES",
    "ALGORITHMS",
    "DECAY_TYPES",
    "EMA",
    "GRPO",
    "NFT",
    "Algorithm",
    "AlgorithmSettings",
    "GRPOSettings",
    "NFTSettings",
    "GroupStats",
    "PolicyForward",
    "TrainBatch",
    "algorithm_class",
    "build_algorithm",
    "clipped_policy_loss",
    "ema_decay",
    "global_advantages",
    "group_advantages",
    "group_filter",
    "group_ids",
    "nft_loss",
    "old_policy_decay",
    "positive_weight",
    "transform_advantages",
    "transition_kl",
    "update_old_policy",
    "zero_std_ratio",
]
