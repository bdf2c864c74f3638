"""The checkpointer: the full training state after an epoch, written atomically, and resuming from it.

Every rank writes its shards (``torch.distributed.checkpoint``) of the trained weights, the old
policy (for an algorithm that reads one), the EMA and AdamW's state, plus the sampler position,
bans, trained groups, global step and every rank's RNG; rank 0 writes the exported EMA weights
(LoRA file or diffusers transformer folder). Resuming picks the newest intact checkpoint (falling
back past damaged ones), reshards it to this world size and restores every piece, so the run goes
on bit for bit (``docs/training.md``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from edit_r1 import distributed
from edit_r1.algo import EMA
from edit_r1.checkpoint import (
    CheckpointCorrupted,
    CheckpointState,
    CheckpointWriteError,
    load_checkpoint,
    load_sharded,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from edit_r1.data import GroupBatchSampler
from edit_r1.models.base import EditPolicy
from edit_r1.parallelize import gather_to_rank0, like_param, local_shards
from edit_r1.settings import CheckpointSettings

from .errors import TrainingError


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a resumed run continues from: the epoch to run next, the optimizer steps taken and the
    groups trained on so far, the forwards spent (the weights, EMA, optimizer, sampler and RNG are restored in place)."""

    epoch: int
    global_step: int
    trained_groups: frozenset[int]
    cost: dict[str, int] = dataclasses.field(default_factory=dict)  # RunCost.state() (none: older file)


class Checkpointer:
    """Saves and restores the state of ``policy``'s ``params``, ``optimizer``, ``ema`` and
    ``sampler``; ``save_old``: the old policy is part of the state (``Algorithm.uses_old_policy``);
    ``logged_config``: the user's config as it ran, stored with every checkpoint."""

    def __init__(
        self,
        *,
        policy: EditPolicy,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        ema: EMA | None,
        sampler: GroupBatchSampler,
        save_old: bool,
        settings: CheckpointSettings,
        use_lora: bool,
        run_dir: Path,
        logged_config: dict[str, Any],
        dist: distributed.DistInfo,
    ) -> None:
        self.policy, self.params, self.optimizer, self.ema, self.sampler = (
            policy,
            params,
            optimizer,
            ema,
            sampler,
        )
        self.save_old, self.settings, self.use_lora = save_old, settings, use_lora
        self.run_dir, self.logged_config, self.dist = run_dir, logged_config, dist

    def save(
        self,
        epoch: int,
        *,
        global_step: int,
        trained_groups: Iterable[int],
        cost: dict[str, int] | None = None,
    ) -> Path:
        """Full state after ``epoch`` epochs, atomically (a collective: every rank calls it);
        ``cost``: the run's forwards so far (``RunCost.state``)."""
        state = CheckpointState(
            sharded=self._sharded_state(),
            metadata={
                "epoch": epoch,
                "global_step": global_step,
                "sampler": self.sampler.state_dict(),
                "trained_groups": sorted(trained_groups),
                "cost": dict(cost or {}),
            },
            config=self.logged_config,  # the user's keys, as they ran
            rng=distributed.get_rng_state(),
        )
        try:
            path = save_checkpoint(
                Path(self.settings.root) if self.settings.root else self.run_dir,
                epoch,
                state,
                keep_last=self.settings.keep_last,  # None = keep every checkpoint
                dist_info=self.dist,
                exporters=[self._exporter()],
            )
        except CheckpointWriteError as error:
            # Stop: training on without a checkpoint would risk more work than it saves.
            raise TrainingError(f"checkpoint after epoch {epoch} not saved: {error}") from error
        distributed.rank0_print(f"saved {path}")
        return path

    def restore(self, path: str) -> Restored:
        """Loads the newest intact checkpoint under ``path`` into the live state (resharded to this
        world size), the sampler and every rank's RNG; returns where the run goes on."""
        checkpoint = self._resume_checkpoint(path)
        state = load_checkpoint(checkpoint, rank=self.dist.rank, checksums=False)  # verified just now
        sharded = self._sharded_state()
        try:
            load_sharded(checkpoint, sharded)  # reshards when the world size changed
        except FileNotFoundError as error:
            raise TrainingError(
                f"resume_from={path!r}: {error}; it was written by an older version of edit_r1"
            ) from error
        if self.ema is not None:
            for shadow, loaded in zip(self.ema.shadow, local_shards(sharded["ema"].values()), strict=True):
                if loaded.data_ptr() != shadow.data_ptr():
                    shadow.copy_(loaded)
        self.sampler.load_state_dict(state.metadata["sampler"])
        restored = Restored(
            epoch=int(state.metadata["epoch"]),
            global_step=int(state.metadata["global_step"]),
            trained_groups=frozenset(state.metadata.get("trained_groups", [])),
            cost={k: int(v) for k, v in state.metadata.get("cost", {}).items()},
        )
        if state.rng is not None:
            distributed.set_rng_state(state.rng)
        distributed.rank0_print(f"resumed from {checkpoint} at epoch {restored.epoch}")
        return restored

    def _sharded_state(self) -> dict[str, dict[str, Any]]:
        """Weights, old policy (if saved), EMA and AdamW state by parameter name, as this rank holds
        them (DTensors when sharded): the layout ``torch.distributed.checkpoint`` reshards on load."""
        names = self.policy.trainable_parameter_names()
        state: dict[str, dict[str, Any]] = {
            "default": {n: p.detach() for n, p in zip(names, self.params, strict=True)},
            "optimizer": {n: self._adam_state(p) for n, p in zip(names, self.params, strict=True)},
        }
        if self.save_old:  # an algorithm that never reads the old policy neither saves it
            state["old"] = {n: q.detach() for n, q in zip(names, self.policy.old_parameters(), strict=True)}
        if self.ema is not None:
            state["ema"] = {
                n: like_param(shadow, p)
                for n, shadow, p in zip(names, self.ema.shadow, self.params, strict=True)
            }
        return state

    def _adam_state(self, param: torch.nn.Parameter) -> dict[str, torch.Tensor]:
        """AdamW's state of ``param``, created as AdamW creates it when absent (step 0, zero moments),
        so a checkpoint taken before the first step and a resumed run hold the same layout."""
        state = self.optimizer.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _exporter(self) -> Callable[[Path], None]:
        """Gathers the exported weights (EMA if kept, else the trained ones) once to rank 0 (a
        collective, so here on every rank) and returns the rank-0 writer of the export."""
        source = (
            [like_param(s, p) for s, p in zip(self.ema.shadow, self.params, strict=True)]
            if self.ema is not None
            else self.params
        )
        weights = gather_to_rank0(source, self.dist.is_main)

        def export(directory: Path) -> None:
            if self.use_lora:
                self.policy.save_lora(directory / "lora", weights=weights)
            else:
                self.policy.save_full(directory / "transformer", weights=weights)

        return export

    def _resume_checkpoint(self, path: str) -> Path:
        """Rank 0 picks the newest intact checkpoint (SHA-256 of every file, falling back past damaged
        ones with a warning) and tells every rank, so the files are hashed once, not once per rank."""
        choice: dict[str, str] = {}
        if self.dist.is_main:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    found = resolve_resume_checkpoint(path)
                for warning in caught:
                    distributed.rank0_print(f"warning: {warning.message}")
                choice = {"path": str(found)} if found else {"error": "no complete checkpoint there"}
            except (CheckpointCorrupted, FileNotFoundError, ValueError) as error:
                choice = {"error": str(error)}
        choice = distributed.broadcast_object(choice)
        if "error" in choice:
            raise TrainingError(f"resume_from={path!r}: {choice['error']}")
        return Path(choice["path"])
