"""The epoch scorer: every rank's rewards -> advantages, keep-mask, bans and reward metrics.

``A = (r - mean_G) / D`` over the whole epoch (``docs/algorithm.md#4-advantages``; groups of one
are standardised over the epoch, as the original), the low-variance group filter and the bans
(``#5-low-variance-group-filtering``; failed scores, NaN, are masked), after the group rewards
(``pairwise_mllm``) of every rank's edits are added. The result is one :class:`EpochStats` value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from edit_r1 import distributed
from edit_r1.algo import GroupStats, global_advantages, group_advantages, group_filter, zero_std_ratio
from edit_r1.data import EditDataset, GroupBatchSampler
from edit_r1.data.dataset import center_crop_resize
from edit_r1.rewards import RewardOutput
from edit_r1.rewards.combine import mean_ignoring_nan
from edit_r1.settings import GroupFilterSettings
from edit_r1.tracking import Timer

from .rollout_collector import Rollout


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """The epoch's gathered statistics (every rank's samples, in gathered order) and its metrics.

    ``advantages`` ``(N,)`` float64 and ``mask`` ``(N,)`` bool over all ranks; ``group_ids`` the
    group of each; ``rows``: this rank's slice of them, aligned with its concatenated rollouts;
    ``metrics``: the reward metrics logged for the epoch (``reward_*``, ``kept_ratio``, ...).
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    group_ids: list[int]
    rows: slice
    metrics: dict[str, float]

    @property
    def local_advantages(self) -> torch.Tensor:
        return self.advantages[self.rows].float()

    @property
    def local_mask(self) -> torch.Tensor:
        return self.mask[self.rows].bool()


class EpochScorer:
    """Scores epochs of ``dataset``'s groups; bans solved groups from ``sampler``.

    ``trained_groups``: distinct group ids trained on since the run began (the original's
    ``trained_prompt_num``, checkpointed). ``group_rewards``: name -> (weight, group reward).
    """

    def __init__(
        self,
        *,
        dataset: EditDataset,
        sampler: GroupBatchSampler,
        group_rewards: Mapping[str, tuple[float, Any]],
        filtering: GroupFilterSettings,
        group_size: int,
        resolution: int,
        dist: distributed.DistInfo,
        timer: Timer,
    ) -> None:
        self.dataset, self.sampler, self.group_rewards = dataset, sampler, group_rewards
        self.filtering, self.group_size, self.resolution = filtering, group_size, resolution
        self.dist, self.timer = dist, timer
        self.trained_groups: set[int] = set()

    def score(self, rollouts: list[Rollout], outputs: list[RewardOutput]) -> EpochStats:
        """Epoch-wide advantages, keep-mask and bans from every rank's rewards (one gather each)."""
        metrics: dict[str, float] = {}
        local_rewards = torch.from_numpy(np.concatenate([o.total for o in outputs]))
        local_ids = torch.cat([r.group_ids for r in rollouts])
        rewards = self._gather(local_rewards)
        group_ids = self._gather(local_ids).tolist()
        if self.group_rewards:
            with self.timer("group_reward"):
                rewards = rewards + self.score_group_rewards(rollouts, group_ids, metrics)
        stats = group_advantages(group_ids, rewards, global_std=self.filtering.global_std)
        if self.group_size == 1:  # no group spread: standardise over the epoch, as the original
            stats = dataclasses.replace(stats, advantages=global_advantages(rewards))
        mask, banned = group_filter(
            stats,
            group_ids,
            std_threshold=self.filtering.std_threshold,
            mean_threshold=self.filtering.mean_threshold,
            enabled=self.filtering.enabled,  # off: keep every scored sample, ban nothing
        )
        self.sampler.ban(self.dataset.group_keys[gid] for gid in banned)
        self._reward_metrics(outputs, rewards, stats, group_ids, metrics)
        metrics["kept_ratio"] = float(mask.float().mean())
        n = local_rewards.numel()
        rows = slice(self.dist.rank * n, (self.dist.rank + 1) * n)
        return EpochStats(
            advantages=stats.advantages, mask=mask, group_ids=group_ids, rows=rows, metrics=metrics
        )

    def score_group_rewards(
        self, rollouts: list[Rollout], group_ids: list[int], metrics: dict[str, float]
    ) -> torch.Tensor:
        """``sum_f w_f r_f`` of the group rewards over every rank's samples (gathered order).

        The edits are gathered from every rank first, so a group spread over several ranks is
        judged as one group; each rank asks the judge for its share of the pairs.
        """
        local = np.stack([np.asarray(s.edited_image.convert("RGB")) for r in rollouts for s in r.samples])
        images = self._gather(torch.from_numpy(local)).numpy()

        def gather(values: np.ndarray) -> np.ndarray:
            return self._gather(torch.from_numpy(values[None])).numpy()

        def task_of(gid: int):
            item = self.dataset[gid]
            return center_crop_resize(item.image, self.resolution), item.prompt, item.requirement

        total = torch.zeros(len(group_ids), dtype=torch.float64)
        for name, (weight, reward) in self.group_rewards.items():
            result = reward(
                images, group_ids, task_of, epoch=self.sampler.epoch, rank=self.dist.rank,
                world_size=self.dist.world_size, gather=gather,
            )  # fmt: skip
            total += weight * torch.from_numpy(result.rewards)
            metrics[f"reward_{name}"] = mean_ignoring_nan(result.rewards)
            metrics[f"{name}_judge_calls"] = float(result.judge_calls)
            metrics[f"{name}_pairs"] = float(result.pairs)
        return total

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's ``local`` concatenated in rank order, on the CPU."""
        return distributed.all_gather_tensor(local.to(self.dist.device)).cpu()

    def _reward_metrics(
        self,
        outputs,
        rewards: torch.Tensor,
        stats: GroupStats,
        group_ids: list[int],
        metrics: dict[str, float],
    ) -> None:
        for name in outputs[0].components:
            local = torch.from_numpy(np.concatenate([o.components[name] for o in outputs]))
            metrics[f"reward_{name}"] = mean_ignoring_nan(self._gather(local).numpy())
        metrics["reward_mean"] = mean_ignoring_nan(rewards.numpy())
        metrics["reward_failed"] = float((~torch.isfinite(rewards)).sum())
        first = {gid: i for i, gid in reversed(list(enumerate(group_ids)))}
        group_std = stats.group_std[list(first.values())]
        metrics["reward_std_mean"] = float(group_std.nanmean())
        metrics["zero_std_ratio"] = zero_std_ratio(rewards, group_ids)
        metrics["banned_groups"] = float(len(self.sampler.banned))
        # The original's stat-tracker numbers: mean samples per group this epoch, and how many
        # distinct groups have been trained on since the run began (kept across resumes).
        self.trained_groups.update(first)
        metrics["group_size"] = len(group_ids) / len(first)
        metrics["trained_prompt_num"] = float(len(self.trained_groups))
