"""Pairwise preference reward (Pref-GRPO): an edit's reward is its win rate within its group.

For the ``k`` edits of one (instruction, source image), the judge is asked which of two edits is
better; ``p(i > j)`` is the softmax over the logits of its two answer tokens. Each pair is asked in
both orders and averaged, ``p = (p(i > j | i first) + 1 - p(j > i | j first)) / 2``, so the judge's
preference for a position cancels. The reward of edit ``i`` is ``w_i = mean_j p(i > j)`` over the
pairs it was compared in (``docs/algorithm.md``, "Pairwise preference reward").

The group is the whole epoch's group, gathered from every rank before pairing (Pref-GRPO's own code
pairs only the edits of one GPU's batch). Cost: all ``k (k - 1) / 2`` pairs per group, or with
``pairs_per_sample = m < k - 1`` each edit draws ``m`` partners from its group (seeded, so every
rank plans the same pairs); each pair costs two judge calls. The pairs are shared out over the
ranks, every rank asks the judge for its share, and the preferences are gathered back.

This module is plain numpy: the trainer passes the gathered images and a function that gathers one
float vector from every rank, so nothing here knows about ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edit_r1.rewards.base import PairSample

CompareFn = Callable[[Sequence[PairSample]], np.ndarray]
GatherFn = Callable[[np.ndarray], np.ndarray]  # local (n,) -> (world_size, n), rank order
TaskFn = Callable[[int], tuple[Any, str, str]]  # group id -> (source image, instruction, requirement)


def plan_pairs(group_ids: Sequence[int], pairs_per_sample: int, seed: int) -> list[tuple[int, int]]:
    """Unordered pairs ``(i, j)``, ``i < j``, of samples in the same group, sorted.

    ``pairs_per_sample <= 0`` or ``>= k - 1``: every pair of the group. Otherwise each sample draws
    ``pairs_per_sample`` distinct partners from its group (``numpy.random.default_rng(seed)``,
    samples in index order) and the pairs are the union of those draws.
    """
    members: dict[int, list[int]] = {}
    for index, gid in enumerate(group_ids):
        members.setdefault(int(gid), []).append(index)
    rng = np.random.default_rng(seed)
    pairs: set[tuple[int, int]] = set()
    for gid in sorted(members):
        group = members[gid]
        if pairs_per_sample <= 0 or pairs_per_sample >= len(group) - 1:
            pairs.update((a, b) for n, a in enumerate(group) for b in group[n + 1 :])
            continue
        for i in group:
            others = [j for j in group if j != i]
            for j in rng.choice(others, size=pairs_per_sample, replace=False):
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def symmetric_preference(first_order: np.ndarray, second_order: np.ndarray) -> np.ndarray:
    """``p(i > j) = (p(i > j | i first) + 1 - p(j > i | j first)) / 2``; NaN if either call failed."""
    return (np.asarray(first_order, np.float64) + 1.0 - np.asarray(second_order, np.float64)) / 2.0


def win_rates(num_samples: int, pairs: Sequence[tuple[int, int]], preferences: np.ndarray) -> np.ndarray:
    """``w_i = mean over i's pairs of p(i > j)`` (``1 - p`` on the ``j`` side); pairs with a NaN
    preference are left out; NaN for a sample with no scored pair (it is masked, never 0)."""
    wins = np.zeros(num_samples)
    counts = np.zeros(num_samples)
    for (i, j), p in zip(pairs, preferences, strict=True):
        if not np.isfinite(p):
            continue
        wins[i] += p
        wins[j] += 1.0 - p
        counts[i] += 1
        counts[j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, wins / np.maximum(counts, 1), np.nan)


@dataclass
class GroupRewardResult:
    """Win rates of every gathered sample and the judge calls the whole epoch made."""

    rewards: np.ndarray
    judge_calls: int
    pairs: int


class PairwiseJudgeReward:
    """The ``pairwise_mllm`` group reward: judge pairs, both orders, win rate over the whole group."""

    def __init__(self, compare: CompareFn, pairs_per_sample: int = 0, seed: int = 0) -> None:
        self.compare = compare
        self.pairs_per_sample = int(pairs_per_sample)
        self.seed = int(seed)

    def __call__(
        self,
        images: Sequence[Any],
        group_ids: Sequence[int],
        task_of: TaskFn,
        *,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        gather: GatherFn | None = None,
    ) -> GroupRewardResult:
        """Win rates of all ``images`` (every rank's, in gathered order) grouped by ``group_ids``.

        This rank asks for pairs ``rank, rank + world_size, ...`` of the plan (seeded by
        ``seed + epoch``); ``gather`` collects every rank's preferences (NaN where not its pair).
        """
        pairs = plan_pairs(group_ids, self.pairs_per_sample, self.seed + epoch)
        mine = list(range(rank, len(pairs), world_size))
        queries = []
        for index in mine:
            i, j = pairs[index]
            source, instruction, requirement = task_of(int(group_ids[i]))
            queries.append(PairSample(images[i], images[j], source, instruction, requirement))
            queries.append(PairSample(images[j], images[i], source, instruction, requirement))
        answers = np.asarray(self.compare(queries), dtype=np.float64) if queries else np.zeros(0)
        local = np.full(len(pairs), np.nan)
        local[mine] = symmetric_preference(answers[0::2], answers[1::2])
        if gather is not None and world_size > 1:
            gathered = gather(local)
            local = gathered[np.arange(len(pairs)) % world_size, np.arange(len(pairs))]
        return GroupRewardResult(
            rewards=win_rates(len(group_ids), pairs, local), judge_calls=2 * len(pairs), pairs=len(pairs)
        )
