"""The distributed k-repeat group sampler (docs/algorithm.md#1-prompt-groups).

Every rank builds the same global batch from the same seed and takes its own slice, so no
communication is needed: draw ``i`` of epoch ``e`` seeds a generator with
``seed + e * batches_per_epoch + i``, picks ``m = num_replicas * batch_size / k`` distinct unbanned
items, repeats each ``k`` times, shuffles, and rank ``r`` gets ``[r * B, (r + 1) * B)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import torch


class NotEnoughGroupsError(RuntimeError):
    """Fewer unbanned dataset items remain than a global batch needs distinct groups."""


class GroupBatchSampler:
    """Yields this rank's dataset indices, batch by batch; ``len()`` is ``batches_per_epoch``.

    ``group_keys[i]`` is the group key of dataset item ``i``. Items whose key is banned are skipped;
    the ban set must be the same on every rank (it is derived from gathered rewards), which keeps
    every rank's draws identical. Position (epoch, draws done) and bans are in :meth:`state_dict`.
    """

    def __init__(
        self,
        group_keys: Sequence[Hashable],
        *,
        batch_size: int,
        k: int,
        num_replicas: int,
        rank: int,
        seed: int = 42,
        batches_per_epoch: int = 1,
        banned: set | None = None,
    ):
        _check_positive(
            batch_size=batch_size, k=k, num_replicas=num_replicas, batches_per_epoch=batches_per_epoch
        )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"GroupBatchSampler: rank {rank} not in [0, {num_replicas})")
        total = num_replicas * batch_size
        if total % k:
            raise ValueError(
                f"GroupBatchSampler: num_replicas * batch_size = {num_replicas} * {batch_size} = {total} "
                f"is not a multiple of k (num_image_per_prompt) = {k}"
            )
        self.group_keys = list(group_keys)
        self.batch_size, self.k, self.num_replicas, self.rank = batch_size, k, num_replicas, rank
        self.seed, self.batches_per_epoch = seed, batches_per_epoch
        self.groups_per_batch = total // k
        self.banned: set = set(banned or ())
        self.epoch = 0
        self.position = 0
        self._valid_cache: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        """The remaining batches of the current epoch; afterwards the sampler is at the next epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch`` (a no-op when already there)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def ban(self, keys: Iterable[Hashable]) -> None:
        """Exclude these group keys from every later draw (on every rank, with the same keys)."""
        self.banned.update(keys)

    def next_batch(self) -> list[int]:
        """This rank's ``batch_size`` indices for the next draw; advances the position (and epoch)."""
        indices = self.global_batch(self.epoch, self.position)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.rank * self.batch_size
        return indices[start : start + self.batch_size]

    def global_batch(self, epoch: int, draw: int) -> list[int]:
        """All ranks' indices of draw ``draw`` of ``epoch`` with the current bans (rank r: slice r)."""
        generator = torch.Generator().manual_seed(self.seed + epoch * self.batches_per_epoch + draw)
        valid = self.valid_indices()
        if len(valid) < self.groups_per_batch:
            raise NotEnoughGroupsError(
                f"only {len(valid)} of {len(self.group_keys)} dataset items are not banned, but a batch needs "
                f"{self.groups_per_batch} distinct groups ({self.num_replicas} ranks x {self.batch_size} / k={self.k}); "
                "add data, lower the number of groups per batch, or turn sample.ban_prompt off"
            )
        chosen = [
            valid[j]
            for j in torch.randperm(len(valid), generator=generator)[: self.groups_per_batch].tolist()
        ]
        repeated = [index for index in chosen for _ in range(self.k)]
        return [repeated[j] for j in torch.randperm(len(repeated), generator=generator).tolist()]

    def valid_indices(self) -> list[int]:
        """Indices of the items whose group is not banned, in dataset order (cached per ban count)."""
        if self._valid_cache is None or self._valid_cache[0] != len(self.banned):
            valid = [i for i, key in enumerate(self.group_keys) if key not in self.banned]
            self._valid_cache = (len(self.banned), valid)
        return self._valid_cache[1]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: epoch, draws done in it, and the banned keys (tuples become lists)."""
        banned = sorted((_to_json(key) for key in self.banned), key=repr)
        return {"epoch": self.epoch, "position": self.position, "banned": banned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (also after a JSON round trip) for an exact resume."""
        missing = {"epoch", "position", "banned"} - set(state)
        if missing:
            raise ValueError(f"GroupBatchSampler state is missing {sorted(missing)}")
        position = int(state["position"])
        if not 0 <= position < self.batches_per_epoch:
            raise ValueError(
                f"GroupBatchSampler state position {position} not in [0, {self.batches_per_epoch})"
            )
        self.epoch, self.position = int(state["epoch"]), position
        self.banned = {_from_json(key) for key in state["banned"]}
        self._valid_cache = None


def _to_json(key: Hashable) -> Any:
    if isinstance(key, tuple):
        return [_to_json(part) for part in key]
    if key is None or isinstance(key, str | int | float | bool):
        return key
    raise TypeError(f"group key {key!r} cannot be saved: use str, numbers or tuples of them")


def _from_json(value: Any) -> Hashable:
    return tuple(_from_json(part) for part in value) if isinstance(value, list) else value


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"GroupBatchSampler: {name} must be >= 1, got {value}")
