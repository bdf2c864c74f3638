"""The policies the scenarios time: the tiny kit's, or a random transformer of a real architecture.

``tiny`` loads the tiny kit (CPU, seconds); ``small`` and ``full`` build randomly initialised
transformers of the family's benchmark sizes (``full`` = the real model, for a GPU; the table is in
the family's module under ``edit_r1/models/``) and feed them synthetic conditions of the real
shapes: speed and memory do not need weights.
"""

from __future__ import annotations

import dataclasses

import torch

from benchmarks.common import BenchmarkError, Settings, resolve_kit
from edit_r1.models.base import EditPolicy
from edit_r1.models.lora import LoraSettings
from edit_r1.models.registry import load_policy, policy_class

# As the tiny configs: the chat template alone of the tiny kit's text encoder is ~130 tokens.
TINY_MAX_TEXT_LENGTH = 256


def lora_settings(rank: int) -> LoraSettings:
    return LoraSettings(rank=rank, alpha=2 * rank, init="gaussian")


def tiny_policy(settings: Settings) -> EditPolicy:
    """The tiny kit's policy of ``settings.family`` loaded as the trainer loads it."""
    family = policy_class(settings.family)
    size = settings.image_size()
    return load_policy(
        settings.family,
        resolve_kit(settings) / family.tiny_kit_folder,
        device=settings.torch_device,
        dtype=settings.dtype,
        resolution=size,
        lora=lora_settings(min(settings.lora_rank, 8)),
        gradient_checkpointing=settings.gradient_checkpointing,
        attention_backend=settings.attention_backend,
        max_text_length=settings.text_tokens or TINY_MAX_TEXT_LENGTH,
        **family.benchmark_options(size),
    )


def random_transformer(family: str, size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised transformer of ``family``'s ``size`` architecture (see
    ``EditPolicy.random_transformer``)."""
    return policy_class(family).random_transformer(size, device, dtype)


def real_vae_on_meta(family: str) -> torch.nn.Module:
    """The family's real VAE architecture on the meta device (no memory)."""
    return policy_class(family).meta_vae()


def random_policy(settings: Settings) -> EditPolicy:
    """A policy around a random ``settings.size`` transformer; encoders and scheduler come from the
    tiny kit (they are not run by the training step, whose conditions are synthetic)."""
    family = policy_class(settings.family)
    kit = tiny_policy(dataclasses.replace(settings, device="cpu"))
    return family(
        transformer=family.random_transformer(settings.size, settings.torch_device, settings.dtype),
        vae=family.meta_vae(),
        scheduler=kit.scheduler,
        resolution=settings.image_size(),
        lora=lora_settings(settings.lora_rank),
        gradient_checkpointing=settings.gradient_checkpointing,
        attention_backend=settings.attention_backend,
        dtype=settings.dtype,
        max_text_length=settings.text_tokens or family.benchmark_text_tokens[settings.size],
        **kit.encoders(),
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
    return policy, policy.synthetic_condition(settings.batch_size, generator)
