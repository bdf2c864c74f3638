"""Latent packing shared by the families: 2x2 patches of latent cells become transformer tokens.

Both Qwen-Image and FLUX transformers read ``(B, rows*cols, 4C)`` token sequences made from a
``(B, C, 2 rows, 2 cols)`` latent; this module is the one place that knows the layout.
"""

from __future__ import annotations

import torch


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, (h/2)(w/2), 4C): 2x2 patches of latent cells become tokens."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pack_latents`: (B, rows*cols, 4C) -> (B, C, 2 rows, 2 cols)."""
    b, n, d = tokens.shape
    rows, cols = grid
    if n != rows * cols:
        raise ValueError(f"expected {rows * cols} tokens for a {rows}x{cols} grid, got {n}")
    x = tokens.reshape(b, rows, cols, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, rows * 2, cols * 2)
