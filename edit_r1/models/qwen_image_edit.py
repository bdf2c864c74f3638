"""Qwen-Image-Edit adapter (2509 / 2511 "Plus" and the original release) behind `EditPolicy`.

2511 is the Plus pipeline with a transformer configured `zero_cond_t=True`: the transformer itself
modulates the reference-image tokens with timestep 0, using the `img_shapes` passed here, so the
adapter needs no option for it (`docs/models.md`).

Conditioning (docs/models.md#how-each-model-is-conditioned), per (instruction, source image):

* text/vision: Qwen2.5-VL reads the family's chat template (the system prompt of the stock
  pipeline) with the condition image. Plus (2509) writes "Picture 1: <|vision_start|><|image_pad|>
  <|vision_end|>" before the instruction and resizes the condition image to area 384^2 (aspect
  kept, sides rounded to 32); the original model has the vision tokens inside its template and
  sees the same image as the VAE. The last hidden state is taken, the template prefix
  (`prompt_template_encode_start_idx` tokens) dropped, and the rest truncated/padded to
  `max_text_length` (256, as the original release) with a 0/1 mask. Each transformer forward
  drops the tail that is padding in every row (`QwenCondition.without_text_padding`, exact).
* reference latents: the source image resized to area resolution^2 (aspect kept, sides rounded to
  32), VAE-encoded (distribution mode), normalised `(z - mean) / std` per channel and packed 2x2;
  the transformer sees [target tokens ; reference tokens] with `img_shapes`
  [(1, H/16, W/16), (1, Hr/16, Wr/16)] for the rotary positions.
* guidance: "true CFG" when `true_cfg_scale > 1`: v = n + s (c - n) with the negative prompt
  (default "") and the same image, rescaled per token by ||c|| / ||v|| over channels. Positive
  and negative rows run in one batched forward.

The stock pipelines fix the VAE area at 1024^2 (and Plus the condition area at 384^2) as module
constants; here both are constructor options (`reference_area`, `condition_area`) so that the
training resolution (512) and tiny test sizes work. The equivalence tests set the stock
constants to the same values.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from edit_r1.models.base import (
    Condition,
    EditPolicy,
    default_device_and_dtype,
    fit_to_area,
    on_device_unless_sharded,
    static_field,
)
from edit_r1.models.family import Geometry
from edit_r1.models.packing import pack_latents, unpack_latents

logger = logging.getLogger(__name__)

VARIANTS: dict[str, type] = {"plus": QwenImageEditPlusPipeline, "original": QwenImageEditPipeline}
VARIANT_OF_PIPELINE = {cls.__name__: name for name, cls in VARIANTS.items()}
# Plus names each input image in the user turn: "Picture 1: ...", "Picture 2: ...", as the stock pipeline.
PLUS_PICTURE_TAG_FORMAT = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
PLUS_PICTURE_TAG = PLUS_PICTURE_TAG_FORMAT.format(1)
# Source images per edit the Plus models are documented for (the Qwen-Image-Edit-2509 model card
# names 1 to 3); the stock pipeline itself sets no limit, hence an option.
PLUS_MAX_REFERENCE_IMAGES = 3
# The Qwen pipelines round reference and condition image sides to multiples of 32.
SIDE_MULTIPLE = 32
PLUS_CONDITION_AREA = 384 * 384
# Reproduction sampling: the stock pipeline's text cap (nothing shorter is truncated).
SAMPLING_MAX_TEXT_LENGTH = 1024
# Benchmark sizes (diffusers constructor arguments of QwenImageTransformer2DModel).
BENCHMARK_ARCHITECTURES: dict[str, dict[str, Any]] = {
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
}
# Qwen2.5-VL-7B-Instruct, the text encoder of Qwen-Image-Edit (its published config.json).
QWEN_VL_7B_CONFIG: dict[str, Any] = dict(
    text_config=dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    ),
    vision_config=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
    ),
    tie_word_embeddings=False,
)  # fmt: skip
# Real prompts fill most of the 256 stored positions: a 384^2 condition image is 196 vision
# tokens, plus "Picture 1:", the instruction and the assistant prefix (~30).
USED_TEXT_FRACTION = 226 / 256


@dataclasses.dataclass(frozen=True)
class QwenCondition(Condition):
    """Encoded Qwen-Image-Edit condition, batch-first.

    prompt_embeds (B, T, D) / prompt_mask (B, T): Qwen2.5-VL states, T = max_text_length;
    ref_latents (B, Lr, 4C): packed normalised reference latents on a `ref_grid` of tokens, followed
        by those of further source images on the `extra_ref_grids` (several reference images);
    negative_*: the negative prompt's embeddings (only when true CFG is on).
    """

    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor
    ref_latents: torch.Tensor
    ref_grid: tuple[int, int] = static_field()
    negative_prompt_embeds: torch.Tensor | None = None
    negative_prompt_mask: torch.Tensor | None = None
    extra_ref_grids: tuple[tuple[int, int], ...] = static_field(default=())

    @property
    def ref_grids(self) -> tuple[tuple[int, int], ...]:
        """The token grid of every reference image, in order."""
        return (self.ref_grid, *self.extra_ref_grids)

    @functools.cached_property
    def text_length(self) -> int:
        """Text positions up to the last one that any row (prompt or negative) uses, at least 1;
        beyond it every row is padding. One host sync per condition object, then cached."""
        masks = [m for m in (self.prompt_mask, self.negative_prompt_mask) if m is not None]
        used = torch.cat([m.bool().any(dim=0, keepdim=True) for m in masks]).any(dim=0)
        positions = torch.arange(1, used.shape[0] + 1, device=used.device)
        return int((used * positions).max().clamp(min=1))

    def without_text_padding(self) -> QwenCondition:
        """The condition with its all-padding text tail dropped (``text_length`` positions kept).

        Exact for the velocity: the Qwen-Image transformer masks padded keys in its joint attention
        and discards the text outputs, and text rotary positions count from the first text token.
        Prompts are stored padded to ``max_text_length`` (256) but are usually shorter, and every
        padded position costs a full pass through every block.
        """
        length = self.text_length
        if length == self.prompt_mask.shape[1]:
            return self
        names = ("prompt_embeds", "prompt_mask", "negative_prompt_embeds", "negative_prompt_mask")
        changes = {
            name: None if getattr(self, name) is None else getattr(self, name)[:, :length] for name in names
        }
        return dataclasses.replace(self, **changes)

    @classmethod
    def cat(cls, conditions: Sequence[Condition]) -> QwenCondition:
        """`Condition.cat`, carrying over the parts' text lengths (no new host sync for them)."""
        out = super().cat(conditions)
        out.__dict__["text_length"] = max(c.text_length for c in conditions)  # the cached_property's slot
        return out


class QwenImageEditPolicy(EditPolicy):
    """Qwen-Image-Edit(-2509/-2511) as trained / old / reference policies.

    Args (beyond `EditPolicy`):
        text_encoder, processor: Qwen2.5-VL and its image+text processor.
        variant: "plus" (QwenImageEditPlusPipeline, 2509 and 2511) or "original" (QwenImageEditPipeline).
        reference_area: pixel area of the VAE reference image (default: height * width).
        condition_area: pixel area of the vision-encoder image (default: 384^2 for Plus, the
            reference area for the original model, as the stock pipelines).
        max_text_length: fixed length of the prompt embeddings (truncate/pad, with a mask).
        true_cfg_scale: > 1 enables true CFG with `negative_prompt`.
        max_reference_images: source images one edit may take (Plus: 3, the model card's range;
            the original model: 1).
        policy_options: the `EditPolicy` options (use_lora, lora, gradient_checkpointing, dtype,
            attention_backend, compile_transformer, compile_mode).
    """

    family = "qwen_image_edit"
    aliases = ("qwen",)
    tiny_kit_folder = "qwen_image_edit_plus"
    encoder_names = ("text_encoder", "processor")
    sampling_flags = ("true_cfg_scale", "negative_prompt", "condition_area")
    benchmark_architectures = BENCHMARK_ARCHITECTURES
    # Pads/truncates to max_text_length (the original release trains with 256).
    benchmark_text_tokens = {"small": 64, "full": 256}
    transformer_class = QwenImageTransformer2DModel
    attention_key_mask = True  # the joint attention masks padded text keys
    # Exact speed-up (`QwenCondition.without_text_padding`); the benchmark turns it off to time
    # the original way.
    trim_text_padding = True

    def __init__(
        self,
        *,
        transformer: QwenImageTransformer2DModel,
        vae: AutoencoderKLQwenImage,
        text_encoder: Qwen2_5_VLForConditionalGeneration,
        processor: Any,
        scheduler: FlowMatchEulerDiscreteScheduler,
        variant: str = "plus",
        resolution: int | tuple[int, int] = 512,
        reference_area: int | None = None,
        condition_area: int | None = None,
        max_text_length: int = 256,
        true_cfg_scale: float = 1.0,
        negative_prompt: str = "",
        max_reference_images: int | None = None,
        **policy_options: Any,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(
                f"unknown Qwen-Image-Edit variant {variant!r}; expected one of {sorted(VARIANTS)}"
            )
        if max_text_length < 1:
            raise ValueError(f"max_text_length must be >= 1, got {max_text_length}")
        self.variant = variant
        self.pipeline_class = VARIANTS[variant]
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.processor = processor
        super().__init__(
            transformer,
            vae,
            scheduler,
            resolution=resolution,
            **policy_options,
        )
        self.reference_area = int(reference_area or self.height * self.width)
        default_condition = PLUS_CONDITION_AREA if variant == "plus" else None
        self.condition_area = condition_area or default_condition
        self.max_text_length = int(max_text_length)
        self.true_cfg_scale = float(true_cfg_scale)
        self.negative_prompt = negative_prompt
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)
        # The chat template and the number of template tokens to drop are model data owned by the
        # stock pipeline; read them from it rather than restating them.
        stock = self.stock_pipeline()
        self.prompt_template: str = stock.prompt_template_encode
        self.prompt_template_drop: int = stock.prompt_template_encode_start_idx
        self.picture_tag = PLUS_PICTURE_TAG if variant == "plus" else ""
        if variant == "plus":
            self.max_reference_images = int(max_reference_images or PLUS_MAX_REFERENCE_IMAGES)
        elif max_reference_images not in (None, 1):
            raise ValueError("the original Qwen-Image-Edit model takes one source image per edit")

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        variant: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> QwenImageEditPolicy:
        """Loads a Qwen-Image-Edit checkpoint (hub id or local folder) with each component's own
        `from_pretrained`. The variant comes from `model_index.json` unless given. The VAE stays
        float32; transformer and text encoder use `dtype` (bf16 on CUDA, float32 on CPU)."""
        from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor

        path = os.fspath(path)
        if variant is None:
            class_name = DiffusionPipeline.load_config(path).get("_class_name")
            if class_name not in VARIANT_OF_PIPELINE:
                raise ValueError(
                    f"{path}: model_index.json names {class_name!r}, not one of {sorted(VARIANT_OF_PIPELINE)}"
                )
            variant = VARIANT_OF_PIPELINE[class_name]
        device, dtype = default_device_and_dtype(device, dtype)
        transformer = QwenImageTransformer2DModel.from_pretrained(
            path, subfolder="transformer", torch_dtype=dtype
        )
        vae = AutoencoderKLQwenImage.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
        text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, subfolder="text_encoder", dtype=dtype
        )
        encoders_sharded = bool(options.get("shard_text_encoders"))
        return cls(
            transformer=on_device_unless_sharded(
                transformer, device, options.get("shard_device") is not None
            ),
            vae=vae.to(device),
            text_encoder=on_device_unless_sharded(text_encoder, device, encoders_sharded),
            processor=load_qwen_vl_processor(path, subfolder="processor"),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
            variant=variant,
            dtype=dtype,
            **options,
        )

    def stock_pipeline(self, transformer: torch.nn.Module | None = None) -> DiffusionPipeline:
        """The stock diffusers pipeline of this variant built on these components (optionally
        with another transformer), e.g. for `load_lora_weights` or reference outputs."""
        return self.pipeline_class(
            scheduler=self.scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.processor.tokenizer,
            processor=self.processor,
            transformer=transformer if transformer is not None else self.transformer,
        )

    # ----------------------------------------------------------------------------- geometry
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.config.temperal_downsample)

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels // 4

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    # ----------------------------------------------------------------------------- conditions
    def _reference_size(self, images: list[Image.Image]) -> tuple[int, int]:
        sizes = {fit_to_area(self.reference_area, img.width / img.height, SIDE_MULTIPLE) for img in images}
        if len(sizes) > 1:
            raise ValueError(
                f"source images of one batch must share an aspect ratio (reference sizes {sorted(sizes)}); "
                "centre-crop them to the training resolution first"
            )
        return sizes.pop()

    def _condition_image(self, image: Image.Image, reference_size: tuple[int, int]) -> Image.Image:
        """What the vision encoder sees: the reference image (original model) or the image at
        `condition_area` (Plus), aspect kept, sides rounded to 32."""
        width, height = reference_size
        if self.condition_area is not None:
            width, height = fit_to_area(self.condition_area, image.width / image.height, SIDE_MULTIPLE)
        return self.image_processor.resize(image, height, width)

    def _encode_batch(self, instructions: list[str], images: list[Any]) -> QwenCondition:
        """`images[i]` is one image or (several reference images) a list; the j-th images of all
        rows share a reference size. The latents of the references follow each other in order."""
        rows = [list(row) if isinstance(row, (list, tuple)) else [row] for row in images]
        sizes = [self._reference_size([row[j] for row in rows]) for j in range(len(rows[0]))]
        condition_images = [
            [self._condition_image(img, size) for img, size in zip(row, sizes, strict=True)] for row in rows
        ]
        embeds, mask = self._encode_text(instructions, condition_images)
        negative_embeds = negative_mask = None
        if self.true_cfg_scale > 1:
            negative_embeds, negative_mask = self._encode_text(
                [self.negative_prompt] * len(rows), condition_images
            )
        factor = self.vae_scale_factor * 2
        latents = [
            self._encode_reference([row[j] for row in rows], height, width)
            for j, (width, height) in enumerate(sizes)
        ]
        grids = [(height // factor, width // factor) for width, height in sizes]
        return QwenCondition(
            prompt_embeds=embeds,
            prompt_mask=mask,
            ref_latents=torch.cat(latents, dim=1),
            ref_grid=grids[0],
            negative_prompt_embeds=negative_embeds,
            negative_prompt_mask=negative_mask,
            extra_ref_grids=tuple(grids[1:]),
        )

    def _picture_tags(self, count: int) -> str:
        """Plus: "Picture 1: <vision tokens>Picture 2: ..." for `count` images; the original: ""."""
        if not self.picture_tag:
            return ""
        return "".join(PLUS_PICTURE_TAG_FORMAT.format(i + 1) for i in range(count))

    def _encode_text(
        self, texts: list[str], condition_images: list[list[Image.Image]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen2.5-VL last hidden states without the template prefix, padded to max_text_length.
        `condition_images[i]` are row i's images, in order."""
        prompts = [
            self.prompt_template.format(self._picture_tags(len(row)) + text)
            for text, row in zip(texts, condition_images, strict=True)
        ]
        flat_images = [img for row in condition_images for img in row]
        inputs = self.processor(text=prompts, images=flat_images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.text_encoder.device)
        outputs = self.text_encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            output_hidden_states=True,
        )
        hidden = outputs.hidden_states[-1]
        batch, width = hidden.shape[0], hidden.shape[-1]
        embeds = hidden.new_zeros(batch, self.max_text_length, width)
        mask = torch.zeros(batch, self.max_text_length, dtype=torch.long, device=hidden.device)
        for row in range(batch):
            states = hidden[row][inputs["attention_mask"][row].bool()][self.prompt_template_drop :]
            if states.shape[0] > self.max_text_length:
                logger.warning(
                    "prompt %d has %d tokens; truncated to max_text_length=%d",
                    row,
                    states.shape[0],
                    self.max_text_length,
                )
                states = states[: self.max_text_length]
            embeds[row, : states.shape[0]] = states
            mask[row, : states.shape[0]] = 1
        return embeds.to(self.dtype), mask

    def _encode_reference(self, images: list[Image.Image], height: int, width: int) -> torch.Tensor:
        pixels = self.image_processor.preprocess(images, height, width).unsqueeze(2)
        pixels = pixels.to(device=self.vae.device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        mean, std = self._latent_stats(latents)
        return pack_latents(((latents - mean) / std).squeeze(2)).to(self.dtype)

    # ----------------------------------------------------------------------------- latents
    def initial_noise(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        rows, cols = self.latent_grid
        shape = (batch_size, 1, self.latent_channels, rows * 2, cols * 2)
        # Drawn with the stock pipeline's (B, 1, C, h, w) shape so a seeded generator gives the
        # same numbers; the frame axis has length 1, so dropping it keeps the memory order.
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        return pack_latents(noise.reshape(batch_size, *shape[2:]))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        spatial = unpack_latents(latents, self.latent_grid).unsqueeze(2)
        spatial = spatial.to(device=self.vae.device, dtype=self.vae.dtype)
        mean, std = self._latent_stats(spatial)
        images = self.vae.decode(spatial * std + mean, return_dict=False)[0][:, :, 0]
        return (images.float() * 0.5 + 0.5).clamp(0, 1)

    # ----------------------------------------------------------------------------- velocity
    def _forward_rows(
        self,
        module: torch.nn.Module,
        z: torch.Tensor,
        sigma: torch.Tensor,
        cond: Condition,
        row_adapters: list[str] | None,
    ) -> torch.Tensor:
        if not isinstance(cond, QwenCondition):
            raise TypeError(f"expected a QwenCondition, got {type(cond).__name__}")
        if self.trim_text_padding:
            cond = cond.without_text_padding()
        hidden = torch.cat([z, cond.ref_latents.to(z.dtype)], dim=1).to(self.dtype)
        embeds, mask = cond.prompt_embeds, cond.prompt_mask
        cfg = self.true_cfg_scale > 1 and self.guided
        if cfg:
            if cond.negative_prompt_embeds is None:
                raise ValueError(
                    "true_cfg_scale > 1 but the condition was encoded without the negative prompt"
                )
            hidden, sigma = torch.cat([hidden, hidden]), torch.cat([sigma, sigma])
            embeds = torch.cat([embeds, cond.negative_prompt_embeds])
            mask = torch.cat([mask, cond.negative_prompt_mask])
            row_adapters = None if row_adapters is None else row_adapters * 2
        img_shapes = [[(1, *self.latent_grid), *((1, *grid) for grid in cond.ref_grids)]] * hidden.shape[0]
        with self._row_adapters(module, row_adapters):
            out = module(
                hidden_states=hidden,
                timestep=sigma,
                encoder_hidden_states=embeds.to(self.dtype),
                encoder_hidden_states_mask=mask,
                img_shapes=img_shapes,
                return_dict=False,
            )[0]
        out = out[:, : z.shape[1]]
        if not cfg:
            return out
        cond_v, uncond_v = out.chunk(2)
        guided = uncond_v + self.true_cfg_scale * (cond_v - uncond_v)
        # Rescale each token to the norm of the conditional prediction (over channels).
        return guided * (cond_v.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))

    # ----------------------------------------------------------------------------- family facts
    @classmethod
    def options_from_settings(cls, settings: Any) -> dict[str, Any]:
        """``true_cfg_scale`` is ``sample.true_cfg_scale`` or the original's key for it,
        ``sample.guidance_scale`` (its Qwen pipeline got ``true_cfg_scale=config.sample.guidance_scale``),
        whichever differs from 1 (both set and different: see `config_problems`)."""
        true_cfg, guidance = float(settings.true_cfg_scale), float(settings.guidance_scale)
        return {
            "condition_area": settings.condition_area,
            "true_cfg_scale": true_cfg if true_cfg != 1.0 else guidance,
        }

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        sample = config.sample
        if 1.0 != sample.true_cfg_scale != sample.guidance_scale != 1.0:
            return [
                f"sample.true_cfg_scale={sample.true_cfg_scale!r} and sample.guidance_scale="
                f"{sample.guidance_scale!r} both set the true-CFG scale (guidance_scale is the original's "
                "key for it); set one of them"
            ]
        return []

    @classmethod
    def runs_true_cfg(cls, config: Any) -> bool:
        """True CFG is on when the scale (``sample.true_cfg_scale`` or ``sample.guidance_scale``,
        as :meth:`options_from_settings` reads them) is above 1."""
        sample = config.sample
        scale = sample.true_cfg_scale if sample.true_cfg_scale != 1.0 else sample.guidance_scale
        return float(scale) > 1.0

    @classmethod
    def sampling_options(cls, settings: Any) -> dict[str, Any]:
        """True CFG with the negative prompt, the vision-encoder area, the stock text cap."""
        return {
            "true_cfg_scale": settings.true_cfg_scale,
            "negative_prompt": settings.negative_prompt,
            "condition_area": settings.condition_area,
            "max_text_length": SAMPLING_MAX_TEXT_LENGTH,
        }

    @classmethod
    def benchmark_options(cls, resolution: int) -> dict[str, Any]:
        return {"condition_area": resolution * resolution}

    @classmethod
    def edit_geometry(
        cls, image_size: tuple[int, int], max_area: int, request_size: tuple[int, int] | None
    ) -> Geometry:
        """QwenImageEdit(Plus)Pipeline with no height/width: both sizes are `calculate_dimensions`
        (`fit_to_area(max_area, aspect of the source, 32)`); ``request_size`` is not used."""
        width, height = fit_to_area(max_area, image_size[0] / image_size[1], SIDE_MULTIPLE)
        return Geometry(output=(width, height), reference=(width, height))

    @classmethod
    def meta_text_encoders(cls) -> dict[str, torch.nn.Module]:
        from transformers import Qwen2_5_VLConfig

        with torch.device("meta"):
            return {
                "Qwen2.5-VL-7B": Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN_VL_7B_CONFIG))
            }

    @classmethod
    def transformer_call(
        cls, transformer: torch.nn.Module, batch: int, grid: int, text: int
    ) -> dict[str, Any]:
        config = transformer.config
        return dict(
            hidden_states=torch.randn(batch, 2 * grid * grid, config.in_channels),
            encoder_hidden_states=torch.randn(batch, text, config.joint_attention_dim),
            encoder_hidden_states_mask=torch.ones(batch, text, dtype=torch.long),
            timestep=torch.full((batch,), 0.5),
            img_shapes=[[(1, grid, grid), (1, grid, grid)]] * batch,
            return_dict=False,
        )

    @classmethod
    def meta_vae(cls) -> torch.nn.Module:
        with torch.device("meta"):
            return AutoencoderKLQwenImage()  # defaults = the Qwen-Image VAE (scale 8, 16 channels)

    def synthetic_condition(self, batch: int, generator: torch.Generator) -> QwenCondition:
        """Random text states with a mask over ``USED_TEXT_FRACTION`` of the stored positions, and
        random reference latents on the target grid."""
        config, tokens, grid = self.transformer.config, self.max_text_length, self.latent_grid

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(device=self.device, dtype=self.dtype)

        ref = randn(batch, grid[0] * grid[1], config.in_channels)
        mask = torch.zeros(batch, tokens, dtype=torch.long, device=self.device)
        mask[:, : round(tokens * USED_TEXT_FRACTION)] = 1
        return QwenCondition(
            prompt_embeds=randn(batch, tokens, config.joint_attention_dim),
            prompt_mask=mask,
            ref_latents=ref,
            ref_grid=grid,
        )
