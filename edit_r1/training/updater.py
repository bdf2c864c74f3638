"""The updater: the algorithm's update over this rank's rollouts, the optimizer step, the old-policy sync.

``train.num_inner_epochs`` passes over the samples, each in a fresh random order, split into
micro-batches of ``per_gpu_batch``. Each micro-batch trains ``T = Algorithm.train_steps(N)`` grid
steps (``Algorithm.step_plan``), one backward of ``Algorithm.loss / (accumulation * T)`` each;
every ``gradient_accumulation_steps`` micro-batches one all-reduce of the flat gradient (unless
FSDP reduce-scattered it), clip-norm, AdamW and the EMA step. After the epoch, for an algorithm that
reads an old policy, ``old <- d old + (1 - d) theta`` with ``d = old_policy_decay(global_step)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import torch

from edit_r1 import distributed
from edit_r1.algo import EMA, Algorithm, TrainBatch, old_policy_decay, update_old_policy
from edit_r1.models.base import EditPolicy
from edit_r1.parallelize import full_tensor, local_shards
from edit_r1.settings import OptimizerSettings
from edit_r1.tracking import progress

from .epoch_scorer import EpochStats
from .errors import TrainingError
from .rollout_collector import Rollout


@dataclasses.dataclass
class BoundPolicy:
    """A policy with one micro-batch's condition bound: the ``PolicyForward`` an algorithm sees.

    Training forwards are plain conditional passes (``EditPolicy.unguided``): the original's three
    training forwards (v, v_old, v_ref) never use CFG, even when its rollouts do. ``guided``
    (``train.cfg``, Flow-GRPO's): they run the rollouts' true CFG instead."""

    policy: EditPolicy
    cond: Any
    guided: bool = False

    def _guidance(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.guided else self.policy.unguided()

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, adapter: str) -> torch.Tensor:
        with self._guidance():
            return self.policy.velocity(z, sigma, self.cond, adapter=adapter)

    def velocity_old_and_ref(self, z: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._guidance():
            return self.policy.velocity_old_and_ref(z, sigma, self.cond)


class Updater:
    """Trains ``params`` of ``policy`` with ``algorithm`` and ``optimizer``; counts ``global_step``.

    ``ema``: the EMA of this rank's shards (None: ``train.ema`` off); ``sharded_transformer``: FSDP
    already averaged the gradients; ``sigmas``: the rollout schedule (``N + 1`` values).
    """

    def __init__(
        self,
        *,
        policy: EditPolicy,
        params: list[torch.nn.Parameter],
        algorithm: Algorithm,
        optimizer: torch.optim.Optimizer,
        ema: EMA | None,
        sigmas: torch.Tensor,
        per_gpu_batch: int,
        accumulation_steps: int,
        settings: OptimizerSettings,
        dist: distributed.DistInfo,
        sharded_transformer: bool,
    ) -> None:
        self.policy, self.algorithm, self.optimizer, self.ema = policy, algorithm, optimizer, ema
        self.params = params  # policy.trainable_parameters(), as the optimizer holds them
        self.sigmas, self.per_gpu_batch, self.accumulation_steps = sigmas, per_gpu_batch, accumulation_steps
        self.settings, self.dist, self.sharded_transformer = settings, dist, sharded_transformer
        self.global_step = 0

    @property
    def syncs_old_policy(self) -> bool:
        """Whether the algorithm reads an old policy (then it is synced after each epoch)."""
        return self.algorithm.uses_old_policy

    def update(self, rollouts: list[Rollout], stats: EpochStats) -> dict[str, float]:
        """The algorithm's update over this rank's samples; returns the diagnostics averaged over
        every backward and rank, the mean grad norm and the learning rate."""
        x0 = torch.cat([r.x0 for r in rollouts])
        cond = type(rollouts[0].cond).cat([r.cond for r in rollouts])
        fields = {name: torch.cat([r.fields[name] for r in rollouts]) for name in rollouts[0].fields}
        advantages, mask = stats.local_advantages, stats.local_mask
        num_grid = len(self.sigmas) - 1  # the N rollout steps (the final sigma 0 is not trained)
        try:
            num_t = self.algorithm.train_steps(num_grid)
        except ValueError as error:
            raise TrainingError(str(error)) from error
        sums: dict[str, torch.Tensor] = {}
        grad_norms: list[float] = []
        count = 0
        for inner in range(self.settings.inner_epochs):
            order = torch.randperm(len(x0))
            micro_starts = range(0, len(x0), self.per_gpu_batch)
            desc = "training" if inner == 0 else f"training (inner epoch {inner})"
            for micro, start in enumerate(progress(micro_starts, desc=desc, enabled=self.dist.is_main)):
                rows = order[start : start + self.per_gpu_batch]
                batch = TrainBatch(
                    x0=x0[rows], advantages=advantages[rows], mask=mask[rows], sigmas=self.sigmas,
                    fields={name: value[rows] for name, value in fields.items()},
                )  # fmt: skip
                forward = BoundPolicy(self.policy, cond.index_select(rows), self.settings.guided_training)
                steps = self.algorithm.step_plan(len(rows), num_grid)
                for j in range(num_t):
                    info = self.train_step(forward, batch, steps[:, j], self.accumulation_steps * num_t)
                    for key, value in info.items():
                        sums[key] = sums[key] + value if key in sums else value
                    count += 1
                if (micro + 1) % self.accumulation_steps == 0:
                    self._check_finite(sums, count)
                    grad_norms.append(self.optimizer_step())
        out = self._mean_over_ranks(sums, count)
        out["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def train_step(
        self, forward: BoundPolicy, batch: TrainBatch, steps: torch.Tensor, divisor: int
    ) -> dict[str, torch.Tensor]:
        """One backward of ``Algorithm.loss / divisor`` at grid steps ``steps`` ``(B,)``."""
        loss, info = self.algorithm.loss(forward, batch, steps)
        (loss / divisor).backward()
        # Detached tensors, summed on the device: a float() here would sync the GPU every timestep.
        return {key: torch.as_tensor(value).detach() for key, value in info.items()}

    def optimizer_step(self) -> float:
        """All-reduce (mean) the accumulated gradients once, clip, AdamW, EMA; returns the grad norm."""
        # A parameter without a gradient (e.g. Qwen's last text-stream projections, which cannot
        # reach the output) gets zeros, so every rank reduces the same flat buffer and AdamW treats
        # it the same with one process or many.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        # A sharded transformer's gradients were already averaged by FSDP's reduce-scatter.
        if self.dist.is_distributed and not self.sharded_transformer:
            flat = torch.cat([g.reshape(-1) for g in grads])
            distributed.all_reduce_mean(flat)
            offset = 0
            for p, g in zip(self.params, grads, strict=True):
                p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
                offset += g.numel()
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm))
        if not torch.isfinite(norm):
            raise TrainingError(f"non-finite gradient norm {float(norm)} at global step {self.global_step}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.ema is not None:
            self.ema.step(local_shards(self.params), step=self.global_step)
        return float(norm)

    @torch.no_grad()
    def sync_old_policy(self) -> float:
        """``old <- d old + (1 - d) theta`` with ``d = old_policy_decay(global_step, decay_type)``."""
        decay = old_policy_decay(self.global_step, self.settings.old_policy_decay_type)
        update_old_policy(local_shards(self.policy.old_parameters()), local_shards(self.params), decay)
        return decay

    def _mean_over_ranks(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Each diagnostic's mean over this rank's backwards, then averaged over the ranks (one
        all-reduce), as the original logs its loss terms."""
        keys = sorted(sums)
        local = torch.stack([sums[key].double() / count for key in keys]).to(self.dist.device)
        averaged = distributed.all_reduce_mean(local).cpu().tolist()
        return dict(zip(keys, averaged, strict=True))

    def _check_finite(self, sums: dict[str, torch.Tensor], count: int) -> None:
        """Stops before the optimizer step when a loss since the last step was NaN/inf (one sync)."""
        if torch.isfinite(sums["total_loss"]):
            return
        details = ", ".join(f"{key}={float(value) / count:.4g}" for key, value in sums.items())
        raise TrainingError(
            f"non-finite loss before optimizer step {self.global_step + 1} ({details}); the weights were not "
            "updated and nothing was saved"
        )
