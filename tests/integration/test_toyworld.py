"""The committed toy world: loads with the standard ``from_pretrained`` calls and means something.

* the editor folder loads as a ``QwenImageEditPlusPipeline`` and as the trainer's policy, and its
  edits of held-out items keep the scene (ground-truth preservation) while editing partly;
* the FLUX.1-Kontext editor folder (``FluxKontextPipeline``) and its edits, which keep the scene
  and edit partly as the Qwen editor's do;
* the VAE reconstructs held-out toy images;
* the judge (trained on the ground truth with hard negatives), served by the real reward server
  with the ``toy_v1`` template, scores exactly as in process, ranks held-out base-editor edits like
  the ground truth and scores a flat field, the wrong object edited and the unchanged source below
  the perfect edit.
"""

from __future__ import annotations

import numpy as np
import pytest

from edit_r1.toyworld import CHECKPOINTS, world
from edit_r1.toyworld.editor import edit_scores, encode_pairs, generate
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


def _base_editor_scores(policy, examples, sources) -> tuple[np.ndarray, np.ndarray]:
    """(edits, unchanged sources) as (N, 3) ground truth rows (success, preservation, score)."""
    cond, _ = encode_pairs(policy, examples, sources, sources)
    edited = edit_scores(generate(policy, cond, num_steps=4, seed=0), examples)
    return edited, edit_scores(to_tensor(sources) * 0.5 + 0.5, examples)


def test_base_editor_keeps_the_scene_and_edits_partly(held_out) -> None:
    """The base editor preserves the scene (ground-truth preservation >= 0.8 on average) while
    its instruction success is partial: headroom for RL (docs/toyworld.md)."""
    examples, sources, _ = held_out
    edited, unchanged = _base_editor_scores(world.load_policy(QWEN, use_lora=False), examples, sources)
    assert unchanged[:, 0].mean() < 0.05 and unchanged[:, 1].mean() > 0.99, unchanged.mean(0)
    assert edited[:, 1].mean() >= 0.8, edited.mean(0)
    assert 0.05 < edited[:, 0].mean() < 0.8, edited.mean(0)


@pytest.fixture(scope="module")
def judge_address(tmp_path_factory):
    """The real reward server (transformers backend, ``toy_v1``) serving the committed judge."""
    from edit_r1.toyworld.learning import judge_server

    with judge_server(tmp_path_factory.mktemp("judge") / "server.log", JUDGE) as address:
        yield address


def _served_scores(address: str, sources, edits, records, image_format: str) -> np.ndarray:
    from edit_r1.rewards.base import RewardSample
    from edit_r1.rewards.client import RewardClient

    client = RewardClient(address, image_format=image_format)
    try:
        return client.score(
            [
                RewardSample(edit, source, record["prompt"], record["requirement"])
                for source, edit, record in zip(sources, edits, records, strict=True)
            ]
        )
    finally:
        client.close()


def test_judge_through_the_server_ranks_base_editor_edits_like_the_ground_truth(judge_address) -> None:
    """Held-out edits of the committed base editor (drawn like the judge's training edits, other
    scenes), scored over HTTP: the scores are exactly the in-process expected digit scores of the
    same folder, and they rank the edits like the combined ground truth clearly better than the
    blind judge does. Measured on these 96 items: Spearman 0.823 served, the blind judge 0.719
    (docs/toyworld.md: 0.858 and 0.708 on the build's 512, where the goal is 0.85)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld.judge import JudgeInputs, editor_triples, judge_scores, rule_labels, spearman

    sources, edits, records = editor_triples(QWEN, 96, world.SIZE, seed=424242, tasks=world.TASKS)
    served = _served_scores(judge_address, sources, edits, records, "png")
    truth = rule_labels(edits, records).numpy()
    scores = {}
    for name in ("judge_qwen2_5_vl", "judge_qwen2_5_vl_blind"):
        judge = Qwen2_5_VLForConditionalGeneration.from_pretrained(CHECKPOINTS / name).eval()
        encode = JudgeInputs(load_qwen_vl_processor(CHECKPOINTS / name), world.JUDGE_TEMPLATE)
        scores[name] = judge_scores(judge, encode, sources, edits, records)
    np.testing.assert_allclose(served, scores["judge_qwen2_5_vl"], atol=2e-3)
    rho, blind = spearman(served, truth), spearman(scores["judge_qwen2_5_vl_blind"], truth)
    assert rho >= 0.78 and rho > blind + 0.08, (rho, blind)


def test_judge_scores_the_hard_negatives_below_the_perfect_edit(judge_address) -> None:
    """Sent as the trainer sends them (JPEG): for >= 95 % of held-out items the perfect edit scores
    above a flat field of the requested colour, above the unchanged source and above the edit of
    the wrong object (another shape recoloured, or the background in another colour; measured on
    these 40 and on the build's 128: 100 % each; the judge before the shape-token loss had 80.5 %
    for the wrong object on the 128). The blind judge, trained on the
    preservation-blind rule, is the control: it scores the flat field above the perfect edit for
    most items (measured: the perfect edit above it for 37.5 %)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld.judge import JudgeInputs, as_received, hard_negatives, judge_scores, perfect_above

    sources, records, edits = hard_negatives(40, world.SIZE, seed=434343, tasks=world.TASKS)
    served = {
        kind: _served_scores(judge_address, sources, images, records, "jpeg")
        for kind, images in edits.items()
    }
    assert np.all((served["perfect"] >= 0) & (served["perfect"] <= 1))
    shares = perfect_above(served)
    assert shares["perfect_above_flat"] >= 0.95 and shares["perfect_above_source"] >= 0.95, shares
    assert shares["perfect_above_wrong_object"] >= 0.95, shares
    blind_dir = CHECKPOINTS / "judge_qwen2_5_vl_blind"
    blind = Qwen2_5_VLForConditionalGeneration.from_pretrained(blind_dir).eval()
    encode = JudgeInputs(load_qwen_vl_processor(blind_dir), world.JUDGE_TEMPLATE)
    blind_scores = {
        kind: judge_scores(blind, encode, *as_received([sources, edits[kind]], 1.0, 0), records)
        for kind in ("perfect", "flat")
    }
    assert perfect_above(blind_scores)["perfect_above_flat"] < 0.8, blind_scores


def test_judge_through_the_server_reads_which_shape_is_named(judge_address) -> None:
    """One edit, another shape recoloured, sent twice over HTTP (JPEG): under the instruction
    naming the shape it left alone (the wrong object) and under the one naming the shape it
    recoloured (then the perfect edit). The right name must score higher for >= 90 % of held-out
    edits, and clearly higher on average (measured on these 40: 97.5 %, 0.907 against 0.007; on
    the build's 256: 100 %, 0.937 against 0.016; the judge before the shape-token loss: 62 %)."""
    from edit_r1.toyworld.judge import name_pair_triples

    sources, edits, records = name_pair_triples(40, world.SIZE, seed=454545)
    served = _served_scores(judge_address, sources, edits, records, "jpeg")
    wrong, right = served[0::2], served[1::2]
    assert (right > wrong).mean() >= 0.9, (wrong, right)
    assert right.mean() - wrong.mean() >= 0.5, (wrong.mean(), right.mean())


def test_precomputed_judge_inputs_score_like_the_servers_processor_path() -> None:
    """Training indexes processor outputs computed once for the whole set (``encode_items``):
    a batch of them scores like the server's per-batch processor call (left padding aside)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld.judge import (
        JudgeInputs,
        encode_items,
        encoded_scores,
        judge_scores,
        synthetic_triples,
    )

    sources, edits, records = synthetic_triples(12, world.SIZE, seed=454545, tasks=world.TASKS)
    judge = Qwen2_5_VLForConditionalGeneration.from_pretrained(JUDGE).eval()
    encode = JudgeInputs(load_qwen_vl_processor(JUDGE), world.JUDGE_TEMPLATE)
    items = encode_items(encode, sources, edits, records, chunk=5)  # chunks padded to different widths
    assert (
        len(items) == 12
        and "mm_token_type_ids" in items.tokens
        and items.image_grid_thw[0].tolist() == [[1, 8, 8], [1, 8, 8]]
    )
    np.testing.assert_allclose(
        encoded_scores(judge, items, encode.digit_ids, batch=7),
        judge_scores(judge, encode, sources, edits, records),
        atol=1e-3,
    )


def test_auxiliary_facts_state_the_requested_colour_and_what_the_edit_shows(held_out) -> None:
    from edit_r1.data.toy import COLORS, apply_task
    from edit_r1.toyworld.judge import auxiliary_targets, judge_record

    examples, sources, _ = held_out
    records = [judge_record(scene, task) for scene, task in examples]
    perfect = [apply_task(scene, task).render() for scene, task in examples]
    facts = auxiliary_targets(sources, perfect, records).numpy()
    wanted = [list(COLORS).index(task.color) for _, task in examples]
    rows = np.arange(len(examples))
    assert np.all(facts[rows, wanted] == 1) and np.all(facts[:, :8].sum(1) == 1)
    in_box = facts[rows, 24 + np.asarray(wanted)]  # share of the requested colour in the target box
    expected = [record["target_fraction"] for record in records]
    np.testing.assert_allclose(in_box, expected, atol=0.02)


# ------------------------------------------------------------------ the FLUX.1-Kontext editor

KONTEXT = CHECKPOINTS / "flux_kontext"


def test_kontext_folder_loads_as_the_stock_pipeline() -> None:
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(KONTEXT)
    assert pipe.transformer.config.num_layers == 2 and pipe.transformer.config.guidance_embeds
    # 2 heads x 32 with 12 rotary dims per image axis (docs/toyworld.md: 6 left rows 6 apart alike)
    assert pipe.transformer.config.num_attention_heads == 2
    assert list(pipe.transformer.config.axes_dims_rope) == [8, 12, 12]
    assert pipe.vae.config.latent_channels == 4 and len(pipe.vae.config.block_out_channels) == 2
    assert pipe.tokenizer("Change the background to red").input_ids  # the world's words tokenize


def test_kontext_vae_reconstructs_held_out_images(held_out) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(KONTEXT, subfolder="vae")
    _, sources, targets = held_out
    assert held_out_psnr(vae, to_tensor(sources + targets), video=False) > 20.0


def test_kontext_base_editor_keeps_the_scene_and_edits_partly() -> None:
    """Loaded as the trainer loads it, the Kontext base editor preserves the scene (ground-truth
    preservation >= 0.8 on average) while its instruction success is partial, on the build's
    held-out items (48, seed 3000: 16 held-out items hold too few backgrounds for a stable mean;
    docs/toyworld.md, "The FLUX.1-Kontext editor", measured success 0.164, preservation 0.832;
    backgrounds 0.28 / 0.82, recolours 0.01 / 0.85)."""
    examples, sources, _ = scene_pairs(48, world.SIZE, seed=3000, tasks=world.TASKS)
    policy = world.load_kontext_policy(KONTEXT, use_lora=False)
    edited, unchanged = _base_editor_scores(policy, examples, sources)
    assert unchanged[:, 0].mean() < 0.05 and unchanged[:, 1].mean() > 0.99, unchanged.mean(0)
    assert edited[:, 1].mean() >= 0.8, edited.mean(0)
    assert 0.05 < edited[:, 0].mean() < 0.8, edited.mean(0)
    backgrounds = np.array([task.kind == "background" for _, task in examples])
    assert 0.1 < edited[backgrounds, 0].mean() < 0.8, edited[backgrounds].mean(0)
