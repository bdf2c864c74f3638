"""Editing with a base model or base + trained LoRA, as the reproduction scripts do it.

The scripts sample through `EditPolicy` (equivalent to the stock diffusers pipelines, tested to
1e-4) with deterministic `flow` (Euler) steps on the pipeline's own sigmas, so the same code
serves the base model and a LoRA. Per item they reproduce the geometry of the stock pipeline call
of the original scripts (`max_area` = 1024^2 by default):

* Qwen-Image-Edit(-2509): output and VAE reference at `fit_to_area(max_area, aspect, 32)` of the
  source image (the pipeline's `calculate_dimensions`), vision-encoder image at `condition_area`
  (384^2); true CFG 4.0 with negative prompt " ".
* FLUX.1-Kontext: output at `max_area` with the aspect of `request_size` (GEdit passed the source
  size; ImgEdit passed nothing, i.e. 1024x1024), sides floored to 16; the reference is resized to
  the preferred Kontext resolution closest to the source's aspect (the pipeline's
  `_auto_resize`), scaled by sqrt(max_area / 1024^2) so that small test areas stay small
  (identical to the pipeline at the default area); embedded guidance 3.5.

Noise: one generator per item seeded with `seed` on the model's device, as the original scripts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from edit_r1.lora_files import LoraWeights, read_lora
from edit_r1.models import lora as lora_utils
from edit_r1.models.base import EditPolicy, fit_to_area
from edit_r1.models.registry import load_policy
from edit_r1.sampling import sample, sigma_schedule

DEFAULT_MAX_AREA = 1024 * 1024
QWEN_CONDITION_AREA = 384 * 384
QWEN_MAX_TEXT_LENGTH = 1024  # the stock pipeline's cap; nothing shorter is truncated
# The resolutions FLUX.1-Kontext was trained on (width, height), as in diffusers' FluxKontextPipeline.
KONTEXT_PREFERRED_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip
KONTEXT_DEFAULT_REQUEST = (1024, 1024)  # the pipeline's size when none is given


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The original scripts' settings (SPEC section 4): Qwen true CFG 4.0 / negative " ", Kontext
    guidance 3.5, 28 steps, seed 42 per item, 1024^2 output area."""

    num_inference_steps: int = 28
    seed: int = 42
    max_area: int = DEFAULT_MAX_AREA
    true_cfg_scale: float = 4.0
    negative_prompt: str = " "
    guidance_scale: float = 3.5
    condition_area: int = QWEN_CONDITION_AREA


@dataclasses.dataclass(frozen=True)
class Geometry:
    """(width, height) of the generated image and of the VAE reference image."""

    output: tuple[int, int]
    reference: tuple[int, int]


def qwen_geometry(image_size: tuple[int, int], max_area: int) -> Geometry:
    """QwenImageEdit(Plus)Pipeline with no height/width: both sizes are `calculate_dimensions`."""
    width, height = fit_to_area(max_area, image_size[0] / image_size[1], 32)
    return Geometry(output=(width, height), reference=(width, height))


def _floor_to(value: float, multiple: int) -> int:
    return max(multiple, int(value) // multiple * multiple)


def kontext_geometry(
    image_size: tuple[int, int], max_area: int, request_size: tuple[int, int] | None
) -> Geometry:
    """FluxKontextPipeline: output `round(sqrt(max_area * a))` x `round(sqrt(max_area / a))`
    floored to 16 with a = aspect of `request_size` (1024x1024 when None); reference = the preferred
    resolution closest to the source's aspect, scaled to `max_area`, floored to 16."""
    request_w, request_h = request_size or KONTEXT_DEFAULT_REQUEST
    aspect = request_w / request_h
    output = (
        _floor_to(round(math.sqrt(max_area * aspect)), 16),
        _floor_to(round(math.sqrt(max_area / aspect)), 16),
    )
    source_w, source_h = (_floor_to(side, 16) for side in image_size)
    source_aspect = source_w / source_h
    _, pref_w, pref_h = min((abs(source_aspect - w / h), w, h) for w, h in KONTEXT_PREFERRED_RESOLUTIONS)
    scale = math.sqrt(max_area / DEFAULT_MAX_AREA)
    reference = (_floor_to(round(pref_w * scale), 16), _floor_to(round(pref_h * scale), 16))
    return Geometry(output=output, reference=reference)


# ----------------------------------------------------------------------------- loading
def policy_options(family: str, settings: SamplingSettings) -> dict[str, Any]:
    """Family options of `load_policy` for evaluation-time sampling."""
    if family == "qwen_image_edit":
        return {
            "true_cfg_scale": settings.true_cfg_scale,
            "negative_prompt": settings.negative_prompt,
            "condition_area": settings.condition_area,
            "max_text_length": QWEN_MAX_TEXT_LENGTH,
        }
    if family == "kontext":
        return {"guidance_scale": settings.guidance_scale}
    raise ValueError(f"unknown model family {family!r}")


def load_edit_policy(
    family: str,
    pretrained: str | os.PathLike,
    settings: SamplingSettings,
    lora_path: str | os.PathLike | None = None,
    *,
    lora_weights: str = "ema",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[EditPolicy, LoraWeights | None]:
    """The base model (`lora_path` None) or base + LoRA, ready for `edit`.

    The LoRA is loaded into the policy's ``default`` adapter with its own rank, alpha and target
    modules; every matrix of the file must find its module (no silent partial loads)."""
    lora = read_lora(lora_path, weights=lora_weights) if lora_path is not None else None
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
        **policy_options(family, settings),
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
def item_geometry(
    policy: EditPolicy, image: Image.Image, settings: SamplingSettings, request_size: tuple[int, int] | None
) -> Geometry:
    if policy.family == "qwen_image_edit":
        return qwen_geometry(image.size, settings.max_area)
    return kontext_geometry(image.size, settings.max_area, request_size)


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
    geometry = item_geometry(policy, image, settings, request_size)
    width, height = geometry.output
    policy.set_resolution((height, width))
    ref_w, ref_h = geometry.reference
    if policy.family == "kontext":
        image = policy.image_processor.resize(image, ref_h, ref_w)  # as the pipeline's _auto_resize
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
