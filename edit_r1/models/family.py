"""What the code outside ``edit_r1/models/`` may ask a model family, so that none of it names one.

Every :class:`~edit_r1.models.base.EditPolicy` subclass inherits :class:`FamilyFacts` and
overrides what differs for its family; callers reach the class through
:func:`edit_r1.models.registry.policy_class`:

* training -- :meth:`FamilyFacts.options_from_settings`: the family's ``from_pretrained`` options
  taken from a run's typed model settings (the trainer);
* evaluation -- :meth:`FamilyFacts.sampling_options`, :attr:`FamilyFacts.sampling_flags`,
  :attr:`FamilyFacts.source_size_benchmarks` and :meth:`FamilyFacts.edit_geometry` /
  :meth:`FamilyFacts.reference_image`: how the original reproduction scripts called the stock
  pipeline (``edit_r1.inference``, ``edit_r1.reproduction``);
* memory -- :meth:`FamilyFacts.meta_text_encoders`, :meth:`FamilyFacts.transformer_call`
  (``edit_r1.memory_plan``);
* speed -- :attr:`FamilyFacts.benchmark_architectures`, :attr:`FamilyFacts.benchmark_text_tokens`,
  :meth:`FamilyFacts.random_transformer`, :meth:`FamilyFacts.meta_vae`,
  :meth:`FamilyFacts.synthetic_condition`, :meth:`FamilyFacts.benchmark_options` (``benchmarks/``);
* the tiny kit -- :attr:`FamilyFacts.tiny_kit_folder` (``edit_r1.models.tiny``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Geometry:
    """(width, height) of the generated image and of the VAE reference image."""

    output: tuple[int, int]
    reference: tuple[int, int]


class FamilyFacts:
    """Defaults of the per-family facts; a family overrides the ones it has."""

    family: ClassVar[str] = ""
    # Other names `policy_class` accepts (the reproduction scripts' short family names).
    aliases: ClassVar[tuple[str, ...]] = ()
    # The family's checkpoint folder inside the tiny kit.
    tiny_kit_folder: ClassVar[str] = ""
    # The module attributes holding the frozen encoders (what a benchmark policy borrows from the kit).
    encoder_names: ClassVar[tuple[str, ...]] = ()
    # `SamplingSettings` fields the family's reproduction scripts expose as flags.
    sampling_flags: ClassVar[tuple[str, ...]] = ()
    # Evaluation sets whose original script asked the pipeline for the source image's size.
    source_size_benchmarks: ClassVar[tuple[str, ...]] = ()
    # Transformer constructor arguments of the benchmark sizes ("full" = the real model, "small").
    benchmark_architectures: ClassVar[dict[str, dict[str, Any]]] = {}
    # Stored text tokens of a synthetic benchmark condition, per size.
    benchmark_text_tokens: ClassVar[dict[str, int]] = {}
    transformer_class: ClassVar[type | None] = None

    @classmethod
    def options_from_settings(cls, settings: Any) -> dict[str, Any]:
        """The family's ``from_pretrained`` options read from a run's model settings
        (``edit_r1.settings.ModelSettings``: ``condition_area``, ``guidance_scale``,
        ``true_cfg_scale``, ...)."""
        return {}

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        """Problems of a training config for this family (one line each, naming the config's
        keys): e.g. a key the family would otherwise ignore. Nothing a user sets may be ignored
        silently. Validation reads the user's config; training reads :meth:`options_from_settings`."""
        return []

    @classmethod
    def runs_true_cfg(cls, config: Any) -> bool:
        """Whether a training config's rollouts run classifier-free guidance with a negative prompt
        (doubling each forward's rows); embedded guidance (a model input) is not CFG."""
        return False

    @classmethod
    def sampling_options(cls, settings: Any) -> dict[str, Any]:
        """The family's ``from_pretrained`` options for benchmark sampling (``SamplingSettings``)."""
        return {}

    @classmethod
    def benchmark_options(cls, resolution: int) -> dict[str, Any]:
        """Extra ``from_pretrained`` options of the tiny benchmark policy at ``resolution`` pixels."""
        return {}

    @classmethod
    def edit_geometry(
        cls, image_size: tuple[int, int], max_area: int, request_size: tuple[int, int] | None
    ) -> Geometry:
        """Output and reference sizes of one reproduction edit, as the stock pipeline computes them."""
        raise NotImplementedError(f"{cls.__name__} defines no reproduction geometry")

    def reference_image(self, image: Image.Image, geometry: Geometry) -> Image.Image:
        """The source image as the stock pipeline hands it to the encoders (unchanged by default)."""
        return image

    @classmethod
    def random_transformer(cls, size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """A randomly initialised transformer of benchmark ``size``, allocated directly on
        ``device`` in ``dtype`` (a 20B model never exists in float32)."""
        if size not in cls.benchmark_architectures or cls.transformer_class is None:
            raise ValueError(f"{cls.__name__} has no benchmark size {size!r}")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                return cls.transformer_class(**cls.benchmark_architectures[size]).eval()
        finally:
            torch.set_default_dtype(previous)

    @classmethod
    def meta_vae(cls) -> torch.nn.Module:
        """The family's real VAE architecture on the meta device (no memory): the training step
        only needs its config (latent scale factor)."""
        raise NotImplementedError(f"{cls.__name__} defines no benchmark VAE")

    @classmethod
    def meta_text_encoders(cls) -> dict[str, torch.nn.Module]:
        """The family's real text encoders on the meta device, by display name (memory plan)."""
        raise NotImplementedError(f"{cls.__name__} defines no text encoder architectures")

    @classmethod
    def transformer_call(
        cls, transformer: torch.nn.Module, batch: int, grid: int, text: int
    ) -> dict[str, Any]:
        """Keyword arguments of one forward of ``transformer`` (the family's class) on random CPU
        inputs, as the policy calls it: a target and a reference image of ``grid x grid`` tokens
        each and ``text`` text tokens (the memory plan measures saved activations with it)."""
        raise NotImplementedError(f"{cls.__name__} defines no transformer call")

    def synthetic_condition(self, batch: int, generator: torch.Generator) -> Any:
        """A condition of the real shapes (text states, reference latents on the target grid)."""
        raise NotImplementedError(f"{type(self).__name__} defines no synthetic condition")

    def encoders(self) -> dict[str, Any]:
        """The frozen encoders by constructor name (see ``encoder_names``)."""
        return {name: getattr(self, name) for name in self.encoder_names}


def floor_to(value: float, multiple: int) -> int:
    """``value`` floored to a positive multiple of ``multiple``."""
    return max(multiple, int(value) // multiple * multiple)


def nearest_aspect(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (width, height) of ``candidates`` whose aspect ratio is closest to ``size``'s."""
    aspect = size[0] / size[1]
    _, width, height = min((abs(aspect - w / h), w, h) for w, h in candidates)
    return width, height
