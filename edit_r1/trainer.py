"""The training loop of Edit-R1 (docs/training.md#the-loop), the same for every algorithm and family.

One epoch, on every rank (``torchrun``; a single process works too), over the components that
:func:`build_trainer` wires from the typed settings (``edit_r1/training/``):

1. **Evaluate** every ``eval_freq`` epochs, before sampling (as upstream): the EMA weights,
   deterministic ``flow``, ``eval_num_steps`` (:class:`~edit_r1.training.evaluator.Evaluator`).
2. **Collect**: ``num_batches_per_epoch`` batches of (instruction, source image) from the group
   sampler, each distinct item encoded once, rolled out with the algorithm's ``rollout_adapter``
   and the configured solver, decoded, and scored on a background thread so scoring overlaps
   sampling (:class:`~edit_r1.training.rollout_collector.RolloutCollector`).
3. **Score**: every rank's rewards gathered; ``A = (r - mean_G) / D`` over the epoch, the
   low-variance group filter (mask) and the bans; failed scores (NaN) are masked
   (:class:`~edit_r1.training.epoch_scorer.EpochScorer` -> ``EpochStats``).
4. **Update**: per sample ``T = int(N * timestep_fraction)`` grid steps of ``Algorithm.loss``
   (NFT, Flow-GRPO, ... from ``config.algorithm``), AdamW every ``gradient_accumulation_steps * T``
   backwards, EMA after each step (:class:`~edit_r1.training.updater.Updater`).
5. **Sync** (an algorithm that reads an old policy): ``old <- d old + (1 - d) theta`` with
   ``d = old_policy_decay(global_step)``.

Every epoch logs the run's transformer forwards so far (``cost/*``, summed over the ranks:
:mod:`edit_r1.training.forward_counter`), counted by phase: evaluation, rollouts, update.

Checkpoints (:class:`~edit_r1.training.checkpointer.Checkpointer`) every ``save_freq`` epochs and
at the end, and of the starting weights; a resumed run goes on bit for bit.

Launch with the family's script (``scripts/train_nft_<family>.py``, ``docs/training.md``)::

    torchrun --nproc_per_node=8 scripts/train_nft_<family>.py --config config/<family>_nft.py:<name>
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ml_collections

from edit_r1 import distributed
from edit_r1.config import BatchPlan, prepare_training
from edit_r1.settings import TrainingSettings
from edit_r1.tracking import save_reward_curve
from edit_r1.training.build import Components, build_components
from edit_r1.training.epoch_scorer import EpochStats
from edit_r1.training.errors import TrainingError

__all__ = [
    "EpochResult",
    "Trainer",
    "TrainingError",
    "build_trainer",
    "prepare_settings",
    "trainer_from_config",
]


@dataclasses.dataclass(frozen=True)
class EpochResult:
    """What one epoch logged (``metrics``) and its gathered statistics (``stats``)."""

    metrics: dict[str, float]
    stats: EpochStats


class Trainer:
    """Runs the epochs over the components it is given (:func:`build_trainer` builds them)."""

    def __init__(self, settings: TrainingSettings, dist: distributed.DistInfo, parts: Components) -> None:
        self.settings, self.dist = settings, dist
        self.collector, self.scorer, self.updater = parts.collector, parts.scorer, parts.updater
        self.evaluator, self.checkpointer = parts.evaluator, parts.checkpointer
        self.timer, self.tracker, self.run_dir = parts.timer, parts.tracker, parts.run_dir
        self.cost = parts.cost
        self.first_epoch = parts.restored.epoch if parts.restored is not None else 0

    def run(self) -> EpochResult | None:
        """All epochs from ``first_epoch``; a final checkpoint is always written. Returns the last
        epoch's result (None when no epoch was left to run)."""
        num_epochs, save_every = self.settings.num_epochs, self.settings.checkpoints.every_epochs
        finished, result = False, None
        try:
            if self.first_epoch == 0 and not self.settings.checkpoints.resume_from:
                self.save(0)  # the starting weights, as the original saves at epoch 0
            for epoch in range(self.first_epoch, num_epochs):
                result = self.train_epoch(epoch)
                if (epoch + 1) % save_every == 0 and epoch + 1 < num_epochs:
                    self.save(epoch + 1)
            if num_epochs > self.first_epoch:
                self.save(num_epochs)
            finished = True
        finally:
            # Stopping on an error or a signal: pending rewards are useless, do not wait for them.
            self.collector.close(wait=finished)
            self.tracker.finish()
        distributed.rank0_print(f"done: run directory {self.run_dir.resolve()}")
        return result

    def train_epoch(self, epoch: int) -> EpochResult:
        """One epoch (evaluation first when due); returns what it logged and its statistics."""
        self.timer.reset()
        metrics: dict[str, Any] = {"epoch": epoch}
        phase = self.cost.counter.phase  # each phase's transformer forwards counted on their own
        if self.evaluator.due(epoch):
            with phase("eval"):
                metrics.update(self.evaluator.evaluate(epoch))
        self.collector.sampler.set_epoch(epoch)
        with self.timer("sampling"), phase("rollout"):
            rollouts = self.collector.collect(epoch)
        with self.timer("scoring_wait"):
            outputs = self.collector.wait_for_rewards(rollouts)
        stats = self.scorer.score(rollouts, outputs)
        metrics.update(stats.metrics)
        # Every rank always runs the update, as the original does: a rank whose samples are all
        # masked backpropagates a zero loss and joins the gradient all-reduce (skipping it on one
        # rank would leave the others waiting forever); AdamW, EMA and global_step advance alike.
        with self.timer("training"), phase("update"):
            metrics.update(self.updater.update(rollouts, stats))
        if self.updater.syncs_old_policy:
            with self.timer("sync"):
                metrics["old_decay"] = self.updater.sync_old_policy()
        metrics.update(self.timer.metrics())
        metrics["global_step"] = self.updater.global_step
        metrics.update(self.cost.metrics())  # cumulative over the run and every rank
        self.tracker.log(metrics, step=epoch)
        if self.dist.is_main and "eval_reward_mean" in metrics:
            save_reward_curve(self.tracker.metrics_path, self.run_dir / "reward_curve.png")
        return EpochResult(metrics, stats)

    def save(self, epoch: int) -> None:
        """The checkpoint after ``epoch`` epochs, with the step count and the groups trained on."""
        self.checkpointer.save(
            epoch, global_step=self.updater.global_step, trained_groups=self.scorer.trained_groups,
            cost=self.cost.state(),
        )  # fmt: skip


def prepare_settings(
    config: ml_collections.ConfigDict, dist: distributed.DistInfo
) -> tuple[TrainingSettings, BatchPlan]:
    """The typed settings and the batch plan (``edit_r1.config.prepare_training``); an empty
    ``run_name`` becomes ``<family>_<start time>`` (rank 0's clock), recorded in the config too."""
    settings, plan, warnings = prepare_training(config, dist.world_size)
    for warning in warnings:
        distributed.rank0_print(f"warning: {warning}")
    if not settings.run_name:
        stamp = distributed.broadcast_object(time.strftime("%Y.%m.%d_%H.%M.%S"))
        config.run_name = f"{settings.model.family}_{stamp}"
        settings = dataclasses.replace(settings, run_name=config.run_name)
    return settings, plan


def build_trainer(
    settings: TrainingSettings,
    dist: distributed.DistInfo,
    *,
    plan: BatchPlan,
    logged_config: dict,
    **parts: Any,
) -> Trainer:
    """A :class:`Trainer` over components built from ``settings``; ``parts`` hands in replacements
    (``reward``, ``evaluator``, ``eval_metrics``: :func:`edit_r1.training.build.build_components`)."""
    return Trainer(
        settings, dist, build_components(settings, dist, plan=plan, logged_config=logged_config, **parts)
    )


def trainer_from_config(
    config: ml_collections.ConfigDict, dist: distributed.DistInfo, **parts: Any
) -> Trainer:
    """The boundary then :func:`build_trainer`: what ``scripts/train_nft_<family>.py`` runs. The
    user's config (with the planned batches and run name) is logged and checkpointed as it ran."""
    settings, plan = prepare_settings(config, dist)
    return build_trainer(settings, dist, plan=plan, logged_config=config.to_dict(), **parts)
