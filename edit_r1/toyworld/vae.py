"""Train the toy world's autoencoders on toy images (MSE + a small KL term).

loss = mean (D(mu(x)) - x)^2 + kl_weight * KL(q(z|x) || N(0, I)) / (values per image)

The decoder is fed the posterior mean ``mu(x)`` (a deterministic autoencoder with the KL term as
a regulariser): sampling ``z ~ q(z|x)`` from the freshly initialised log-variance (std 1) drowns
the signal and, measured here, left the reconstruction at ~11 dB after 200 steps. The editor and
the policy only ever use the posterior mode (``latent_dist.mode()``), so nothing samples ``z``.

The training images are toy scenes and their perfect edits (flat palette colours), drawn fresh
from a seeded generator each step. After training, the per-channel mean and std of the latent
means over a fixed image set become the VAE's ``latents_mean`` / ``latents_std`` so that the
editor sees roughly unit-variance latents (as in the real Qwen-Image VAE config).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from edit_r1.toyworld.images import scene_pairs, to_tensor


@dataclass(frozen=True)
class VaeTraining:
    """``steps`` sets the one-cycle learning-rate schedule; training stops after ``stop_after``."""

    steps: int = 1000
    stop_after: int = 200
    batch_size: int = 16
    learning_rate: float = 1e-3
    kl_weight: float = 1e-4
    seed: int = 0
    log_every: int = 50


def qwen_vae(seed: int) -> torch.nn.Module:
    """A small ``AutoencoderKLQwenImage``: spatial factor 2 (one downsample), 4 latent channels.

    Factor 4 (``dim_mult`` [1, 2, 2]) was tried first and reached only 11.7 dB after 150 steps
    where factor 2 reached 14.5 dB after 100: a latent cell of 2x2 pixels is much easier to
    reconstruct, and the editor's 32 px images are still only 8 x 8 = 64 packed tokens."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=12, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False]
    )


def flux_vae(seed: int) -> torch.nn.Module:
    """A small FLUX-style ``AutoencoderKL``: spatial factor 2 (as :func:`qwen_vae`, same reason),
    4 latent channels, no quant convs (as FLUX.1's VAE); shift and scale are set after training."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[16, 32],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _image_pool(num: int, size: int, seed: int, tasks: tuple[str, ...]) -> torch.Tensor:
    """Sources and perfect edits of ``num`` toy examples, (2 num, 3, size, size) in [-1, 1]."""
    _, sources, targets = scene_pairs(num, size, seed, tasks)
    return to_tensor(sources + targets)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak range 2)."""
    mse = float(((reconstruction.clamp(-1, 1) - target) ** 2).mean())
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


def _as_video(x: torch.Tensor, video: bool) -> torch.Tensor:
    return x.unsqueeze(2) if video else x


def _from_video(x: torch.Tensor, video: bool) -> torch.Tensor:
    return x[:, :, 0] if video else x


def train_vae(
    vae: torch.nn.Module,
    size: int,
    tasks: tuple[str, ...],
    settings: VaeTraining,
    video: bool,
    checkpoint: Callable[[int], None] | None = None,
    decoder_only: bool = False,
) -> None:
    """Train ``vae`` in place; ``video`` = the Qwen VAE's (B, C, T, H, W) layout.

    ``decoder_only`` freezes the encoder: the latents (and so the editor trained on them) stay
    valid while the reconstruction keeps improving.
    """
    pool = _image_pool(4096, size, seed=1000 + settings.seed + (500 if decoder_only else 0), tasks=tasks)
    generator = torch.Generator().manual_seed(settings.seed)
    params = list(vae.parameters())
    if decoder_only:
        vae.requires_grad_(False)
        trained = [m for m in (vae.decoder, vae.post_quant_conv) if m is not None]
        for module in trained:
            module.requires_grad_(True)
        params = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    vae.train()
    start = time.perf_counter()
    for step in range(1, min(settings.steps, settings.stop_after) + 1):
        batch = pool[torch.randint(0, len(pool), (settings.batch_size,), generator=generator)]
        posterior = vae.encode(_as_video(batch, video)).latent_dist
        reconstruction = _from_video(vae.decode(posterior.mode()).sample, video)
        mse = ((reconstruction - batch) ** 2).mean()
        kl = posterior.kl().mean() / batch[0].numel()
        optimizer.zero_grad(set_to_none=True)
        (mse + settings.kl_weight * kl).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.log_every == 0:
            print(
                f"vae step {step}: mse {mse.item():.5f} psnr {10 * math.log10(4 / mse.item()):.1f} dB "
                f"kl {kl.item():.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if checkpoint is not None:
                checkpoint(step)
    vae.eval()


@torch.no_grad()
def latent_statistics(vae: torch.nn.Module, images: torch.Tensor, video: bool) -> tuple[list, list]:
    """Per-channel mean and std of the posterior means of ``images``."""
    latents = _from_video(vae.encode(_as_video(images, video)).latent_dist.mode(), video)
    mean = latents.mean(dim=(0, 2, 3))
    std = latents.std(dim=(0, 2, 3))
    return [round(float(m), 5) for m in mean], [round(float(s), 5) for s in std]


@torch.no_grad()
def held_out_psnr(vae: torch.nn.Module, images: torch.Tensor, video: bool) -> float:
    """Reconstruction PSNR (posterior mode, decoded) on ``images``."""
    latents = vae.encode(_as_video(images, video)).latent_dist.mode()
    return psnr(_from_video(vae.decode(latents).sample, video), images)
