"""Reference-implementation check: our adapters + `sample(solver="flow", deterministic=True)` give
the stock diffusers pipelines' final latents and decoded images (same noise, sigmas, guidance,
sizes) for QwenImageEditPlusPipeline, QwenImageEditPipeline and FluxKontextPipeline.

The stock Qwen pipelines hard-code their image areas (Plus: module constants CONDITION_IMAGE_SIZE
= 384^2 and VAE_IMAGE_SIZE = 1024^2; original: a literal 1024^2 passed to `calculate_dimensions`);
the tests set those to the tiny sizes our adapters take from their options. Kontext needs no patch:
`_auto_resize=False` keeps the reference size and `max_area` fixes the target size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edit_r1.sampling import sample, sigma_schedule

SIZE = 64
STEPS = 2
SEED = 7
PROMPT = "make the sky red"
TOLERANCE = 1e-4


def source_image(width: int = 80, height: int = 72) -> Image.Image:
    """A deterministic non-square RGB test image (resized by both sides in the same way)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def run_ours(policy, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        cond = policy.encode_condition([PROMPT], [image])
        noise = policy.initial_noise(1, torch.Generator().manual_seed(SEED))
        sigmas = sigma_schedule(STEPS, policy.image_seq_len, policy.scheduler_config)
        result = sample(
            lambda z, s: policy.velocity(z, s, cond),
            noise,
            sigmas,
            solver="flow",
            deterministic=True,
            noise_level=0.7,
        )
        return result.latents, policy.decode(result.latents)


def run_stock(pipe, image: Image.Image, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    captured = {}

    def keep_latents(_pipe, _step, _t, tensors):
        captured["latents"] = tensors["latents"]
        return {}

    images = pipe(
        image=image,
        prompt=PROMPT,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
        callback_on_step_end=keep_latents,
        **kwargs,
    ).images
    return captured["latents"], images


def assert_same(ours: tuple[torch.Tensor, torch.Tensor], stock: tuple[torch.Tensor, torch.Tensor]) -> None:
    (our_latents, our_images), (stock_latents, stock_images) = ours, stock
    assert our_latents.shape == stock_latents.shape
    assert our_images.shape == stock_images.shape == (1, 3, SIZE, SIZE)
    assert (our_latents - stock_latents).abs().max().item() <= TOLERANCE
    assert (our_images - stock_images).abs().max().item() <= TOLERANCE
    # The comparison is not vacuous: the rollout moved away from the noise.
    assert our_latents.abs().mean() > 0.05


@pytest.fixture(scope="module")
def qwen_path(tiny_kit):
    return tiny_kit / "qwen_image_edit_plus"


@pytest.fixture(scope="module")
def qwen_stock(qwen_path):
    from diffusers import QwenImageEditPlusPipeline

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor

    processor = load_qwen_vl_processor(qwen_path, subfolder="processor")
    pipe = QwenImageEditPlusPipeline.from_pretrained(qwen_path, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("true_cfg_scale", [1.0, 4.0])
def test_qwen_plus_matches_stock_pipeline(qwen_path, qwen_stock, monkeypatch, true_cfg_scale):
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

    from edit_r1.models.qwen_image_edit import QwenImageEditPolicy

    condition_area, reference_area = 48 * 48, SIZE * SIZE
    monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", condition_area)
    monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", reference_area)
    policy = QwenImageEditPolicy.from_pretrained(
        qwen_path,
        resolution=SIZE,
        condition_area=condition_area,
        max_text_length=1024,  # the tiny tokenizer splits the system prompt into many tokens
        true_cfg_scale=true_cfg_scale,
        negative_prompt="",
    )
    assert policy.variant == "plus"
    image = source_image()
    stock = run_stock(qwen_stock, image, true_cfg_scale=true_cfg_scale, negative_prompt="")
    assert_same(run_ours(policy, image), stock)


def test_qwen_original_matches_stock_pipeline(qwen_path, qwen_stock, monkeypatch):
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
    from diffusers import QwenImageEditPipeline

    from edit_r1.models.qwen_image_edit import QwenImageEditPolicy

    stock_dimensions = edit_module.calculate_dimensions
    monkeypatch.setattr(
        edit_module, "calculate_dimensions", lambda _area, ratio: stock_dimensions(SIZE * SIZE, ratio)
    )
    pipe = QwenImageEditPipeline(**qwen_stock.components)
    pipe.set_progress_bar_config(disable=True)
    policy = QwenImageEditPolicy.from_pretrained(
        qwen_path, variant="original", resolution=SIZE, max_text_length=1024
    )
    assert policy.condition_area is None  # the original model's vision encoder sees the VAE image
    image = source_image()
    assert_same(run_ours(policy, image), run_stock(pipe, image, true_cfg_scale=1.0))


def test_kontext_matches_stock_pipeline(tiny_kit):
    from diffusers import FluxKontextPipeline

    from edit_r1.models.kontext import KontextPolicy

    path = tiny_kit / "flux_kontext"
    pipe = FluxKontextPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    policy = KontextPolicy.from_pretrained(path, resolution=SIZE, max_text_length=32, guidance_scale=2.5)
    image = source_image(SIZE, SIZE)  # the stock pipeline keeps the reference size with _auto_resize=False
    stock = run_stock(
        pipe, image, guidance_scale=2.5, max_sequence_length=32, max_area=SIZE * SIZE, _auto_resize=False
    )
    assert_same(run_ours(policy, image), stock)


def test_qwen_2511_matches_stock_pipeline_and_differs_from_2509(tiny_kit, qwen_stock, monkeypatch):
    """Qwen-Image-Edit-2511 = the Plus pipeline with a `zero_cond_t` transformer; the tiny 2511 kit
    has the 2509 kit's weights, so the 2509 output differing shows that the flag takes effect."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module
    from diffusers import QwenImageEditPlusPipeline

    from edit_r1.models.qwen_image_edit import QwenImageEditPolicy
    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor

    path = tiny_kit / "qwen_image_edit_2511"
    condition_area, reference_area = 48 * 48, SIZE * SIZE
    monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", condition_area)
    monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", reference_area)
    stock_2511 = QwenImageEditPlusPipeline.from_pretrained(
        path, processor=load_qwen_vl_processor(path, subfolder="processor")
    )
    stock_2511.set_progress_bar_config(disable=True)
    policy = QwenImageEditPolicy.from_pretrained(
        path, resolution=SIZE, condition_area=condition_area, max_text_length=1024, true_cfg_scale=4.0
    )
    assert policy.variant == "plus" and policy.transformer.config.zero_cond_t
    image = source_image()
    ours = run_ours(policy, image)
    assert_same(ours, run_stock(stock_2511, image, true_cfg_scale=4.0, negative_prompt=""))
    latents_2509, _ = run_stock(qwen_stock, image, true_cfg_scale=4.0, negative_prompt="")
    assert (ours[0] - latents_2509).abs().max() > 1e-3


def test_qwen_plus_two_reference_images_match_stock_pipeline(qwen_path, qwen_stock, monkeypatch):
    """Several reference images: "Picture 1", "Picture 2" in the prompt, each image at the
    condition area for the vision encoder and at the VAE area as reference latents, in order."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

    from edit_r1.models.qwen_image_edit import QwenImageEditPolicy

    condition_area, reference_area = 48 * 48, SIZE * SIZE
    monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", condition_area)
    monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", reference_area)
    policy = QwenImageEditPolicy.from_pretrained(
        qwen_path, resolution=SIZE, condition_area=condition_area, max_text_length=1024, true_cfg_scale=4.0
    )
    images = [source_image(), source_image(56, 72).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    stock = run_stock(qwen_stock, images, true_cfg_scale=4.0, negative_prompt="")
    assert_same(run_ours(policy, images), stock)
