"""Config helpers: load a named config, plan the per-GPU batch, validate a config.

The configs themselves live in ``config/*.py`` (ml_collections, the ``file.py:name`` convention of
``absl`` ``config_flags``). This module holds the logic that must not live inside a config file:

* :func:`plan_batches` -- the batch arithmetic (docs/configs.md#batch-planning), computed at start from the real
  ``WORLD_SIZE`` (the original release hard-coded it for 8 GPUs inside the config);
* :func:`apply_batch_plan` -- writes a plan into the ``0 = auto`` batch fields of a config;
* :func:`validate_config` -- one :class:`ConfigError` listing every problem at once;
* :func:`prepare_training` -- the boundary: validate, plan, then the typed
  :class:`~edit_r1.settings.TrainingSettings` the trainer reads;
* :func:`load_config` -- ``"config/<file>.py:tiny"`` -> ``ConfigDict`` without absl flags;
* :func:`import_config_file` -- how a named config imports ``config/base.py`` (config_flags executes
  config files by path, outside any package, so a relative import cannot work there).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import ml_collections

from edit_r1.algo import ALGORITHMS, algorithm_class
from edit_r1.rewards.client import IMAGE_FORMATS
from edit_r1.rewards.registry import GROUP_REWARD_FACTORIES, KNOWN_REWARDS
from edit_r1.settings import (
    DETERMINISTIC_ONLY_SOLVERS,
    VALID_ALGORITHMS,
    VALID_DECAY_TYPES,
    VALID_LORA_INITS,
    VALID_MIXED_PRECISION,
    VALID_SOLVERS,
    VALID_WANDB_MODES,
    TrainingSettings,
)

# The latent grid is packed 2x2 on an 8x VAE downsampling, so the image side must divide by 16.
RESOLUTION_MULTIPLE = 16


class ConfigError(ValueError):
    """A config cannot run; ``problems`` lists every reason (one line each)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


_IMPORT_LOCK = threading.RLock()  # re-entrant: a config file imports its base through the same call


def import_config_file(path: str | Path) -> ModuleType:
    """Import a config module from its file path (cached in ``sys.modules`` by resolved path).

    Named configs call ``import_config_file(Path(__file__).with_name("base.py"))`` because absl's
    ``config_flags`` loads them with a bare ``SourceFileLoader`` (no package, so no relative import)
    and the repository root is not on ``sys.path`` when a script under ``scripts/`` runs.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_name = "_edit_r1_config_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]
    # The module is in sys.modules while it executes (a config imports base.py through this
    # function): without the lock another thread would be handed the half-executed module.
    with _IMPORT_LOCK:
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load ``"path/to/file.py[:name]"`` exactly as ``config_flags.DEFINE_config_file`` would.

    Everything after the first ``:`` is passed to the file's ``get_config``; without it
    ``get_config()`` is called with no argument (each file then returns its default config).
    """
    path, sep, name = spec.partition(":")
    module = import_config_file(path)
    return module.get_config(name) if sep else module.get_config()


def select_named_config(name: str, named: dict, file: str) -> ml_collections.ConfigDict:
    """Return ``named[name]()``, or raise a ``ValueError`` that lists the valid names."""
    if name not in named:
        valid = ", ".join(sorted(named))
        raise ValueError(f"unknown config name {name!r} in {file}; valid names: {valid}")
    return named[name]()


# ----------------------------------------------------------------------------------------------
# Batch arithmetic (docs/configs.md#batch-planning)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """How one epoch of ``num_groups * k`` rollouts is split over ``world_size`` ranks.

    ``per_gpu_batch`` samples per rank per sampling batch; each batch holds
    ``groups_per_batch = world_size * per_gpu_batch / k`` distinct groups;
    ``batches_per_epoch = num_groups * k / (world_size * per_gpu_batch)``;
    ``gradient_accumulation_steps = batches_per_epoch / gradient_step_per_epoch``.
    """

    num_groups: int
    k: int
    world_size: int
    per_gpu_batch: int
    groups_per_batch: int
    batches_per_epoch: int
    gradient_step_per_epoch: int
    gradient_accumulation_steps: int

    @property
    def samples_per_epoch(self) -> int:
        return self.num_groups * self.k


def _batch_fits(num_groups: int, k: int, world_size: int, bsz: int) -> bool:
    """``groups*k % (n*bsz) == 0`` (whole batches) and ``n*bsz % k == 0`` (whole groups per batch)."""
    global_batch = world_size * bsz
    return (num_groups * k) % global_batch == 0 and global_batch % k == 0


def _largest_fitting_batch(num_groups: int, k: int, world_size: int, max_per_gpu: int) -> int | None:
    for bsz in range(max_per_gpu, 0, -1):
        if _batch_fits(num_groups, k, world_size, bsz):
            return bsz
    return None


def valid_world_sizes(num_groups: int, k: int, max_per_gpu: int, limit: int = 64) -> list[int]:
    """World sizes in ``1..limit`` for which some per-GPU batch ``<= max_per_gpu`` fits."""
    return [
        n for n in range(1, limit + 1) if _largest_fitting_batch(num_groups, k, n, max_per_gpu) is not None
    ]


def _check_positive(**values: int) -> None:
    bad = [f"{key}={value!r}" for key, value in values.items() if not isinstance(value, int) or value < 1]
    if bad:
        raise ConfigError([f"batch planning needs positive integers, got {', '.join(bad)}"])


def plan_batches(
    num_groups: int,
    k: int,
    world_size: int,
    max_per_gpu: int = 3,
    gradient_step_per_epoch: int = 1,
    per_gpu_batch: int = 0,
) -> BatchPlan:
    """Plan the epoch: the per-GPU batch is the largest ``bsz <= max_per_gpu`` with
    ``num_groups*k % (world_size*bsz) == 0`` and ``world_size*bsz % k == 0``.

    ``per_gpu_batch > 0`` pins the batch instead of searching (it must satisfy the same two rules).
    Raises :class:`ConfigError` naming the numbers and the world sizes that would work.
    """
    _check_positive(
        num_groups=num_groups,
        k=k,
        world_size=world_size,
        max_per_gpu=max_per_gpu,
        gradient_step_per_epoch=gradient_step_per_epoch,
    )
    if per_gpu_batch:
        bsz = per_gpu_batch if _batch_fits(num_groups, k, world_size, per_gpu_batch) else None
        rule = f"the pinned per-GPU batch {per_gpu_batch}"
    else:
        bsz = _largest_fitting_batch(num_groups, k, world_size, max_per_gpu)
        rule = f"any per-GPU batch <= {max_per_gpu}"
    if bsz is None:
        suggestions = valid_world_sizes(num_groups, k, per_gpu_batch or max_per_gpu)[:8]
        hint = f"world sizes that work: {suggestions}" if suggestions else "no world size <= 64 works"
        raise ConfigError(
            [
                f"cannot split {num_groups} groups x k={k} = {num_groups * k} samples over "
                f"{world_size} GPU(s) with {rule}: need (groups*k) % (GPUs*bsz) == 0 and "
                f"(GPUs*bsz) % k == 0; {hint} (or change sample.num_groups_per_epoch, "
                f"sample.num_image_per_prompt or sample.max_train_batch_size)"
            ]
        )
    batches = num_groups * k // (world_size * bsz)
    if batches % gradient_step_per_epoch:
        raise ConfigError(
            [
                f"{batches} batches per epoch are not divisible by "
                f"train.gradient_step_per_epoch={gradient_step_per_epoch}"
            ]
        )
    return BatchPlan(
        num_groups=num_groups,
        k=k,
        world_size=world_size,
        per_gpu_batch=bsz,
        groups_per_batch=world_size * bsz // k,
        batches_per_epoch=batches,
        gradient_step_per_epoch=gradient_step_per_epoch,
        gradient_accumulation_steps=batches // gradient_step_per_epoch,
    )


def plan_batches_for(config: ml_collections.ConfigDict, world_size: int) -> BatchPlan:
    """:func:`plan_batches` with the numbers a config records.

    A user's ``train.gradient_accumulation_steps`` (0 = auto) is honoured: it sets the optimizer
    steps per epoch to ``batches / accumulation`` (it must divide the batches, and agree with a
    ``train.gradient_step_per_epoch`` other than 1). A user's ``sample.num_batches_per_epoch``
    (0 = auto) must equal the plan's. Anything else is a :class:`ConfigError` naming the numbers.
    """
    plan = plan_batches(
        num_groups=config.sample.num_groups_per_epoch,
        k=config.sample.num_image_per_prompt,
        world_size=world_size,
        max_per_gpu=config.sample.max_train_batch_size,
        per_gpu_batch=config.sample.train_batch_size,
    )
    batches = plan.batches_per_epoch
    wanted = config.sample.num_batches_per_epoch
    if wanted and wanted != batches:
        raise ConfigError(
            [
                f"sample.num_batches_per_epoch={wanted} but {plan.num_groups} groups x k={plan.k} over "
                f"{world_size} GPU(s) x {plan.per_gpu_batch} per batch give {batches} batches; set "
                f"sample.num_groups_per_epoch={wanted * world_size * plan.per_gpu_batch // plan.k} "
                "(or leave num_batches_per_epoch at 0 = auto)"
            ]
        )
    steps = config.train.gradient_step_per_epoch
    accumulation = config.train.gradient_accumulation_steps
    if accumulation:
        if batches % accumulation or (steps != 1 and steps * accumulation != batches):
            raise ConfigError(
                [
                    f"train.gradient_accumulation_steps={accumulation} does not fit {batches} batches per "
                    f"epoch with train.gradient_step_per_epoch={steps}: it must divide the batches "
                    "(then steps per epoch = batches / accumulation); or leave it at 0 = auto"
                ]
            )
        steps = batches // accumulation
    return plan_batches(
        num_groups=plan.num_groups,
        k=plan.k,
        world_size=world_size,
        max_per_gpu=config.sample.max_train_batch_size,
        gradient_step_per_epoch=steps,
        per_gpu_batch=plan.per_gpu_batch,
    )


def auto_test_batch_size(plan: BatchPlan) -> int:
    """The original's evaluation batch: the per-GPU rollout batch, halved above 32 GPUs."""
    return max(1, plan.per_gpu_batch // 2) if plan.world_size > 32 else plan.per_gpu_batch


def apply_batch_plan(config: ml_collections.ConfigDict, plan: BatchPlan) -> None:
    """Write a plan into the config's derived batch fields (works on a locked config).

    Sets ``sample.train_batch_size``, ``sample.num_batches_per_epoch``, ``train.batch_size`` (the
    training minibatch equals the sampling batch, as upstream), ``train.gradient_accumulation_steps``,
    ``train.gradient_step_per_epoch`` and, when 0 (auto), ``sample.test_batch_size``.
    """
    config.sample.train_batch_size = plan.per_gpu_batch
    config.sample.num_batches_per_epoch = plan.batches_per_epoch
    config.train.batch_size = plan.per_gpu_batch
    config.train.gradient_accumulation_steps = plan.gradient_accumulation_steps
    config.train.gradient_step_per_epoch = plan.gradient_step_per_epoch
    if not config.sample.test_batch_size:
        config.sample.test_batch_size = auto_test_batch_size(plan)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _one_of(problems: list[str], key: str, value, valid) -> None:
    if value not in valid:
        problems.append(f"{key}={value!r} is not one of {list(valid)}")


def _in_range(problems: list[str], key: str, value, low, high, low_open=False) -> None:
    ok = isinstance(value, int | float) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        problems.append(f"{key}={value!r} must lie in {bracket}{low}, {high}]")


def _check_sampling(config, problems: list[str]) -> None:
    sample = config.sample
    _one_of(problems, "sample.solver", sample.solver, VALID_SOLVERS)
    _one_of(problems, "sample.eval_solver", sample.eval_solver, VALID_SOLVERS)
    if sample.solver in DETERMINISTIC_ONLY_SOLVERS and not sample.deterministic:
        problems.append(
            f"sample.solver={sample.solver!r} is deterministic only; set sample.deterministic=True"
        )
    if sample.eval_solver in DETERMINISTIC_ONLY_SOLVERS and not sample.eval_deterministic:
        problems.append(
            f"sample.eval_solver={sample.eval_solver!r} is deterministic only; "
            "set sample.eval_deterministic=True"
        )
    for key in ("num_steps", "eval_num_steps", "num_image_per_prompt", "num_groups_per_epoch"):
        if not isinstance(sample[key], int) or sample[key] < 1:
            problems.append(f"sample.{key}={sample[key]!r} must be a positive integer")
    if (
        isinstance(sample.num_steps, int)
        and sample.num_steps < 2
        and sample.solver in DETERMINISTIC_ONLY_SOLVERS
    ):
        problems.append("sample.num_steps must be >= 2 for the multistep dpm solvers")
    _in_range(problems, "sample.noise_level", sample.noise_level, 0.0, 10.0)
    _in_range(problems, "sample.ban_std_thres", sample.ban_std_thres, 0.0, 1.0)
    _in_range(problems, "sample.ban_mean_thres", sample.ban_mean_thres, 0.0, 1.0)
    if sample.ban_prompt and sample.num_image_per_prompt == 1:
        problems.append(
            "sample.ban_prompt with sample.num_image_per_prompt=1: a one-sample group has std 0 < "
            "ban_std_thres, so every sample would be masked and nothing would train"
        )
    if sample.guidance_scale < 0 or sample.true_cfg_scale < 0:
        problems.append("sample.guidance_scale and sample.true_cfg_scale must be >= 0")
    for key in ("train_batch_size", "num_batches_per_epoch", "test_batch_size", "max_train_batch_size"):
        if not isinstance(sample[key], int) or sample[key] < 0:
            problems.append(f"sample.{key}={sample[key]!r} must be a non-negative integer (0 = auto)")
    if sample.max_train_batch_size == 0:
        problems.append("sample.max_train_batch_size must be >= 1")


def _check_training(config, problems: list[str]) -> None:
    train = config.train
    _one_of(problems, "train.lora_init", train.lora_init, VALID_LORA_INITS)
    _in_range(problems, "train.timestep_fraction", train.timestep_fraction, 0.0, 1.0, low_open=True)
    if (
        isinstance(train.timestep_fraction, float)
        and int(config.sample.num_steps * train.timestep_fraction) < 1
    ):
        problems.append(
            f"int(sample.num_steps * train.timestep_fraction) = "
            f"int({config.sample.num_steps} * {train.timestep_fraction}) = 0 timesteps: nothing would train"
        )
    _in_range(problems, "train.adam_beta1", train.adam_beta1, 0.0, 1.0)
    _in_range(problems, "train.adam_beta2", train.adam_beta2, 0.0, 1.0)
    for key in ("learning_rate", "adam_epsilon", "max_grad_norm"):
        if not train[key] > 0:
            problems.append(f"train.{key}={train[key]!r} must be > 0")
    if train.adam_weight_decay < 0:
        problems.append(f"train.adam_weight_decay={train.adam_weight_decay!r} must be >= 0")
    if config.use_lora and (train.lora_rank < 1 or train.lora_alpha <= 0 or not train.lora_target_modules):
        problems.append("use_lora needs train.lora_rank >= 1, train.lora_alpha > 0 and lora_target_modules")
    if train.gradient_step_per_epoch < 1:
        problems.append(f"train.gradient_step_per_epoch={train.gradient_step_per_epoch!r} must be >= 1")
    if not isinstance(train.num_inner_epochs, int) or train.num_inner_epochs < 1:
        problems.append(f"train.num_inner_epochs={train.num_inner_epochs!r} must be a positive integer")


def _check_algorithm(config, problems: list[str]) -> None:
    """``algorithm`` names a registered one, then that algorithm's own problems
    (``Algorithm.config_problems``: its keys, and what it needs of the rollouts)."""
    _one_of(problems, "algorithm", config.algorithm, VALID_ALGORITHMS)
    if config.algorithm in ALGORITHMS:
        problems.extend(algorithm_class(config.algorithm).config_problems(config))


def _check_top_level(config, problems: list[str]) -> None:
    from edit_r1.models.registry import family_names, policy_class  # the model stack, when validating

    _one_of(problems, "model_family", config.model_family, family_names())
    if config.model_family in family_names():
        problems.extend(policy_class(config.model_family).config_problems(config))
    _one_of(problems, "decay_type", config.decay_type, VALID_DECAY_TYPES)
    _one_of(problems, "mixed_precision", config.mixed_precision, VALID_MIXED_PRECISION)
    _one_of(problems, "wandb.mode", config.wandb.mode, VALID_WANDB_MODES)
    if (
        not isinstance(config.resolution, int)
        or config.resolution <= 0
        or config.resolution % RESOLUTION_MULTIPLE
    ):
        problems.append(
            f"resolution={config.resolution!r} must be a positive multiple of {RESOLUTION_MULTIPLE}"
        )
    for key in ("num_epochs", "save_freq", "eval_freq"):
        if not isinstance(config[key], int) or config[key] < 1:
            problems.append(f"{key}={config[key]!r} must be a positive integer")
    if not isinstance(config.num_checkpoint_limit, int) or config.num_checkpoint_limit < 0:
        problems.append(
            f"num_checkpoint_limit={config.num_checkpoint_limit!r} must be a non-negative integer (0 = keep all)"
        )
    if not config.pretrained.model:
        problems.append("pretrained.model is empty")
    for key in ("reward_fn", "eval_reward_fn"):
        weights = dict(config[key])
        if not weights:
            problems.append(f"{key} is empty: name at least one reward function and its weight")
        bad = {name: w for name, w in weights.items() if not isinstance(w, int | float)}
        if bad:
            problems.append(f"{key} weights must be numbers, got {bad}")
        unknown = sorted(set(weights) - KNOWN_REWARDS)
        if unknown:
            problems.append(
                f"{key} names unknown reward function(s) {unknown}; known: {sorted(KNOWN_REWARDS)}"
            )
    if set(dict(config.reward_fn)) & set(GROUP_REWARD_FACTORIES) and config.sample.num_image_per_prompt < 2:
        problems.append(
            "reward_fn names a pairwise group reward with sample.num_image_per_prompt="
            f"{config.sample.num_image_per_prompt}: an edit needs another edit of its group to be compared with"
        )
    grouped = sorted(set(dict(config.eval_reward_fn)) & set(GROUP_REWARD_FACTORIES))
    if grouped:
        problems.append(
            f"eval_reward_fn names group reward(s) {grouped}: evaluation scores single edits, "
            "use a pointwise reward there (e.g. mllm_score_continue)"
        )
    client = config.reward_client
    for key in ("request_timeout_s", "deadline_s", "initial_backoff_s", "max_backoff_s"):
        if not client[key] > 0:
            problems.append(f"reward_client.{key}={client[key]!r} must be > 0")
    if client.deadline_s < client.request_timeout_s:
        problems.append("reward_client.deadline_s must be >= reward_client.request_timeout_s")
    if not isinstance(client.chunk_size, int) or client.chunk_size < 1:
        problems.append(f"reward_client.chunk_size={client.chunk_size!r} must be a positive integer")
    _one_of(problems, "reward_client.image_format", client.image_format, IMAGE_FORMATS)


def _check_cluster(config, problems: list[str]) -> None:
    """The two timeouts of a long run: the process group's and the wait for an epoch's rewards."""
    if not isinstance(config.dist_timeout_s, int | float) or not config.dist_timeout_s > 0:
        problems.append(f"dist_timeout_s={config.dist_timeout_s!r} must be a number of seconds > 0")
    wait = config.reward_client.wait_deadline_s
    if not isinstance(wait, int | float) or not wait > 0:
        problems.append(f"reward_client.wait_deadline_s={wait!r} must be a number of seconds > 0")


def _check_speed(config, problems: list[str]) -> None:
    """The transformer speed switches; the valid names are diffusers' and torch's own lists."""
    from edit_r1.models.base import check_speed_options  # torch and peft: not at config import time

    for key in ("attention_backend", "compile_mode"):
        value = config[key]
        if not isinstance(value, str):
            problems.append(f"{key}={value!r} must be a string ('' = the default)")
            continue
        try:
            check_speed_options(**{key: value})
        except ValueError as error:
            problems.append(str(error))


def _check_dataset(config, problems: list[str]) -> None:
    if not config.dataset:
        problems.append("dataset is empty: point it at a directory holding {train,test}_metadata.jsonl")
        return
    root = Path(config.dataset)
    for split in ("train", "test"):
        path = root / f"{split}_metadata.jsonl"
        if not path.is_file():
            problems.append(f"dataset file missing: {path}")


def _check_monitors(config, problems: list[str]) -> None:
    threshold = config.monitors.change_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        problems.append(
            f"monitors.change_threshold={threshold!r} must be a number in [0, 1) (pixels in [0, 1])"
        )


def validate_config(
    config: ml_collections.ConfigDict, world_size: int, check_files: bool = True
) -> list[str]:
    """Check a config before training; raise one :class:`ConfigError` listing every problem.

    Returns warnings (legal but probably unintended settings), e.g. ``num_image_per_prompt=1``:
    groups of one have no spread, so rewards are standardised over the whole epoch instead (the
    original's fallback). ``check_files`` also checks the dataset files.
    """
    problems: list[str] = []
    _check_top_level(config, problems)
    _check_monitors(config, problems)
    _check_sampling(config, problems)
    _check_training(config, problems)
    _check_algorithm(config, problems)
    _check_speed(config, problems)
    _check_cluster(config, problems)
    if check_files:
        _check_dataset(config, problems)
    if not problems:
        try:
            plan_batches_for(config, world_size)
        except ConfigError as error:
            problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)
    warnings = []
    if config.sample.num_image_per_prompt == 1:
        warnings.append(
            "sample.num_image_per_prompt=1: a group of one has no spread, so advantages are the "
            "rewards standardised over the whole epoch (no group baseline)"
        )
    if config.compile_mode and not config.compile_transformer:
        warnings.append(
            f"compile_mode={config.compile_mode!r} has no effect without compile_transformer=True"
        )
    return warnings


def prepare_training(
    config: ml_collections.ConfigDict, world_size: int
) -> tuple[TrainingSettings, BatchPlan, list[str]]:
    """The boundary between a user's config and the code: :func:`validate_config` (one
    :class:`ConfigError` naming every bad key), :func:`plan_batches_for`, :func:`apply_batch_plan`
    (the config then records the batches that ran), and the typed settings built once.

    Returns ``(settings, plan, warnings)``.
    """
    warnings = validate_config(config, world_size)
    plan = plan_batches_for(config, world_size)
    apply_batch_plan(config, plan)
    try:
        settings = TrainingSettings.from_config(config)
    except ValueError as error:  # e.g. WANDB_MODE from the environment
        raise ConfigError([str(error)]) from error
    return settings, plan, warnings
