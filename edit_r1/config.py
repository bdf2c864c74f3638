"""Config helpers: load a named config, plan the per-GPU batch, validate a config.

The configs themselves live in ``config/*.py`` (ml_collections, the ``file.py:name`` convention of
``absl`` ``config_flags``). This module holds the logic that must not live inside a config file:

* :func:`plan_batches` -- the batch arithmetic (docs/configs.md#batch-planning), computed at start from the real
  ``WORLD_SIZE`` (the original release hard-coded it for 8 GPUs inside the config);
* :func:`apply_batch_plan` -- writes a plan into the ``0 = auto`` batch fields of a config;
* :func:`validate_config` -- one :class:`ConfigError` listing every problem at once: each key's own
  checks from the key table (``edit_r1/config_keys.py``), then the rules over several keys here;
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
from edit_r1.config_keys import config_key_problems
from edit_r1.rewards.registry import GROUP_REWARD_FACTORIES
from edit_r1.sampling import DPM_SOLVERS
from edit_r1.settings import TrainingSettings


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


# The per-key checks (choices, ranges, types; their messages name the key and the value) are the
# key table's (edit_r1/config_keys.py). Written here are only the rules that involve several keys,
# a model family (its config_problems), an algorithm (its config_problems) or the file system.


def _check_sampling(config, problems: list[str]) -> None:
    """The solvers against the determinism switches and the step count; filtering against k."""
    sample = config.sample
    if sample.solver in DPM_SOLVERS and not sample.deterministic:
        problems.append(
            f"sample.solver={sample.solver!r} is deterministic only; set sample.deterministic=True"
        )
    if sample.eval_solver in DPM_SOLVERS and not sample.eval_deterministic:
        problems.append(
            f"sample.eval_solver={sample.eval_solver!r} is deterministic only; "
            "set sample.eval_deterministic=True"
        )
    if isinstance(sample.num_steps, int) and sample.num_steps < 2 and sample.solver in DPM_SOLVERS:
        problems.append("sample.num_steps must be >= 2 for the multistep dpm solvers")
    if sample.ban_prompt and sample.num_image_per_prompt == 1:
        problems.append(
            "sample.ban_prompt with sample.num_image_per_prompt=1: a one-sample group has std 0 < "
            "ban_std_thres, so every sample would be masked and nothing would train"
        )


def _check_training(config, problems: list[str]) -> None:
    """The trained timesteps against the rollout steps; LoRA's three keys when LoRA is on."""
    train = config.train
    if (
        isinstance(train.timestep_fraction, float)
        and int(config.sample.num_steps * train.timestep_fraction) < 1
    ):
        problems.append(
            f"int(sample.num_steps * train.timestep_fraction) = "
            f"int({config.sample.num_steps} * {train.timestep_fraction}) = 0 timesteps: nothing would train"
        )
    if config.use_lora and (train.lora_rank < 1 or train.lora_alpha <= 0 or not train.lora_target_modules):
        problems.append("use_lora needs train.lora_rank >= 1, train.lora_alpha > 0 and lora_target_modules")


def _check_choices(config, problems: list[str]) -> None:
    """The chosen algorithm's and model family's own problems (``config_problems``: their keys, and
    what the algorithm needs of the rollouts); an unknown name is the key table's problem."""
    from edit_r1.models.registry import family_names, policy_class  # the model stack, when validating

    if config.algorithm in ALGORITHMS:
        problems.extend(algorithm_class(config.algorithm).config_problems(config))
    if config.model_family in family_names():
        problems.extend(policy_class(config.model_family).config_problems(config))


def _check_guidance(config, problems: list[str]) -> None:
    """``train.cfg`` against the rollouts' true CFG (the family's) and the algorithm: guiding the
    training forwards needs CFG rollouts; an algorithm that re-scores its rollouts' log-probs needs
    the training forwards guided as the rollouts were (else its ratio starts away from 1)."""
    from edit_r1.models.registry import family_names, policy_class  # the model stack, when validating

    if config.model_family not in family_names() or config.algorithm not in ALGORITHMS:
        return  # the key table names the unknown family or algorithm
    cfg = policy_class(config.model_family).runs_true_cfg(config)
    if config.train.cfg and not cfg:
        problems.append(
            f"train.cfg=True guides the training forwards, but the rollouts of model_family="
            f"{config.model_family!r} run no true CFG (sample.true_cfg_scale={config.sample.true_cfg_scale!r}); "
            "set the family's true-CFG scale > 1 or train.cfg=False"
        )
    if cfg and not config.train.cfg and algorithm_class(config.algorithm).rescores_rollouts:
        problems.append(
            f"algorithm={config.algorithm!r} re-scores the rollouts' step log-probs, and they were "
            "sampled with true CFG: set train.cfg=True so the training forwards are "
            "guided alike, or turn true CFG off"
        )


def _check_rewards(config, problems: list[str]) -> None:
    """A group reward against the group size; the judge client's two timeouts."""
    if set(dict(config.reward_fn)) & set(GROUP_REWARD_FACTORIES) and config.sample.num_image_per_prompt < 2:
        problems.append(
            "reward_fn names a pairwise group reward with sample.num_image_per_prompt="
            f"{config.sample.num_image_per_prompt}: an edit needs another edit of its group to be compared with"
        )
    client = config.reward_client
    if client.deadline_s < client.request_timeout_s:
        problems.append("reward_client.deadline_s must be >= reward_client.request_timeout_s")


def _check_dataset(config, problems: list[str]) -> None:
    if not config.dataset:
        problems.append("dataset is empty: point it at a directory holding {train,test}_metadata.jsonl")
        return
    root = Path(config.dataset)
    for split in ("train", "test"):
        path = root / f"{split}_metadata.jsonl"
        if not path.is_file():
            problems.append(f"dataset file missing: {path}")


def validate_config(
    config: ml_collections.ConfigDict, world_size: int, check_files: bool = True
) -> list[str]:
    """Check a config before training; raise one :class:`ConfigError` listing every problem.

    Returns warnings (legal but probably unintended settings), e.g. ``num_image_per_prompt=1``:
    groups of one have no spread, so rewards are standardised over the whole epoch instead (the
    original's fallback). ``check_files`` also checks the dataset files.
    """
    problems = config_key_problems(config)  # each key on its own: the key table's checks
    for check in (_check_sampling, _check_training, _check_choices, _check_guidance, _check_rewards):
        check(config, problems)
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
