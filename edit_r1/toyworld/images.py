"""Images of the toy world as tensors: scenes, their perfect edits, and partly edited versions."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from edit_r1.data.toy import apply_task, generate_examples


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) float32 in [-1, 1] (the VAEs' pixel range)."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL RGB images."""
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def scene_pairs(num: int, size: int, seed: int, tasks: tuple[str, ...]) -> tuple[list, list, list]:
    """``num`` toy examples: (scenes, tasks, source images, perfect edits) as lists."""
    examples = generate_examples(num, size, np.random.default_rng(seed), tasks)
    sources = [scene.render() for scene, _ in examples]
    targets = [apply_task(scene, task).render() for scene, task in examples]
    return examples, sources, targets
