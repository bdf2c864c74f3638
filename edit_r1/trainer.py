"""The DiffusionNFT epoch of Edit-R1 (docs/training.md#the-loop), shared by both model families.

One epoch, on every rank (``torchrun``; a single process works too):

1. **Sample** ``num_batches_per_epoch`` batches of (instruction, source image) from the group
   sampler (``k`` copies of each distinct item per epoch, identical draws on every rank), encode
   each distinct item once, roll out with the ``old`` policy and the configured solver, decode,
   and hand the edits to the reward functions on a background thread so scoring overlaps sampling.
2. **Score**: wait for the rewards, gather rewards and group ids from all ranks.
3. **Advantages**: ``A = (r - mean_G) / D`` over the whole epoch, the low-variance group filter
   (mask) and the bans (``sample.ban_prompt``); failed scores (NaN) are masked.
4. **Train**: for each sample, ``T = int(N * timestep_fraction)`` of its ``N`` grid timesteps in a
   random order; per timestep the NFT loss of ``v`` (trained), ``v_old`` and ``v_ref`` (one fused
   no-grad forward); AdamW every ``gradient_accumulation_steps * T`` backwards; EMA after each step.
5. **Sync**: ``old <- d old + (1 - d) theta`` with ``d = old_policy_decay(global_step)``.

Evaluation (EMA weights, deterministic ``flow``, ``eval_num_steps``) runs every ``eval_freq``
epochs before sampling, as upstream; checkpoints every ``save_freq`` epochs and at the end.

Launch with the family's script (``scripts/train_nft_<family>.py``, ``docs/training.md``)::

    torchrun --nproc_per_node=8 scripts/train_nft_<family>.py --config config/<family>_nft.py:<name>
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import torch

from edit_r1 import distributed
from edit_r1.algo import (
    EMA,
    TrainBatch,
    build_algorithm,
    global_advantages,
    group_advantages,
    group_filter,
    old_policy_decay,
    update_old_policy,
)
from edit_r1.checkpoint import (
    CheckpointCorrupted,
    CheckpointState,
    CheckpointWriteError,
    load_checkpoint,
    load_sharded,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from edit_r1.config import BatchPlan, ConfigError, prepare_training
from edit_r1.data import EditDataset, GroupBatchSampler, check_source_counts
from edit_r1.data.dataset import center_crop_resize
from edit_r1.inference import copy_lora_into_policy, to_pil_batch
from edit_r1.lora_files import read_lora
from edit_r1.models.base import EditPolicy
from edit_r1.models.registry import load_policy, policy_class
from edit_r1.monitors import VelocityNorms, batch_monitors, same_reward, summarise
from edit_r1.parallelize import (
    full_tensor,
    gather_to_rank0,
    like_param,
    local_shards,
    parallelize_policy,
)
from edit_r1.rewards import AsyncRewardScorer, RewardOutput, RewardSample, build_combined_reward
from edit_r1.rewards.client import RewardClient, RewardClientSettings
from edit_r1.rewards.combine import CombinedReward
from edit_r1.rewards.registry import build_group_rewards, split_reward_spec
from edit_r1.sampling import SampleResult, sample, sigma_schedule
from edit_r1.settings import TrainingSettings, compute_dtype
from edit_r1.tracking import (
    Timer,
    Tracker,
    progress,
    save_eval_grid,
    save_reward_curve,
)
from reward_server.protocol import PROMPT_FIELDS


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unreachable judge, ...); the message says why."""


@dataclasses.dataclass
class Rollout:
    """One sampling batch of this rank, kept until the update: what the algorithm's loss needs."""

    x0: torch.Tensor  # (B, L, C) final clean latents of the rollout policy
    cond: Any  # the family's Condition, one row per sample
    group_ids: torch.Tensor  # (B,) long: canonical dataset index of each sample's group
    rewards: Future  # resolves to a RewardOutput
    fields: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # Algorithm.rollout_fields
    samples: list[RewardSample] = dataclasses.field(default_factory=list)  # edits, for group rewards


@dataclasses.dataclass
class BoundPolicy:
    """A policy with one micro-batch's condition bound: the ``PolicyForward`` an algorithm sees.

    Training forwards are plain conditional passes (``EditPolicy.unguided``): the original's three
    training forwards (v, v_old, v_ref) never use CFG, even when its rollouts do."""

    policy: EditPolicy
    cond: Any

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, adapter: str) -> torch.Tensor:
        with self.policy.unguided():
            return self.policy.velocity(z, sigma, self.cond, adapter=adapter)

    def velocity_old_and_ref(self, z: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.policy.unguided():
            return self.policy.velocity_old_and_ref(z, sigma, self.cond)


def judge_templates(
    reward: CombinedReward, ask: bool = True, group_rewards: Mapping[str, tuple[float, Any]] | None = None
) -> dict[str, Any]:
    """``{"judge_templates": {reward name: {"template", "template_sha256", "pairwise_template",
    "pairwise_template_sha256"}}}`` of every reward that a judge server computes (the per-batch
    rewards and the group rewards such as ``pairwise_mllm``), from its ``/health``, for the run's
    logged config: a reward curve can then be traced to the judge's prompt. A judge that does not
    answer yet is noted, not fatal."""
    found: dict[str, Any] = {}
    for name, client in _judge_clients(reward, group_rewards or {}) if ask else ():
        try:
            health = client.health()
            found[name] = {key: health.get(key) for key in PROMPT_FIELDS}
        except Exception as error:  # noqa: BLE001 - any transport error: log it, training may still wait
            found[name] = {"error": f"{type(error).__name__}: {error}"}
        distributed.rank0_print(f"judge prompt of {name}: {found[name]}")
    return {"judge_templates": found} if found else {}


def _judge_clients(
    reward: CombinedReward, group_rewards: Mapping[str, tuple[float, Any]]
) -> list[tuple[str, RewardClient]]:
    """(name, client) of every reward scored by a judge server: a per-batch reward is a client's
    bound ``score``, a group reward (:class:`edit_r1.rewards.pairwise.PairwiseJudgeReward`) holds a
    client's bound ``compare``."""
    bound = [*reward.functions.items()]
    bound += [(name, getattr(group, "compare", None)) for name, (_, group) in group_rewards.items()]
    clients = [(name, getattr(function, "__self__", None)) for name, function in bound]
    return [(name, client) for name, client in clients if isinstance(client, RewardClient)]


def set_backend_flags(allow_tf32: bool) -> None:
    """``allow_tf32`` for CUDA matmuls and cuDNN; cuDNN deterministic and without autotuning, as
    the original sets them (``train_nft_qwen_image_edit.py`` ~83-84 and ~506-508)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _zero_std_ratio(rewards: torch.Tensor, group_ids: Sequence[int]) -> float:
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


def _reward_sample(edit, sources, item) -> RewardSample:
    """The edit with its task: the first source image, then any further ones (several references)."""
    first, *rest = sources if isinstance(sources, list) else [sources]
    return RewardSample(edit, first, item.prompt, item.requirement, item.extra, tuple(rest))


def _mean_ignoring_nan(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


class Trainer:
    """Builds everything from a config and runs the epochs. ``Trainer(config, dist).run()``."""

    def __init__(self, config: ml_collections.ConfigDict, dist: distributed.DistInfo) -> None:
        self.dist = dist
        self.config = config  # the user's config (with the planned batches): logged and checkpointed
        self.settings, self.plan = self._prepare(config)  # the code below reads only these
        settings = self.settings
        self.run_dir = Path(settings.logdir) / settings.run_name
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.timer = Timer(cuda_sync=dist.device.type == "cuda")
        set_backend_flags(settings.model.allow_tf32)
        torch.manual_seed(settings.seed)  # identical LoRA init on every rank
        self.policy = self._load_policy()
        self._broadcast_trainable()
        self.parallel = parallelize_policy(self.policy, settings.parallel, dist)
        self.lockstep_encoding = self.parallel.sharded_text_encoders
        distributed.seed_everything(settings.seed, dist.rank)  # rank-dependent rollout noise
        self._build_data()
        self.algorithm = build_algorithm(settings.algorithm, settings.rollout)
        self.params = self.policy.trainable_parameters()
        self.optimizer = self._build_optimizer()
        self.ema = EMA(local_shards(self.params)) if settings.optimizer.ema else None  # this rank's shards
        combined = self._build_rewards()
        self.sigmas = sigma_schedule(
            settings.rollout.steps, self.policy.image_seq_len, self.policy.scheduler_config
        )
        self.eval_sigmas = sigma_schedule(
            settings.evaluation.steps, self.policy.image_seq_len, self.policy.scheduler_config
        )
        self.first_epoch = 0
        self.global_step = 0
        self.trained_groups: set[int] = set()  # distinct group ids trained on (trained_prompt_num)
        self.last_epoch_stats: dict[str, Any] = {}  # gathered advantages/mask of the last epoch
        self.tracker = Tracker(
            self.run_dir,
            enabled=dist.is_main,
            wandb=settings.wandb,
            run_name=settings.run_name,
            config={**config.to_dict(), **judge_templates(combined, dist.is_main, self.group_rewards)},
        )
        if settings.checkpoints.resume_from:
            self._resume(settings.checkpoints.resume_from)
        elif self.algorithm.uses_old_policy:
            self.policy.copy_default_to_old()  # before epoch 0, old = theta

    def _prepare(self, config: ml_collections.ConfigDict) -> tuple[TrainingSettings, BatchPlan]:
        """The typed settings and the batch plan (``edit_r1.config.prepare_training``); an empty
        ``run_name`` becomes ``<family>_<start time>`` (rank 0's clock), recorded in the config too."""
        settings, plan, warnings = prepare_training(config, self.dist.world_size)
        for warning in warnings:
            distributed.rank0_print(f"warning: {warning}")
        if not settings.run_name:
            stamp = distributed.broadcast_object(time.strftime("%Y.%m.%d_%H.%M.%S"))
            config.run_name = f"{settings.model.family}_{stamp}"
            settings = dataclasses.replace(settings, run_name=config.run_name)
        return settings, plan

    # ------------------------------------------------------------------------------- setup
    def _build_data(self) -> None:
        """The train/test splits, each train item's group id and the group sampler."""
        settings, dist = self.settings, self.dist
        self.train_set = EditDataset(settings.dataset, "train")
        self.test_set = EditDataset(settings.dataset, "test")
        check_source_counts(
            [self.train_set, self.test_set], self.policy.max_reference_images, type(self.policy).__name__
        )
        self.group_id = self._canonical_group_ids(self.train_set.group_keys)
        self.sampler = GroupBatchSampler(
            self.train_set.group_keys,
            batch_size=self.plan.per_gpu_batch,
            k=settings.rollout.group_size,
            num_replicas=dist.world_size,
            rank=dist.rank,
            seed=settings.seed,
            batches_per_epoch=self.plan.batches_per_epoch,
        )

    def _build_optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.settings.optimizer
        return torch.optim.AdamW(
            self.params,
            lr=optimizer.learning_rate,
            betas=optimizer.betas,
            weight_decay=optimizer.weight_decay,
            eps=optimizer.epsilon,
        )

    def _build_rewards(self) -> CombinedReward:
        """The per-batch rewards (scored on a background thread), the group rewards and the
        evaluation rewards; returns the per-batch combination."""
        rewards = self.settings.rewards
        combined = build_combined_reward(rewards.weights, rewards.client)
        self.reward = AsyncRewardScorer(combined)
        # Group rewards (pairwise_mllm) need every rank's edits of a group: scored after sampling.
        self.group_rewards = build_group_rewards(
            split_reward_spec(rewards.weights)[1], rewards.client, seed=self.settings.seed
        )
        self.eval_reward = build_combined_reward(rewards.eval_weights, self._eval_reward_client())
        # The training reward of the held-out edits, for monitor/reward_gap: only when it can differ
        # from the evaluation reward, and not for group rewards (they need a whole group).
        same = same_reward(rewards.weights, rewards.eval_weights, not os.environ.get("EVAL_REWARD_SERVER"))
        self.gap_reward = None if same or self.group_rewards else combined
        return combined

    def _load_policy(self) -> EditPolicy:
        model, device = self.settings.model, self.dist.device
        policy = load_policy(
            model.family,
            model.pretrained,
            device=device,
            dtype=compute_dtype(model.mixed_precision, device),
            resolution=model.resolution,
            use_lora=model.use_lora,
            lora=model.lora,
            gradient_checkpointing=model.gradient_checkpointing,
            **({"max_text_length": model.max_text_length} if model.max_text_length else {}),
            attention_backend=model.attention_backend,
            compile_transformer=model.compile_transformer,
            compile_mode=model.compile_mode,
            # Sharded runs never build a whole transformer (or its old/ref copies) on the device.
            shard_device=device
            if self.settings.parallel.fsdp_transformer and self.dist.is_distributed
            else None,
            shard_text_encoders=self.settings.parallel.fsdp_text_encoder and self.dist.is_distributed,
            **policy_class(model.family).options_from_settings(model),
        )
        if model.warm_start_lora:
            self._warm_start(policy, model.warm_start_lora)
        return policy

    def _warm_start(self, policy: EditPolicy, path: str) -> None:
        """Start the trained adapter from an existing LoRA (``train.lora_path``), as the original's
        ``PeftModel.from_pretrained``; ``old`` copies it before epoch 0 like any initial weights."""
        model = self.settings.model
        try:
            if not model.use_lora:
                raise ValueError("needs use_lora=True")
            lora = read_lora(path)
            if (lora.rank, lora.alpha) != (model.lora.rank, float(model.lora.alpha)):
                raise ValueError(
                    f"holds rank {lora.rank} / alpha {lora.alpha:g} but train.lora_rank={model.lora.rank} / "
                    f"train.lora_alpha={model.lora.alpha}; set them to the file's values"
                )
            copy_lora_into_policy(policy, lora)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError([f"train.lora_path={path!r}: {error}"]) from error
        distributed.rank0_print(f"warm start from {lora.source} (rank {lora.rank}, alpha {lora.alpha:g})")

    @torch.no_grad()
    def _broadcast_trainable(self) -> None:
        """Rank 0's trainable weights on every rank (LoRA init is seeded, this makes it certain)."""
        if not distributed.is_dist_active():
            return
        for p in self.policy.trainable_parameters():
            if p.device == self.dist.device:
                torch.distributed.broadcast(p.data, src=0)
            else:  # waiting on the host to be sharded: through the device, one tensor at a time
                on_device = p.data.to(self.dist.device)
                torch.distributed.broadcast(on_device, src=0)
                p.data.copy_(on_device)

    @staticmethod
    def _canonical_group_ids(keys: Sequence[Any]) -> list[int]:
        """Each item's group id: the first dataset index with the same (instruction, image) key."""
        first: dict[Any, int] = {}
        return [first.setdefault(key, index) for index, key in enumerate(keys)]

    def _eval_reward_client(self) -> RewardClientSettings:
        server = os.environ.get("EVAL_REWARD_SERVER")
        if server:  # a held-out judge for evaluation
            return dataclasses.replace(self.settings.rewards.client, server=server)
        return self.settings.rewards.client

    # ------------------------------------------------------------------------------- loop
    def run(self) -> None:
        """All epochs from ``first_epoch``; a final checkpoint is always written."""
        num_epochs, save_every = self.settings.num_epochs, self.settings.checkpoints.every_epochs
        epoch = self.first_epoch
        finished = False
        try:
            if self.first_epoch == 0 and not self.settings.checkpoints.resume_from:
                self.save(0)  # the starting weights, as the original saves at epoch 0
            for epoch in range(self.first_epoch, num_epochs):
                self.train_epoch(epoch)
                if (epoch + 1) % save_every == 0 and epoch + 1 < num_epochs:
                    self.save(epoch + 1)
            if num_epochs > self.first_epoch:
                self.save(num_epochs)
            finished = True
        finally:
            # Stopping on an error or a signal: pending rewards are useless, do not wait for them.
            self.reward.close(wait=finished)
            self.tracker.finish()
        distributed.rank0_print(f"done: run directory {self.run_dir.resolve()}")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch (evaluation first when due); returns the metrics it logged."""
        self.timer.reset()
        metrics: dict[str, float] = {"epoch": epoch}
        if epoch % self.settings.evaluation.every_epochs == 0:
            metrics.update(self.evaluate(epoch))
        self.sampler.set_epoch(epoch)
        with self.timer("sampling"):
            rollouts = self.collect_rollouts(epoch)
        with self.timer("scoring_wait"):
            outputs = self.wait_for_rewards(rollouts)
        stats = self.compute_advantages(rollouts, outputs, metrics)
        # Every rank always runs the update, as the original does: a rank whose samples are all
        # masked backpropagates a zero loss and joins the gradient all-reduce (skipping it on one
        # rank would leave the others waiting forever); AdamW, EMA and global_step advance alike.
        with self.timer("training"):
            metrics.update(self.optimise(rollouts, stats))
        if self.algorithm.uses_old_policy:
            with self.timer("sync"):
                metrics["old_decay"] = self.sync_old_policy()
        metrics.update(self.timer.metrics())
        metrics["global_step"] = self.global_step
        self.tracker.log(metrics, step=epoch)
        if self.dist.is_main and "eval_reward_mean" in metrics:
            save_reward_curve(self.tracker.metrics_path, self.run_dir / "reward_curve.png")
        return metrics

    # ------------------------------------------------------------------------------- sampling
    def _items(self, indices: Sequence[int]):
        items = [self.train_set[i] for i in indices]
        return items, [self._sources(item) for item in items]

    def _sources(self, item):
        """The item's source image centre-cropped to the resolution, or the list of its images."""
        images = [center_crop_resize(image, self.settings.model.resolution) for image in item.images]
        return images[0] if len(images) == 1 else images

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
                new_items, new_images = self._items(new)
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
        cond = self.policy.encode_condition([item.prompt for item in items], images)
        for row, gid in enumerate(gids):
            cache[gid] = cond.index_select([row])

    @torch.no_grad()
    def rollout(
        self, cond, *, adapter: str, sigmas: torch.Tensor, solver: str, deterministic: bool, generator=None,
        observe: VelocityNorms | None = None,
    ) -> SampleResult:  # fmt: skip
        """One batch rolled out from fresh noise with policy ``adapter`` (states and log-probs kept);
        noise from the global generator, or from ``generator`` (one ``torch.Generator`` or one per row).
        ``observe`` records the velocity norms of every step (and the reference's at the same points
        with ``monitors.velocity_reference``) without changing the rollout."""
        z = self.policy.initial_noise(len(cond), generator)
        velocity = lambda x, s: self.policy.velocity(x, s, cond, adapter=adapter)  # noqa: E731
        if observe is not None:
            reference = lambda x, s: self.policy.velocity(x, s, cond, adapter="ref")  # noqa: E731
            velocity = observe.wrap(
                velocity, reference if self.settings.monitors.velocity_reference else None
            )
        result = sample(
            velocity,
            z,
            sigmas.to(z.device),
            solver=solver,
            deterministic=deterministic,
            noise_level=self.settings.rollout.noise_level,
            generator=generator,
        )
        return result

    def edit_batch(self, cond, items, images, **rollout_options) -> tuple[SampleResult, list[RewardSample]]:
        """Rolls out one batch (see ``rollout``), decodes it and pairs each edit with its task."""
        result = self.rollout(cond, **rollout_options)
        edits = to_pil_batch(self.policy.decode(result.latents))
        samples = [
            _reward_sample(edit, image, item) for edit, image, item in zip(edits, images, items, strict=True)
        ]
        return result, samples

    def collect_rollouts(self, epoch: int) -> list[Rollout]:
        """Samples this rank's batches of the epoch and submits their rewards."""
        rollout_settings = self.settings.rollout
        cache: dict[int, Any] = {}
        rollouts = []
        batches = progress(
            range(self.plan.batches_per_epoch), desc=f"epoch {epoch} sampling", enabled=self.dist.is_main
        )
        for _ in batches:
            shared = (
                self.sampler.global_batch(self.sampler.epoch, self.sampler.position)
                if self.lockstep_encoding
                else None
            )
            items, images = self._items(self.sampler.next_batch())
            cond, group_ids = self._encode(items, images, cache, shared)
            result, samples = self.edit_batch(
                cond, items, images, adapter=self.algorithm.rollout_adapter, sigmas=self.sigmas,
                solver=rollout_settings.solver, deterministic=rollout_settings.deterministic,
            )  # fmt: skip
            rollout = Rollout(
                x0=result.latents,
                cond=cond,
                group_ids=group_ids,
                rewards=self.reward.submit(samples),
                fields=self.algorithm.rollout_fields(result),
                samples=samples if self.group_rewards else [],
            )
            rollouts.append(rollout)
        return rollouts

    def wait_for_rewards(self, rollouts: list[Rollout]) -> list[RewardOutput]:
        bar = progress(total=len(rollouts), desc="waiting for rewards", enabled=self.dist.is_main)
        outputs = []
        for rollout in rollouts:
            try:
                outputs.append(rollout.rewards.result())
            except Exception as error:  # the client already retried within its deadline
                raise TrainingError(f"reward scoring failed: {error}") from error
            bar.update(1)
        bar.close()
        return outputs

    # ------------------------------------------------------------------------------- advantages
    def compute_advantages(
        self, rollouts: list[Rollout], outputs: list[RewardOutput], metrics: dict[str, float]
    ) -> dict[str, torch.Tensor]:
        """Epoch-wide advantages, keep-mask and bans from every rank's rewards
        (docs/algorithm.md#4-advantages, #5-low-variance-group-filtering).

        Returns this rank's slice: ``advantages`` and ``mask`` aligned with the concatenated rollouts.
        """
        filtering = self.settings.group_filter
        local_rewards = torch.from_numpy(np.concatenate([o.total for o in outputs]))
        local_ids = torch.cat([r.group_ids for r in rollouts])
        rewards = distributed.all_gather_tensor(local_rewards.to(self.dist.device)).cpu()
        group_ids = distributed.all_gather_tensor(local_ids.to(self.dist.device)).cpu().tolist()
        if self.group_rewards:
            with self.timer("group_reward"):
                rewards = rewards + self.score_group_rewards(rollouts, group_ids, metrics)
        stats = group_advantages(group_ids, rewards, global_std=filtering.global_std)
        if (
            self.settings.rollout.group_size == 1
        ):  # no group spread: standardise over the epoch, as the original
            stats = dataclasses.replace(stats, advantages=global_advantages(rewards))
        mask, banned = group_filter(
            stats,
            group_ids,
            std_threshold=filtering.std_threshold,
            mean_threshold=filtering.mean_threshold,
            enabled=filtering.enabled,  # off: keep every scored sample, ban nothing
        )
        self.sampler.ban(self.train_set.group_keys[gid] for gid in banned)
        self._reward_metrics(outputs, rewards, stats, group_ids, metrics)
        metrics["kept_ratio"] = float(mask.float().mean())
        self.last_epoch_stats = {"all_advantages": stats.advantages, "all_mask": mask, "group_ids": group_ids}
        n = local_rewards.numel()
        mine = slice(self.dist.rank * n, (self.dist.rank + 1) * n)
        return {"advantages": stats.advantages[mine].float(), "mask": mask[mine].bool()}

    def score_group_rewards(
        self, rollouts: list[Rollout], group_ids: list[int], metrics: dict[str, float]
    ) -> torch.Tensor:
        """``sum_f w_f r_f`` of the group rewards over every rank's samples (gathered order).

        The edits are gathered from every rank first, so a group spread over several ranks is
        judged as one group; each rank asks the judge for its share of the pairs.
        """
        local = np.stack([np.asarray(s.edited_image.convert("RGB")) for r in rollouts for s in r.samples])
        images = distributed.all_gather_tensor(torch.from_numpy(local).to(self.dist.device)).cpu().numpy()

        def gather(values: np.ndarray) -> np.ndarray:
            stacked = distributed.all_gather_tensor(torch.from_numpy(values[None]).to(self.dist.device))
            return stacked.cpu().numpy()

        def task_of(gid: int):
            item = self.train_set[gid]
            return (
                center_crop_resize(item.image, self.settings.model.resolution),
                item.prompt,
                item.requirement,
            )

        total = torch.zeros(len(group_ids), dtype=torch.float64)
        for name, (weight, reward) in self.group_rewards.items():
            result = reward(
                images, group_ids, task_of, epoch=self.sampler.epoch, rank=self.dist.rank,
                world_size=self.dist.world_size, gather=gather,
            )  # fmt: skip
            total += weight * torch.from_numpy(result.rewards)
            metrics[f"reward_{name}"] = _mean_ignoring_nan(result.rewards)
            metrics[f"{name}_judge_calls"] = float(result.judge_calls)
            metrics[f"{name}_pairs"] = float(result.pairs)
        return total

    def _reward_metrics(self, outputs, rewards, stats, group_ids, metrics: dict[str, float]) -> None:
        for name in outputs[0].components:
            local = torch.from_numpy(np.concatenate([o.components[name] for o in outputs]))
            gathered = distributed.all_gather_tensor(local.to(self.dist.device)).cpu().numpy()
            metrics[f"reward_{name}"] = _mean_ignoring_nan(gathered)
        metrics["reward_mean"] = _mean_ignoring_nan(rewards.numpy())
        metrics["reward_failed"] = float((~torch.isfinite(rewards)).sum())
        first = {gid: i for i, gid in reversed(list(enumerate(group_ids)))}
        group_std = stats.group_std[list(first.values())]
        metrics["reward_std_mean"] = float(group_std.nanmean())
        metrics["zero_std_ratio"] = _zero_std_ratio(rewards, group_ids)
        metrics["banned_groups"] = float(len(self.sampler.banned))
        # The original's stat-tracker numbers: mean samples per group this epoch, and how many
        # distinct groups have been trained on since the run began (kept across resumes).
        self.trained_groups.update(first)
        metrics["group_size"] = len(group_ids) / len(first)
        metrics["trained_prompt_num"] = float(len(self.trained_groups))

    # ------------------------------------------------------------------------------- training
    def optimise(self, rollouts: list[Rollout], stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """The algorithm's update over this rank's samples; returns averaged diagnostics.

        ``train.num_inner_epochs`` passes over the samples, each in a fresh random order, split into
        micro-batches of ``per_gpu_batch``; every micro-batch runs ``T`` steps of
        ``Algorithm.loss`` (one backward each) and AdamW steps every ``gradient_accumulation_steps``
        micro-batches.
        """
        x0 = torch.cat([r.x0 for r in rollouts])
        cond = type(rollouts[0].cond).cat([r.cond for r in rollouts])
        fields = {name: torch.cat([r.fields[name] for r in rollouts]) for name in rollouts[0].fields}
        num_grid = len(self.sigmas) - 1  # the N rollout steps (the final sigma 0 is not trained)
        try:
            num_t = self.algorithm.train_steps(num_grid)
        except ValueError as error:
            raise TrainingError(str(error)) from error
        sums: dict[str, torch.Tensor] = {}
        grad_norms: list[float] = []
        count = 0
        for inner in range(self.settings.optimizer.inner_epochs):
            order = torch.randperm(len(x0))
            micro_starts = range(0, len(x0), self.plan.per_gpu_batch)
            desc = "training" if inner == 0 else f"training (inner epoch {inner})"
            for micro, start in enumerate(progress(micro_starts, desc=desc, enabled=self.dist.is_main)):
                rows = order[start : start + self.plan.per_gpu_batch]
                batch = TrainBatch(
                    x0=x0[rows],
                    advantages=stats["advantages"][rows],
                    mask=stats["mask"][rows],
                    sigmas=self.sigmas,
                    fields={name: value[rows] for name, value in fields.items()},
                )
                forward = BoundPolicy(self.policy, cond.index_select(rows))  # shared by the T steps
                steps = self.algorithm.step_plan(len(rows), num_grid)
                for j in range(num_t):
                    info = self._train_timestep(
                        forward, batch, steps[:, j], self.plan.gradient_accumulation_steps * num_t
                    )
                    for key, value in info.items():
                        sums[key] = sums[key] + value if key in sums else value
                    count += 1
                if (micro + 1) % self.plan.gradient_accumulation_steps == 0:
                    self._check_finite(sums, count)
                    grad_norms.append(self.optimizer_step())
        out = self._mean_over_ranks(sums, count)
        out["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

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

    def _train_timestep(
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
        if self.dist.is_distributed and not self.parallel.sharded_transformer:
            flat = torch.cat([g.reshape(-1) for g in grads])
            distributed.all_reduce_mean(flat)
            offset = 0
            for p, g in zip(self.params, grads, strict=True):
                p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
                offset += g.numel()
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, self.settings.optimizer.max_grad_norm))
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
        decay = old_policy_decay(self.global_step, self.settings.optimizer.old_policy_decay_type)
        update_old_policy(local_shards(self.policy.old_parameters()), local_shards(self.params), decay)
        return decay

    # ------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Mean eval reward of the EMA policy on the test split (deterministic ``flow``)."""
        evaluation = self.settings.evaluation
        indices = list(range(self.dist.rank, len(self.test_set), self.dist.world_size))
        real = len(indices)
        if self.parallel.lockstep:  # the same number of (collective) forwards on every rank
            per_rank = -(-len(self.test_set) // self.dist.world_size)
            indices += [indices[-1] if indices else 0] * (per_rank - real)
        scores, grid, monitors = [], [], []
        context = (
            self.ema.applied(local_shards(self.params)) if self.ema is not None else contextlib.nullcontext()
        )
        with self.timer("evaluation"), context:
            for start in progress(
                range(0, len(indices), evaluation.batch_per_gpu), desc="eval", enabled=self.dist.is_main
            ):
                batch = indices[start : start + evaluation.batch_per_gpu]
                items = [self.test_set[i] for i in batch]
                images = [self._sources(item) for item in items]
                cond = self.policy.encode_condition([item.prompt for item in items], images)
                keep = max(0, min(len(items), real - start))  # drop lockstep padding
                if not self.parallel.sharded_transformer:  # padding rows need no rollout
                    if keep == 0:
                        continue
                    items, images, cond = items[:keep], images[:keep], cond.index_select(list(range(keep)))
                norms = VelocityNorms()
                result, samples = self.edit_batch(
                    cond, items, images, adapter="default", sigmas=self.eval_sigmas,
                    solver=evaluation.solver, deterministic=evaluation.deterministic,
                    generator=[self._eval_generator(epoch, i) for i in batch[: len(items)]], observe=norms,
                )  # fmt: skip
                samples = samples[:keep]
                if not samples:
                    continue
                output = self.eval_reward(samples)
                scores.append(output)
                monitors.append(self._monitor_batch(samples, result.latents, norms, output.total))
                grid.extend(
                    (x.source_image, x.edited_image, float(s) if math.isfinite(s) else None, x.instruction)
                    for x, s in zip(samples, output.total, strict=True)
                )
        metrics = self._gather_eval_scores(scores)
        metrics.update(self._gather_monitors(monitors))
        if self.dist.is_main and grid:
            path = save_eval_grid(grid[:8], self.run_dir / "samples" / f"eval_epoch{epoch:05d}.png")
            self.tracker.log_image("eval_grid", path, step=epoch)
        return metrics

    def _eval_generator(self, epoch: int, index: int) -> torch.Generator:
        """The noise of test item ``index`` at ``epoch``: its own seeded generator, so evaluation
        never draws from the training generators (rollouts and timesteps do not depend on whether or
        how often evaluation ran, nor on lockstep padding) and a score does not depend on the rank
        or world size that evaluated the item."""
        seed = int(np.random.SeedSequence([self.settings.seed, epoch, index]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def _monitor_batch(
        self, samples: list[RewardSample], latents: torch.Tensor, norms: VelocityNorms, eval_total: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The reward-hacking monitors of one evaluation batch (``edit_r1/monitors.py``)."""
        train_reward = (lambda batch: self.gap_reward(batch).total) if self.gap_reward is not None else None
        return batch_monitors(
            samples, latents, norms, eval_total,
            threshold=self.settings.monitors.change_threshold, train_reward=train_reward,
        )  # fmt: skip

    def _gather_monitors(self, batches: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
        """``monitor/*`` means over every rank's held-out edits (a rank without edits sends none)."""
        # Rank 0 always has edits: its names make every rank gather the same arrays.
        names = distributed.broadcast_object(sorted(batches[0]) if batches else [])
        gathered = {}
        for name in names:
            local = np.concatenate([b[name] for b in batches]) if batches else np.zeros(0)
            values = distributed.all_gather_tensor(torch.from_numpy(local).to(self.dist.device))
            gathered[name] = values.cpu().numpy()
        return summarise(gathered)

    def _gather_eval_scores(self, outputs: list[RewardOutput]) -> dict[str, float]:
        names = list(self.eval_reward.weights)
        local = {
            name: np.concatenate([o.components[name] for o in outputs]) if outputs else np.zeros(0)
            for name in names
        }
        local["mean"] = np.concatenate([o.total for o in outputs]) if outputs else np.zeros(0)
        metrics = {}
        for name, values in local.items():
            gathered = (
                distributed.all_gather_tensor(torch.from_numpy(values).to(self.dist.device)).cpu().numpy()
            )
            metrics[f"eval_reward_{name}"] = _mean_ignoring_nan(gathered)
        return metrics

    # ------------------------------------------------------------------------------- checkpoints
    def save(self, epoch: int) -> Path:
        """Full state after ``epoch`` epochs, atomically: every rank writes its shards of the weights,
        old policy, EMA and optimizer (DCP), plus the exported EMA weights (LoRA file or diffusers
        transformer folder, gathered once to rank 0)."""
        state = CheckpointState(
            sharded=self._sharded_state(),
            metadata={
                "epoch": epoch,
                "global_step": self.global_step,
                "sampler": self.sampler.state_dict(),
                "trained_groups": sorted(self.trained_groups),
            },
            config=self.config.to_dict(),  # the user's keys, as they ran
            rng=distributed.get_rng_state(),
        )
        checkpoints = self.settings.checkpoints
        try:
            path = save_checkpoint(
                Path(checkpoints.root) if checkpoints.root else self.run_dir,
                epoch,
                state,
                keep_last=checkpoints.keep_last,  # None = keep every checkpoint
                dist_info=self.dist,
                exporters=[self._exporter()],
            )
        except CheckpointWriteError as error:
            # Stop: training on without a checkpoint would risk more work than it saves.
            raise TrainingError(f"checkpoint after epoch {epoch} not saved: {error}") from error
        distributed.rank0_print(f"saved {path}")
        return path

    def _sharded_state(self) -> dict[str, dict[str, Any]]:
        """Weights, old policy, EMA and AdamW state by parameter name, as this rank holds them
        (DTensors when sharded): the layout ``torch.distributed.checkpoint`` reshards on load."""
        names = self.policy.trainable_parameter_names()
        state: dict[str, dict[str, Any]] = {
            "default": {n: p.detach() for n, p in zip(names, self.params, strict=True)},
            "optimizer": {n: self._adam_state(p) for n, p in zip(names, self.params, strict=True)},
        }
        if self.algorithm.uses_old_policy:  # an algorithm that never reads it neither saves it
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

    def _exporter(self):
        """Gathers the exported weights (EMA if kept, else the trained ones) once to rank 0 (a
        collective, so here on every rank) and returns the rank-0 writer of the export."""
        source = (
            [like_param(s, p) for s, p in zip(self.ema.shadow, self.params, strict=True)]
            if self.ema is not None
            else self.params
        )
        weights = gather_to_rank0(source, self.dist.is_main)

        def export(directory: Path) -> None:
            if self.settings.model.use_lora:
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

    def _resume(self, path: str) -> None:
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
        self.trained_groups = set(state.metadata.get("trained_groups", []))
        self.global_step = int(state.metadata["global_step"])
        self.first_epoch = int(state.metadata["epoch"])
        if state.rng is not None:
            distributed.set_rng_state(state.rng)
        self.tracker.truncate_after(self.first_epoch - 1)
        distributed.rank0_print(f"resumed from {checkpoint} at epoch {self.first_epoch}")
