"""Named configs, shipped defaults (docs/configs.md#every-key), batch arithmetic and validation."""

from __future__ import annotations

import inspect
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from edit_r1.config import (
    ConfigError,
    apply_batch_plan,
    load_config,
    plan_batches,
    plan_batches_for,
    valid_world_sizes,
    validate_config,
)
from edit_r1.data.toy import write_toy_dataset

REPO = Path(__file__).resolve().parents[2]
QWEN = REPO / "config" / "qwen_image_edit_nft.py"
KONTEXT = REPO / "config" / "kontext_nft.py"
NAMED = {
    QWEN: (
        "qwen_mllm_reward",
        "qwen_mllm_reward_grpo",
        "tiny",
        "tiny_mllm",
        "tiny_grpo",
        "qwen_2511_mllm_reward",
        "tiny_2511",
        "toy",
        "toy_blind",
        "toy_keep",
    ),
    KONTEXT: (
        "kontext_mllm_reward",
        "kontext_mllm_reward_ban_prompt",
        "kontext_mllm_reward_grpo",
        "tiny",
        "tiny_mllm",
        "tiny_grpo",
    ),
}
ALL_SPECS = [f"{path}:{name}" for path, names in NAMED.items() for name in names]


def _parse_with_config_flags(argv: list[str]) -> ml_collections.ConfigDict:
    """Parse like a training script would: ``--config file.py:name --config.key=value``."""
    argv = ["train.py", *argv]
    flag_values = flags.FlagValues()
    # sys_argv: config_flags discovers the --config.key overrides from it (default: sys.argv).
    config_flags.DEFINE_config_file("config", default=None, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=8, num_test=2, size=32)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_named_config_loads_by_path_and_through_config_flags(spec: str) -> None:
    direct = load_config(spec)
    parsed = _parse_with_config_flags([f"--config={spec}"])
    assert direct.to_dict() == parsed.to_dict()
    assert direct.model_family == ("kontext" if "kontext_nft" in spec else "qwen_image_edit")


def test_config_file_without_name_gives_the_shipped_recipe() -> None:
    assert load_config(str(QWEN)).to_dict() == load_config(f"{QWEN}:qwen_mllm_reward").to_dict()
    assert load_config(str(KONTEXT)).to_dict() == load_config(f"{KONTEXT}:kontext_mllm_reward").to_dict()


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match="valid names: qwen_2511_mllm_reward, qwen_mllm_reward, qwen_mllm_reward_grpo, tiny, "
        "tiny_2511, tiny_grpo, tiny_mllm, toy, toy_blind, toy_keep",
    ):
        load_config(f"{QWEN}:qwen_typo")


def test_command_line_overrides_reach_nested_keys() -> None:
    config = _parse_with_config_flags(
        [
            f"--config={QWEN}:qwen_mllm_reward",
            "--config.train.learning_rate=1e-4",
            "--config.sample.solver=flow",
        ]
    )
    assert config.train.learning_rate == 1e-4
    assert config.sample.solver == "flow"


def test_shipped_qwen_defaults_equal_the_spec() -> None:
    c = load_config(f"{QWEN}:qwen_mllm_reward")
    expected = {
        "resolution": 512,
        "seed": 42,
        "save_freq": 30,
        "eval_freq": 10,
        "beta": 1.0,
        "decay_type": 1,
        "use_lora": True,
        "model_family": "qwen_image_edit",
        "condition_area": 384 * 384,
        "reward_fn": {"mllm_score_continue": 1.0},
        "pretrained": {"model": "Qwen/Qwen-Image-Edit-2509"},
    }
    sample = {
        "num_steps": 6,
        "eval_num_steps": 15,
        "noise_level": 0.7,
        "solver": "dpm2",
        "deterministic": True,
        "eval_solver": "flow",
        "num_image_per_prompt": 12,
        "num_groups_per_epoch": 24,
        "max_train_batch_size": 3,
        "global_std": True,
        "ban_prompt": True,
        "ban_std_thres": 0.05,
        "ban_mean_thres": 0.9,
        "true_cfg_scale": 1.0,
    }
    train = {
        "learning_rate": 3e-4,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_weight_decay": 1e-4,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "adv_clip_max": 5.0,
        "timestep_fraction": 0.99,
        "beta": 1e-4,
        "ema": True,
        "lora_rank": 32,
        "lora_alpha": 64,
        "lora_init": "gaussian",
        "adv_mode": "all",
        "gradient_step_per_epoch": 1,
    }
    as_dict = c.to_dict()
    for key, value in expected.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                assert as_dict[key][sub] == sub_value, f"{key}.{sub}"
        else:
            assert as_dict[key] == value, key
    for key, value in sample.items():
        assert c.sample[key] == value, f"sample.{key}"
    for key, value in train.items():
        assert c.train[key] == value, f"train.{key}"
    assert set(c.train.lora_target_modules) == {
        f"attn.{m}"
        for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    }


def test_2511_configs_differ_from_2509_only_in_the_model() -> None:
    recipe, tiny = load_config(f"{QWEN}:qwen_mllm_reward"), load_config(f"{QWEN}:tiny")
    for name, base, model in [
        ("qwen_2511_mllm_reward", recipe, "Qwen/Qwen-Image-Edit-2511"),
        ("tiny_2511", tiny, str(REPO / ".tiny" / "kit" / "qwen_image_edit_2511")),
    ]:
        config = load_config(f"{QWEN}:{name}")
        assert config.pretrained.model == model
        config.pretrained.model = base.pretrained.model
        assert config.to_dict() == base.to_dict()


def test_kontext_configs_differ_only_where_the_spec_says() -> None:
    plain = load_config(f"{KONTEXT}:kontext_mllm_reward")
    banned = load_config(f"{KONTEXT}:kontext_mllm_reward_ban_prompt")
    assert plain.sample.guidance_scale == banned.sample.guidance_scale == 2.5
    assert plain.pretrained.model == "black-forest-labs/FLUX.1-Kontext-dev"
    assert (plain.sample.ban_prompt, banned.sample.ban_prompt) == (False, True)
    assert banned.sample.ban_mean_thres == 0.9  # the original Kontext config lacked this key
    banned.sample.ban_prompt = False
    assert banned.to_dict() == plain.to_dict()


@pytest.mark.parametrize("path", [QWEN, KONTEXT])
def test_tiny_configs_point_at_the_demo_layout(path: Path) -> None:
    config = load_config(f"{path}:tiny")
    kit = "qwen_image_edit_plus" if path == QWEN else "flux_kontext"
    assert Path(config.pretrained.model) == REPO / ".tiny" / "kit" / kit
    assert Path(config.dataset) == REPO / ".tiny" / "toy_data"
    assert (
        config.resolution == 64 and config.sample.num_steps == 3 and config.sample.num_image_per_prompt == 4
    )
    assert dict(config.reward_fn) == {"toy_color": 1.0}
    assert dict(load_config(f"{path}:tiny_mllm").reward_fn) == {"mllm_score_continue": 1.0}


# ---------------------------------------------------------------------------- batch arithmetic


@pytest.mark.parametrize(
    ("world_size", "bsz", "batches", "accum"),
    [(4, 3, 24, 24), (6, 2, 24, 24), (8, 3, 12, 12), (12, 3, 8, 8), (16, 3, 6, 6)],
)
def test_shipped_batch_plan(world_size: int, bsz: int, batches: int, accum: int) -> None:
    plan = plan_batches(num_groups=24, k=12, world_size=world_size)
    assert (plan.per_gpu_batch, plan.batches_per_epoch, plan.gradient_accumulation_steps) == (
        bsz,
        batches,
        accum,
    )
    assert plan.groups_per_batch * 12 == world_size * bsz
    assert plan.batches_per_epoch * world_size * plan.per_gpu_batch == plan.samples_per_epoch == 288


@pytest.mark.parametrize("world_size", [1, 2, 5])
def test_impossible_world_size_names_the_numbers_and_the_valid_sizes(world_size: int) -> None:
    with pytest.raises(ConfigError) as error:
        plan_batches(num_groups=24, k=12, world_size=world_size)
    message = str(error.value)
    assert f"over {world_size} GPU(s)" in message and "288 samples" in message
    assert "world sizes that work: [4, 6, 8, 12, 16, 18, 24, 32]" in message


@pytest.mark.parametrize(("world_size", "bsz", "batches"), [(1, 4, 2), (2, 4, 1), (4, 2, 1), (8, 1, 1)])
def test_tiny_batch_plan_on_small_world_sizes(world_size: int, bsz: int, batches: int) -> None:
    plan = plan_batches(num_groups=2, k=4, world_size=world_size, max_per_gpu=4)
    assert (plan.per_gpu_batch, plan.batches_per_epoch) == (bsz, batches)


def test_gradient_steps_per_epoch_split_the_accumulation() -> None:
    plan = plan_batches(num_groups=24, k=12, world_size=8, gradient_step_per_epoch=3)
    assert plan.gradient_accumulation_steps == 4
    with pytest.raises(ConfigError, match="12 batches per epoch are not divisible"):
        plan_batches(num_groups=24, k=12, world_size=8, gradient_step_per_epoch=5)


def test_pinned_per_gpu_batch_is_checked_not_searched() -> None:
    assert plan_batches(24, 12, 8, per_gpu_batch=3).per_gpu_batch == 3
    with pytest.raises(ConfigError, match="pinned per-GPU batch 2"):
        plan_batches(24, 12, 8, per_gpu_batch=2)  # 16 % 12 != 0


def test_group_of_one_plans_like_any_other() -> None:
    plan = plan_batches(num_groups=6, k=1, world_size=2)
    assert (plan.per_gpu_batch, plan.batches_per_epoch, plan.groups_per_batch) == (3, 1, 6)
    assert valid_world_sizes(6, 1, max_per_gpu=3, limit=6) == [1, 2, 3, 6]  # 4, 5: 6 % (n*bsz) != 0


def test_apply_batch_plan_fills_the_auto_fields_of_a_locked_config() -> None:
    config = load_config(f"{QWEN}:qwen_mllm_reward")
    config.lock()
    apply_batch_plan(config, plan_batches_for(config, world_size=8))
    assert config.sample.train_batch_size == config.train.batch_size == 3
    assert config.sample.num_batches_per_epoch == 12
    assert config.train.gradient_accumulation_steps == 12


# ---------------------------------------------------------------------------- validation


def _valid_tiny(toy_dir: Path) -> ml_collections.ConfigDict:
    config = load_config(f"{QWEN}:tiny")
    config.dataset = str(toy_dir)
    return config


def test_tiny_config_with_toy_data_validates(toy_dir: Path) -> None:
    assert validate_config(_valid_tiny(toy_dir), world_size=1) == []
    assert validate_config(_valid_tiny(toy_dir), world_size=2) == []


def test_every_problem_is_reported_at_once(tmp_path: Path, toy_dir: Path) -> None:
    config = _valid_tiny(toy_dir)
    config.dataset = str(tmp_path / "nowhere")
    config.sample.solver = "euler"
    config.train.adv_mode = "sometimes"
    config.model_family = "sdxl"
    config.resolution = 500
    config.sample.ban_std_thres = 1.5
    config.reward_fn = ml_collections.ConfigDict({"clip_score": 1.0})
    with pytest.raises(ConfigError) as error:
        validate_config(config, world_size=1)
    problems = "\n".join(error.value.problems)
    assert len(error.value.problems) == 8, problems
    for fragment in (
        "sample.solver='euler'",
        "train.adv_mode='sometimes'",
        "model_family='sdxl'",
        "resolution=500 must be a positive multiple of 16",
        "sample.ban_std_thres=1.5",
        "unknown reward function(s) ['clip_score']",
        "nowhere/train_metadata.jsonl",
        "nowhere/test_metadata.jsonl",
    ):
        assert fragment in problems


def test_dpm_solvers_must_be_deterministic(toy_dir: Path) -> None:
    config = _valid_tiny(toy_dir)
    config.sample.deterministic = False
    with pytest.raises(ConfigError, match="deterministic only"):
        validate_config(config, world_size=1)
    config.sample.solver = "flow"
    assert validate_config(config, world_size=1) == []


def test_batch_plan_failure_is_a_validation_error(toy_dir: Path) -> None:
    config = _valid_tiny(toy_dir)
    config.sample.max_train_batch_size = 3  # 1 process, k = 4: no bsz <= 3 is a multiple of 4
    with pytest.raises(ConfigError, match="world sizes that work"):
        validate_config(config, world_size=1)


def test_group_of_one_is_allowed_with_a_warning_but_not_with_ban_prompt(toy_dir: Path) -> None:
    config = _valid_tiny(toy_dir)
    config.sample.num_image_per_prompt = 1
    (warning,) = validate_config(config, world_size=1)
    assert "standardised over the whole epoch" in warning
    config.sample.ban_prompt = True
    with pytest.raises(ConfigError, match="every sample would be masked"):
        validate_config(config, world_size=1)


def test_timestep_fraction_must_leave_a_timestep(toy_dir: Path) -> None:
    config = _valid_tiny(toy_dir)
    config.sample.num_steps = 2
    config.train.timestep_fraction = 0.4  # int(2 * 0.4) = 0
    with pytest.raises(ConfigError, match="0 timesteps"):
        validate_config(config, world_size=1)


def test_typed_settings_are_read_from_the_original_keys():
    """`beta` / `train.beta` reach the code as nft_beta / kl_beta; reward_client as typed settings
    whose defaults are the config's."""
    from edit_r1.algo import NFTSettings
    from edit_r1.rewards.client import RewardClientSettings

    config = load_config(str(QWEN) + ":tiny")
    config.beta, config.train.beta = 0.7, 0.25
    loss = NFTSettings.from_config(config)
    assert (loss.nft_beta, loss.kl_beta, loss.adv_clip_max, loss.adv_mode) == (0.7, 0.25, 5.0, "all")

    base = load_config(str(REPO / "config" / "base.py"))
    assert RewardClientSettings.from_mapping(base.reward_client) == RewardClientSettings()
    assert RewardClientSettings().as_mapping() == base.reward_client.to_dict()
    tiny = RewardClientSettings.from_mapping(config.reward_client)
    assert tiny.retry.deadline_s == config.reward_client.deadline_s != RewardClientSettings().retry.deadline_s
    with pytest.raises(ValueError, match="chunk_sise"):
        RewardClientSettings.from_mapping({"chunk_sise": 8})


def test_grpo_configs_validate_and_need_stochastic_rollouts(toy_dir: Path) -> None:
    for path in (QWEN, KONTEXT):
        config = load_config(f"{path}:tiny_grpo")
        config.dataset = str(toy_dir)
        assert config.algorithm == "grpo"
        assert validate_config(config, world_size=1) == []
        assert validate_config(config, world_size=2) == []
    full = load_config(f"{QWEN}:qwen_mllm_reward_grpo")
    assert (full.sample.num_steps, full.train.clip_range, full.train.beta) == (10, 1e-4, 0.04)
    assert load_config(f"{QWEN}:qwen_mllm_reward").algorithm == "nft"
    config.sample.deterministic = True
    config.train.clip_range = 0.0
    config.algorithm = "ppo"
    with pytest.raises(ConfigError) as error:
        validate_config(config, world_size=1)
    problems = "\n".join(error.value.problems)
    assert "algorithm='ppo' is not one of ['nft', 'grpo']" in problems
    config.algorithm = "grpo"
    with pytest.raises(ConfigError) as error:
        validate_config(config, world_size=1)
    problems = "\n".join(error.value.problems)
    assert "sample.deterministic=False" in problems and "train.clip_range=0.0" in problems


def test_each_algorithm_checks_only_its_own_keys(toy_dir: Path) -> None:
    """NFT's strength ``beta`` divides NFT's loss only: a GRPO config may leave it at 0, an NFT
    config may not; GRPO's clip range is not NFT's business."""
    grpo = load_config(f"{QWEN}:tiny_grpo")
    grpo.dataset, grpo.beta = str(toy_dir), 0.0
    assert validate_config(grpo, world_size=1) == []
    nft = _valid_tiny(toy_dir)
    nft.beta, nft.train.clip_range = 0.0, 0.0
    with pytest.raises(ConfigError) as error:
        validate_config(nft, world_size=1)
    assert error.value.problems == ["beta=0.0 (NFT strength) must be > 0: the loss divides by it"]


def test_pairwise_reward_is_checked(toy_dir: Path) -> None:
    config = _valid_tiny(toy_dir)
    config.reward_fn = ml_collections.ConfigDict({"pairwise_mllm": 1.0, "toy_color": 0.5})
    assert validate_config(config, world_size=1) == []
    config.sample.num_image_per_prompt = 1
    config.eval_reward_fn = ml_collections.ConfigDict({"pairwise_mllm": 1.0})
    with pytest.raises(ConfigError) as error:
        validate_config(config, world_size=1)
    problems = "\n".join(error.value.problems)
    assert "num_image_per_prompt=1" in problems and "eval_reward_fn names group reward(s)" in problems


def test_text_lengths_default_to_each_familys_original() -> None:
    """0 = the family's own length: Qwen 256 after the template prefix, Kontext's T5 128."""
    from edit_r1.models.kontext import KontextPolicy
    from edit_r1.models.qwen_image_edit import QwenImageEditPolicy

    for spec in ALL_SPECS:
        assert load_config(spec).max_sequence_length == 0, spec
    defaults = {
        cls: inspect.signature(cls.__init__).parameters["max_text_length"].default
        for cls in (QwenImageEditPolicy, KontextPolicy)
    }
    assert defaults == {QwenImageEditPolicy: 256, KontextPolicy: 128}


def qwen_true_cfg(config) -> float:
    from edit_r1.models.registry import policy_class
    from edit_r1.settings import ModelSettings

    return policy_class(config.model_family).options_from_settings(ModelSettings.from_config(config))[
        "true_cfg_scale"
    ]


def test_qwen_reads_the_originals_guidance_key(toy_dir: Path) -> None:
    config = load_config(f"{QWEN}:tiny")
    config.dataset = str(toy_dir)
    config.sample.guidance_scale = 4.0  # the original's Qwen key for the true-CFG scale
    validate_config(config, 1)
    assert qwen_true_cfg(config) == 4.0
    config.sample.true_cfg_scale = 3.0
    with pytest.raises(ConfigError, match=r"true_cfg_scale=3\.0 and sample\.guidance_scale=4\.0"):
        validate_config(config, 1)
    config.sample.guidance_scale = 1.0
    assert qwen_true_cfg(config) == 3.0


def test_kontext_rejects_a_true_cfg_scale_it_would_ignore(toy_dir: Path) -> None:
    config = load_config(f"{KONTEXT}:tiny")
    config.dataset = str(toy_dir)
    config.sample.true_cfg_scale = 4.0
    with pytest.raises(ConfigError, match="Kontext has no true CFG"):
        validate_config(config, 1)


def test_user_batch_keys_are_honoured_when_consistent() -> None:
    config = load_config(f"{QWEN}:qwen_mllm_reward")  # 8 GPUs: 12 batches of 3 per GPU
    config.train.gradient_accumulation_steps = 4
    plan = plan_batches_for(config, world_size=8)
    assert (plan.gradient_accumulation_steps, plan.gradient_step_per_epoch) == (4, 3)
    config.train.gradient_accumulation_steps = 5
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=5 does not fit 12 batches"):
        plan_batches_for(config, world_size=8)
    config.train.gradient_accumulation_steps = 0
    config.sample.num_batches_per_epoch = 6
    with pytest.raises(ConfigError, match=r"num_batches_per_epoch=6 .* sample\.num_groups_per_epoch=12"):
        plan_batches_for(config, world_size=8)
    config.sample.num_batches_per_epoch = 12
    assert plan_batches_for(config, world_size=8).batches_per_epoch == 12


def test_originals_checkpoint_and_eval_batch_defaults() -> None:
    config = load_config(f"{QWEN}:qwen_mllm_reward")
    assert config.num_checkpoint_limit == 0 and config.save_dir == "" and config.train.lora_path == ""
    for world_size, expected in ((8, 3), (48, 1)):  # the original: bsz, halved above 32 GPUs
        config = load_config(f"{QWEN}:qwen_mllm_reward")
        apply_batch_plan(config, plan_batches_for(config, world_size))
        assert config.sample.test_batch_size == expected, world_size


def test_a_config_file_loaded_from_several_threads_at_once_loads_whole_in_each(tmp_path: Path) -> None:
    """``benchmark.py learning --jobs 2`` loads the same config from two threads: the second must
    wait for the first to finish executing it, not get the half-executed module."""
    from concurrent.futures import ThreadPoolExecutor

    from edit_r1.config import load_config

    slow = tmp_path / "slow_config.py"
    slow.write_text(
        "import time\nimport ml_collections\ntime.sleep(0.3)  # a long module body widens the window\n"
        "def get_config(name=None):\n    return ml_collections.ConfigDict({'seed': 7})\n"
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        configs = list(pool.map(lambda _: load_config(str(slow)), range(4)))
    assert [c.seed for c in configs] == [7, 7, 7, 7]


@pytest.mark.parametrize("path", [QWEN, KONTEXT])
def test_toy_blind_differs_from_toy_only_in_its_training_reward(path: Path) -> None:
    toy, blind = load_config(f"{path}:toy").to_dict(), load_config(f"{path}:toy_blind").to_dict()
    assert blind.pop("reward_fn") == {"toy_color": 1.0} != toy.pop("reward_fn")
    assert blind == toy  # evaluation (judge, ground truth, monitors) is the same


@pytest.mark.parametrize("path", [QWEN, KONTEXT])
def test_toy_keep_adds_the_preservation_part_to_the_judge(path: Path) -> None:
    toy, keep = load_config(f"{path}:toy").to_dict(), load_config(f"{path}:toy_keep").to_dict()
    assert keep.pop("reward_fn") == {"mllm_score_continue": 1.0, "toy_edit_preservation": 2.0}
    assert toy.pop("reward_fn") == {"mllm_score_continue": 1.0}
    assert (keep.pop("num_epochs"), keep.pop("save_freq"), keep.pop("eval_freq")) == (48, 48, 4)
    for key in ("num_epochs", "save_freq", "eval_freq"):
        toy.pop(key)
    assert keep == toy
