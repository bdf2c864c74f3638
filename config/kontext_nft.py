"""Edit-R1 on FLUX.1-Kontext-dev (FluxKontextPipeline) with DiffusionNFT.

Named configs (``--config config/kontext_nft.py:NAME``; without ``:NAME`` the first one):

* ``kontext_mllm_reward`` -- MLLM judge reward, embedded guidance 2.5, no group filtering::

      REWARD_SERVER=judge-host:12341 torchrun --nproc_per_node=8 \\
          scripts/train_nft_kontext.py --config config/kontext_nft.py:kontext_mllm_reward \\
          --config.dataset=/path/to/edit_data

* ``kontext_mllm_reward_ban_prompt`` -- the same with low-variance group filtering and bans.
* ``kontext_mllm_reward_grpo`` -- ``kontext_mllm_reward`` trained with Flow-GRPO (``docs/algorithm.md``).
* ``toy`` -- the toy world (``docs/toyworld.md``): the trained toy Kontext editor
  (``edit_r1/toyworld/checkpoints/flux_kontext``), 32 px shape recolours and background edits, the shared toy judge.
* ``tiny`` / ``tiny_mllm`` / ``tiny_grpo`` -- CPU smoke runs on ``.tiny/kit/flux_kontext`` and ``.tiny/toy_data``
  (see ``config/qwen_image_edit_nft.py`` for how ``make demo`` builds them).

The original release's Kontext configs crashed (an unexpected ``dataset=`` argument and a missing
``ban_mean_thres``); here they share ``config/base.py`` with the Qwen configs, so every key exists.
"""

from pathlib import Path

import ml_collections

from edit_r1.config import import_config_file, select_named_config

base = import_config_file(Path(__file__).with_name("base.py"))
tiny_common = import_config_file(Path(__file__).with_name("tiny_common.py"))
grpo_common = import_config_file(Path(__file__).with_name("grpo_common.py"))

REPO_ROOT = Path(__file__).resolve().parents[1]
TOYWORLD = REPO_ROOT / "edit_r1" / "toyworld" / "checkpoints"  # the committed toy-world build


def kontext_mllm_reward() -> ml_collections.ConfigDict:
    """FLUX.1-Kontext-dev with the MLLM judge reward.

    Launch: ``torchrun --nproc_per_node=8 scripts/train_nft_kontext.py
    --config config/kontext_nft.py:kontext_mllm_reward`` (with ``REWARD_SERVER=host:12341``).
    """
    config = base.get_config()
    config.model_family = "kontext"
    config.pretrained.model = "black-forest-labs/FLUX.1-Kontext-dev"
    config.dataset = str(REPO_ROOT / "data" / "edit_r1")  # override with --config.dataset
    config.sample.guidance_scale = 2.5  # distilled guidance embedding used in training (upstream)
    config.sample.num_image_per_prompt = 12
    config.sample.num_groups_per_epoch = 24
    config.sample.ban_prompt = False
    config.fsdp_text_encoder = True  # T5-XXL is frozen: shard it instead of replicating it on every GPU
    return config


def kontext_mllm_reward_grpo() -> ml_collections.ConfigDict:
    """``kontext_mllm_reward`` trained with Flow-GRPO instead of DiffusionNFT (same data, judge, filter).

    Launch: ``torchrun --nproc_per_node=8 scripts/train_nft_kontext.py
    --config config/kontext_nft.py:kontext_mllm_reward_grpo`` (with ``REWARD_SERVER=host:12341``).
    Flow-GRPO's recipe: ``flow`` SDE rollouts with eta 0.7 in 10 steps, clip range 1e-4, KL weight
    0.04, 9 of 10 steps trained, two optimizer steps per epoch (``docs/algorithm.md``).
    """
    config = kontext_mllm_reward()
    grpo_common.use_flow_grpo(config)
    return config


def kontext_mllm_reward_ban_prompt() -> ml_collections.ConfigDict:
    """``kontext_mllm_reward`` with low-variance group filtering (std <= 0.05 or mean >= 0.9 masked).

    Launch: ``torchrun --nproc_per_node=8 scripts/train_nft_kontext.py
    --config config/kontext_nft.py:kontext_mllm_reward_ban_prompt``.
    """
    config = kontext_mllm_reward()
    config.sample.ban_prompt = True
    return config


def tiny() -> ml_collections.ConfigDict:
    """CPU smoke run: tiny random FLUX-Kontext pipeline, toy dataset, ``toy_color`` reward.

    Launch: ``python scripts/train_nft_kontext.py --config config/kontext_nft.py:tiny``.
    """
    config = kontext_mllm_reward()
    tiny_common.make_tiny(config, model_dir=REPO_ROOT / ".tiny" / "kit" / "flux_kontext")
    return config


def tiny_mllm() -> ml_collections.ConfigDict:
    """``tiny`` scored by the MLLM judge through the reward server (set ``REWARD_SERVER``)."""
    config = tiny()
    tiny_common.use_mllm_reward(config)
    return config


def tiny_grpo() -> ml_collections.ConfigDict:
    """``tiny`` trained with Flow-GRPO (3 SDE steps, two inner epochs); launched as ``tiny``."""
    config = tiny()
    grpo_common.make_tiny_grpo(config)
    return config


def toy() -> ml_collections.ConfigDict:
    """DiffusionNFT in the toy world with the toy Kontext editor; otherwise as
    ``config/qwen_image_edit_nft.py:toy`` (same dataset, judge and settings, ``docs/toyworld.md``).

    Launch: ``REWARD_SERVER=127.0.0.1:PORT python scripts/train_nft_kontext.py
    --config config/kontext_nft.py:toy`` (or ``scripts/benchmark.py learning --family kontext``).
    """
    config = tiny_mllm()
    tiny_common.make_toy(config, model_dir=TOYWORLD / "flux_kontext")
    config.max_sequence_length = 32  # T5 tokens of the toy editor (edit_r1/toyworld/world.py)
    return config


def toy_blind() -> ml_collections.ConfigDict:
    """``toy`` trained on the preservation-blind rule ``toy_color`` of the earlier toy world, the
    erasable reward (``docs/toyworld.md``, "Reward hacking made visible"). The held-out evaluation
    is ``toy``'s: the judge through ``REWARD_SERVER``, the ground truth and the monitors.

    Launch: ``REWARD_SERVER=127.0.0.1:PORT python scripts/train_nft_kontext.py
    --config config/kontext_nft.py:toy_blind``.
    """
    config = toy()
    tiny_common.use_blind_reward(config)
    return config


def toy_keep() -> ml_collections.ConfigDict:
    """``toy`` rewarded by the judge plus 2.0 x the ground truth's preservation part for 48 epochs
    (``tiny_common.use_keep_reward``, measured on the Qwen editor; ``docs/toyworld.md``,
    "Reinforcement learning in the toy world"). Evaluation is ``toy``'s.

    Launch: ``REWARD_SERVER=127.0.0.1:PORT python scripts/train_nft_kontext.py
    --config config/kontext_nft.py:toy_keep``.
    """
    config = toy()
    tiny_common.use_keep_reward(config)
    return config


NAMED_CONFIGS = {
    "kontext_mllm_reward": kontext_mllm_reward,
    "kontext_mllm_reward_ban_prompt": kontext_mllm_reward_ban_prompt,
    "kontext_mllm_reward_grpo": kontext_mllm_reward_grpo,
    "tiny": tiny,
    "tiny_mllm": tiny_mllm,
    "tiny_grpo": tiny_grpo,
    "toy": toy,
    "toy_blind": toy_blind,
    "toy_keep": toy_keep,
}


def get_config(name: str = "kontext_mllm_reward") -> ml_collections.ConfigDict:
    """Select a named config (absl ``config_flags`` passes the text after ``:``)."""
    return select_named_config(name, NAMED_CONFIGS, __file__)
