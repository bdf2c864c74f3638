"""Shared overrides of the ``tiny`` configs: CPU, 64 px, toy data, a few seconds per epoch.

Not a config by itself; ``config/qwen_image_edit_nft.py`` and ``config/kontext_nft.py`` apply it.
"""

from pathlib import Path

import ml_collections

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_DATA_DIR = REPO_ROOT / ".tiny" / "toy_data"  # the tiny configs' toy dataset
TOYWORLD_DATA_DIR = REPO_ROOT / ".tiny" / "toyworld_data"  # the toy-world dataset (docs/toyworld.md)


def make_tiny(config: ml_collections.ConfigDict, model_dir: Path) -> None:
    """Shrink a full config in place so it trains on a CPU against the tiny kit and toy data."""
    config.pretrained.model = str(model_dir)  # tiny random pipeline built by edit_r1.models.tiny
    config.dataset = str(TOY_DATA_DIR)  # toy shapes dataset built by edit_r1.data.toy
    config.resolution = 64  # the tiny VAE/transformer run a 64 px rollout in ~0.1 s
    config.condition_area = 64 * 64  # keep the vision encoder input tiny too (384^2 takes a minute on CPU)
    config.mixed_precision = "no"  # CPU: full fp32
    config.allow_tf32 = False  # no CUDA
    config.fsdp_text_encoder = False  # single process or gloo: nothing worth sharding
    config.num_epochs = 4  # enough to see rewards, checkpoints and evaluation in a demo
    config.save_freq = 2  # exercise checkpointing within the run
    config.eval_freq = 1  # evaluate every epoch
    config.num_checkpoint_limit = 2  # exercise checkpoint rotation
    config.sample.num_steps = 3  # first Euler, one dpm2 middle step, last Euler
    config.sample.eval_num_steps = 3  # fast evaluation
    config.sample.num_image_per_prompt = 4  # k = 4: smallest group with a meaningful std
    config.sample.num_groups_per_epoch = 2  # 8 rollouts per epoch
    config.sample.max_train_batch_size = 4  # one whole group per batch on 1 process, split over 2 with gloo
    config.sample.test_batch_size = 2  # small eval batches
    config.sample.ban_prompt = False  # toy rewards of a random model vary little; filtering would mask all
    config.train.learning_rate = 1e-3  # few steps on a random tiny model: a larger lr makes change visible
    config.train.lora_rank = 8  # tiny transformers have 32-48 hidden units
    config.train.lora_alpha = 16  # keeps alpha / rank = 2 as in the full recipe
    config.train.gradient_checkpointing = False  # nothing to save at 64 px; faster on CPU
    config.reward_fn = ml_collections.ConfigDict({"toy_color": 1.0})  # local rule reward, no server
    config.eval_reward_fn = ml_collections.ConfigDict({"toy_color": 1.0})
    config.reward_client.request_timeout_s = 60.0  # a tiny judge answers in well under a second
    config.reward_client.deadline_s = 120.0  # fail fast in a demo
    config.wandb.mode = "disabled"  # offline demo: metrics.jsonl only


def use_mllm_reward(config: ml_collections.ConfigDict) -> None:
    """Score the tiny run with the MLLM judge through the reward server instead of ``toy_color``."""
    config.reward_fn = ml_collections.ConfigDict({"mllm_score_continue": 1.0})
    config.eval_reward_fn = ml_collections.ConfigDict({"mllm_score_continue": 1.0})


def make_toy(config: ml_collections.ConfigDict, model_dir: Path) -> None:
    """The toy world on top of a ``tiny_mllm`` config: trained editor and judge, 32 px shape recolours
    and background edits (``edit_r1.toyworld.world.RL_TASKS``).

    The numbers below make the held-out reward rise clearly within the ``make demo`` budget
    (measurements and the settings that did not learn in ``docs/toyworld.md``).
    """
    config.pretrained.model = str(model_dir)
    config.dataset = str(TOYWORLD_DATA_DIR)
    config.resolution = 32  # the world's image size (edit_r1/toyworld/world.py)
    config.condition_area = 32 * 32  # the vision encoder sees the 32 px source (upscaled to 56 px)
    config.num_epochs = 16
    config.save_freq = 16  # one checkpoint at the end
    config.eval_freq = 2
    config.sample.num_steps = 4  # rollouts: Euler, two dpm2 steps, Euler
    config.sample.eval_num_steps = 4  # the base editor's held-out score is measured with 4 Euler steps
    config.sample.num_image_per_prompt = 8  # k
    config.sample.num_groups_per_epoch = 16  # 128 rollouts per epoch ...
    config.sample.max_train_batch_size = 16
    config.train.gradient_step_per_epoch = 1  # ... in one optimizer step: 8 steps of 8 rollouts did not learn
    config.sample.test_batch_size = 16
    # Paired evaluation: every evaluation draws epoch 0's noise, so before -> after is the policy's
    # change (with fresh noise the base editor's score moved by 0.09 between seeds).
    config.sample.eval_same_noise = True
    config.use_lora = False  # 0.63 M parameters: full weights learn faster than rank-8 LoRA at any lr tried
    config.train.learning_rate = 3e-4
    config.train.ema = False  # one step per epoch: an EMA (decay up to 0.9) would lag the whole run
    # The ground truth (toy_edit = sqrt(success * preservation)), its two parts and the
    # preservation-blind rule, weight 0: logged for every held-out edit, not optimised.
    config.eval_reward_fn = ml_collections.ConfigDict(
        {
            "mllm_score_continue": 1.0,
            "toy_edit": 0.0,
            "toy_edit_success": 0.0,
            "toy_edit_preservation": 0.0,
            "toy_color": 0.0,
        }
    )


def use_blind_reward(config: ml_collections.ConfigDict) -> None:
    """Train a ``:toy`` config on the earlier, preservation-blind rule ``toy_color`` (the share of the
    target region showing the requested colour: a flat field of the colour scores 1). Evaluation is
    unchanged (judge, ground truth and its parts, the blind rule), so the reward-hacking monitors
    and the ground truth's preservation show what optimising it does (``docs/toyworld.md``)."""
    config.reward_fn = ml_collections.ConfigDict({"toy_color": 1.0})


# The weight of the ground truth's preservation part beside the judge in the ``:toy_keep`` configs
# (docs/toyworld.md, "Reinforcement learning in the toy world"), measured on the partial-edit
# editor (seed 42, 2 processes, 128 paired test edits): at 1.5 preservation fell by 0.07 in 16
# epochs; at 2.0 it held (-0.005 after 36 epochs) while the ground truth rose by 0.16.
KEEP_WEIGHT = 2.0
# At KEEP_WEIGHT the colour rises slowly (+0.07 in 16 epochs, +0.16 in 36): the :toy_keep runs
# are 48 epochs long, evaluated every 4.
KEEP_EPOCHS, KEEP_EVAL_FREQ = 48, 4


def use_keep_reward(config: ml_collections.ConfigDict) -> None:
    """Reward a ``:toy`` config's edits with the judge plus ``KEEP_WEIGHT`` x the ground truth's
    preservation part ``toy_edit_preservation`` (how much of what the instruction does not name is
    kept). On the judge (or ``toy_edit``) alone NFT raises success and loses the scene, because the
    geometric mean pays four times more for success near 0.2 than for preservation near 0.85; the
    extra term evens the two. ``KEEP_EPOCHS`` epochs (the colour rises slowly under the term),
    evaluated every ``KEEP_EVAL_FREQ``; evaluation is ``toy``'s otherwise."""
    config.reward_fn = ml_collections.ConfigDict(
        {"mllm_score_continue": 1.0, "toy_edit_preservation": KEEP_WEIGHT}
    )
    config.num_epochs = config.save_freq = KEEP_EPOCHS
    config.eval_freq = KEEP_EVAL_FREQ
