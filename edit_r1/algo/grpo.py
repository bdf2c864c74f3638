"""Flow-GRPO: a clipped policy-gradient objective on the likelihoods of stochastic rollouts.

Rollouts use a stochastic solver (``flow`` or ``dance``; ``docs/algorithm.md``) and keep every
state ``z_0 .. z_N`` with the log-density ``log p_old(z_{j+1} | z_j)`` of each step. Training
recomputes that log-density under the current policy at the first ``T`` steps and maximises the
clipped importance-weighted advantage, with a KL penalty towards the reference policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from edit_r1.sampling import SDE_SOLVERS, SampleResult, gaussian_log_prob, sigma_batch
from edit_r1.sampling.solvers import TRANSITIONS

from .base import Algorithm, PolicyForward, TrainBatch, loss_constant_problems
from .nft import masked_mean, per_sample_mean


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    adv_clip_max: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate of one step, per sample then masked-averaged.

    ``ratio = exp(log_prob - old_log_prob)``, ``A = clip(advantages, -C, C)``,
    ``loss = sum_i m_i max(-A_i ratio_i, -A_i clip(ratio_i, 1 - eps, 1 + eps)) / sum_i m_i``
    (0 with zero gradients when no sample is kept). ``old_log_prob`` is treated as a constant.
    Diagnostics: ``ratio_mean``, ``ratio_deviation_max`` (``max |ratio - 1|``), ``approx_kl``
    (``mean (log_prob - old)^2 / 2``), ``clipfrac`` (``|ratio - 1| > eps``), ``clipfrac_gt_one``,
    ``clipfrac_lt_one``, all over kept samples.
    """
    keep = mask.to(device=log_prob.device, dtype=torch.float32)
    adv = torch.where(keep > 0, advantages.to(log_prob.device, torch.float32), torch.zeros_like(keep))
    adv = adv.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob.float() - old_log_prob.detach().to(log_prob.device, torch.float32)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        kept = keep > 0
        deviation = (ratio - 1.0).abs()
        info = {
            "policy_loss": loss.detach(),
            "ratio_mean": masked_mean(ratio, keep),
            "ratio_deviation_max": deviation[kept].max() if kept.any() else deviation.new_zeros(()),
            "approx_kl": masked_mean(0.5 * log_ratio**2, keep),
            "clipfrac": masked_mean((deviation > clip_range).float(), keep),
            "clipfrac_gt_one": masked_mean((ratio - 1.0 > clip_range).float(), keep),
            "clipfrac_lt_one": masked_mean((1.0 - ratio > clip_range).float(), keep),
            "kept_fraction": kept.float().mean(),
        }
    return loss, info


def transition_kl(
    mean: torch.Tensor, ref_mean: torch.Tensor, diffusion_variance: float, mask: torch.Tensor
) -> torch.Tensor:
    """``sum_i m_i mean_dims((mu_i - mu_ref_i)^2) / (2 s^2) / sum_i m_i``, ``s^2 = diffusion_variance``.

    ``s^2 = std^2 / (sigma - sigma_next)`` is the variance of the step per unit of sigma (Flow-GRPO
    divides by the square of its ``std_dev_t``, which is this ``s``); the exact KL of the two
    Gaussian transitions is this value divided by ``sigma - sigma_next``. 0 when ``s = 0``.
    """
    keep = mask.to(device=mean.device, dtype=torch.float32)
    if diffusion_variance <= 0.0:
        return (mean.float() * 0).sum() * 0
    per_sample = per_sample_mean((mean.float() - ref_mean.detach().float()) ** 2) / (2.0 * diffusion_variance)
    return masked_mean(per_sample, keep)


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """Flow-GRPO's constants (``docs/algorithm.md``, section 9).

    ``clip_range`` (``train.clip_range``): the PPO clip ``eps``; ``kl_beta`` (``train.beta``): weight
    of the transition KL to the reference; ``adv_clip_max`` (``train.adv_clip_max``): ``C``.
    """

    clip_range: float
    kl_beta: float
    adv_clip_max: float

    @classmethod
    def from_config(cls, config: Any) -> GRPOSettings:
        return cls(
            clip_range=float(config.train.clip_range),
            kl_beta=float(config.train.beta),
            adv_clip_max=float(config.train.adv_clip_max),
        )


class GRPO(Algorithm):
    """Flow-GRPO behind the :class:`~edit_r1.algo.base.Algorithm` interface (``docs/algorithm.md``).

    Rolls out with the trained (``default``) policy and a stochastic ``solver``; keeps the states
    ``(B, N + 1, ...)`` and step log-probs ``(B, N)``. Each training step ``j`` (the first ``T``
    steps, in order, the same for every row) recomputes ``log p_theta(z_{j+1} | z_j)`` with
    gradients and returns :func:`clipped_policy_loss` ``+ kl_beta *`` :func:`transition_kl`.
    """

    name = "grpo"
    settings_class = GRPOSettings
    rollout_adapter = "default"
    uses_old_policy = False  # the ratio's denominator is the stored log-prob, not a second policy
    rescores_rollouts = True  # log p_theta(z_{j+1} | z_j) of the rollout's own states

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        """Stochastic rollouts with log-probs, ``train.clip_range > 0`` and the shared loss constants."""
        sample, problems = config.sample, []
        if sample.solver not in SDE_SOLVERS or sample.deterministic:
            problems.append(
                f"algorithm='grpo' needs stochastic rollouts with log-probs: sample.solver in "
                f"{list(SDE_SOLVERS)} and sample.deterministic=False (got solver={sample.solver!r}, "
                f"deterministic={sample.deterministic!r})"
            )
        if not config.train.clip_range > 0:
            problems.append(f"train.clip_range={config.train.clip_range!r} must be > 0 for algorithm='grpo'")
        return problems + loss_constant_problems(config)

    @classmethod
    def from_settings(cls, settings: GRPOSettings, *, timestep_fraction: float, rollout: Any) -> GRPO:
        """The rollout's solver and noise level are the ones whose log-densities it re-scores."""
        return cls(
            timestep_fraction=timestep_fraction,
            solver=rollout.solver,
            noise_level=rollout.noise_level,
            **dataclasses.asdict(settings),
        )

    def __init__(
        self,
        *,
        timestep_fraction: float,
        solver: str,
        noise_level: float,
        clip_range: float,
        kl_beta: float,
        adv_clip_max: float,
    ) -> None:
        super().__init__(timestep_fraction=timestep_fraction)
        if solver not in SDE_SOLVERS:
            raise ValueError(f"GRPO needs a stochastic solver ({', '.join(SDE_SOLVERS)}), got {solver!r}")
        if clip_range <= 0 or adv_clip_max <= 0 or kl_beta < 0:
            raise ValueError("GRPO needs clip_range > 0, adv_clip_max > 0 and kl_beta >= 0")
        self.solver = solver
        self.noise_level = noise_level
        self.clip_range = clip_range
        self.kl_beta = kl_beta
        self.adv_clip_max = adv_clip_max

    def rollout_fields(self, result: SampleResult) -> dict[str, torch.Tensor]:
        """``latents``: every state ``(B, N + 1, ...)``; ``log_probs``: ``(B, N)`` float32."""
        if result.log_probs is None:
            raise ValueError("GRPO rollouts must be stochastic: set sample.deterministic=False")
        return {
            "latents": torch.stack(result.trajectory, dim=1),
            "log_probs": result.log_probs.T.contiguous(),
        }

    def step_plan(self, batch_size: int, num_grid_steps: int) -> torch.Tensor:
        """Steps ``0, 1, ..., N - 1`` in order for every row (Flow-GRPO trains the first ``T``)."""
        return torch.arange(num_grid_steps).repeat(batch_size, 1)

    def loss(
        self, forward: PolicyForward, batch: TrainBatch, steps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Recomputed step log-prob -> clipped surrogate, plus the KL to ``ref`` when ``kl_beta > 0``."""
        index = int(steps[0])
        if not bool((steps == index).all()):
            raise ValueError("GRPO trains one grid step per micro-batch; got mixed steps")
        states, sigmas = batch.fields["latents"], batch.sigmas.to(batch.fields["latents"].device)
        z, z_next = states[:, index], states[:, index + 1]
        sigma = sigma_batch(sigmas[index], z.shape[0])
        transition = TRANSITIONS[self.solver](
            forward.velocity(z, sigma, "default"), z, sigmas, index, self.noise_level
        )
        log_prob = gaussian_log_prob(z_next.detach(), transition.mean, transition.std)
        loss, info = clipped_policy_loss(
            log_prob,
            batch.fields["log_probs"][:, index],
            batch.advantages,
            batch.mask,
            clip_range=self.clip_range,
            adv_clip_max=self.adv_clip_max,
        )
        if self.kl_beta > 0:
            with torch.no_grad():
                v_ref = forward.velocity(z, sigma, "ref")
                ref_mean = TRANSITIONS[self.solver](v_ref, z, sigmas, index, self.noise_level).mean
            step_size = float(sigmas[index] - sigmas[index + 1])
            kl = transition_kl(transition.mean, ref_mean, transition.std**2 / step_size, batch.mask)
            loss = loss + self.kl_beta * kl
            info["kl_loss"] = kl.detach()
        info["total_loss"] = loss.detach()
        return loss, info
