"""FLUX.1-Kontext adapter behind `EditPolicy`.

Conditioning (docs/models.md#how-each-model-is-conditioned), per (instruction, source image):

* text: CLIP-L pooled output (prompt padded to the CLIP tokenizer's 77 tokens) and the T5 encoder's
  last hidden state (padded/truncated to `max_text_length`: 128 as the original release trains
  and evaluates, `train_nft_kontext.py` ~293 and ~734; the stock pipeline's 512 for sampling); text
  position ids are all zero.
* reference latents: the source image resized to area resolution^2 (aspect kept, sides rounded to
  16), VAE-encoded (distribution mode), mapped to `(z - shift) * scale` and packed 2x2. Position
  ids are (0, y, x) for target tokens and (1, y, x) for reference tokens: the reference is
  offset on the first axis.
* guidance: the distilled guidance embedding, `guidance_scale` (2.5 in training, 3.5 stock).

The stock pipeline snaps the reference to one of its preferred ~1024^2 resolutions unless it is
called with `_auto_resize=False`, in which case it keeps the image size (rounded down to 16); the
equivalence test feeds an image of the target size with `_auto_resize=False` and
`max_area = height * width`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from edit_r1.models.base import (
    Condition,
    EditPolicy,
    default_device_and_dtype,
    fit_to_area,
    on_device_unless_sharded,
    static_field,
)
from edit_r1.models.family import Geometry, floor_to, nearest_aspect
from edit_r1.models.packing import pack_latents, unpack_latents

# The resolutions FLUX.1-Kontext was trained on (width, height), as in diffusers' FluxKontextPipeline.
PREFERRED_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip
DEFAULT_REQUEST = (1024, 1024)  # the pipeline's size when none is given
PREFERRED_AREA = 1024 * 1024  # the area of the preferred resolutions
# Benchmark sizes (diffusers constructor arguments of FluxTransformer2DModel).
# FLUX.1's text encoders: the T5-XXL encoder and CLIP-L (their published configs).
T5_XXL_CONFIG: dict[str, Any] = dict(
    d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128, feed_forward_proj="gated-gelu"
)  # fmt: skip
CLIP_L_CONFIG: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408,
    max_position_embeddings=77, projection_dim=768,
)  # fmt: skip
BENCHMARK_ARCHITECTURES: dict[str, dict[str, Any]] = {
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
}


def edit_geometry(
    image_size: tuple[int, int], max_area: int, request_size: tuple[int, int] | None
) -> Geometry:
    """FluxKontextPipeline: output `round(sqrt(max_area * a))` x `round(sqrt(max_area / a))`
    floored to 16 with a = aspect of `request_size` (1024x1024 when None); reference = the preferred
    resolution closest to the source's aspect, scaled by sqrt(max_area / 1024^2) (identical to the
    pipeline at the default area, small test areas stay small), floored to 16."""
    request_w, request_h = request_size or DEFAULT_REQUEST
    aspect = request_w / request_h
    output = (
        floor_to(round(math.sqrt(max_area * aspect)), 16),
        floor_to(round(math.sqrt(max_area / aspect)), 16),
    )
    source = tuple(floor_to(side, 16) for side in image_size)
    pref_w, pref_h = nearest_aspect(source, PREFERRED_RESOLUTIONS)
    scale = math.sqrt(max_area / PREFERRED_AREA)
    reference = (floor_to(round(pref_w * scale), 16), floor_to(round(pref_h * scale), 16))
    return Geometry(output=output, reference=reference)


@dataclasses.dataclass(frozen=True)
class KontextCondition(Condition):
    """Encoded FLUX.1-Kontext condition, batch-first.

    prompt_embeds (B, T, D): T5 states, T = max_text_length; pooled_prompt_embeds (B, P): CLIP pooled;
    ref_latents (B, Lr, 4C): packed scaled reference latents on a `ref_grid` of tokens.
    """

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    ref_latents: torch.Tensor
    ref_grid: tuple[int, int] = static_field()


def position_ids(grid: tuple[int, int], first: float, device: torch.device) -> torch.Tensor:
    """(rows*cols, 3) ids (first, y, x) in row-major token order."""
    rows, cols = grid
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


SAMPLING_MAX_TEXT_LENGTH = 512  # FluxKontextPipeline's default max_sequence_length


class KontextPolicy(EditPolicy):
    """FLUX.1-Kontext as trained / old / reference policies.

    Args (beyond `EditPolicy`):
        text_encoder, tokenizer: CLIP text model and tokenizer (pooled output).
        text_encoder_2, tokenizer_2: T5 encoder and tokenizer.
        reference_area: pixel area of the VAE reference image (default: height * width).
        max_text_length: T5 length (pad/truncate), at most 512; 128 as the original's training. FLUX
            has no text mask, so the padding is attended to: the length changes every forward.
        guidance_scale: the embedded guidance value.
        policy_options: the `EditPolicy` options (use_lora, lora, gradient_checkpointing, dtype,
            attention_backend, compile_transformer, compile_mode).
    """

    family = "kontext"
    tiny_kit_folder = "flux_kontext"
    encoder_names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    sampling_flags = ("guidance_scale",)
    # The original GEdit script asked the pipeline for the source size; its ImgEdit script for none.
    source_size_benchmarks = ("gedit",)
    benchmark_architectures = BENCHMARK_ARCHITECTURES
    benchmark_text_tokens = {"small": 64, "full": 128}  # the training length; T5 has no mask
    transformer_class = FluxTransformer2DModel
    pipeline_class = FluxKontextPipeline

    def __init__(
        self,
        *,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: Any,
        text_encoder_2: T5EncoderModel,
        tokenizer_2: Any,
        scheduler: FlowMatchEulerDiscreteScheduler,
        resolution: int | tuple[int, int] = 512,
        reference_area: int | None = None,
        max_text_length: int = 128,
        guidance_scale: float = 2.5,
        **policy_options: Any,
    ) -> None:
        if not 1 <= max_text_length <= 512:
            raise ValueError(f"max_text_length must be in [1, 512] for T5 in FLUX, got {max_text_length}")
        if not transformer.config.guidance_embeds:
            raise ValueError("the Kontext transformer must have guidance_embeds=True (guidance-distilled)")
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.text_encoder_2 = text_encoder_2.requires_grad_(False).eval()
        self.tokenizer_2 = tokenizer_2
        super().__init__(
            transformer,
            vae,
            scheduler,
            resolution=resolution,
            **policy_options,
        )
        self.reference_area = int(reference_area or self.height * self.width)
        self.max_text_length = int(max_text_length)
        self.guidance_scale = float(guidance_scale)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> KontextPolicy:
        """Loads a FLUX.1-Kontext checkpoint (hub id or local folder) with each component's own
        `from_pretrained`; VAE in float32, the rest in `dtype` (bf16 on CUDA, float32 on CPU)."""
        path = os.fspath(path)
        device, dtype = default_device_and_dtype(device, dtype)
        transformer = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
        clip = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        t5 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", dtype=dtype)
        encoders_sharded = bool(options.get("shard_text_encoders"))
        return cls(
            transformer=on_device_unless_sharded(
                transformer, device, options.get("shard_device") is not None
            ),
            vae=vae.to(device),
            text_encoder=on_device_unless_sharded(clip, device, encoders_sharded),
            tokenizer=AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
            text_encoder_2=on_device_unless_sharded(t5, device, encoders_sharded),
            tokenizer_2=AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2"),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
            dtype=dtype,
            **options,
        )

    def stock_pipeline(self, transformer: torch.nn.Module | None = None) -> FluxKontextPipeline:
        """The stock FluxKontextPipeline on these components (optionally another transformer)."""
        return FluxKontextPipeline(
            scheduler=self.scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            transformer=transformer if transformer is not None else self.transformer,
        )

    # ----------------------------------------------------------------------------- geometry
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels // 4

    # ----------------------------------------------------------------------------- conditions
    def _reference_size(self, images: list[Image.Image]) -> tuple[int, int]:
        multiple = self.vae_scale_factor * 2
        sizes = {fit_to_area(self.reference_area, img.width / img.height, multiple) for img in images}
        if len(sizes) > 1:
            raise ValueError(
                f"source images of one batch must share an aspect ratio (reference sizes {sorted(sizes)}); "
                "centre-crop them to the training resolution first"
            )
        return sizes.pop()

    def _encode_batch(self, instructions: list[str], images: list[Image.Image]) -> KontextCondition:
        ref_width, ref_height = self._reference_size(images)
        factor = self.vae_scale_factor * 2
        return KontextCondition(
            prompt_embeds=self._t5(instructions),
            pooled_prompt_embeds=self._clip_pooled(instructions),
            ref_latents=self._encode_reference(images, ref_height, ref_width),
            ref_grid=(ref_height // factor, ref_width // factor),
        )

    def _clip_pooled(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).pooler_output.to(self.dtype)

    def _t5(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer_2(
            texts, padding="max_length", max_length=self.max_text_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder_2(ids.to(self.text_encoder_2.device))[0].to(self.dtype)

    def _encode_reference(self, images: list[Image.Image], height: int, width: int) -> torch.Tensor:
        pixels = self.image_processor.preprocess(images, height, width)
        pixels = pixels.to(device=self.vae.device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return pack_latents(latents).to(self.dtype)

    # ----------------------------------------------------------------------------- latents
    def initial_noise(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        rows, cols = self.latent_grid
        shape = (batch_size, self.latent_channels, rows * 2, cols * 2)
        return pack_latents(randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        spatial = unpack_latents(latents, self.latent_grid).to(device=self.vae.device, dtype=self.vae.dtype)
        spatial = spatial / self.vae.config.scaling_factor + self.vae.config.shift_factor
        images = self.vae.decode(spatial, return_dict=False)[0]
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
        if not isinstance(cond, KontextCondition):
            raise TypeError(f"expected a KontextCondition, got {type(cond).__name__}")
        device = z.device
        hidden = torch.cat([z, cond.ref_latents.to(z.dtype)], dim=1).to(self.dtype)
        img_ids = torch.cat(
            [position_ids(self.latent_grid, 0, device), position_ids(cond.ref_grid, 1, device)]
        )
        txt_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=device)
        guidance = torch.full((z.shape[0],), self.guidance_scale, device=device, dtype=torch.float32)
        with self._row_adapters(module, row_adapters):
            out = module(
                hidden_states=hidden,
                timestep=sigma,
                guidance=guidance,
                pooled_projections=cond.pooled_prompt_embeds.to(self.dtype),
                encoder_hidden_states=cond.prompt_embeds.to(self.dtype),
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        return out[:, : z.shape[1]]

    # ----------------------------------------------------------------------------- family facts
    @classmethod
    def options_from_settings(cls, settings: Any) -> dict[str, Any]:
        """The embedded guidance, ``sample.guidance_scale``."""
        return {"guidance_scale": settings.guidance_scale}

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        if config.sample.true_cfg_scale != 1.0:
            return [
                f"sample.true_cfg_scale={config.sample.true_cfg_scale!r}: Kontext has no true CFG (its "
                "guidance is the embedded sample.guidance_scale); leave true_cfg_scale at 1.0"
            ]
        return []

    @classmethod
    def sampling_options(cls, settings: Any) -> dict[str, Any]:
        """Embedded guidance; T5 at the stock pipeline's 512 tokens, as the reproduction scripts."""
        return {"guidance_scale": settings.guidance_scale, "max_text_length": SAMPLING_MAX_TEXT_LENGTH}

    @classmethod
    def edit_geometry(
        cls, image_size: tuple[int, int], max_area: int, request_size: tuple[int, int] | None
    ) -> Geometry:
        return edit_geometry(image_size, max_area, request_size)

    def reference_image(self, image: Image.Image, geometry: Geometry) -> Image.Image:
        """Resized to the reference size, as the pipeline's `_auto_resize`."""
        ref_w, ref_h = geometry.reference
        return self.image_processor.resize(image, ref_h, ref_w)

    @classmethod
    def meta_text_encoders(cls) -> dict[str, torch.nn.Module]:
        from transformers import CLIPTextConfig, T5Config

        with torch.device("meta"):
            return {
                "T5-XXL": T5EncoderModel(T5Config(**T5_XXL_CONFIG)),
                "CLIP-L": CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)),
            }

    @classmethod
    def transformer_call(
        cls, transformer: torch.nn.Module, batch: int, grid: int, text: int
    ) -> dict[str, Any]:
        config = transformer.config
        img_ids = torch.zeros(2 * grid * grid, 3)
        img_ids[:, 1] = torch.arange(grid).repeat_interleave(grid).repeat(2).float()
        img_ids[:, 2] = torch.arange(grid).repeat(2 * grid).float()
        img_ids[grid * grid :, 0] = 1.0  # the reference image's tokens
        return dict(
            hidden_states=torch.randn(batch, 2 * grid * grid, config.in_channels),
            encoder_hidden_states=torch.randn(batch, text, config.joint_attention_dim),
            pooled_projections=torch.randn(batch, config.pooled_projection_dim),
            timestep=torch.full((batch,), 0.5),
            img_ids=img_ids,
            txt_ids=torch.zeros(text, 3),
            guidance=torch.full((batch,), 2.5),
            return_dict=False,
        )

    @classmethod
    def meta_vae(cls) -> torch.nn.Module:
        with torch.device("meta"):
            return AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=16,
            )

    def synthetic_condition(self, batch: int, generator: torch.Generator) -> KontextCondition:
        """Random T5 states and CLIP pooled vector, random reference latents on the target grid."""
        config, tokens, grid = self.transformer.config, self.max_text_length, self.latent_grid

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(device=self.device, dtype=self.dtype)

        ref = randn(batch, grid[0] * grid[1], config.in_channels)
        return KontextCondition(
            prompt_embeds=randn(batch, tokens, config.joint_attention_dim),
            pooled_prompt_embeds=randn(batch, config.pooled_projection_dim),
            ref_latents=ref,
            ref_grid=grid,
        )
