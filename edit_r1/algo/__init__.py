"""DiffusionNFT algorithm pieces (pure tensor code, SPEC 1.8-1.12)."""

from .advantages import GroupStats, group_advantages, group_filter, group_ids
from .nft import ADV_MODES, nft_loss, positive_weight, transform_advantages
from .policy_sync import DECAY_TYPES, EMA, ema_decay, old_policy_decay, update_old_policy

__all__ = [
    "ADV_MODES",
    "DECAY_TYPES",
    "EMA",
    "GroupStats",
    "ema_decay",
    "group_advantages",
    "group_filter",
    "group_ids",
    "nft_loss",
    "old_policy_decay",
    "positive_weight",
    "transform_advantages",
    "update_old_policy",
]
