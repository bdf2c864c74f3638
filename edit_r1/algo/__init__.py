"""Training algorithms (pure tensor code): DiffusionNFT and Flow-GRPO behind one interface,
plus the shared group statistics and policy synchronisation (``docs/algorithm.md``)."""

from .advantages import GroupStats, global_advantages, group_advantages, group_filter, group_ids
from .base import Algorithm, PolicyForward, TrainBatch
from .grpo import GRPO, clipped_policy_loss, transition_kl
from .nft import ADV_MODES, NFT, nft_loss, positive_weight, transform_advantages
from .policy_sync import DECAY_TYPES, EMA, ema_decay, old_policy_decay, update_old_policy

# ``config.algorithm`` names; ``edit_r1.settings.build_algorithm`` reads each one's settings.
ALGORITHMS: dict[str, type[Algorithm]] = {NFT.name: NFT, GRPO.name: GRPO}

__all__ = [
    "ADV_MODES",
    "ALGORITHMS",
    "DECAY_TYPES",
    "EMA",
    "GRPO",
    "NFT",
    "Algorithm",
    "GroupStats",
    "PolicyForward",
    "TrainBatch",
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
]
