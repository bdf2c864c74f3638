"""Group-relative advantages and low-variance group filtering (docs/algorithm.md, sections 4 and 5:
#4-advantages, #5-low-variance-group-filtering).

A group is every rollout of one dataset item in an epoch, keyed by its group key (instruction,
source image). A non-finite reward is a failed score: it is left out of every statistic, its
advantage is 0 and the filter never keeps it (upstream turned it into a 0.0 reward).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupStats:
    """Per-sample statistics of an epoch, all float64 tensors of shape ``(N,)`` except ``valid``.

    ``advantages``: ``(r_i - mean_G) / D`` (0 for failed rewards); ``group_mean`` / ``group_std``:
    mean and population std of the finite rewards of the sample's group (NaN when the group has
    none); ``valid``: bool, the reward is finite; ``denominator``: ``D`` used for the sample.
    """

    advantages: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    valid: torch.Tensor
    denominator: torch.Tensor


def group_ids(group_keys: Sequence[Hashable]) -> tuple[torch.Tensor, list[Hashable]]:
    """Integer id per sample (in order of first appearance) and the distinct keys."""
    index: dict[Hashable, int] = {}
    ids = [index.setdefault(key, len(index)) for key in group_keys]
    return torch.tensor(ids, dtype=torch.long), list(index)


def _population_std(values: torch.Tensor) -> torch.Tensor:
    return values.std(correction=0) if values.numel() else torch.tensor(float("nan"), dtype=torch.float64)


def group_advantages(group_keys: Sequence[Hashable], rewards, *, global_std: bool) -> GroupStats:
    """``A_i = (r_i - mean_G) / D`` for sample ``i`` of group ``G``, over the finite rewards only.

    ``D = std(all finite rewards of the epoch) + 1e-4`` when ``global_std`` (the shipped default),
    else ``D = std_G + 1e-4``; all stds are population stds (``ddof = 0``). Within each group the
    advantages of the finite rewards sum to zero; failed (non-finite) rewards get ``A = 0``.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu().reshape(-1)
    if len(group_keys) != rewards.numel():
        raise ValueError(f"group_advantages: {len(group_keys)} group keys for {rewards.numel()} rewards")
    ids, keys = group_ids(group_keys)
    valid = torch.isfinite(rewards)
    means = torch.full_like(rewards, float("nan"))
    stds = torch.full_like(rewards, float("nan"))
    for gid in range(len(keys)):
        members = ids == gid
        finite = rewards[members & valid]
        means[members] = finite.mean() if finite.numel() else float("nan")
        stds[members] = _population_std(finite)
    if global_std:
        denominator = torch.full_like(rewards, float(_population_std(rewards[valid])) + 1e-4)
    else:
        denominator = stds + 1e-4
    advantages = torch.where(valid, (rewards - means) / denominator, torch.zeros_like(rewards))
    return GroupStats(
        advantages=advantages, group_mean=means, group_std=stds, valid=valid, denominator=denominator
    )


def global_advantages(rewards) -> torch.Tensor:
    """``A_i = (r_i - mean(r)) / (std(r) + 1e-4)`` over the epoch's finite rewards (population std).

    Groups of one sample (``num_image_per_prompt = 1``) have no spread of their own: the original
    then standardised the rewards over the whole epoch (``train_nft_qwen_image_edit.py`` ~918-921).
    Failed (non-finite) rewards get ``A = 0``.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu().reshape(-1)
    valid = torch.isfinite(rewards)
    finite = rewards[valid]
    if not finite.numel():
        return torch.zeros_like(rewards)
    standardised = (rewards - finite.mean()) / (float(_population_std(finite)) + 1e-4)
    return torch.where(valid, standardised, torch.zeros_like(rewards))


def group_filter(
    stats: GroupStats,
    group_keys: Sequence[Hashable],
    *,
    std_threshold: float,
    mean_threshold: float,
    enabled: bool = True,
) -> tuple[torch.Tensor, set]:
    """Keep-mask of the loss and the group keys to ban from later sampling
    (docs/algorithm.md#5-low-variance-group-filtering).

    Kept: ``valid_i and std_G > std_threshold and mean_G < mean_threshold`` (this epoch only).
    Banned (permanently): groups with ``std_G < std_threshold and mean_G > mean_threshold`` — only
    the solved ones, not every masked one. With ``enabled=False`` (``sample.ban_prompt`` off) every
    sample with a finite reward is kept and nothing is banned. Groups without any finite reward
    (NaN statistics) are neither kept nor banned.
    """
    if len(group_keys) != stats.valid.numel():
        raise ValueError(f"group_filter: {len(group_keys)} group keys for {stats.valid.numel()} samples")
    if not enabled:
        return stats.valid.clone(), set()
    keep = stats.valid & (stats.group_std > std_threshold) & (stats.group_mean < mean_threshold)
    solved = (stats.group_std < std_threshold) & (stats.group_mean > mean_threshold)
    banned = {key for key, is_solved in zip(group_keys, solved.tolist(), strict=True) if is_solved}
    return keep, banned


def zero_std_ratio(rewards: torch.Tensor, group_ids: Sequence[int]) -> float:
    """Fraction of the epoch's groups whose finite rewards are all equal (std exactly 0, as the
    original's ``zero_std_ratio``); groups without a finite reward are left out."""
    ids, finite = torch.tensor(group_ids), torch.isfinite(rewards)
    flat = total = 0
    for gid in set(group_ids):
        scored = rewards[(ids == gid) & finite]
        if scored.numel():
            total += 1
            flat += int(scored.max() == scored.min())
    return flat / total if total else 0.0
