"""Editing with a base model or base + trained LoRA, as the reproduction scripts do it.

The scripts sample through `EditPolicy` (equivalent to the stock diffusers pipelines, tested to
1e-4) with deterministic `flow` (Euler) steps on the pipeline's own sigmas, so the same code
serves the base model and a LoRA. Per item they reproduce the geometry of the stock pipeline call
of the original scripts (`max_area` = 1024^2 by default): each family's `edit_geometry` gives the
output and reference sizes and its `reference_image` the image the encoders see
(`docs/evaluation.md`); its `sampling_options` the guidance of the original scripts.

Noise: one generator per item seeded with `seed` on the model's device, as the original scripts.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from PIL import Image

from edit_r1.lora_files import LoraWeights, read_lora
from edit_r1.models import lora as lora_utils
from edit_r1.models.base import EditPolicy
from edit_r1.models.registry import load_policy, policy_class
from edit_r1.sampling import sample, sigma_schedule

DEFAULT_MAX_AREA = 1024 * 1024
CONDITION_AREA = 384 * 384  # the vision-encoder image area of the pipelines that have one


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The original scripts' settings (`docs/evaluation.md`): 28 steps, seed 42 per item, 1024^2
    output area; true CFG 4.0 with negative prompt " " and a 384^2 vision-encoder image for the
    family with true CFG, embedded guidance 3.5 for the guidance-distilled one. Each family reads
    the fields it uses (`EditPolicy.sampling_options`)."""

    num_inference_steps: int = 28
    seed: int = 42
    max_area: int = DEFAULT_MAX_AREA
    true_cfg_scale: float = 4.0
    negative_prompt: str = " "
    guidance_scale: float = 3.5
    condition_area: int = CONDITION_AREA


# ----------------------------------------------------------------------------- loading
def load_edit_policy(
    family: str,
    pretrained: str | os.PathLike,
    settings: SamplingSettings,
    lora_path: str | os.PathLike | None = None,
    *,
    lora_weights: str = "ema",
    lora_scale: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[EditPolicy, LoraWeights | None]:
    """The base model (`lora_path` None) or base + LoRA, ready for `edit`.

    The LoRA is loaded into the policy's ``default`` adapter with its own rank, alpha and target
    modules; every matrix of the file must find its module (no silent partial loads).
    ``lora_scale`` replaces the file's ``alpha / r`` (alpha becomes ``lora_scale * r``)."""
    lora = read_lora(lora_path, weights=lora_weights) if lora_path is not None else None
    if lora is not None and lora_scale is not None:
        if not lora_scale > 0:
            raise ValueError(f"lora_scale must be > 0, got {lora_scale}")
        lora = dataclasses.replace(lora, alpha=float(lora_scale) * lora.rank)
    settings_for_policy = (
        lora_utils.LoraSettings(
            rank=lora.rank, alpha=lora.alpha, init=True, target_modules=lora.target_modules
        )
        if lora is not None
        else lora_utils.LoraSettings(rank=1)  # unused: the base model runs with adapters bypassed
    )
    policy = load_policy(
        family,
        pretrained,
        device=device,
        dtype=dtype,
        resolution=64,  # set per item by `edit`
        use_lora=True,
        lora=settings_for_policy,
        **policy_class(family).sampling_options(settings),
    )
    if lora is not None:
        copy_lora_into_policy(policy, lora)
    policy.transformer.eval()
    return policy, lora


@torch.no_grad()
def copy_lora_into_policy(policy: EditPolicy, lora: LoraWeights) -> None:
    """Copies the LoRA matrices into adapter ``default``; names and shapes must match exactly."""
    params = {
        name: p for name, p, _ in lora_utils.adapter_parameter_pairs(policy.transformer, "default", "old")
    }
    missing, extra = sorted(set(params) - set(lora.tensors)), sorted(set(lora.tensors) - set(params))
    if missing or extra:
        raise ValueError(
            f"LoRA {lora.source} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, param in params.items():
        value = lora.tensors[name]
        if value.shape != param.shape:
            raise ValueError(
                f"LoRA {lora.source}: {name} has shape {tuple(value.shape)}, model needs {tuple(param.shape)}"
            )
        param.copy_(value)


# ----------------------------------------------------------------------------- editing
@torch.no_grad()
def edit(
    policy: EditPolicy,
    instruction: str,
    image: Image.Image,
    settings: SamplingSettings,
    *,
    use_lora: bool,
    request_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One edited image (3, H, W) in [0, 1]: deterministic Euler ("flow", eta 0) on the pipeline's
    sigmas from noise seeded with `settings.seed` on the policy's device."""
    geometry = policy.edit_geometry(image.size, settings.max_area, request_size)
    width, height = geometry.output
    policy.set_resolution((height, width))
    image = policy.reference_image(image, geometry)
    ref_w, ref_h = geometry.reference
    policy.reference_area = ref_w * ref_h
    cond = policy.encode_condition([instruction], [image])
    generator = torch.Generator(device=policy.device).manual_seed(settings.seed)
    noise = policy.initial_noise(1, generator)
    sigmas = sigma_schedule(settings.num_inference_steps, policy.image_seq_len, policy.scheduler_config)
    adapter = "default" if use_lora else "ref"

    def velocity(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return policy.velocity(z, sigma, cond, adapter=adapter)

    result = sample(
        velocity, noise, sigmas.to(noise.device), solver="flow", deterministic=True, noise_level=0.0
    )
    return policy.decode(result.latents)[0].cpu()


def to_pil_batch(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> RGB PIL images, rounded as diffusers' `numpy_to_pil`."""
    array = (images.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).numpy()]


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL (see `to_pil_batch`)."""
    return to_pil_batch(image.unsqueeze(0))[0]


def save_atomically(image: Image.Image, path: Path) -> None:
    """Writes via a temp file and a rename, so an interrupted run never leaves a truncated output
    that a resumed run would take as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    image.save(tmp, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    os.replace(tmp, path)
