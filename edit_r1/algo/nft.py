"""The DiffusionNFT loss (docs/algorithm.md#6-the-nft-loss): negative-aware fine-tuning on clean
samples, no likelihoods.

For one timestep ``t`` of one sample with clean latent ``x0`` and noised ``x_t = (1 - t) x0 + t eps``,
the trained velocity ``v`` and the old policy's ``v_old`` define an implicit positive and negative
policy; rewarded samples pull the positive one's data prediction towards ``x0``, punished samples
push the negative one's there (which moves ``v`` away from it). ``r`` in [0, 1] says how much a
sample counts as positive.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .base import Algorithm, PolicyForward, TrainBatch, loss_constant_problems

ADV_MODES: tuple[str, ...] = ("all", "positive_only", "negative_only", "one_only", "binary")
_MIN_WEIGHT = 1e-5


def transform_advantages(advantages: torch.Tensor, *, adv_clip_max: float, adv_mode: str) -> torch.Tensor:
    """``A' = clip(A, -C, C)`` then ``adv_mode``.

    ``all``: as is; ``positive_only``: clip to [0, C]; ``negative_only``: clip to [-C, 0];
    ``one_only``: ``1[A' > 0]``; ``binary``: ``sign(A')``.
    """
    if adv_mode not in ADV_MODES:
        raise ValueError(f"unknown adv_mode {adv_mode!r}; valid modes: {', '.join(ADV_MODES)}")
    clipped = advantages.clamp(-adv_clip_max, adv_clip_max)
    if adv_mode == "positive_only":
        return clipped.clamp(0, adv_clip_max)
    if adv_mode == "negative_only":
        return clipped.clamp(-adv_clip_max, 0)
    if adv_mode == "one_only":
        return (clipped > 0).to(clipped.dtype)
    if adv_mode == "binary":
        return torch.sign(clipped)
    return clipped


def positive_weight(advantages: torch.Tensor, *, adv_clip_max: float, adv_mode: str) -> torch.Tensor:
    """``r = clamp(A' / (2C) + 1/2, 0, 1)`` with ``A'`` from :func:`transform_advantages`."""
    transformed = transform_advantages(advantages, adv_clip_max=adv_clip_max, adv_mode=adv_mode)
    return (transformed / adv_clip_max / 2.0 + 0.5).clamp(0, 1)


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: ``(B, ...) -> (B,)``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def adaptive_x0_loss(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``L = mean((x0_pred - x0)^2) / w`` per sample, ``w = stopgrad(mean|x0_pred - x0|)`` (float64, >= 1e-5)."""
    with torch.no_grad():
        weight = per_sample_mean((x0_pred.double() - x0.double()).abs()).clamp(min=_MIN_WEIGHT)
    weight = weight.view(-1, *([1] * (x0.ndim - 1)))
    return per_sample_mean((x0_pred - x0) ** 2 / weight)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_i m_i x_i / sum_i m_i``; ``0 * sum(x)`` (zero, with zero gradients) when ``sum m = 0``.

    Rows with ``m_i = 0`` are zeroed with ``where`` first, so a NaN there cannot leak into the sum.
    """
    kept = torch.where(mask > 0, values * mask, torch.zeros_like(values))
    total = mask.sum()
    if total <= 0:
        return kept.sum() * 0
    return kept.sum() / total


def nft_loss(
    v: torch.Tensor,
    v_old: torch.Tensor,
    v_ref: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    nft_beta: float,
    kl_beta: float,
    adv_clip_max: float,
    adv_mode: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DiffusionNFT loss of one timestep for a batch; returns ``(loss, detached diagnostics)``.

    With ``b = nft_beta``, ``C = adv_clip_max``, ``m`` the mask, ``t`` of shape ``(B,)``:

    - ``v+ = b v + (1 - b) v_old``, ``v- = (1 + b) v_old - b v`` (``v_old``, ``v_ref`` are detached)
    - ``x+ = x_t - t v+``, ``x- = x_t - t v-``; ``L+-`` = :func:`adaptive_x0_loss` of ``x+-``
    - ``r`` = :func:`positive_weight` of the advantages (``adv_mode``, clip ``C``)
    - ``loss = C sum_i m_i (r_i L+_i + (1 - r_i) L-_i) / b / sum_i m_i
      + kl_beta sum_i m_i mean((v - v_ref)^2) / sum_i m_i``; 0 (zero gradients) when no sample is kept.

    Velocities are upcast to float32; ``L+-`` are float64 because of the float64 weights, as upstream.
    Diagnostics (upstream names): ``policy_loss``, ``unweighted_policy_loss``, ``kl_div_loss``,
    ``kl_div``, ``old_kl_div`` (with ``v_ref``), ``x0_norm``, ``x0_norm_max``, ``old_deviate``,
    ``old_deviate_max``, ``positive_weight``, ``kept_fraction``, ``total_loss``.
    """
    _check_inputs(v, v_old, v_ref, x_t, x0, t, advantages, mask, nft_beta=nft_beta, kl_beta=kl_beta,
                  adv_clip_max=adv_clip_max)  # fmt: skip
    keep = mask.to(device=v.device, dtype=torch.float32)
    advantages = torch.where(keep > 0, advantages.to(v.device, torch.float32), torch.zeros_like(keep))
    r = positive_weight(advantages, adv_clip_max=adv_clip_max, adv_mode=adv_mode)
    v32, v_old32 = v.float(), v_old.detach().float()
    x0_32 = x0.float()
    per_sample = _implicit_policy_loss(v32, v_old32, x_t.float(), x0_32, t, r, nft_beta)
    unweighted = masked_mean(per_sample, keep)
    policy = unweighted * adv_clip_max
    loss = policy
    info = {"policy_loss": policy, "unweighted_policy_loss": unweighted}
    if v_ref is not None:
        kl, old_kl = _kl_terms(v32, v_old32, v_ref.detach().float(), keep)
        if kl_beta > 0:
            loss = loss + kl_beta * kl
        info["kl_div_loss"] = info["kl_div"] = kl
        info["old_kl_div"] = old_kl
    info.update(_batch_diagnostics(v32, v_old32, x0_32, r, keep))
    info["total_loss"] = loss
    return loss, {name: value.detach() for name, value in info.items()}


def _implicit_policy_loss(
    v: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    nft_beta: float,
) -> torch.Tensor:
    """Per-sample ``(r L+ + (1 - r) L-) / b`` (float32 inputs): ``v+ = b v + (1 - b) v_old``,
    ``v- = (1 + b) v_old - b v``, ``L+-`` the :func:`adaptive_x0_loss` of ``x_t - t v+-``."""
    t_b = t.to(device=v.device, dtype=torch.float32).view(-1, *([1] * (v.ndim - 1)))
    positive_v = nft_beta * v + (1 - nft_beta) * v_old
    negative_v = (1.0 + nft_beta) * v_old - nft_beta * v
    positive_loss = adaptive_x0_loss(x_t - t_b * positive_v, x0)
    negative_loss = adaptive_x0_loss(x_t - t_b * negative_v, x0)
    return (r * positive_loss + (1.0 - r) * negative_loss) / nft_beta


def _kl_terms(
    v: torch.Tensor, v_old: torch.Tensor, v_ref: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked means of ``mean((v - v_ref)^2)`` (the KL term) and ``mean((v_old - v_ref)^2)``."""
    kl = masked_mean(per_sample_mean((v - v_ref) ** 2), keep)
    return kl, masked_mean(per_sample_mean((v_old - v_ref) ** 2), keep)


def _batch_diagnostics(
    v: torch.Tensor, v_old: torch.Tensor, x0: torch.Tensor, r: torch.Tensor, keep: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Unmasked batch statistics logged by upstream, plus the mean ``r`` and the kept fraction."""
    with torch.no_grad():
        deviation = (v - v_old) ** 2
        return {
            "x0_norm": (x0**2).mean(),
            "x0_norm_max": (x0**2).max(),
            "old_deviate": deviation.mean(),
            "old_deviate_max": deviation.max(),
            "positive_weight": masked_mean(r, keep),
            "kept_fraction": (keep > 0).float().mean(),
        }


def _check_inputs(v, v_old, v_ref, x_t, x0, t, advantages, mask, *, nft_beta, kl_beta, adv_clip_max) -> None:
    batch = v.shape[0]
    shapes = [u.shape for u in (v_old, x_t, x0) + ((v_ref,) if v_ref is not None else ())]
    if any(shape != v.shape for shape in shapes):
        raise ValueError(f"nft_loss: v {tuple(v.shape)}, v_old, v_ref, x_t and x0 must have the same shape")
    for name, value in (("t", t), ("advantages", advantages), ("mask", mask)):
        if value.shape != (batch,):
            raise ValueError(f"nft_loss: {name} must have shape ({batch},), got {tuple(value.shape)}")
    if nft_beta <= 0:
        raise ValueError(f"nft_loss: nft_beta (config.beta) must be > 0, got {nft_beta}")
    if adv_clip_max <= 0:
        raise ValueError(f"nft_loss: adv_clip_max must be > 0, got {adv_clip_max}")
    if kl_beta < 0:
        raise ValueError(f"nft_loss: kl_beta (config.train.beta) must be >= 0, got {kl_beta}")
    if kl_beta > 0 and v_ref is None:
        raise ValueError("nft_loss: v_ref is required when kl_beta > 0")


@dataclasses.dataclass(frozen=True)
class NFTSettings:
    """The NFT loss's constants (``docs/algorithm.md``, the NFT loss).

    ``nft_beta`` (config ``beta``): strength ``b`` of the implicit positive/negative policies;
    ``kl_beta`` (config ``train.beta``): weight of ``mean((v - v_ref)^2)``;
    ``adv_clip_max`` (``train.adv_clip_max``): ``C``; ``adv_mode`` (``train.adv_mode``).
    """

    nft_beta: float
    kl_beta: float
    adv_clip_max: float
    adv_mode: str

    @classmethod
    def from_config(cls, config: Any) -> NFTSettings:
        return cls(
            nft_beta=float(config.beta),
            kl_beta=float(config.train.beta),
            adv_clip_max=float(config.train.adv_clip_max),
            adv_mode=str(config.train.adv_mode),
        )

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`nft_loss` (and of :class:`NFT` besides its fraction)."""
        return dataclasses.asdict(self)


class NFT(Algorithm):
    """DiffusionNFT behind the :class:`~edit_r1.algo.base.Algorithm` interface (``docs/algorithm.md``).

    Rolls out with the ``old`` policy and needs only the final latents. Each sample trains on ``T``
    of its grid timesteps in a random order (one permutation per sample); a step draws fresh noise,
    forms ``x_t = (1 - t) x0 + t eps`` and applies :func:`nft_loss` to ``v`` (trained) and the fused
    ``v_old`` / ``v_ref``.
    """

    name = "nft"
    settings_class = NFTSettings
    rollout_adapter = "old"
    uses_old_policy = True

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        """``train.adv_mode`` one of :data:`ADV_MODES`, ``beta > 0`` (the loss divides by it) and the
        shared loss constants."""
        problems = []
        if config.train.adv_mode not in ADV_MODES:
            problems.append(f"train.adv_mode={config.train.adv_mode!r} is not one of {list(ADV_MODES)}")
        if not config.beta > 0:
            problems.append(f"beta={config.beta!r} (NFT strength) must be > 0: the loss divides by it")
        return problems + loss_constant_problems(config)

    @classmethod
    def from_settings(cls, settings: NFTSettings, *, timestep_fraction: float, rollout: Any) -> NFT:
        return cls(timestep_fraction=timestep_fraction, **settings.as_kwargs())

    def __init__(
        self, *, timestep_fraction: float, nft_beta: float, kl_beta: float, adv_clip_max: float, adv_mode: str
    ) -> None:
        super().__init__(timestep_fraction=timestep_fraction)
        self.nft_beta = nft_beta
        self.kl_beta = kl_beta
        self.adv_clip_max = adv_clip_max
        self.adv_mode = adv_mode

    def step_plan(self, batch_size: int, num_grid_steps: int) -> torch.Tensor:
        """An independent random order of the grid timesteps for every sample."""
        return torch.stack([torch.randperm(num_grid_steps) for _ in range(batch_size)])

    def loss(
        self, forward: PolicyForward, batch: TrainBatch, steps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`loss_at` the grid times ``t = sigmas[steps]``."""
        t = batch.sigmas[:-1].to(batch.x0.device)[steps.to(batch.x0.device)]
        return self.loss_at(forward, batch.x0, t, batch.advantages, batch.mask)

    def loss_at(
        self,
        forward: PolicyForward,
        x0: torch.Tensor,
        t: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`nft_loss` at per-sample times ``t`` with ``x_t = (1 - t) x0 + t eps``, fresh ``eps``;
        ``v_old`` and ``v_ref`` from one fused no-grad forward, ``v`` from the trained forward."""
        eps = torch.randn_like(x0)
        t_b = t.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - t_b) * x0 + t_b * eps
        v_old, v_ref = forward.velocity_old_and_ref(x_t, t)
        v = forward.velocity(x_t, t, "default")
        return nft_loss(
            v,
            v_old,
            v_ref,
            x_t,
            x0,
            t,
            advantages.to(x0.device),
            mask.to(x0.device),
            nft_beta=self.nft_beta,
            kl_beta=self.kl_beta,
            adv_clip_max=self.adv_clip_max,
            adv_mode=self.adv_mode,
        )
