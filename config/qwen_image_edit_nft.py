"""Edit-R1 on Qwen-Image-Edit-2509 (QwenImageEditPlusPipeline) with DiffusionNFT.

Named configs (``--config config/qwen_image_edit_nft.py:NAME``; without ``:NAME`` the first one):

* ``qwen_mllm_reward`` -- the shipped recipe: MLLM judge reward, low-variance group filtering,
  24 groups x 12 images per epoch, true CFG off. Start the judge first
  (``python reward_server/reward_server.py``), then on one 8-GPU node::

      REWARD_SERVER=judge-host:12341 torchrun --nproc_per_node=8 \\
          scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:qwen_mllm_reward \\
          --config.dataset=/path/to/edit_data

* ``qwen_2511_mllm_reward`` -- the same recipe on Qwen-Image-Edit-2511 (``QwenImageEditPlusPipeline``
  with a ``zero_cond_t`` transformer). The original release trained 2509 only; its settings are
  reused unchanged (``docs/models.md``)::

      REWARD_SERVER=judge-host:12341 torchrun --nproc_per_node=8 \\
          scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:qwen_2511_mllm_reward \\
          --config.dataset=/path/to/edit_data

* ``tiny`` -- CPU smoke run on the tiny local pipeline and the toy dataset, rule reward ``toy_color``.
* ``tiny_mllm`` -- ``tiny`` scored by the (tiny) MLLM judge through the reward server.
* ``tiny_2511`` -- ``tiny`` on the tiny 2511 pipeline (``.tiny/kit/qwen_image_edit_2511``).
* ``toy`` -- the toy world (``docs/toyworld.md``): the trained toy editor, 32 px colour edits and
  the trained toy judge through the reward server (``--model
  edit_r1/toyworld/checkpoints/judge_qwen2_5_vl --template toy_v1``).
* ``toy_blind`` -- ``toy`` trained on the preservation-blind rule ``toy_color`` (the erasable reward;
  evaluation as ``toy``).
* ``qwen_mllm_reward_grpo`` -- ``qwen_mllm_reward`` trained with Flow-GRPO (``docs/algorithm.md``).
* ``tiny_grpo`` -- ``tiny`` trained with Flow-GRPO.

The tiny configs expect ``make demo`` layout under the repository root: ``.tiny/kit/qwen_image_edit_plus``
(``python -m edit_r1.models.tiny build --out .tiny/kit``) and ``.tiny/toy_data``
(``python -m edit_r1.data.toy --out .tiny/toy_data --train 16 --test 4``); override with
``--config.pretrained.model=...`` and ``--config.dataset=...``.
"""

from pathlib import Path

import ml_collections

from edit_r1.config import import_config_file, select_named_config

base = import_config_file(Path(__file__).with_name("base.py"))
tiny_common = import_config_file(Path(__file__).with_name("tiny_common.py"))
grpo_common = import_config_file(Path(__file__).with_name("grpo_common.py"))

REPO_ROOT = Path(__file__).resolve().parents[1]
TOYWORLD = REPO_ROOT / "edit_r1" / "toyworld" / "checkpoints"  # the committed toy-world build


def qwen_mllm_reward() -> ml_collections.ConfigDict:
    """The shipped Qwen-Image-Edit-2509 recipe (docs/configs.md#named-configs).

    Launch: ``torchrun --nproc_per_node=8 scripts/train_nft_qwen_image_edit.py
    --config config/qwen_image_edit_nft.py:qwen_mllm_reward`` (with ``REWARD_SERVER=host:12341``).
    On 8 GPUs: 3 images per GPU per batch, 12 batches and one optimizer step per epoch.
    """
    config = base.get_config()
    config.model_family = "qwen_image_edit"
    config.pretrained.model = "Qwen/Qwen-Image-Edit-2509"
    config.dataset = str(REPO_ROOT / "data" / "edit_r1")  # override with --config.dataset
    config.sample.true_cfg_scale = 1.0  # the shipped training config runs without CFG
    config.sample.ban_prompt = True  # low-variance group filtering, as shipped for Qwen
    config.sample.num_image_per_prompt = 12
    config.sample.num_groups_per_epoch = 24
    config.fsdp_text_encoder = True  # the 7B Qwen2.5-VL encoder is frozen: shard it instead of replicating
    return config


def qwen_2511_mllm_reward() -> ml_collections.ConfigDict:
    """The shipped recipe on Qwen-Image-Edit-2511; launch as ``qwen_mllm_reward`` with this name.

    2511 loads with the same pipeline class; its transformer config sets ``zero_cond_t`` (the
    reference-image tokens are modulated with timestep 0), which the adapter needs no option for.
    """
    config = qwen_mllm_reward()
    config.pretrained.model = "Qwen/Qwen-Image-Edit-2511"
    return config


def qwen_mllm_reward_grpo() -> ml_collections.ConfigDict:
    """``qwen_mllm_reward`` trained with Flow-GRPO instead of DiffusionNFT (same data, judge, filter).

    Launch: ``torchrun --nproc_per_node=8 scripts/train_nft_qwen_image_edit.py
    --config config/qwen_image_edit_nft.py:qwen_mllm_reward_grpo`` (with ``REWARD_SERVER=host:12341``).
    Flow-GRPO's recipe: ``flow`` SDE rollouts with eta 0.7 in 10 steps, clip range 1e-4, KL weight
    0.04, 9 of 10 steps trained, two optimizer steps per epoch (``docs/algorithm.md``).
    """
    config = qwen_mllm_reward()
    grpo_common.use_flow_grpo(config)
    return config


def tiny() -> ml_collections.ConfigDict:
    """CPU smoke run: tiny random Qwen-Image-Edit pipeline, toy dataset, ``toy_color`` reward.

    Launch: ``python scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:tiny``
    (2 CPU processes: ``torchrun --nproc_per_node=2 ...``, gloo backend).
    """
    config = qwen_mllm_reward()
    tiny_common.make_tiny(config, model_dir=REPO_ROOT / ".tiny" / "kit" / "qwen_image_edit_plus")
    return config


def tiny_mllm() -> ml_collections.ConfigDict:
    """``tiny`` scored by the MLLM judge: start ``python reward_server/reward_server.py`` with the tiny
    judge first and set ``REWARD_SERVER=127.0.0.1:PORT``; then launch as ``tiny`` with ``:tiny_mllm``."""
    config = tiny()
    tiny_common.use_mllm_reward(config)
    return config


def toy() -> ml_collections.ConfigDict:
    """DiffusionNFT in the toy world: the trained toy editor, the toy judge, 32 px shape recolours
    and background edits.

    Dataset: ``python -m edit_r1.toyworld data --out .tiny/toyworld_data`` (``make demo`` builds it).
    Judge: ``python reward_server/reward_server.py --backend transformers --model
    edit_r1/toyworld/checkpoints/judge_qwen2_5_vl --template toy_v1``; then
    ``REWARD_SERVER=127.0.0.1:PORT torchrun --nproc_per_node=2 scripts/train_nft_qwen_image_edit.py
    --config config/qwen_image_edit_nft.py:toy``. Evaluation logs the judge's reward and the ground
    truth (``toy_edit``, its parts ``toy_edit_success`` / ``toy_edit_preservation`` and the blind
    ``toy_color``, weight 0: logged, not optimised) of the same held-out edits.
    """
    config = tiny_mllm()
    tiny_common.make_toy(config, model_dir=TOYWORLD / "qwen_image_edit_plus")
    return config


def tiny_2511() -> ml_collections.ConfigDict:
    """``tiny`` on the tiny Qwen-Image-Edit-2511 pipeline; launch as ``tiny`` with ``:tiny_2511``."""
    config = tiny()
    config.pretrained.model = str(REPO_ROOT / ".tiny" / "kit" / "qwen_image_edit_2511")
    return config


def tiny_grpo() -> ml_collections.ConfigDict:
    """``tiny`` trained with Flow-GRPO (3 SDE steps, two inner epochs); launched as ``tiny``."""
    config = tiny()
    grpo_common.make_tiny_grpo(config)
    return config


def toy_blind() -> ml_collections.ConfigDict:
    """``toy`` trained on the preservation-blind rule ``toy_color`` of the earlier toy world, the
    erasable reward (``docs/toyworld.md``, "Reward hacking made visible"). The held-out evaluation
    is ``toy``'s: the judge through ``REWARD_SERVER``, the ground truth and the monitors.

    Launch: ``REWARD_SERVER=127.0.0.1:PORT python scripts/train_nft_qwen_image_edit.py
    --config config/qwen_image_edit_nft.py:toy_blind``.
    """
    config = toy()
    tiny_common.use_blind_reward(config)
    return config


def toy_keep() -> ml_collections.ConfigDict:
    """``toy`` rewarded by the judge plus 2.0 x the ground truth's preservation part for 48 epochs,
    so that the editor learns the colour while the scene is kept (``make demo``;
    ``docs/toyworld.md``, "Reinforcement learning in the toy world"). Evaluation is ``toy``'s.

    Launch: ``REWARD_SERVER=127.0.0.1:PORT python scripts/train_nft_qwen_image_edit.py
    --config config/qwen_image_edit_nft.py:toy_keep``.
    """
    config = toy()
    tiny_common.use_keep_reward(config)
    return config


NAMED_CONFIGS = {
    "qwen_mllm_reward": qwen_mllm_reward,
    "qwen_mllm_reward_grpo": qwen_mllm_reward_grpo,
    "tiny": tiny,
    "tiny_mllm": tiny_mllm,
    "tiny_grpo": tiny_grpo,
    "qwen_2511_mllm_reward": qwen_2511_mllm_reward,
    "tiny_2511": tiny_2511,
    "toy": toy,
    "toy_blind": toy_blind,
    "toy_keep": toy_keep,
}


def get_config(name: str = "qwen_mllm_reward") -> ml_collections.ConfigDict:
    """Select a named config (absl ``config_flags`` passes the text after ``:``)."""
    return select_named_config(name, NAMED_CONFIGS, __file__)
