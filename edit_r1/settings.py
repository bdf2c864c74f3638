"""Typed settings: the config sections the code consumes, read once at the boundary.

A config (``config/*.py``, ml_collections) keeps the original release's keys for users; every
key's default, checks and help are written once, in the key table ``edit_r1/config_keys.py``, so
the section dataclasses here have no defaults. The code below the boundary receives the frozen
dataclasses here instead; their field names say what each value is (``sample.num_image_per_prompt``
is the ``group_size``). A field that is one config key is declared with it
(``steps: int = config_field("sample.num_steps")``) and read by the one helper
:func:`~edit_r1.config_keys.read_settings`, cast to the key's type; a ``from_config`` is written
out only for what is real logic: derived values (``OptimizerSettings.betas``, ``ModelSettings.lora``),
the reward specs and the environment (``RewardSettings``, wandb). An algorithm's own keys are read by
its settings dataclass in ``edit_r1/algo/`` (the maths room imports nothing of the boundary;
:class:`~edit_r1.algo.AlgorithmSettings` holds the chosen one's).

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
from typing import TYPE_CHECKING, Any, TypeVar

import ml_collections
import torch

from edit_r1.algo import AlgorithmSettings
from edit_r1.config_keys import read_settings
from edit_r1.config_schema import config_field
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
# ParallelOptions (edit_r1/parallelize.py, below the boundary) field -> its config key.
PARALLEL_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "fsdp_transformer": "fsdp_transformer",
        "fsdp_text_encoder": "fsdp_text_encoder",
        "offload_frozen": "fsdp_offload_frozen",
        "mixed_precision": "mixed_precision",
    }
)
S = TypeVar("S")


def compute_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 on any device (CPUs run bf16 too), fp16 on CUDA only, else float32.
    Trained weights, optimizer state, EMA and old policy stay float32 (see EditPolicy)."""
    dtype = MIXED_PRECISION_DTYPES[mixed_precision]
    return torch.float32 if dtype == torch.float16 and device.type != "cuda" else dtype


# ------------------------------------------------------------------------------------------------
# The sections
# ------------------------------------------------------------------------------------------------
class _ReadFromKeys:
    """A section whose every field is one config key (:func:`~edit_r1.config_schema.config_field`):
    ``from_config`` reads them through the key table, cast to each key's type."""

    @classmethod
    def from_config(cls: type[S], config: Any) -> S:
        return read_settings(cls, config)


@dataclasses.dataclass(frozen=True)
class RolloutSettings(_ReadFromKeys):
    """How training rollouts are sampled: ``steps`` of the solver (``N``), ``deterministic`` (an
    ODE solve, no injected noise), ``noise_level`` (eta of the stochastic solvers) and ``group_size``
    (``k`` rollouts per (instruction, image))."""

    steps: int = config_field("sample.num_steps")
    solver: str = config_field("sample.solver")
    deterministic: bool = config_field("sample.deterministic")
    noise_level: float = config_field("sample.noise_level")
    group_size: int = config_field("sample.num_image_per_prompt")


@dataclasses.dataclass(frozen=True)
class GroupFilterSettings(_ReadFromKeys):
    """Advantages and the low-variance group filter (``docs/algorithm.md``, advantages and filtering).

    ``global_std``: divide by the std of all the epoch's rewards; ``enabled``: mask and ban groups;
    a group with ``std <= std_threshold`` or ``mean >= mean_threshold`` is masked, with both it is
    banned.
    """

    global_std: bool = config_field("sample.global_std")
    enabled: bool = config_field("sample.ban_prompt")
    std_threshold: float = config_field("sample.ban_std_thres")
    mean_threshold: float = config_field("sample.ban_mean_thres")


@dataclasses.dataclass(frozen=True)
class EvaluationSettings(_ReadFromKeys):
    """Evaluation of the EMA policy on the test split; ``batch_per_gpu`` is read after the batch
    plan filled its ``0 = auto``."""

    every_epochs: int = config_field("eval_freq")
    steps: int = config_field("sample.eval_num_steps")
    solver: str = config_field("sample.eval_solver")
    deterministic: bool = config_field("sample.eval_deterministic")
    batch_per_gpu: int = config_field("sample.test_batch_size")
    true_cfg: bool = config_field("sample.eval_true_cfg")
    same_noise: bool = config_field("sample.eval_same_noise")


@dataclasses.dataclass(frozen=True)
class MonitorSettings(_ReadFromKeys):
    """The evaluation's reward-hacking monitors (``edit_r1/monitors.py``): a pixel whose largest
    channel moved by more than ``change_threshold`` counts as changed; ``velocity_reference`` also
    evaluates the reference policy at every evaluation step (``monitor/velocity_ratio``)."""

    change_threshold: float = config_field("monitors.change_threshold")
    velocity_reference: bool = config_field("monitors.velocity_reference")


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, clipping and the update loop: ``betas`` (``train.adam_beta1``, ``train.adam_beta2``);
    ``inner_epochs``: passes over an epoch's rollouts; ``ema``: keep an EMA of the trained weights;
    ``old_policy_decay_type``: the schedule of ``old <- d old + (1 - d) theta``; ``guided_training``:
    the training forwards run the rollouts' true CFG."""

    learning_rate: float = config_field("train.learning_rate")
    betas: tuple[float, float]  # the two Adam keys as one pair: from_config
    weight_decay: float = config_field("train.adam_weight_decay")
    epsilon: float = config_field("train.adam_epsilon")
    max_grad_norm: float = config_field("train.max_grad_norm")
    inner_epochs: int = config_field("train.num_inner_epochs")
    ema: bool = config_field("train.ema")
    old_policy_decay_type: int = config_field("decay_type")
    guided_training: bool = config_field("train.cfg")

    @classmethod
    def from_config(cls, config: Any) -> OptimizerSettings:
        betas = (float(config.train.adam_beta1), float(config.train.adam_beta2))
        return read_settings(cls, config, betas=betas)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The policy to load and how it computes.

    ``lora``: ``train.lora_rank`` / ``lora_alpha`` / ``lora_init`` / ``lora_target_modules`` as
    ``LoraSettings``; ``warm_start_lora``: "" = none; ``max_text_length``, ``attention_backend`` and
    ``compile_mode``: None = the family's / the default. The family options ``condition_area``,
    ``guidance_scale`` and ``true_cfg_scale`` are read by the family's ``options_from_settings``.
    """

    family: str = config_field("model_family")
    pretrained: str = config_field("pretrained.model")
    resolution: int = config_field("resolution")
    use_lora: bool = config_field("use_lora")
    lora: LoraSettings  # four train.lora_* keys, converted: from_config
    warm_start_lora: str = config_field("train.lora_path")
    gradient_checkpointing: bool = config_field("train.gradient_checkpointing")
    mixed_precision: str = config_field("mixed_precision")
    allow_tf32: bool = config_field("allow_tf32")
    max_text_length: int | None = config_field("max_sequence_length", empty_is_none=True)
    attention_backend: str | None = config_field("attention_backend", empty_is_none=True)
    compile_transformer: bool = config_field("compile_transformer")
    compile_mode: str | None = config_field("compile_mode", empty_is_none=True)
    condition_area: int = config_field("condition_area")
    guidance_scale: float = config_field("sample.guidance_scale")
    true_cfg_scale: float = config_field("sample.true_cfg_scale")

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
        return read_settings(cls, config, lora=lora)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings(_ReadFromKeys):
    """Checkpoints and resuming: ``root`` None = the run directory; ``keep_last`` None = keep every
    checkpoint; ``resume_from`` "" = a fresh run."""

    every_epochs: int = config_field("save_freq")
    root: str | None = config_field("save_dir", empty_is_none=True)
    keep_last: int | None = config_field("num_checkpoint_limit", empty_is_none=True)
    resume_from: str = config_field("resume_from")


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

    seed: int = config_field("seed")
    num_epochs: int = config_field("num_epochs")
    dataset: str = config_field("dataset")
    logdir: str = config_field("logdir")
    run_name: str = config_field("run_name")
    dist_timeout_s: float = config_field("dist_timeout_s")
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

        return read_settings(
            cls,
            config,
            model=ModelSettings.from_config(config),
            parallel=read_settings(ParallelOptions, config, names=PARALLEL_KEYS),
            rollout=RolloutSettings.from_config(config),
            group_filter=GroupFilterSettings.from_config(config),
            algorithm=AlgorithmSettings.from_config(config),  # edit_r1/algo reads its own keys
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
