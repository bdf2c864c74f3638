"""Typed settings: the config sections the code consumes, read once at the boundary.

A config (``config/*.py``, ml_collections) keeps the original release's keys for users, and
``config/base.py`` holds every default (the one place; its ``reward_client`` section is built from
:class:`RewardClientSettings`' defaults), so the section dataclasses here have none. The code below the boundary receives the
frozen dataclasses here instead; their field names say what each value is
(``sample.num_image_per_prompt`` is the ``group_size``) and each field's docstring line names the
key it comes from. Each ``from_config`` is the only place that knows where its values live in a
config. An algorithm's own keys are read by its settings dataclass in ``edit_r1/algo/``
(:class:`~edit_r1.algo.AlgorithmSettings` holds the chosen one's).

:func:`edit_r1.config.prepare_training` is the boundary itself: validate (one ``ConfigError``
naming every bad key and value), plan the batches, write the plan into the config's ``0 = auto``
fields (the logged config records what ran) and build :class:`TrainingSettings` here.

The valid values of an enumerated key are declared once, by the code that uses them (the solvers
in ``edit_r1.sampling``, the mixed-precision dtypes and LoRA inits here, ...), and the key table
``edit_r1/config_keys.py`` names where each lives.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import ml_collections
import torch

from edit_r1.algo import AlgorithmSettings
from edit_r1.rewards.client import EVAL_SERVER_ENV, RewardClientSettings
from edit_r1.rewards.registry import parse_reward_spec
from edit_r1.tracking import WandbSettings, resolve_wandb_settings

if TYPE_CHECKING:  # the model stack (diffusers, peft) loads when settings are built, not on import
    from edit_r1.models.lora import LoraSettings
    from edit_r1.parallelize import ParallelOptions

# ------------------------------------------------------------------------------------------------
# The two enumerations the settings convert (the key table checks a config against them)
# ------------------------------------------------------------------------------------------------
# mixed_precision -> the compute dtype (fp16 only on CUDA: compute_dtype).
MIXED_PRECISION_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
)
# train.lora_init -> peft's init_lora_weights ("default" is peft's True: Kaiming-uniform A).
LORA_INITS: Mapping[str, str | bool] = MappingProxyType({"gaussian": "gaussian", "default": True})


def compute_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 on any device (CPUs run bf16 too), fp16 on CUDA only, else float32.
    Trained weights, optimizer state, EMA and old policy stay float32 (see EditPolicy)."""
    dtype = MIXED_PRECISION_DTYPES[mixed_precision]
    return torch.float32 if dtype == torch.float16 and device.type != "cuda" else dtype


# ------------------------------------------------------------------------------------------------
# The sections
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """How training rollouts are sampled (``sample.*``).

    ``steps`` (``sample.num_steps``): solver steps ``N``; ``solver`` (``sample.solver``);
    ``deterministic`` (``sample.deterministic``): an ODE solve, no injected noise; ``noise_level``
    (``sample.noise_level``): eta of the stochastic solvers; ``group_size``
    (``sample.num_image_per_prompt``): ``k`` rollouts per (instruction, image).
    """

    steps: int
    solver: str
    deterministic: bool
    noise_level: float
    group_size: int

    @classmethod
    def from_config(cls, config: Any) -> RolloutSettings:
        sample = config.sample
        return cls(
            steps=int(sample.num_steps),
            solver=str(sample.solver),
            deterministic=bool(sample.deterministic),
            noise_level=float(sample.noise_level),
            group_size=int(sample.num_image_per_prompt),
        )


@dataclasses.dataclass(frozen=True)
class GroupFilterSettings:
    """Advantages and the low-variance group filter (``docs/algorithm.md``, advantages and filtering).

    ``global_std`` (``sample.global_std``): divide by the std of all the epoch's rewards;
    ``enabled`` (``sample.ban_prompt``): mask and ban groups; ``std_threshold``
    (``sample.ban_std_thres``) and ``mean_threshold`` (``sample.ban_mean_thres``): a group with
    ``std <= std_threshold`` or ``mean >= mean_threshold`` is masked, with both it is banned.
    """

    global_std: bool
    enabled: bool
    std_threshold: float
    mean_threshold: float

    @classmethod
    def from_config(cls, config: Any) -> GroupFilterSettings:
        sample = config.sample
        return cls(
            global_std=bool(sample.global_std),
            enabled=bool(sample.ban_prompt),
            std_threshold=float(sample.ban_std_thres),
            mean_threshold=float(sample.ban_mean_thres),
        )


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """Evaluation of the EMA policy on the test split.

    ``every_epochs`` (``eval_freq``); ``steps`` (``sample.eval_num_steps``); ``solver``
    (``sample.eval_solver``); ``deterministic`` (``sample.eval_deterministic``); ``batch_per_gpu``
    (``sample.test_batch_size``, after the batch plan filled its ``0 = auto``).
    """

    every_epochs: int
    steps: int
    solver: str
    deterministic: bool
    batch_per_gpu: int

    @classmethod
    def from_config(cls, config: Any) -> EvaluationSettings:
        sample = config.sample
        return cls(
            every_epochs=int(config.eval_freq),
            steps=int(sample.eval_num_steps),
            solver=str(sample.eval_solver),
            deterministic=bool(sample.eval_deterministic),
            batch_per_gpu=int(sample.test_batch_size),
        )


@dataclasses.dataclass(frozen=True)
class MonitorSettings:
    """The evaluation's reward-hacking monitors (``edit_r1/monitors.py``).

    ``change_threshold`` (``monitors.change_threshold``): a pixel whose largest channel moved by
    more than this counts as changed; ``velocity_reference`` (``monitors.velocity_reference``): also
    evaluate the reference policy at every evaluation step (``monitor/velocity_ratio``).
    """

    change_threshold: float
    velocity_reference: bool

    @classmethod
    def from_config(cls, config: Any) -> MonitorSettings:
        monitors = config.monitors
        return cls(
            change_threshold=float(monitors.change_threshold),
            velocity_reference=bool(monitors.velocity_reference),
        )


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, clipping and the update loop (``train.*``).

    ``learning_rate`` (``train.learning_rate``); ``betas`` (``train.adam_beta1``,
    ``train.adam_beta2``); ``weight_decay`` (``train.adam_weight_decay``); ``epsilon``
    (``train.adam_epsilon``); ``max_grad_norm`` (``train.max_grad_norm``); ``inner_epochs``
    (``train.num_inner_epochs``): passes over an epoch's rollouts; ``ema`` (``train.ema``): keep an
    EMA of the trained weights; ``old_policy_decay_type`` (``decay_type``): the schedule of
    ``old <- d old + (1 - d) theta``.
    """

    learning_rate: float
    betas: tuple[float, float]
    weight_decay: float
    epsilon: float
    max_grad_norm: float
    inner_epochs: int
    ema: bool
    old_policy_decay_type: int

    @classmethod
    def from_config(cls, config: Any) -> OptimizerSettings:
        train = config.train
        return cls(
            learning_rate=float(train.learning_rate),
            betas=(float(train.adam_beta1), float(train.adam_beta2)),
            weight_decay=float(train.adam_weight_decay),
            epsilon=float(train.adam_epsilon),
            max_grad_norm=float(train.max_grad_norm),
            inner_epochs=int(train.num_inner_epochs),
            ema=bool(train.ema),
            old_policy_decay_type=int(config.decay_type),
        )


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The policy to load and how it computes.

    ``family`` (``model_family``); ``pretrained`` (``pretrained.model``); ``resolution``;
    ``use_lora``; ``lora`` (``train.lora_rank``, ``train.lora_alpha``, ``train.lora_init``,
    ``train.lora_target_modules``); ``warm_start_lora`` (``train.lora_path``, "" = none);
    ``gradient_checkpointing`` (``train.gradient_checkpointing``); ``mixed_precision``;
    ``allow_tf32``; ``max_text_length`` (``max_sequence_length``, None = the family's);
    ``attention_backend`` and ``compile_mode`` (None = the default); ``compile_transformer``;
    the family options ``condition_area``, ``guidance_scale`` (``sample.guidance_scale``) and
    ``true_cfg_scale`` (``sample.true_cfg_scale``), read by the family's ``options_from_settings``.
    """

    family: str
    pretrained: str
    resolution: int
    use_lora: bool
    lora: LoraSettings
    warm_start_lora: str
    gradient_checkpointing: bool
    mixed_precision: str
    allow_tf32: bool
    max_text_length: int | None
    attention_backend: str | None
    compile_transformer: bool
    compile_mode: str | None
    condition_area: int
    guidance_scale: float
    true_cfg_scale: float

    @classmethod
    def from_config(cls, config: Any) -> ModelSettings:
        from edit_r1.models.lora import LoraSettings

        train = config.train
        lora = LoraSettings(
            rank=int(train.lora_rank),
            alpha=train.lora_alpha,  # as written: an error message quotes it
            init=LORA_INITS[train.lora_init],
            target_modules=tuple(train.lora_target_modules),
        )
        return cls(
            family=str(config.model_family),
            pretrained=str(config.pretrained.model),
            resolution=int(config.resolution),
            use_lora=bool(config.use_lora),
            lora=lora,
            warm_start_lora=str(train.lora_path),
            gradient_checkpointing=bool(train.gradient_checkpointing),
            mixed_precision=str(config.mixed_precision),
            allow_tf32=bool(config.allow_tf32),
            max_text_length=int(config.max_sequence_length) or None,
            attention_backend=config.attention_backend or None,
            compile_transformer=bool(config.compile_transformer),
            compile_mode=config.compile_mode or None,
            condition_area=int(config.condition_area),
            guidance_scale=float(config.sample.guidance_scale),
            true_cfg_scale=float(config.sample.true_cfg_scale),
        )


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """Checkpoints and resuming.

    ``every_epochs`` (``save_freq``); ``root`` (``save_dir``, None = the run directory);
    ``keep_last`` (``num_checkpoint_limit``, None = keep every checkpoint); ``resume_from``
    (``resume_from``, "" = a fresh run).
    """

    every_epochs: int
    root: str | None
    keep_last: int | None
    resume_from: str

    @classmethod
    def from_config(cls, config: Any) -> CheckpointSettings:
        return cls(
            every_epochs=int(config.save_freq),
            root=str(config.save_dir) or None,
            keep_last=int(config.num_checkpoint_limit) or None,
            resume_from=str(config.resume_from),
        )


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """What scores the edits.

    ``weights`` (``reward_fn``) and ``eval_weights`` (``eval_reward_fn``): reward name -> weight;
    ``client`` (``reward_client``, completed from ``REWARD_SERVER`` and ``REWARD_SERVER_API_KEY``):
    how the judge is reached (:class:`RewardClientSettings`); ``eval_client``: the same with the
    server ``EVAL_REWARD_SERVER`` when that is set (a held-out judge for evaluation;
    ``separate_eval_judge`` says so). The environment is read here, at the boundary, and nowhere
    below it.
    """

    weights: Mapping[str, float]
    eval_weights: Mapping[str, float]
    client: RewardClientSettings
    eval_client: RewardClientSettings
    separate_eval_judge: bool

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] = os.environ) -> RewardSettings:
        client = RewardClientSettings.from_mapping(config.reward_client).resolved(environ)
        eval_server = environ.get(EVAL_SERVER_ENV)
        return cls(
            weights=MappingProxyType(parse_reward_spec(_plain(config.reward_fn))),
            eval_weights=MappingProxyType(parse_reward_spec(_plain(config.eval_reward_fn))),
            client=client,
            eval_client=dataclasses.replace(client, server=eval_server) if eval_server else client,
            separate_eval_judge=bool(eval_server),
        )


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Everything a training run reads, by section. ``seed``; ``num_epochs``; ``dataset`` (its
    directory); ``run_name`` and ``logdir`` (the run directory ``logdir/run_name``);
    ``dist_timeout_s`` (the process group's timeout, set when the group is made: ``edit_r1.cli``)."""

    seed: int
    num_epochs: int
    dataset: str
    logdir: str
    run_name: str
    dist_timeout_s: float
    model: ModelSettings
    parallel: ParallelOptions
    rollout: RolloutSettings
    group_filter: GroupFilterSettings
    algorithm: AlgorithmSettings
    optimizer: OptimizerSettings
    evaluation: EvaluationSettings
    monitors: MonitorSettings
    checkpoints: CheckpointSettings
    rewards: RewardSettings
    wandb: WandbSettings

    @classmethod
    def from_config(cls, config: Any) -> TrainingSettings:
        """The typed view of a validated, planned config (``edit_r1.config.prepare_training``)."""
        from edit_r1.parallelize import ParallelOptions

        return cls(
            seed=int(config.seed),
            num_epochs=int(config.num_epochs),
            dataset=str(config.dataset),
            logdir=str(config.logdir),
            run_name=str(config.run_name),
            dist_timeout_s=float(config.dist_timeout_s),
            model=ModelSettings.from_config(config),
            parallel=ParallelOptions(
                fsdp_transformer=bool(config.fsdp_transformer),
                fsdp_text_encoder=bool(config.fsdp_text_encoder),
                offload_frozen=bool(config.fsdp_offload_frozen),
                mixed_precision=str(config.mixed_precision),
            ),
            rollout=RolloutSettings.from_config(config),
            group_filter=GroupFilterSettings.from_config(config),
            algorithm=AlgorithmSettings.from_config(config),
            optimizer=OptimizerSettings.from_config(config),
            evaluation=EvaluationSettings.from_config(config),
            monitors=MonitorSettings.from_config(config),
            checkpoints=CheckpointSettings.from_config(config),
            rewards=RewardSettings.from_config(config),
            wandb=resolve_wandb_settings(config.wandb.mode, config.wandb.project, config.wandb.entity),
        )


def _plain(value: Any) -> Any:
    """A ``reward_fn`` config value as plain Python (ConfigDict -> dict; strings stay)."""
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
