"""The one interface every editing-model family implements: `EditPolicy`.

The trainer, evaluation and reproduction code never call a diffusers pipeline; they drive an
`EditPolicy`, which owns the model components (transformer, VAE, text/vision encoders, scheduler
constants) and exposes exactly what the algorithm needs:

    cond = policy.encode_condition(instructions, images)     # Condition, batch-first
    z = policy.initial_noise(len(cond), generator)           # packed target latents (B, L, C)
    v = policy.velocity(z, sigma, cond, adapter="default")   # (B, L, C), guidance included
    v_old, v_ref = policy.velocity_old_and_ref(z, sigma, cond)
    images = policy.decode(z)                                # (B, 3, H, W) in [0, 1]

Three policies live in one object (docs/models.md#the-three-policies):

* ``default`` - the trained policy (LoRA adapter ``default``, or the trained transformer);
* ``old``     - the sampling policy, a frozen copy that follows ``default`` by decay;
* ``ref``     - the frozen initial model (adapters disabled, or a frozen copy of the weights).

Family-specific code (how a condition is encoded, how the transformer is called) lives in the
subclasses; the policy bookkeeping (LoRA/full-weight, old/ref, saving) lives here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from edit_r1.models import lora as lora_utils
from edit_r1.models.family import FamilyFacts

ADAPTERS = ("default", "old", "ref")
# An image whose long side is more than this many times its short side is rejected: after
# resizing to the condition areas its short side would collapse to a few pixels.
MAX_ASPECT_RATIO = 8.0


def static_field(**kwargs: Any) -> Any:
    """A Condition field that is shared by the whole batch (not indexed along dim 0)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Condition:
    """Base class of an encoded (instruction, source image) batch.

    Tensor fields are batch-first and are indexed/concatenated along dim 0; fields declared with
    `static_field` (shape metadata such as the reference-latent grid) are shared by the batch and
    must be equal when conditions are concatenated. Optional tensor fields may be ``None``.
    """

    def _batch_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if not f.metadata.get("static")]

    def _static_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.metadata.get("static")]

    def __len__(self) -> int:
        for name in self._batch_names():
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[0])
        raise ValueError(f"{type(self).__name__} holds no tensor")

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Condition:
        changes = {}
        for name in self._batch_names():
            value = getattr(self, name)
            changes[name] = None if value is None else fn(value)
        return dataclasses.replace(self, **changes)

    def index_select(self, index: torch.Tensor | Sequence[int]) -> Condition:
        """Rows `index` of every batch tensor (the same row may appear several times)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return self._map(lambda t: t.index_select(0, idx.to(t.device)))

    def repeat_interleave(self, k: int) -> Condition:
        """Each row repeated `k` times in place: rows [a, b] -> [a]*k + [b]*k (one group per item)."""
        if k < 1:
            raise ValueError(f"repeat_interleave needs k >= 1, got {k}")
        return self._map(lambda t: t.repeat_interleave(k, dim=0))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Condition:
        """Moves every tensor to `device`; `dtype` applies to floating tensors only (masks keep theirs)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            target = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
            return t.to(device=device if device is not None else t.device, dtype=target)

        return self._map(move)

    @classmethod
    def cat(cls, conditions: Sequence[Condition]) -> Condition:
        """Concatenates conditions along the batch; shape metadata must agree."""
        if not conditions:
            raise ValueError("Condition.cat needs at least one condition")
        first = conditions[0]
        for other in conditions[1:]:
            if type(other) is not type(first):
                raise TypeError(f"cannot concatenate {type(first).__name__} with {type(other).__name__}")
            for name in first._static_names():
                if getattr(other, name) != getattr(first, name):
                    raise ValueError(
                        f"cannot concatenate conditions with different {name}: "
                        f"{getattr(first, name)} vs {getattr(other, name)}"
                    )
        changes = {}
        for name in first._batch_names():
            values = [getattr(c, name) for c in conditions]
            if all(v is None for v in values):
                changes[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"cannot concatenate conditions where only some have field {name}")
            else:
                changes[name] = torch.cat(values, dim=0)
        return dataclasses.replace(first, **changes)


def fit_to_area(area: int, aspect_ratio: float, multiple: int) -> tuple[int, int]:
    """(width, height) with `width / height ~= aspect_ratio`, `width * height ~= area`, both
    rounded to the nearest positive multiple of `multiple` (the Qwen pipelines round to 32)."""
    width = math.sqrt(area * aspect_ratio)
    height = width / aspect_ratio
    width = max(multiple, round(width / multiple) * multiple)
    height = max(multiple, round(height / multiple) * multiple)
    return int(width), int(height)


def as_rgb_images(images: Sequence[Any]) -> list[Image.Image]:
    """Validates a batch of source images and returns them as RGB PIL images.

    Accepts PIL images of any mode (converted to RGB: grey, palette, RGBA, CMYK...) and uint8
    numpy arrays (H, W) or (H, W, 3/4). Anything else, empty images and extreme aspect ratios
    (long side > MAX_ASPECT_RATIO x short side) are rejected with a message naming the item.
    """
    out = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise TypeError(
                    f"image {i}: numpy images must be uint8 (H, W) or (H, W, C); got {image.dtype} {image.shape}"
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"image {i}: expected a PIL.Image or a uint8 numpy array, got {type(image).__name__}"
            )
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"image {i}: empty image of size {width}x{height}")
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise ValueError(
                f"image {i}: aspect ratio {width}x{height} is more extreme than 1:{MAX_ASPECT_RATIO:g}; "
                "crop it before editing"
            )
        out.append(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def _row_images(index: int, row: Any) -> list[Image.Image]:
    """One row's source images (an image or a list of them) as RGB; errors name the row."""
    try:
        return as_rgb_images(row if isinstance(row, (list, tuple)) else [row])
    except (TypeError, ValueError) as error:
        raise type(error)(f"row {index}: {error}") from None


def check_batch(instructions: Sequence[str], images: Sequence[Any]) -> None:
    """Raises a clear error for an empty batch, a non-string instruction or mismatched lengths."""
    if isinstance(instructions, str):
        raise TypeError("instructions must be a sequence of strings, not a single string")
    if len(instructions) != len(images):
        raise ValueError(f"got {len(instructions)} instructions but {len(images)} images; they must pair up")
    if len(instructions) == 0:
        raise ValueError("empty batch: need at least one (instruction, image) pair")
    for i, text in enumerate(instructions):
        if not isinstance(text, str):
            raise TypeError(f"instruction {i}: expected str, got {type(text).__name__}")


def image_digest(image: Image.Image) -> str:
    """Content hash of an image (mode, size, pixels) used to find repeated group items."""
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def attention_backend_names() -> list[str]:
    """The names diffusers' `set_attention_backend` accepts (its `AttentionBackendName` values).
    Whether a backend can run here (its package, device and dtype) is checked when a policy uses it."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(backend.value for backend in AttentionBackendName)


def compile_mode_names() -> list[str]:
    """The `mode=` values torch.compile accepts (inductor's mode presets)."""
    import torch._inductor

    return sorted(torch._inductor.list_mode_options())


def check_speed_options(attention_backend: str | None = None, compile_mode: str | None = None) -> None:
    """Clear errors for an unknown attention backend or compile mode ("" / None = the default)."""
    if attention_backend and attention_backend not in attention_backend_names():
        raise ValueError(
            f"attention_backend={attention_backend!r} is not a diffusers attention backend; "
            f"valid choices: {attention_backend_names()} (or empty for diffusers' default)"
        )
    if compile_mode and compile_mode not in compile_mode_names():
        raise ValueError(
            f"compile_mode={compile_mode!r} is not a torch.compile mode; valid choices: "
            f"{compile_mode_names()} (or empty for torch's default)"
        )


def check_resolution(height: int, width: int, multiple: int) -> None:
    """Target sizes must be positive multiples of `multiple` (16 for both model families:
    8x VAE downsampling times 2x2 packing)."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % multiple:
            raise ValueError(f"resolution {name}={value!r} must be a positive multiple of {multiple}")


class EditPolicy(FamilyFacts, ABC):
    """An image-editing flow model seen as the trained, old and reference policies.

    Subclasses implement the family specifics (`encode_condition`, `_forward_rows`,
    `initial_noise`, `decode`); this class implements the policy bookkeeping.

    Args:
        transformer: the denoiser (a diffusers model with `PeftAdapterMixin`).
        vae: the family's VAE (kept in float32).
        scheduler: the family's FlowMatchEulerDiscreteScheduler (its config holds the shift constants).
        resolution: target size, an int (square) or (height, width); multiple of 16.
        use_lora: LoRA mode (two adapters on one transformer) or full-weight mode (three copies).
        lora: LoRA settings (rank, alpha, init, target modules).
        gradient_checkpointing: recompute transformer blocks in backward to save memory.
        dtype: compute dtype of the transformer and text encoders.
        attention_backend: diffusers attention backend of the transformer(s), e.g. "_native_cudnn"
            (None or "" = diffusers' default); checked here to run on this device and dtype.
        compile_transformer: torch.compile the transformer blocks in place (see `compile`).
        compile_mode: torch.compile mode, e.g. "max-autotune-no-cudagraphs" (None = default).
        shard_device: the device `edit_r1.parallelize.parallelize_policy` will FSDP-shard the
            transformers onto (the trainer sets it under `fsdp_transformer` on several ranks); None =
            no sharding planned. When set, no rank ever holds an unsharded copy of a transformer on
            that device: the trained transformer stays on the host, in its load dtype, until each
            block's shard is moved there, and in full-weight mode the `old` and `ref` copies are
            built on the meta device (no storage); parallelizing materialises only each rank's
            shards, copied from the trained transformer's. The policy runs only once parallelized.
        shard_text_encoders: the text encoders will be sharded too (`fsdp_text_encoder`): the
            family's `from_pretrained` leaves them on the host and `parallelize_policy` moves each
            rank's shards to the device, so a whole encoder never lands there either.
    """

    pipeline_class: type | None = None  # the stock diffusers pipeline of the family (for export)
    # How many source images one edit may take ("Picture 1", "Picture 2", ... for Qwen Plus).
    max_reference_images: int = 1
    # Whether the family's transformer gives attention a key mask (Qwen masks padded text); the
    # attention-backend check then passes one too, since some kernels (flash) take no mask.
    attention_key_mask: bool = False

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
        *,
        resolution: int | tuple[int, int],
        use_lora: bool = True,
        lora: lora_utils.LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        dtype: torch.dtype = torch.float32,
        attention_backend: str | None = None,
        compile_transformer: bool = False,
        compile_mode: str | None = None,
        shard_device: str | torch.device | None = None,
        shard_text_encoders: bool = False,
    ) -> None:
        check_speed_options(attention_backend, compile_mode)
        self.shard_device = torch.device(shard_device) if shard_device is not None else None
        self.shard_text_encoders = shard_text_encoders
        self.vae = vae.requires_grad_(False).eval()
        self.scheduler = scheduler
        # The scheduler constants sigma_schedule needs (base/max seq len, shifts, shift_terminal).
        self.scheduler_config: dict[str, Any] = dict(scheduler.config)
        self.dtype = dtype
        self.use_lora = use_lora
        self.lora_settings = lora or lora_utils.LoraSettings()
        self.set_resolution(resolution)
        transformer.requires_grad_(False)
        self.transformer = transformer
        if use_lora:
            lora_utils.add_policy_adapters(transformer, self.lora_settings)
            self.old_transformer = None
            self.ref_transformer = None
        else:
            # Full-weight mode: old and ref are frozen copies. They are separate modules so that a
            # parallelize step (FSDP2) can shard each one; when it will, they hold no storage yet.
            copy_of = self._meta_copy if self.shard_device is not None else self._frozen_copy
            self.old_transformer = copy_of(transformer)
            self.ref_transformer = copy_of(transformer)
            transformer.requires_grad_(True)
        self._master_weights_in_float32()
        self.set_gradient_checkpointing(gradient_checkpointing)
        self.attention_backend = attention_backend or None
        if self.attention_backend:
            self._use_attention_backend(self.attention_backend)
        self.compiled, self.compile_mode = False, None
        if compile_transformer:
            self.compile(mode=compile_mode)
        self.guided = True  # False inside `unguided()`: the family's CFG is skipped (training forwards)

    # ----------------------------------------------------------------------------- geometry
    @property
    @abstractmethod
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each axis."""

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(rows, cols) of packed target tokens: each token is a 2x2 patch of latent cells."""
        f = self.vae_scale_factor * 2
        return self.height // f, self.width // f

    @property
    def image_seq_len(self) -> int:
        """Number of packed target-latent tokens L (drives the sigma shift mu = a L + b)."""
        rows, cols = self.latent_grid
        return rows * cols

    def set_resolution(self, resolution: int | tuple[int, int]) -> None:
        """Sets the target (height, width); both must be multiples of 16."""
        height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        check_resolution(height, width, 16)
        self.height, self.width = int(height), int(width)

    @property
    def device(self) -> torch.device:
        """Where the policy computes (the shard device of a policy waiting to be sharded)."""
        if self.shard_device is not None:
            return self.shard_device
        return next(self.transformer.parameters()).device

    # ----------------------------------------------------------------------------- conditions
    @abstractmethod
    def _encode_batch(self, instructions: list[str], images: list[Image.Image]) -> Condition:
        """Encodes validated RGB images with their instructions (one row per pair)."""

    @torch.no_grad()
    def encode_condition(
        self,
        instructions: Sequence[str],
        images: Sequence[Any],
        *,
        group_keys: Sequence[Hashable] | None = None,
    ) -> Condition:
        """Encodes a batch of (instruction, source image) pairs; row i belongs to pair i.

        ``images[i]`` is one image, or a list of images for a family that takes several
        (`max_reference_images`); every row of a batch has the same number. Rows that share a group
        key are encoded once and copied (a group of k samples of the same item costs one encoder
        pass). Without `group_keys` the key is (instruction, content of each image).
        """
        check_batch(instructions, images)
        rgb = self._source_rows(images)
        if group_keys is None:
            group_keys = [
                (text, *(image_digest(img) for img in row))
                for text, row in zip(instructions, rgb, strict=True)
            ]
        elif len(group_keys) != len(rgb):
            raise ValueError(f"got {len(group_keys)} group keys for {len(rgb)} images")
        if len(rgb[0]) == 1:
            rgb = [row[0] for row in rgb]  # one image per row: families see a flat list of images
        unique_row: dict[Hashable, int] = {}  # group key -> row in the unique batch
        positions: list[int] = []  # first sample of each unique group
        for position, key in enumerate(group_keys):
            if key not in unique_row:
                unique_row[key] = len(positions)
                positions.append(position)
        expand = [unique_row[key] for key in group_keys]
        with self.autocast():
            cond = self._encode_batch([instructions[p] for p in positions], [rgb[p] for p in positions])
        if len(positions) == len(rgb):
            return cond
        return cond.index_select(expand)

    def _source_rows(self, images: Sequence[Any]) -> list[list[Image.Image]]:
        """Each row's source images as RGB; raises for too many images or rows that differ in count."""
        if not any(isinstance(row, (list, tuple)) for row in images):
            rows = [[image] for image in as_rgb_images(images)]  # errors name the image's index
        else:
            rows = [_row_images(i, row) for i, row in enumerate(images)]
        counts = sorted({len(row) for row in rows})
        if counts[0] == 0:
            raise ValueError("a row has an empty list of source images")
        if counts[-1] > self.max_reference_images:
            takes = "one source image" if self.max_reference_images == 1 else (
                f"at most {self.max_reference_images} source images")  # fmt: skip
            raise ValueError(f"{self.family} ({type(self).__name__}) takes {takes} per edit; got a row with "
                             f"{counts[-1]}")  # fmt: skip
        if len(counts) > 1:
            raise ValueError(f"rows of one batch must have the same number of source images, got {counts}")
        return rows

    # ----------------------------------------------------------------------------- latents
    @abstractmethod
    def initial_noise(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Standard-normal packed target latents (B, L, C), float32, drawn exactly as the stock
        pipeline draws them (so the same seeded generator gives the same noise)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Packed clean latents (B, L, C) -> images (B, 3, H, W) in [0, 1], float32."""

    # ----------------------------------------------------------------------------- velocity
    @abstractmethod
    def _forward_rows(
        self,
        module: torch.nn.Module,
        z: torch.Tensor,
        sigma: torch.Tensor,
        cond: Condition,
        row_adapters: list[str] | None,
    ) -> torch.Tensor:
        """Guided velocity (B, L, C) of `module` for each row. `row_adapters`, when given, names the
        LoRA adapter of each row ("__base__" = none) for a peft mixed-adapter batch; the family
        expands it to any extra rows it adds (e.g. the negative prompt of true CFG)."""

    def _check_inputs(self, z: torch.Tensor, sigma: torch.Tensor | float, cond: Condition) -> torch.Tensor:
        if z.ndim != 3 or z.shape[1] != self.image_seq_len:
            raise ValueError(
                f"latents must be packed (B, {self.image_seq_len}, C) for {self.height}x{self.width}, "
                f"got {tuple(z.shape)}"
            )
        if len(cond) != z.shape[0]:
            raise ValueError(f"batch mismatch: {z.shape[0]} latents but {len(cond)} conditions")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=z.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(z.shape[0])
        if sigma.shape != (z.shape[0],):
            raise ValueError(f"sigma must be a scalar or of shape ({z.shape[0]},), got {tuple(sigma.shape)}")
        return sigma

    def velocity(
        self, z: torch.Tensor, sigma: torch.Tensor | float, cond: Condition, *, adapter: str = "default"
    ) -> torch.Tensor:
        """v(z, sigma | cond) of policy `adapter` ("default", "old" or "ref"), float32 (B, L, C).

        Gradients flow only for "default" (and only into its parameters); "old" and "ref" run
        under no_grad. The family's guidance is applied (Qwen true CFG, Kontext embedded guidance).
        """
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r}; expected one of {ADAPTERS}")
        sigma = self._check_inputs(z, sigma, cond)
        grad = contextlib.nullcontext() if adapter == "default" else torch.no_grad()
        with grad, self.autocast():
            if self.use_lora:
                rows = None if adapter == "default" else [lora_utils.row_adapter(adapter)] * z.shape[0]
                v = self._forward_rows(self.transformer, z, sigma, cond, rows)
            else:
                module = {
                    "default": self.transformer,
                    "old": self.old_transformer,
                    "ref": self.ref_transformer,
                }
                v = self._forward_rows(module[adapter], z, sigma, cond, None)
        return v.float()

    @torch.no_grad()
    def velocity_old_and_ref(
        self, z: torch.Tensor, sigma: torch.Tensor | float, cond: Condition
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_old, v_ref), no grad. In LoRA mode one batched forward of 2B rows where the first B
        rows use adapter "old" and the last B use no adapter (peft mixed-adapter batch)."""
        sigma = self._check_inputs(z, sigma, cond)
        if not self.use_lora:
            return self.velocity(z, sigma, cond, adapter="old"), self.velocity(z, sigma, cond, adapter="ref")
        n = z.shape[0]
        rows = [lora_utils.row_adapter("old")] * n + [lora_utils.row_adapter("ref")] * n
        with self.autocast():
            v = self._forward_rows(
                self.transformer,
                torch.cat([z, z]),
                torch.cat([sigma, sigma]),
                type(cond).cat([cond, cond]),
                rows,
            )
        v = v.float()
        return v[:n], v[n:]

    @contextlib.contextmanager
    def unguided(self) -> Iterator[None]:
        """Plain conditional forwards inside this block: classifier-free guidance (Qwen's true CFG)
        is skipped. The original's three training forwards (v, v_old, v_ref) never use CFG, even
        when rollouts do; embedded guidance (Kontext's distilled guidance input) is not CFG and stays."""
        previous, self.guided = self.guided, False
        try:
            yield
        finally:
            self.guided = previous

    @contextlib.contextmanager
    def _row_adapters(self, module: torch.nn.Module, rows: list[str] | None) -> Iterator[None]:
        if rows is None:
            yield
        else:
            with lora_utils.mixed_adapter_batch(module, rows):
                yield

    # ----------------------------------------------------------------------------- precision
    @torch.no_grad()
    def _master_weights_in_float32(self) -> None:
        """Trained and old weights in float32 whatever the compute dtype; the frozen base (and the
        reference copy) stay in `dtype`. With bf16 masters, AdamW steps at lr 3e-4, the EMA and the
        old-policy decay `d old + (1 - d) theta` would lose most of their precision; peft's
        `get_peft_model` gave the original float32 adapters too (`autocast_adapter_dtype`). The
        forwards run under `autocast()`, so the matmuls still run in `dtype`."""
        if self.dtype == torch.float32:
            return
        if not self.use_lora:
            if self.shard_device is not None:
                return  # parallelize_policy casts one block at a time, just before sharding it
            self.transformer.float()
            self.old_transformer.float()
            return
        for _, trained, old in self._parameter_pairs():
            trained.data = trained.data.float()
            old.data = old.data.float()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the compute dtype when it is not float32 (CUDA bf16/fp16, CPU bf16): the
        float32 master weights then meet `dtype` activations in `dtype` matmuls."""
        device = self.device
        if self.dtype == torch.bfloat16 or (self.dtype == torch.float16 and device.type == "cuda"):
            return torch.autocast(device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the trained transformer's blocks in backward (memory for compute)."""
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()
        self.gradient_checkpointing = enabled

    # ----------------------------------------------------------------------------- speed
    def _transformers(self) -> list[torch.nn.Module]:
        """The trained transformer and, in full-weight mode, the old and reference copies."""
        modules = (self.transformer, self.old_transformer, self.ref_transformer)
        return [m for m in modules if m is not None]

    def transformer_modules(self) -> list[torch.nn.Module]:
        """Every transformer module a velocity runs through (the trained one and, in full-weight
        mode, the old and reference copies): what a forward counter hooks."""
        return self._transformers()

    def _use_attention_backend(self, name: str) -> None:
        """Routes every transformer's attention through diffusers backend `name`, after checking
        that its kernel runs on this device and dtype (with a key mask if the family uses one).

        diffusers also makes the backend the process-wide default; that default is restored, so
        other models (e.g. a second policy) keep theirs.
        """
        from diffusers import attention_backend as active_backend
        from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

        where = f"{self.device.type}, {self.dtype}"
        try:
            with active_backend(name):  # restores the process-wide default on exit
                for module in self._transformers():
                    module.set_attention_backend(name)
        except (RuntimeError, ImportError, ValueError) as error:
            raise RuntimeError(f"attention_backend={name!r} is not usable here ({where}): {error}") from error
        config = self.transformer.config
        heads = int(getattr(config, "num_attention_heads", 1))
        head_dim = int(getattr(config, "attention_head_dim", 64))
        q = torch.randn(1, 8, heads, head_dim, device=self.device, dtype=self.dtype)
        mask = (
            torch.ones(1, 1, 1, 8, device=self.device, dtype=torch.bool) if self.attention_key_mask else None
        )
        try:
            with torch.no_grad():
                dispatch_attention_fn(q, q, q, attn_mask=mask, backend=AttentionBackendName(name))
        except Exception as error:
            masked = ", with a key mask" if mask is not None else ""
            raise RuntimeError(
                f"attention_backend={name!r} cannot run the {self.family} attention here ({where}{masked}): "
                f"{type(error).__name__}: {error}"
            ) from error

    def compile(self, mode: str | None = None, backend: str | Callable = "inductor") -> None:
        """torch.compile each transformer block in place (diffusers' regional compilation).

        In place: parameter names, peft adapters, state dicts and checkpoints are unchanged, and
        EMA/old-policy copies into the parameters need no recompilation. Compiling the repeated
        blocks rather than the whole model traces one block graph per configuration (grad mode,
        mixed-adapter row layout) and leaves the per-call Python of the top-level forward (rotary
        positions, masks) eager. `backend` other than "inductor" is for tests ("aot_eager" traces
        and runs AOT autograd without generating code).

        Two process-wide dynamo settings change (both only matter for compiled code): guards on
        module hooks are turned on, and the recompile limit is raised to at least 32.
        """
        import torch._dynamo

        check_speed_options(compile_mode=mode)
        # The mixed-adapter batch (`_row_adapters`) passes the row adapters through forward
        # pre-hooks that exist only during the call. Dynamo skips guards on module hooks by
        # default and would replay a graph traced without them: silently wrong velocities for
        # the "old" and "ref" policies. With hook guards each row layout gets its own graph.
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        # A block is traced per grad mode x row layout (trained / old / ref / old+ref; true CFG
        # doubles the rows) x first change of batch size. A tiny Qwen training run with evaluation
        # needs 7 graphs of torch's default limit of 8; past it dynamo runs the block eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for module in self._transformers():
            if getattr(module, "_repeated_blocks", None):
                module.compile_repeated_blocks(mode=mode or None, backend=backend)
            else:
                module.compile(mode=mode or None, backend=backend)
        self.compiled = True
        self.compile_mode = mode or None

    # ----------------------------------------------------------------------------- parameters
    @staticmethod
    def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
        clone = copy.deepcopy(module)
        clone.requires_grad_(False)
        clone.eval()
        return clone

    @staticmethod
    def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of `module` whose parameters are on the meta device (shape and dtype, no
        storage); buffers and everything else are copied. `parallelize_policy` fills it shard by shard."""
        memo: dict[int, Any] = {
            id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
            for p in module.parameters()
        }
        clone = copy.deepcopy(module, memo)
        clone.requires_grad_(False)
        clone.eval()
        return clone

    def has_unmaterialised_copies(self) -> bool:
        """Whether the full-weight `old`/`ref` copies still wait for `parallelize_policy`."""
        return any(
            p.is_meta
            for m in (self.old_transformer, self.ref_transformer)
            if m is not None
            for p in m.parameters()
        )

    def _parameter_pairs(self) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
        """(name, trained parameter, old parameter), in a fixed order shared by both lists."""
        if self.use_lora:
            return lora_utils.adapter_parameter_pairs(self.transformer, "default", "old")
        old = dict(self.old_transformer.named_parameters())
        return [(name, p, old[name]) for name, p in self.transformer.named_parameters()]

    def trainable_parameter_names(self) -> list[str]:
        """State-dict names of `trainable_parameters()` (the same for the old policy's)."""
        return [name for name, _, _ in self._parameter_pairs()]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the trained policy (what the optimizer and the EMA see)."""
        return [p for _, p, _ in self._parameter_pairs()]

    def old_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the old policy, aligned one-to-one with `trainable_parameters()`."""
        return [p for _, _, p in self._parameter_pairs()]

    @torch.no_grad()
    def copy_default_to_old(self) -> None:
        """old <- theta (done once before epoch 0)."""
        for _, trained, old in self._parameter_pairs():
            old.copy_(trained)

    def policy_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Checkpoint state: {"default": {name: tensor}, "old": {...}} (CPU copies). The reference
        is never stored: it is the base model (LoRA) or the frozen initial copy (full)."""
        pairs = self._parameter_pairs()
        return {
            "default": {name: p.detach().cpu().clone() for name, p, _ in pairs},
            "old": {name: q.detach().cpu().clone() for name, _, q in pairs},
        }

    @torch.no_grad()
    def load_policy_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restores what `policy_state_dict` returned; names and shapes must match exactly."""
        pairs = self._parameter_pairs()
        for key, which in (("default", 1), ("old", 2)):
            stored = state[key]
            expected = {pair[0] for pair in pairs}
            if set(stored) != expected:
                missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
                raise ValueError(
                    f"policy state {key!r} mismatch: missing {missing[:3]}, unexpected {extra[:3]}"
                )
            for pair in pairs:
                pair[which].copy_(stored[pair[0]])

    # ----------------------------------------------------------------------------- export
    def save_lora(self, directory: str | Path, weights: Sequence[torch.Tensor] | None = None) -> Path:
        """Saves the trained LoRA (or `weights`, e.g. the EMA, aligned with `trainable_parameters()`)
        in the diffusers LoRA format, alpha kept in the file metadata, so that the stock pipeline's
        `load_lora_weights(directory)` applies it at its trained strength alpha / r."""
        if not self.use_lora:
            raise ValueError("save_lora needs LoRA mode; use save_full for full-weight training")
        names = [name for name, _, _ in self._parameter_pairs()]
        if weights is not None and len(weights) != len(names):
            raise ValueError(f"got {len(weights)} weights for {len(names)} trainable parameters")
        return lora_utils.save_diffusers_lora(
            self.pipeline_class, Path(directory), self.transformer, "default", names, weights
        )

    @torch.no_grad()
    def save_full(self, directory: str | Path, weights: Sequence[torch.Tensor] | None = None) -> Path:
        """Saves the trained transformer as a diffusers transformer folder loadable with
        `<TransformerClass>.from_pretrained(directory)`. `weights` (whole tensors aligned with
        `trainable_parameters()`, e.g. the EMA) replace the live parameters in the written state;
        the live module is never modified."""
        if self.use_lora:
            raise ValueError("save_full is for full-weight mode; use save_lora for LoRA training")
        from huggingface_hub import save_torch_state_dict

        names = [name for name, _, _ in self._parameter_pairs()]
        if weights is not None and len(weights) != len(names):
            raise ValueError(f"got {len(weights)} weights for {len(names)} trainable parameters")
        state = dict(self.transformer.state_dict())
        for name, value in zip(
            names, weights if weights is not None else self.trainable_parameters(), strict=True
        ):
            state[name] = value
        state = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = json.loads(self.transformer.to_json_string())
        config["_class_name"] = self.transformer_class.__name__  # the family's class (FamilyFacts)
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_torch_state_dict(
            state,
            directory,
            filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
            max_shard_size="10GB",
        )
        return directory


def default_device_and_dtype(
    device: str | torch.device | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when available, else CPU with float32; explicit values win."""
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def on_device_unless_sharded(module: torch.nn.Module, device: torch.device, sharded: bool) -> torch.nn.Module:
    """`module` moved to `device`, unless it will be FSDP-sharded (`shard_device`,
    `shard_text_encoders`): then it stays on the host and `parallelize_policy` moves only each
    rank's shards, block by block."""
    return module if sharded else module.to(device)
