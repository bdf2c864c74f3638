"""Wiring: the training components built from the typed settings (``build_components``).

The order is part of the contract, since it fixes every random draw: the backend flags, the
seeded LoRA init (identical on every rank, then broadcast from rank 0 to make it certain), the
sharding, the rank-dependent rollout seed, data, algorithm, optimizer, EMA, rewards, schedules,
the tracker, and last the resumed state (weights, sampler and RNG) or ``old = theta``.
This is the one module that reaches the model registry and the config boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edit_r1 import distributed
from edit_r1.algo import EMA, Algorithm, build_algorithm
from edit_r1.config import BatchPlan, ConfigError
from edit_r1.data import EditDataset, GroupBatchSampler, check_source_counts
from edit_r1.inference import copy_lora_into_policy
from edit_r1.lora_files import read_lora
from edit_r1.models.base import EditPolicy
from edit_r1.models.registry import load_policy, policy_class
from edit_r1.monitors import same_reward
from edit_r1.parallelize import local_shards, parallelize_policy
from edit_r1.rewards import AsyncRewardScorer, CombinedReward, build_combined_reward
from edit_r1.rewards.registry import build_group_rewards, judge_templates, split_reward_spec
from edit_r1.sampling import sigma_schedule
from edit_r1.settings import ModelSettings, TrainingSettings, compute_dtype
from edit_r1.tracking import Timer, Tracker

from .checkpointer import Checkpointer, Restored
from .editing import PolicyEditor
from .epoch_scorer import EpochScorer
from .evaluator import EvalMetric, Evaluator
from .forward_counter import ForwardCounter, RunCost
from .rollout_collector import RolloutCollector
from .updater import Updater


@dataclasses.dataclass
class Components:
    """What :class:`edit_r1.trainer.Trainer` runs: the parts, the shared timer and tracker, and the
    resumed state (``None`` for a fresh run)."""

    collector: RolloutCollector
    scorer: EpochScorer
    updater: Updater
    evaluator: Any  # an Evaluator, or any object with due(epoch) and evaluate(epoch)
    checkpointer: Checkpointer
    timer: Timer
    tracker: Tracker
    run_dir: Path
    restored: Restored | None
    cost: RunCost  # the transformer forwards spent, by phase (edit_r1/training/forward_counter.py)


def set_backend_flags(allow_tf32: bool) -> None:
    """``allow_tf32`` for CUDA matmuls and cuDNN; cuDNN deterministic and without autotuning, as
    the original sets them (``train_nft_qwen_image_edit.py`` ~83-84 and ~506-508)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def build_components(
    settings: TrainingSettings,
    dist: distributed.DistInfo,
    *,
    plan: BatchPlan,
    logged_config: dict[str, Any],
    reward: CombinedReward | None = None,
    algorithm: Algorithm | None = None,
    evaluator: Any = None,
    eval_metrics: Sequence[EvalMetric] = (),
) -> Components:
    """Every component of a run (``logged_config``: the user's config as it runs). Handed in, not
    built: ``reward`` (the per-batch training reward), ``algorithm``, ``evaluator`` (any object with
    ``due(epoch)``, ``evaluate(epoch)``); ``eval_metrics``: extras for the built evaluator."""
    run_dir = Path(settings.logdir) / settings.run_name
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    timer = Timer(cuda_sync=dist.device.type == "cuda")
    policy, parallel = build_policy(settings, dist)
    train_set, test_set, sampler = build_data(settings, dist, plan, policy)
    algorithm = algorithm if algorithm is not None else build_algorithm(settings.algorithm, settings.rollout)
    params = policy.trainable_parameters()
    optimizer = build_optimizer(params, settings)
    ema = EMA(local_shards(params)) if settings.optimizer.ema else None  # this rank's shards
    reward, group_rewards, eval_reward = build_rewards(settings, reward)
    sigmas = sigma_schedule(settings.rollout.steps, policy.image_seq_len, policy.scheduler_config)
    eval_sigmas = sigma_schedule(settings.evaluation.steps, policy.image_seq_len, policy.scheduler_config)
    tracker = build_tracker(settings, dist, run_dir, logged_config, reward, group_rewards)
    editor = build_editor(policy, settings)
    collector = RolloutCollector(
        editor=editor, dataset=train_set, sampler=sampler, algorithm=algorithm, reward=AsyncRewardScorer(reward),
        sigmas=sigmas, rollout=settings.rollout, batches_per_epoch=plan.batches_per_epoch,
        lockstep_encoding=parallel.sharded_text_encoders, keep_samples=bool(group_rewards), show_progress=dist.is_main,
        reward_wait_s=settings.rewards.client.wait_deadline_s,
    )  # fmt: skip
    scorer = EpochScorer(
        dataset=train_set, sampler=sampler, group_rewards=group_rewards, filtering=settings.group_filter,
        group_size=settings.rollout.group_size, resolution=settings.model.resolution, dist=dist, timer=timer,
    )  # fmt: skip
    updater = Updater(
        policy=policy, params=params, algorithm=algorithm, optimizer=optimizer, ema=ema, sigmas=sigmas,
        per_gpu_batch=plan.per_gpu_batch, accumulation_steps=plan.gradient_accumulation_steps,
        settings=settings.optimizer, dist=dist, sharded_transformer=parallel.sharded_transformer,
    )  # fmt: skip
    if evaluator is None:
        evaluator = Evaluator(
            editor=editor, test_set=test_set, reward=eval_reward, sigmas=eval_sigmas, settings=settings.evaluation,
            seed=settings.seed, dist=dist, lockstep=parallel.lockstep, sharded_transformer=parallel.sharded_transformer,
            ema=ema, params=params, timer=timer, tracker=tracker, run_dir=run_dir, monitors=settings.monitors,
            gap_reward=gap_reward(settings, reward, group_rewards), metrics=eval_metrics,
        )  # fmt: skip
    checkpointer = Checkpointer(
        policy=policy, params=params, optimizer=optimizer, ema=ema, sampler=sampler,
        save_old=algorithm.uses_old_policy, settings=settings.checkpoints, use_lora=settings.model.use_lora,
        run_dir=run_dir, logged_config=logged_config, dist=dist,
    )  # fmt: skip
    restored = start_state(checkpointer, policy, algorithm.uses_old_policy, settings, tracker, scorer, updater)  # fmt: skip
    parts = (collector, scorer, updater, evaluator, checkpointer, timer, tracker, run_dir, restored)
    return Components(*parts, cost=run_cost(policy, restored))  # hooked last: no forward before epoch 0


def run_cost(policy: EditPolicy, restored: Restored | None) -> RunCost:
    """The forward counter on every transformer of ``policy``, from a resumed run's totals."""
    return RunCost(ForwardCounter(policy.transformer_modules()), restored.cost if restored else None)


def build_policy(settings: TrainingSettings, dist: distributed.DistInfo) -> tuple[EditPolicy, Any]:
    """The policy, sharded (``parallelize_policy``'s plan returned with it): the backend flags, a
    seeded LoRA init identical on every rank and broadcast from rank 0, then the rank-dependent
    seed of the rollout noise."""
    set_backend_flags(settings.model.allow_tf32)
    torch.manual_seed(settings.seed)  # identical LoRA init on every rank
    policy = load_training_policy(settings, dist)
    broadcast_trainable(policy, dist)
    parallel = parallelize_policy(policy, settings.parallel, dist)
    distributed.seed_everything(settings.seed, dist.rank)  # rank-dependent rollout noise
    return policy, parallel


def build_data(
    settings: TrainingSettings, dist: distributed.DistInfo, plan: BatchPlan, policy: EditPolicy
) -> tuple[EditDataset, EditDataset, GroupBatchSampler]:
    """The train and test splits (checked against the policy's reference-image limit) and the
    group sampler of this rank."""
    train_set, test_set = EditDataset(settings.dataset, "train"), EditDataset(settings.dataset, "test")
    check_source_counts([train_set, test_set], policy.max_reference_images, type(policy).__name__)
    sampler = GroupBatchSampler(
        train_set.group_keys, batch_size=plan.per_gpu_batch, k=settings.rollout.group_size,
        num_replicas=dist.world_size, rank=dist.rank, seed=settings.seed, batches_per_epoch=plan.batches_per_epoch,
    )  # fmt: skip
    return train_set, test_set, sampler


def build_rewards(
    settings: TrainingSettings, reward: CombinedReward | None
) -> tuple[CombinedReward, dict[str, tuple[float, Any]], CombinedReward]:
    """The per-batch training reward (``reward`` when handed in), the group rewards (scored after
    sampling, since they need every rank's edits of a group) and the evaluation reward."""
    rewards = settings.rewards
    if reward is None:
        reward = build_combined_reward(rewards.weights, rewards.client)
    group_rewards = build_group_rewards(
        split_reward_spec(rewards.weights)[1], rewards.client, seed=settings.seed
    )
    return reward, group_rewards, build_combined_reward(rewards.eval_weights, rewards.eval_client)


def build_editor(policy: EditPolicy, settings: TrainingSettings) -> PolicyEditor:
    """The editor shared by the rollouts and the evaluation."""
    return PolicyEditor(
        policy, resolution=settings.model.resolution, noise_level=settings.rollout.noise_level,
        velocity_reference=settings.monitors.velocity_reference,
    )  # fmt: skip


def gap_reward(
    settings: TrainingSettings, reward: CombinedReward, group_rewards: dict[str, tuple[float, Any]]
) -> CombinedReward | None:
    """The training reward of the held-out edits, for ``monitor/reward_gap``: only when it can
    differ from the evaluation reward, and not for group rewards (they need a whole group)."""
    rewards = settings.rewards
    same = same_reward(rewards.weights, rewards.eval_weights, not rewards.separate_eval_judge)
    return None if same or group_rewards else reward


def build_tracker(
    settings: TrainingSettings,
    dist: distributed.DistInfo,
    run_dir: Path,
    logged_config: dict[str, Any],
    reward: CombinedReward,
    group_rewards: dict[str, tuple[float, Any]],
) -> Tracker:
    """The metrics tracker; the logged config carries the judges' prompts (rank 0 asks them)."""
    templates = judge_templates(reward, dist.is_main, group_rewards)
    for name, prompt in templates.get("judge_templates", {}).items():
        distributed.rank0_print(f"judge prompt of {name}: {prompt}")
    return Tracker(
        run_dir, enabled=dist.is_main, wandb=settings.wandb, run_name=settings.run_name,
        config={**logged_config, **templates},
    )  # fmt: skip


def start_state(
    checkpointer: Checkpointer,
    policy: EditPolicy,
    uses_old_policy: bool,
    settings: TrainingSettings,
    tracker: Tracker,
    scorer: EpochScorer,
    updater: Updater,
) -> Restored | None:
    """The resumed state handed to the components that carry it across epochs, or for a fresh run
    ``old = theta`` before epoch 0 (for an algorithm that reads an old policy)."""
    if not settings.checkpoints.resume_from:
        if uses_old_policy:
            policy.copy_default_to_old()
        return None
    restored = checkpointer.restore(settings.checkpoints.resume_from)
    scorer.trained_groups = set(restored.trained_groups)
    updater.global_step = restored.global_step
    tracker.truncate_after(restored.epoch - 1)
    return restored


def build_optimizer(params: list[torch.nn.Parameter], settings: TrainingSettings) -> torch.optim.Optimizer:
    optimizer = settings.optimizer
    return torch.optim.AdamW(
        params,
        lr=optimizer.learning_rate,
        betas=optimizer.betas,
        weight_decay=optimizer.weight_decay,
        eps=optimizer.epsilon,
    )


def load_training_policy(settings: TrainingSettings, dist: distributed.DistInfo) -> EditPolicy:
    """The family's policy through the registry, with the compute dtype, LoRA, speed switches and
    the family's own options; a sharded run never builds a whole transformer on the device."""
    model, device = settings.model, dist.device
    sharded = settings.parallel.fsdp_transformer and dist.is_distributed
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
        shard_device=device if sharded else None,  # old/ref copies wait on the meta device
        shard_text_encoders=settings.parallel.fsdp_text_encoder and dist.is_distributed,
        **policy_class(model.family).options_from_settings(model),
    )
    if model.warm_start_lora:
        warm_start(policy, model)
    return policy


def warm_start(policy: EditPolicy, model: ModelSettings) -> None:
    """Start the trained adapter from an existing LoRA (``train.lora_path``), as the original's
    ``PeftModel.from_pretrained``; ``old`` copies it before epoch 0 like any initial weights."""
    path = model.warm_start_lora
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
def broadcast_trainable(policy: EditPolicy, dist: distributed.DistInfo) -> None:
    """Rank 0's trainable weights on every rank (LoRA init is seeded, this makes it certain)."""
    if not distributed.is_dist_active():
        return
    for p in policy.trainable_parameters():
        if p.device == dist.device:
            torch.distributed.broadcast(p.data, src=0)
        else:  # waiting on the host to be sharded: through the device, one tensor at a time
            on_device = p.data.to(dist.device)
            torch.distributed.broadcast(on_device, src=0)
            p.data.copy_(on_device)
