"""The policies the scenarios time: the tiny kit's, or a random transformer of a real architecture.

``tiny`` loads the tiny kit (CPU, seconds); ``small`` and ``full`` build randomly initialised
transformers from an architecture config (``full`` = Qwen-Image 20B / FLUX 12B, for a GPU) and feed
them synthetic conditions of the real shapes: speed and memory do not need weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benchmarks.common import KIT_FOLDER, BenchmarkError, Settings, resolve_kit

# Architecture configs of the transformers (diffusers constructor arguments).
TRANSFORMER_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen_image_edit": {
        # Qwen-Image (20B): 60 dual-stream blocks, 24 heads x 128, Qwen2.5-VL-7B states (3584).
        "full": dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=60,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            axes_dims_rope=(16, 56, 56),
        ),
        # CPU-sized member of the same family: 4 blocks of width 256, same latent layout.
        "small": dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=4,
            attention_head_dim=32,
            num_attention_heads=8,
            joint_attention_dim=256,
            axes_dims_rope=(8, 12, 12),
        ),
    },
    "kontext": {
        # FLUX.1 (12B): 19 double + 38 single blocks, 24 heads x 128, T5-XXL (4096) + CLIP-L pooled (768).
        "full": dict(
            patch_size=1,
            in_channels=64,
            out_channels=None,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
        "small": dict(
            patch_size=1,
            in_channels=64,
            out_channels=None,
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=32,
            num_attention_heads=8,
            joint_attention_dim=256,
            pooled_projection_dim=64,
            guidance_embeds=True,
            axes_dims_rope=(8, 12, 12),
        ),
    },
}
# Text tokens of the synthetic condition (Qwen pads/truncates to max_text_length; Kontext's T5 to 512).
TEXT_TOKENS = {"qwen_image_edit": {"small": 64, "full": 256}, "kontext": {"small": 64, "full": 512}}
# Real Qwen prompts fill most of the 256 stored positions: a 384^2 condition image is 196 vision
# tokens, plus "Picture 1:", the instruction and the assistant prefix (~30). Kontext's T5 has no mask.
USED_TEXT_FRACTION = 226 / 256


def lora_settings(rank: int):
    from edit_r1.models.lora import LoraSettings

    return LoraSettings(rank=rank, alpha=2 * rank, init="gaussian")


def tiny_policy(settings: Settings):
    """The tiny kit's policy of ``settings.family`` loaded as the trainer loads it."""
    from edit_r1.models.registry import load_policy

    size = settings.image_size()
    options = {"condition_area": size * size} if settings.family == "qwen_image_edit" else {}
    return load_policy(
        settings.family,
        resolve_kit(settings) / KIT_FOLDER[settings.family],
        device=settings.torch_device,
        dtype=settings.dtype,
        resolution=size,
        lora=lora_settings(min(settings.lora_rank, 8)),
        gradient_checkpointing=settings.gradient_checkpointing,
        attention_backend=settings.attention_backend,
        max_text_length=256,  # as the tiny config: the chat template alone is ~130 tokens
        **options,
    )


def random_transformer(family: str, size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised transformer of the real (``full``) or CPU-sized (``small``) architecture,
    allocated directly on ``device`` in ``dtype`` (a 20B model never exists in float32)."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel

    cls = QwenImageTransformer2DModel if family == "qwen_image_edit" else FluxTransformer2DModel
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**TRANSFORMER_CONFIGS[family][size]).eval()
    finally:
        torch.set_default_dtype(previous)


def real_vae_on_meta(family: str) -> torch.nn.Module:
    """The family's real VAE architecture on the meta device (no memory): the policy only needs its
    config (latent scale factor) for the training step."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage

    with torch.device("meta"):
        if family == "qwen_image_edit":
            return AutoencoderKLQwenImage()  # defaults = Qwen-Image VAE (scale 8, 16 channels)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
        )


def random_policy(settings: Settings):
    """A policy around a random ``settings.size`` transformer; text encoders and scheduler come from
    the tiny kit (they are not run by the training step, whose conditions are synthetic)."""
    from edit_r1.models.registry import policy_class

    kit = tiny_policy(dataclasses.replace(settings, device="cpu"))
    transformer = random_transformer(settings.family, settings.size, settings.torch_device, settings.dtype)
    shared = dict(
        transformer=transformer,
        vae=real_vae_on_meta(settings.family),
        scheduler=kit.scheduler,
        resolution=settings.image_size(),
        lora=lora_settings(settings.lora_rank),
        gradient_checkpointing=settings.gradient_checkpointing,
        attention_backend=settings.attention_backend,
        dtype=settings.dtype,
        max_text_length=TEXT_TOKENS[settings.family][settings.size],
    )
    if settings.family == "qwen_image_edit":
        encoders = dict(text_encoder=kit.text_encoder, processor=kit.processor)
    else:
        encoders = dict(
            text_encoder=kit.text_encoder,
            tokenizer=kit.tokenizer,
            text_encoder_2=kit.text_encoder_2,
            tokenizer_2=kit.tokenizer_2,
        )
    return policy_class(settings.family)(**shared, **encoders)


def synthetic_condition(policy, batch: int, generator: torch.Generator):
    """A condition of the real shapes (text states, reference latents on the target grid)."""
    from edit_r1.models.kontext import KontextCondition
    from edit_r1.models.qwen_image_edit import QwenCondition

    device, config = policy.device, policy.transformer.config
    grid = policy.latent_grid
    tokens = policy.max_text_length

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=policy.dtype)

    ref = randn(batch, grid[0] * grid[1], config.in_channels)
    if policy.family == "qwen_image_edit":
        mask = torch.zeros(batch, tokens, dtype=torch.long, device=device)
        mask[:, : round(tokens * USED_TEXT_FRACTION)] = 1
        return QwenCondition(
            prompt_embeds=randn(batch, tokens, config.joint_attention_dim),
            prompt_mask=mask,
            ref_latents=ref,
            ref_grid=grid,
        )
    return KontextCondition(
        prompt_embeds=randn(batch, tokens, config.joint_attention_dim),
        pooled_prompt_embeds=randn(batch, config.pooled_projection_dim),
        ref_latents=ref,
        ref_grid=grid,
    )


def build_policy(settings: Settings):
    """The policy of ``settings.size`` and one batch of conditions for it."""
    generator = torch.Generator().manual_seed(0)
    if settings.size == "tiny":
        from PIL import Image

        policy = tiny_policy(settings)
        image = Image.new("RGB", (settings.image_size(),) * 2, (200, 40, 40))
        cond = policy.encode_condition(
            ["make the square blue"] * settings.batch_size,
            [image] * settings.batch_size,
            group_keys=list(range(settings.batch_size)),
        )
        return policy, cond
    if settings.size not in ("small", "full"):
        raise BenchmarkError(f"--size must be tiny, small or full, got {settings.size!r}")
    policy = random_policy(settings)
    return policy, synthetic_condition(policy, settings.batch_size, generator)
