"""The committed toy world: loads with the standard ``from_pretrained`` calls and means something.

* the editor folder loads as a ``QwenImageEditPlusPipeline`` and as the trainer's policy, and its
  edits of held-out items score well above the unchanged source under the rule reward;
* the VAE reconstructs held-out toy images;
* the judge folder loads in the reward server's transformers backend with the ``toy_v1`` template.
"""

from __future__ import annotations

import numpy as np
import pytest

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
    assert unchanged.mean() < 0.05, unchanged  # the rule gives (almost) nothing for no edit
    assert 0.15 < edited.mean() < 0.9, edited  # partly competent: headroom left for RL


def test_judge_loads_in_the_server_backend_and_prefers_perfect_edits(held_out) -> None:
    """The committed judge is weak (docs/toyworld.md: Spearman 0.185) but not blind: on 32 held-out
    items it scores perfect edits 0.44 and unchanged sources 0.36 on average (measured)."""
    from PIL import Image

    from edit_r1.data.toy import apply_task
    from reward_server.backends.base import BackendOptions
    from reward_server.backends.transformers_backend import TransformersBackend
    from reward_server.images import JudgeItem
    from reward_server.protocol import RawItem

    options = BackendOptions(model=str(JUDGE), template=world.JUDGE_TEMPLATE, device="cpu", dtype="float32")
    backend = TransformersBackend(options)
    examples, sources, _ = scene_pairs(32, world.SIZE, seed=424242, tasks=world.TASKS)
    perfect = [apply_task(scene, task).render() for scene, task in examples]

    def score(edits: list[Image.Image]) -> np.ndarray:
        items = [
            JudgeItem(raw=RawItem(b"", b"", task.prompt, ""), image=edit, source_image=source)
            for (_, task), edit, source in zip(examples, edits, sources, strict=True)
        ]
        return np.asarray(backend.score_batch(items))

    s_perfect, s_source = score(perfect), score(sources)
    assert np.all((s_perfect >= 0) & (s_perfect <= 1))
    assert s_perfect.mean() > s_source.mean() + 0.04
