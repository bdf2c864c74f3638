"""The committed toy world: loads with the standard ``from_pretrained`` calls and means something.

* the editor folder loads as a ``QwenImageEditPlusPipeline`` and as the trainer's policy, and its
  edits of held-out items score well above the unchanged source under the rule reward;
* the VAE reconstructs held-out toy images.
"""

from __future__ import annotations

import pytest

from edit_r1.toyworld import CHECKPOINTS, world
from edit_r1.toyworld.editor import encode_pairs, generate, rule_scores
from edit_r1.toyworld.images import scene_pairs, to_tensor
from edit_r1.toyworld.vae import held_out_psnr

QWEN = CHECKPOINTS / "qwen_image_edit_plus"


@pytest.fixture(scope="module")
def held_out():
    return scene_pairs(16, world.SIZE, seed=424242, tasks=world.TASKS)


def test_editor_folder_loads_as_the_stock_pipeline() -> None:
    from diffusers import QwenImageEditPlusPipeline

    pipe = QwenImageEditPlusPipeline.from_pretrained(QWEN)
    assert pipe.transformer.config.num_layers == 4
    assert pipe.vae.config.z_dim == 4 and list(pipe.vae.config.temperal_downsample) == [False]


def test_vae_reconstructs_held_out_images(held_out) -> None:
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage.from_pretrained(QWEN, subfolder="vae")
    _, sources, targets = held_out
    assert held_out_psnr(vae, to_tensor(sources + targets), video=True) > 20.0


def test_base_editor_is_partly_competent(held_out) -> None:
    examples, sources, _ = held_out
    policy = world.load_policy(QWEN, use_lora=False)
    cond, _ = encode_pairs(policy, examples, sources, sources)
    edited = rule_scores(generate(policy, cond, num_steps=4, seed=0), examples)
    unchanged = rule_scores(to_tensor(sources) * 0.5 + 0.5, examples)
    assert unchanged.mean() < 0.05, unchanged  # the rule gives (almost) nothing for no edit
    assert 0.15 < edited.mean() < 0.9, edited  # partly competent: headroom left for RL
