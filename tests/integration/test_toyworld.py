"""The committed toy world: loads with the standard ``from_pretrained`` calls and means something.

* the editor folder loads as a ``QwenImageEditPlusPipeline`` and as the trainer's policy, and its
  edits of held-out items score well above the unchanged source under the rule reward;
* the judge folder loads in the reward server's transformers backend, and its expected digit
  score ranks a perfect edit above a half-done one above the unchanged source;
* the VAE reconstructs held-out toy images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit_r1.data.toy import apply_task, metadata_record, toy_target_color_score
from edit_r1.toyworld import CHECKPOINTS, world
from edit_r1.toyworld.editor import encode_pairs, generate, rule_scores
from edit_r1.toyworld.images import scene_pairs, to_tensor
from edit_r1.toyworld.vae import held_out_psnr

QWEN = CHECKPOINTS / "qwen_image_edit_plus"
JUDGE = CHECKPOINTS / "judge_qwen2_5_vl"


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
    assert unchanged.max() == 0.0
    assert 0.15 < edited.mean() < 0.9, edited


def test_judge_ranks_edits_like_the_rule_through_the_server_backend(held_out) -> None:
    from PIL import Image

    from reward_server.backends.base import BackendOptions
    from reward_server.backends.transformers_backend import TransformersBackend
    from reward_server.images import JudgeItem
    from reward_server.protocol import RawItem

    backend = TransformersBackend(BackendOptions(model=str(JUDGE), device="cpu", dtype="float32"))
    examples, sources, _ = held_out
    perfect, half, rule = [], [], []
    for (scene, task), source in zip(examples, sources, strict=True):
        target = apply_task(scene, task).render()
        perfect.append(target)
        half.append(Image.blend(source, target, 0.5))
        rule.append(metadata_record(scene, task, ""))

    def score(edits) -> np.ndarray:
        items = [
            JudgeItem(raw=RawItem(b"", b"", r["prompt"], r["requirement"]), image=e, source_image=s)
            for e, s, r in zip(edits, sources, rule, strict=True)
        ]
        return np.asarray(backend.score_batch(items))

    assert toy_target_color_score(perfect[0], rule[0]) == 1.0
    s_perfect, s_half, s_source = score(perfect), score(half), score(sources)
    assert s_perfect.mean() > s_half.mean() + 0.1 > s_source.mean() + 0.2
    assert torch.isfinite(torch.tensor(s_perfect)).all()
