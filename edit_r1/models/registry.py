"""Model families by name: the config's `model.family` picks the adapter.

    policy = load_policy("qwen_image_edit", "Qwen/Qwen-Image-Edit-2509", resolution=512)
    policy = load_policy("kontext", "/models/FLUX.1-Kontext-dev", guidance_scale=2.5, use_lora=False)

To add a family, implement `EditPolicy` (see docs/models.md) and register its class here.
"""

from __future__ import annotations

import os
from typing import Any

from edit_r1.models.base import EditPolicy
from edit_r1.models.kontext import KontextPolicy
from edit_r1.models.qwen_image_edit import QwenImageEditPolicy

POLICY_FAMILIES: dict[str, type[EditPolicy]] = {
    "qwen_image_edit": QwenImageEditPolicy,
    "kontext": KontextPolicy,
}


def policy_class(family: str) -> type[EditPolicy]:
    """The adapter class of `family` (a registered name or one of a class's `aliases`); a clear
    error lists the known names."""
    if family in POLICY_FAMILIES:
        return POLICY_FAMILIES[family]
    for cls in POLICY_FAMILIES.values():
        if family in cls.aliases:
            return cls
    raise ValueError(f"unknown model family {family!r}; expected one of {sorted(POLICY_FAMILIES)}")


def family_names() -> tuple[str, ...]:
    """The registered family names, in registration order (the first is the default)."""
    return tuple(POLICY_FAMILIES)


def load_policy(family: str, path: str | os.PathLike, **options: Any) -> EditPolicy:
    """Loads checkpoint `path` (hub id or local folder) as an `EditPolicy` of `family`.

    `options` go to the family's `from_pretrained` (device, dtype, resolution, use_lora, lora,
    gradient_checkpointing and the family's conditioning options).
    """
    return policy_class(family).from_pretrained(path, **options)
