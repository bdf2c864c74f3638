"""The rollout collector: one epoch's rollouts of this rank, their rewards on a background thread.

Per sampling batch: the group sampler's next draw (``k`` copies of each distinct item per epoch,
identical on every rank), each distinct group encoded once per epoch, a rollout with the
algorithm's ``rollout_adapter`` and the configured solver, decoding, and the edits handed to the
reward functions (:class:`~edit_r1.rewards.AsyncRewardScorer`) so scoring overlaps sampling. A
rollout keeps what the algorithm's loss needs (``Algorithm.rollout_fields``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import torch

from edit_r1.algo import Algorithm
from edit_r1.data import EditDataset, GroupBatchSampler
from edit_r1.rewards import AsyncRewardScorer, RewardOutput, RewardSample
from edit_r1.settings import RolloutSettings
from edit_r1.tracking import progress

from .editing import PolicyEditor
from .errors import TrainingError


@dataclasses.dataclass
class Rollout:
    """One sampling batch of this rank, kept until the update: what the algorithm's loss needs."""

    x0: torch.Tensor  # (B, L, C) final clean latents of the rollout policy
    cond: Any  # the family's Condition, one row per sample
    group_ids: torch.Tensor  # (B,) long: canonical dataset index of each sample's group
    rewards: Future  # resolves to a RewardOutput
    fields: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # Algorithm.rollout_fields
    samples: list[RewardSample] = dataclasses.field(default_factory=list)  # edits, for group rewards


def canonical_group_ids(keys: Sequence[Any]) -> list[int]:
    """Each item's group id: the first dataset index with the same (instruction, image) key."""
    first: dict[Any, int] = {}
    return [first.setdefault(key, index) for index, key in enumerate(keys)]


class RolloutCollector:
    """Samples this rank's ``batches_per_epoch`` batches and submits their rewards.

    ``lockstep_encoding``: every rank encodes the global batch's new groups in the same order
    (a sharded text encoder's forwards are collectives); ``keep_samples``: rollouts keep their
    edits for the group rewards scored after sampling; ``reward_wait_s``: the longest the epoch's
    rewards are waited for, in all (``reward_client.wait_deadline_s``).
    """

    def __init__(
        self,
        *,
        editor: PolicyEditor,
        dataset: EditDataset,
        sampler: GroupBatchSampler,
        algorithm: Algorithm,
        reward: AsyncRewardScorer,
        sigmas: torch.Tensor,
        rollout: RolloutSettings,
        batches_per_epoch: int,
        lockstep_encoding: bool,
        keep_samples: bool,
        show_progress: bool,
        reward_wait_s: float,
    ) -> None:
        self.editor, self.dataset, self.sampler = editor, dataset, sampler
        self.algorithm, self.reward, self.sigmas, self.settings = algorithm, reward, sigmas, rollout
        self.batches_per_epoch = batches_per_epoch
        self.lockstep_encoding, self.keep_samples, self.show_progress = (
            lockstep_encoding,
            keep_samples,
            show_progress,
        )
        self.group_id = canonical_group_ids(dataset.group_keys)
        self.reward_wait_s = reward_wait_s

    def collect(self, epoch: int) -> list[Rollout]:
        """This rank's rollouts of ``epoch`` (the sampler already set to it), rewards submitted."""
        cache: dict[int, Any] = {}
        rollouts = []
        for _ in progress(
            range(self.batches_per_epoch), desc=f"epoch {epoch} sampling", enabled=self.show_progress
        ):
            shared = (
                self.sampler.global_batch(self.sampler.epoch, self.sampler.position)
                if self.lockstep_encoding
                else None
            )
            items, images = self.items(self.sampler.next_batch())
            cond, group_ids = self._encode(items, images, cache, shared)
            result, samples = self.editor.edit_batch(
                cond, items, images, adapter=self.algorithm.rollout_adapter, sigmas=self.sigmas,
                solver=self.settings.solver, deterministic=self.settings.deterministic,
            )  # fmt: skip
            rollouts.append(
                Rollout(
                    x0=result.latents,
                    cond=cond,
                    group_ids=group_ids,
                    rewards=self.reward.submit(samples),
                    fields=self.algorithm.rollout_fields(result),
                    samples=samples if self.keep_samples else [],
                )
            )
        return rollouts

    def wait_for_rewards(self, rollouts: list[Rollout]) -> list[RewardOutput]:
        """Each rollout's rewards, in order, all within ``reward_wait_s``; a :class:`TrainingError`
        when scoring failed or the wait ran out (naming the servers and what is unscored)."""
        bar = progress(total=len(rollouts), desc="waiting for rewards", enabled=self.show_progress)
        futures = [rollout.rewards for rollout in rollouts]
        try:  # all within reward_wait_s: a judge slower than training for longer stops the run
            outputs = self.reward.wait(futures, self.reward_wait_s, on_each=lambda: bar.update(1))
        except Exception as error:  # the client already retried within its deadline
            raise TrainingError(f"reward scoring failed: {error}") from error
        bar.close()
        return outputs

    def close(self, wait: bool) -> None:
        """Stops the scoring thread (``wait=False`` on an error or a signal: pending rewards are useless)."""
        self.reward.close(wait=wait)

    def items(self, indices: Sequence[int]) -> tuple[list[Any], list[Any]]:
        """The dataset items at ``indices`` and their source images at the resolution."""
        items = [self.dataset[i] for i in indices]
        return items, [self.editor.sources(item) for item in items]

    def _encode(self, items, images, cache: dict[int, Any], shared: Sequence[int] | None = None):
        """Conditions for a batch, each distinct group encoded once per epoch on this rank.

        With ``shared`` (the global batch's dataset indices, identical on every rank) every rank
        encodes all of the batch's new groups in the same order: required when the text encoder is
        sharded, since each of its forwards is a collective.
        """
        ids = [self.group_id[item.index] for item in items]
        if shared is not None:
            new = sorted({self.group_id[i] for i in shared} - cache.keys())
            if new:
                new_items, new_images = self.items(new)
                self._fill_cache(cache, new, new_items, new_images)
        else:
            first_row: dict[int, int] = {}
            for row, gid in enumerate(ids):
                if gid not in cache:
                    first_row.setdefault(gid, row)
            if first_row:
                rows = list(first_row.values())
                self._fill_cache(cache, list(first_row), [items[r] for r in rows], [images[r] for r in rows])
        conds = [cache[gid] for gid in ids]
        return type(conds[0]).cat(conds), torch.tensor(ids, dtype=torch.long)

    def _fill_cache(self, cache: dict[int, Any], gids: list[int], items, images) -> None:
        cond = self.editor.encode(items, images)
        for row, gid in enumerate(gids):
            cache[gid] = cond.index_select([row])
