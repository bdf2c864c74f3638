"""The config key table (edit_r1/config_keys.py): each key's checks reject a bad value with one line
naming the key and the value, accept the default, and the settings reader follows the table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections
import pytest

from edit_r1.config import load_config
from edit_r1.config_keys import (
    KEYS,
    KEYS_BY_NAME,
    config_key_problems,
    default_config,
    listing,
    read_settings,
)
from edit_r1.config_schema import OneOf, by_name, config_field, lookup

REPO = Path(__file__).resolve().parents[2]

# One bad value per kind of check, with the whole message it must give (the messages validation
# gave before the table existed).
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("sample.noise_level", 11.0, "sample.noise_level=11.0 must lie in [0.0, 10.0]"),
    ("sample.ban_std_thres", 1.5, "sample.ban_std_thres=1.5 must lie in [0.0, 1.0]"),
    ("train.timestep_fraction", 0.0, "train.timestep_fraction=0.0 must lie in (0.0, 1.0]"),
    ("train.learning_rate", 0.0, "train.learning_rate=0.0 must be > 0"),
    ("train.adam_weight_decay", -1.0, "train.adam_weight_decay=-1.0 must be >= 0"),
    ("train.gradient_step_per_epoch", 0, "train.gradient_step_per_epoch=0 must be >= 1"),
    ("sample.guidance_scale", -1.0, "sample.guidance_scale=-1.0 must be >= 0"),
    ("sample.num_steps", 0, "sample.num_steps=0 must be a positive integer"),
    ("sample.max_train_batch_size", 0, "sample.max_train_batch_size=0 must be a positive integer"),
    ("sample.test_batch_size", -1, "sample.test_batch_size=-1 must be a non-negative integer (0 = auto)"),
    ("num_checkpoint_limit", -1, "num_checkpoint_limit=-1 must be a non-negative integer (0 = keep all)"),
    ("dist_timeout_s", 0.0, "dist_timeout_s=0.0 must be a number of seconds > 0"),
    ("reward_client.wait_deadline_s", -1.0, "reward_client.wait_deadline_s=-1.0 must be a number of seconds > 0"),
    ("reward_client.chunk_size", 0, "reward_client.chunk_size=0 must be a positive integer"),
    ("monitors.change_threshold", 1.0, "monitors.change_threshold=1.0 must lie in [0, 1) (pixels in [0, 1])"),
    ("resolution", 500, "resolution=500 must be a positive multiple of 16"),
    ("pretrained.model", "", "pretrained.model is empty"),
    ("decay_type", 7, "decay_type=7 is not one of [0, 1, 2]"),
    ("wandb.mode", "loud", "wandb.mode='loud' is not one of ['online', 'offline', 'disabled']"),
    ("reward_fn", {}, "reward_fn is empty: name at least one reward function and its weight"),
]  # fmt: skip


def with_value(name: str, value: Any) -> ml_collections.ConfigDict:
    config = default_config()
    *sections, leaf = name.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return config


def test_the_defaults_pass_every_check():
    assert config_key_problems(default_config()) == []


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_key_and_value(name: str, value: Any, message: str):
    assert config_key_problems(with_value(name, value)) == [message]


def test_a_number_check_refuses_a_string_and_a_bool():
    assert config_key_problems(with_value("attention_backend", None)) == [
        "attention_backend=None must be a string ('' = the default)"
    ]
    key = KEYS_BY_NAME["sample.ban_mean_thres"]
    assert key.problems(True) == ["sample.ban_mean_thres=True must lie in [0.0, 1.0]"]
    assert key.problems("0.5") == ["sample.ban_mean_thres='0.5' must lie in [0.0, 1.0]"]


def test_reward_specs_name_unknown_and_group_rewards():
    (unknown,) = config_key_problems(with_value("reward_fn", {"clip_score": 1.0}))
    assert unknown.startswith("reward_fn names unknown reward function(s) ['clip_score']; known: [")
    (grouped,) = config_key_problems(with_value("eval_reward_fn", {"pairwise_mllm": 1.0}))
    assert grouped.startswith("eval_reward_fn names group reward(s) ['pairwise_mllm']")
    assert config_key_problems(with_value("reward_fn", {"pairwise_mllm": 1.0})) == []  # training may


def test_every_choice_source_resolves_and_holds_the_default():
    choices = [(key, check) for key in KEYS for check in key.checks if isinstance(check, OneOf)]
    assert len(choices) >= 9
    for key, check in choices:
        assert key.default in check.valid(), key.name
        assert check.describe().startswith("one of `"), key.name


def test_every_key_has_help_and_base_py_is_the_table():
    assert all(key.help and "\n" not in key.help for key in KEYS)
    base = load_config(str(REPO / "config" / "base.py"))
    for key in KEYS:
        value = lookup(base, key.name)
        value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        assert value == key.default and type(value) is type(key.default), key.name
    lines = listing().splitlines()
    assert len(lines) == len(KEYS) and lines[1].startswith("seed = 42  # base seed")
    with pytest.raises(ValueError, match="'seed' is written twice"):
        by_name([KEYS_BY_NAME["seed"], KEYS_BY_NAME["seed"]])


@dataclasses.dataclass(frozen=True)
class _Section:
    steps: int = config_field("sample.num_steps")
    root: str | None = config_field("save_dir", empty_is_none=True)
    derived: float = 0.0


def test_read_settings_casts_to_the_key_type_and_maps_empty_to_none():
    config = default_config()
    config.sample.num_steps = 4
    assert read_settings(_Section, config, derived=2.5) == _Section(steps=4, root=None, derived=2.5)
    config.save_dir = "/ckpt"
    assert read_settings(_Section, config, derived=0.0).root == "/ckpt"
    with pytest.raises(TypeError, match="_Section.derived names no config key"):
        read_settings(_Section, config)
    named = read_settings(_Section, config, names={"derived": "sample.noise_level"})
    assert named.derived == 0.7 and isinstance(named.steps, int)
