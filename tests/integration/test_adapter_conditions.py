"""Condition encoding of both adapters: batching, encode-once-per-group, Condition helpers, and
clear errors on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from edit_r1.models.base import Condition
from edit_r1.models.kontext import KontextPolicy
from edit_r1.models.qwen_image_edit import QwenImageEditPolicy
from edit_r1.models.registry import POLICY_FAMILIES, load_policy

SIZE = 64
ATOL = 1e-5


def random_image(seed: int, width: int = SIZE, height: int = SIZE, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def qwen(tiny_kit) -> QwenImageEditPolicy:
    return load_policy(
        "qwen_image_edit",
        tiny_kit / "qwen_image_edit_plus",
        resolution=SIZE,
        condition_area=48 * 48,
        max_text_length=400,
        true_cfg_scale=3.0,  # so the negative-prompt fields are exercised too
    )


@pytest.fixture(scope="module")
def kontext(tiny_kit) -> KontextPolicy:
    return load_policy("kontext", tiny_kit / "flux_kontext", resolution=SIZE, max_text_length=24)


@pytest.fixture(params=["qwen", "kontext"])
def policy(request):
    return request.getfixturevalue(request.param)


def assert_conditions_close(a: Condition, b: Condition) -> None:
    assert type(a) is type(b)
    for name in a._static_names():
        assert getattr(a, name) == getattr(b, name)
    for name in a._batch_names():
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape, name
            assert torch.allclose(x.float(), y.float(), atol=ATOL), (
                f"{name}: {(x.float() - y.float()).abs().max()}"
            )


def test_registry_knows_both_families():
    assert set(POLICY_FAMILIES) == {"qwen_image_edit", "kontext"}
    with pytest.raises(ValueError, match="unknown model family 'sd3'.*kontext"):
        load_policy("sd3", "/nonexistent")


def test_batched_encoding_equals_per_item(policy):
    texts = ["turn the cat blue", "add a hat on the dog please"]
    images = [random_image(1), random_image(2, width=80, height=80)]
    batched = policy.encode_condition(texts, images)
    singles = Condition.cat([policy.encode_condition([t], [i]) for t, i in zip(texts, images, strict=True)])
    assert len(batched) == 2
    assert_conditions_close(batched, singles)
    # Different items really differ (the comparison above is not between constants).
    assert not torch.allclose(batched.ref_latents[0], batched.ref_latents[1])


def test_encode_once_per_group_equals_encoding_every_sample(policy):
    texts = ["make it red", "make it red", "make it red", "remove the tree", "remove the tree", "make it red"]
    # Same instruction on two different images: two groups, not one (docs/upstream-differences.md, entry 1).
    images = [
        random_image(1),
        random_image(1),
        random_image(1),
        random_image(2),
        random_image(2),
        random_image(3),
    ]
    grouped = policy.encode_condition(texts, images)
    every = policy.encode_condition(texts, images, group_keys=list(range(len(texts))))
    assert_conditions_close(grouped, every)
    assert torch.equal(grouped.ref_latents[0], grouped.ref_latents[2])
    assert not torch.allclose(grouped.ref_latents[0], grouped.ref_latents[5])
    by_key = policy.encode_condition(texts, images, group_keys=["a", "a", "a", "b", "b", "c"])
    assert_conditions_close(by_key, every)


def test_condition_helpers(policy):
    cond = policy.encode_condition(["one", "two"], [random_image(4), random_image(5)])
    repeated = cond.repeat_interleave(3)
    assert len(repeated) == 6
    assert_conditions_close(repeated.index_select([0, 3]), cond)
    assert_conditions_close(repeated.index_select([3, 4, 5]), cond.index_select([1, 1, 1]))
    assert_conditions_close(
        Condition.cat([cond.index_select([1]), cond.index_select([0])]), cond.index_select([1, 0])
    )
    moved = cond.to("cpu", dtype=torch.float64)
    assert moved.ref_latents.dtype == torch.float64
    if hasattr(moved, "prompt_mask"):
        assert moved.prompt_mask.dtype == torch.long  # masks keep their dtype
    with pytest.raises(ValueError, match="k >= 1"):
        cond.repeat_interleave(0)


def test_non_rgb_and_odd_sized_images_are_converted(policy):
    rgb = random_image(6, width=67, height=61)
    as_rgba = rgb.convert("RGBA")
    reference = policy.encode_condition(["edit"], [rgb])
    assert_conditions_close(policy.encode_condition(["edit"], [as_rgba]), reference)
    grey = policy.encode_condition(["edit"], [rgb.convert("L")])
    assert_conditions_close(grey, policy.encode_condition(["edit"], [rgb.convert("L").convert("RGB")]))
    array = policy.encode_condition(["edit"], [np.asarray(rgb)])
    assert_conditions_close(array, reference)


def test_bad_inputs_raise_clear_errors(policy):
    image = random_image(7)
    with pytest.raises(ValueError, match="2 instructions but 1 images"):
        policy.encode_condition(["a", "b"], [image])
    with pytest.raises(ValueError, match="empty batch"):
        policy.encode_condition([], [])
    with pytest.raises(TypeError, match="single string"):
        policy.encode_condition("a", [image])
    with pytest.raises(TypeError, match="image 1: expected a PIL.Image"):
        policy.encode_condition(["a", "b"], [image, torch.zeros(3, 8, 8)])
    with pytest.raises(TypeError, match="image 0: numpy images must be uint8"):
        policy.encode_condition(["a"], [np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="image 0: aspect ratio 640x32"):
        policy.encode_condition(["a"], [random_image(8, width=640, height=32)])
    with pytest.raises(ValueError, match="share an aspect ratio"):
        policy.encode_condition(["a", "b"], [image, random_image(9, width=128, height=64)])
    with pytest.raises(ValueError, match="3 group keys for 1 images"):
        policy.encode_condition(["a"], [image], group_keys=[1, 2, 3])


def test_velocity_rejects_mismatched_batches(policy):
    cond = policy.encode_condition(["a"], [random_image(10)])
    z = policy.initial_noise(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch mismatch: 2 latents but 1 conditions"):
        policy.velocity(z, 0.5, cond)
    with pytest.raises(ValueError, match="latents must be packed"):
        policy.velocity(z[:, :-1], 0.5, cond.repeat_interleave(2))
    with pytest.raises(ValueError, match="sigma must be a scalar or of shape"):
        policy.velocity(z, torch.ones(3), cond.repeat_interleave(2))
    with pytest.raises(ValueError, match="unknown adapter 'new'"):
        policy.velocity(z, 0.5, cond.repeat_interleave(2), adapter="new")


@pytest.mark.parametrize("resolution", [60, (64, 72), 0])
def test_resolution_must_be_a_multiple_of_16(tiny_kit, resolution):
    with pytest.raises(ValueError, match="must be a positive multiple of 16"):
        load_policy("kontext", tiny_kit / "flux_kontext", resolution=resolution)


def test_initial_noise_is_seeded_and_packed(policy):
    a = policy.initial_noise(3, torch.Generator().manual_seed(1))
    b = policy.initial_noise(3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.shape[:2] == (3, policy.image_seq_len) and a.dtype == torch.float32
    per_sample = policy.initial_noise(2, [torch.Generator().manual_seed(s) for s in (5, 6)])
    assert torch.equal(per_sample[1:], policy.initial_noise(1, torch.Generator().manual_seed(6)))
    images = policy.decode(a)
    assert images.shape == (3, 3, SIZE, SIZE) and images.min() >= 0 and images.max() <= 1


def test_qwen_text_padding_is_trimmed_without_changing_the_velocity(qwen, monkeypatch):
    """Prompts are stored padded to max_text_length (400 here); the transformer sees only up to
    the longest real prompt of the batch, and the velocity equals the untrimmed forward's."""
    cond = qwen.encode_condition(
        ["make it red", "remove the tree on the left"], [random_image(11), random_image(12)]
    )
    z = qwen.initial_noise(2, torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.7, 0.3])
    seen_lengths = []
    hook = qwen.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen_lengths.append(kwargs["encoder_hidden_states"].shape[1]),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            trimmed = qwen.velocity(z, sigma, cond, adapter="default")
            monkeypatch.setattr(qwen, "trim_text_padding", False)
            padded = qwen.velocity(z, sigma, cond, adapter="default")
    finally:
        hook.remove()
    longest = int(torch.cat([cond.prompt_mask, cond.negative_prompt_mask]).sum(dim=1).max())
    assert seen_lengths == [longest, 400]
    assert longest < 400
    assert torch.allclose(trimmed, padded, atol=ATOL), (trimmed - padded).abs().max()


def test_qwen_text_length_keeps_every_used_position_and_is_computed_once(qwen):
    cond = qwen.encode_condition(["make it red"], [random_image(13)])
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0]])  # holes are kept, the tail dropped
    rows = dataclasses.replace(
        cond.index_select([0, 0]),
        prompt_embeds=torch.randn(2, 6, cond.prompt_embeds.shape[2]),
        prompt_mask=mask,
        negative_prompt_embeds=torch.randn(2, 6, cond.prompt_embeds.shape[2]),
        negative_prompt_mask=torch.tensor([[1] * 5 + [0]] * 2),  # true CFG: the negative counts too
    )
    assert rows.text_length == 5
    trimmed = rows.without_text_padding()
    assert torch.equal(trimmed.prompt_mask, mask[:, :5]) and torch.equal(
        trimmed.prompt_embeds, rows.prompt_embeds[:, :5]
    )
    assert trimmed.negative_prompt_embeds.shape[1] == 5
    # Concatenation carries the parts' cached lengths instead of reading the device again.
    short = dataclasses.replace(rows, negative_prompt_mask=torch.tensor([[1, 0, 0, 0, 0, 0]] * 2))
    assert short.text_length == 4
    both = type(rows).cat([rows, short])
    assert both.__dict__["text_length"] == 5
    full = dataclasses.replace(
        rows, prompt_mask=torch.ones_like(mask), negative_prompt_mask=torch.ones_like(mask)
    )
    assert full.without_text_padding() is full
    empty = dataclasses.replace(
        rows, prompt_mask=torch.zeros_like(mask), negative_prompt_mask=torch.zeros_like(mask)
    )
    assert empty.text_length == 1


def test_several_reference_images_encode_each_and_key_on_all(qwen, kontext):
    first, second, third = random_image(21), random_image(22, 32, 96), random_image(23)
    cond = qwen.encode_condition(["put the cat on the sofa", "x"], [[first, second], [third, second]])
    assert len(cond) == 2
    assert cond.ref_grids == ((8, 8), (12, 4)) and cond.ref_latents.shape[1] == 8 * 8 + 12 * 4
    single = qwen.encode_condition(["put the cat on the sofa"], [first])
    torch.testing.assert_close(cond.ref_latents[:1, : 8 * 8], single.ref_latents)  # Picture 1 first
    assert not torch.allclose(cond.prompt_embeds[:1].float(), single.prompt_embeds.float())  # 2 tags
    # Rows are keyed on every image: changing only the second image is another group.
    other = random_image(24, 32, 96)
    keyed = qwen.encode_condition(["a", "a", "a"], [[first, second], [first, second], [first, other]])
    torch.testing.assert_close(keyed.ref_latents[0], keyed.ref_latents[1])
    assert not torch.allclose(keyed.ref_latents[0, 64:], keyed.ref_latents[2, 64:])
    with pytest.raises(ValueError, match=r"at most 3 source images per edit; got a row with 4"):
        qwen.encode_condition(["a"], [[first, second, third, first]])
    with pytest.raises(ValueError, match="same number of source images"):
        qwen.encode_condition(["a", "b"], [[first, second], first])
    with pytest.raises(ValueError, match="takes one source image per edit; got a row with 2"):
        kontext.encode_condition(["a"], [[first, second]])
    z = qwen.initial_noise(2, torch.Generator().manual_seed(0))
    assert qwen.velocity(z, torch.tensor([0.5, 0.5]), cond).shape == z.shape
