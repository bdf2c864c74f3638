"""The typed-settings boundary (docs/architecture.md, "Typed settings"): every config key a run
reads reaches a field, renamed keys land where their name says, and bad values are one ConfigError."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections
import pytest

from edit_r1.algo import ALGORITHMS
from edit_r1.config import ConfigError, load_config, prepare_training
from edit_r1.data.toy import write_toy_dataset
from edit_r1.settings import MIXED_PRECISION_DTYPES, TrainingSettings, compute_dtype

REPO = Path(__file__).resolve().parents[2]
BASE = str(REPO / "config" / "base.py")
QWEN_TINY = f"{REPO / 'config' / 'qwen_image_edit_nft.py'}:tiny"
# Keys the batch plan reads (edit_r1.config.plan_batches_for); the trainer gets its BatchPlan.
PLAN_KEYS = {
    "sample.num_groups_per_epoch",
    "sample.max_train_batch_size",
    "sample.train_batch_size",
    "sample.num_batches_per_epoch",
    "train.batch_size",
    "train.gradient_step_per_epoch",
    "train.gradient_accumulation_steps",
}
# Keys no training code reads. pretrained.revision: documented as the hub revision, not yet passed
# to the loaders (a local folder has none).
UNREAD_KEYS = {"pretrained.revision"}
# A valid other value for the keys whose values are names.
OTHER_NAME = {
    "sample.solver": "flow",
    "sample.eval_solver": "dpm2",
    "train.adv_mode": "binary",
    "train.lora_init": "default",
    "mixed_precision": "fp16",
    "wandb.mode": "offline",
    "algorithm": "grpo",
    "model_family": "kontext",
    "reward_client.image_format": "png",
}


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and key not in ("reward_fn", "eval_reward_fn"):
            keys += leaves(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def changed(key: str, value: Any) -> Any:
    """Another value of the same type."""
    if key in OTHER_NAME:
        return OTHER_NAME[key]
    if isinstance(value, ml_collections.ConfigDict):  # a reward spec: another weight
        return {name: 2.0 * weight + 1.0 for name, weight in value.items()}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 2.0 * value + 0.5
    if isinstance(value, tuple):
        return value[:1]
    assert isinstance(value, str), (key, value)
    return value + "x"


def parent_and_leaf(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    *parents, leaf = key.split(".")
    for name in parents:
        config = config[name]
    return config, leaf


@pytest.fixture(autouse=True)
def no_wandb_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)


def reaches_a_field(key: str, algorithm: str) -> bool:
    """Changing ``key`` of config/base.py, with ``algorithm`` chosen, changes the typed settings."""
    config = load_config(BASE)
    config.algorithm = algorithm
    reference = TrainingSettings.from_config(config)
    node, leaf = parent_and_leaf(config, key)
    node[leaf] = changed(key, node[leaf])
    return TrainingSettings.from_config(config) != reference


def test_every_key_a_run_reads_reaches_a_typed_field():
    """Changing any key of config/base.py (outside the batch plan) changes the typed settings of at
    least one algorithm's run (an algorithm's own keys, e.g. ``train.clip_range``, reach only its
    settings), so no key the user sets is dropped on the way into the code."""
    keys = leaves(load_config(BASE))
    assert len(keys) > 80 and set(keys) >= PLAN_KEYS | UNREAD_KEYS
    dropped = [
        key
        for key in sorted(set(keys) - PLAN_KEYS - UNREAD_KEYS - {"algorithm"})
        if not any(reaches_a_field(key, algorithm) for algorithm in ALGORITHMS)
    ]
    assert not dropped, f"config keys that no typed setting reads: {dropped}"
    assert reaches_a_field("algorithm", "nft")


def test_renamed_keys_land_where_their_names_say():
    config = load_config(QWEN_TINY)
    config.beta, config.train.beta = 0.7, 0.25
    config.sample.num_image_per_prompt, config.sample.ban_prompt = 6, True
    config.save_dir, config.num_checkpoint_limit, config.max_sequence_length = "", 0, 0
    settings = TrainingSettings.from_config(config)
    assert (settings.algorithm.options.nft_beta, settings.algorithm.options.kl_beta) == (0.7, 0.25)
    assert settings.rollout.group_size == 6 and settings.group_filter.enabled
    assert settings.checkpoints.root is None and settings.checkpoints.keep_last is None  # "" / 0 = default
    assert settings.model.max_text_length is None and settings.model.attention_backend is None
    assert settings.model.lora.init == "gaussian" and settings.optimizer.betas == (0.9, 0.999)
    assert dict(settings.rewards.weights) == config.reward_fn.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rollout.steps = 3  # type: ignore[misc]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=8, num_test=2, size=32)


def test_the_boundary_plans_records_and_types(toy_dir: Path):
    config = load_config(QWEN_TINY)
    config.dataset = str(toy_dir)
    config.sample.test_batch_size = 0  # auto: the per-GPU rollout batch
    settings, plan, warnings = prepare_training(config, world_size=1)
    assert warnings == []
    assert config.sample.test_batch_size == settings.evaluation.batch_per_gpu == plan.per_gpu_batch > 0
    assert config.sample.train_batch_size == plan.per_gpu_batch  # the logged config records the plan


def test_bad_values_are_one_config_error_naming_the_key(toy_dir: Path, monkeypatch: pytest.MonkeyPatch):
    config = load_config(QWEN_TINY)
    config.dataset = str(toy_dir)
    config.reward_client.image_format = "gif"
    config.mixed_precision = "fp8"
    with pytest.raises(ConfigError) as caught:
        prepare_training(config, world_size=1)
    assert sorted(caught.value.problems) == [
        f"mixed_precision='fp8' is not one of {list(MIXED_PRECISION_DTYPES)}",
        "reward_client.image_format='gif' is not one of ['jpeg', 'png']",
    ]
    config = load_config(QWEN_TINY)
    config.dataset = str(toy_dir)
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="wandb mode must be one of .* got 'sometimes'"):
        prepare_training(config, world_size=1)


def test_compute_dtype_keeps_fp16_to_cuda():
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [compute_dtype(name, cpu) for name in MIXED_PRECISION_DTYPES] == [
        torch.float32,
        torch.float32,
        torch.bfloat16,
    ]
    assert [compute_dtype(name, cuda) for name in MIXED_PRECISION_DTYPES] == [
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ]
