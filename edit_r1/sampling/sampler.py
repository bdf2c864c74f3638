"""The rollout loop: integrate ``dz/dsigma = v(z, sigma)`` from ``sigmas[0]`` down to ``sigmas[-1]``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .solvers import (
    DPM_SOLVERS,
    Generator,
    check_sigmas,
    check_solver,
    deterministic_step,
    dpm_solver_pp_update,
    euler_step,
    predict_x0,
    sde_step,
)

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    """Output of :func:`sample`.

    ``latents``: the final state (``x0_hat`` of the last step when the schedule ends in 0), in the
    dtype of the input latents. ``trajectory``: the ``num_steps + 1`` states, starting with the input.
    ``log_probs``: float32 tensor ``(num_steps, B)``, row ``i`` the log-prob of step ``i`` per sample
    (index it like a list); ``None`` for deterministic rollouts.
    """

    latents: torch.Tensor
    trajectory: list[torch.Tensor]
    log_probs: torch.Tensor | None


def sigma_batch(sigma: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The ``sigma`` argument passed to ``velocity_fn``: a float32 ``(B,)`` tensor filled with sigma.

    Diffusers' Qwen-Image and FLUX transformers take ``timestep = sigma`` in [0, 1] (the pipelines
    divide their 0..1000 timesteps by 1000), so an adapter can pass it straight through.
    """
    return sigma.to(torch.float32).reshape(1).repeat(batch_size)


def sample(
    velocity_fn: VelocityFn,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    solver: str,
    deterministic: bool,
    noise_level: float,
    generator: Generator = None,
) -> SampleResult:
    """Roll out ``len(sigmas) - 1`` steps of ``solver`` from ``latents`` (shape ``(B, ...)``).

    ``velocity_fn(z, sigma)`` gets ``z`` in the dtype of ``latents`` and ``sigma`` as a float32
    ``(B,)`` tensor (see :func:`sigma_batch`) and returns ``v`` of the shape of ``z`` (any dtype).
    Each update is computed in float32 and cast back to ``latents.dtype``.

    - ``flow`` / ``ddim`` / ``dance``: stochastic with ``eta = noise_level`` (see
      :func:`~edit_r1.sampling.solvers.sde_step`), or their ``eta = 0`` step when ``deterministic``
      (``flow`` is then plain Euler, identical to diffusers' Euler scheduler).
    - ``dpm1`` / ``dpm2``: deterministic only (a ``ValueError`` otherwise); Euler first and last
      steps, multistep DPM-Solver++ in between (docs/algorithm.md#3-rollout).

    ``generator`` (one ``torch.Generator`` or one per sample) draws the SDE noise; with a fixed
    generator state a rollout is reproducible bit for bit.
    """
    check_solver(solver)
    sigmas = sigmas.detach().to(device=latents.device, dtype=torch.float32)
    check_sigmas(sigmas)
    if solver in DPM_SOLVERS:
        if not deterministic:
            raise ValueError(f"solver {solver!r} is deterministic only; pass deterministic=True")
        return _sample_dpm(int(solver[-1]), velocity_fn, latents, sigmas)
    trajectory = [latents]
    log_probs = []
    z = latents
    for index in range(sigmas.numel() - 1):
        velocity = velocity_fn(z, sigma_batch(sigmas[index], z.shape[0]))
        if deterministic:
            z = deterministic_step(solver, velocity, z, sigmas, index)
        else:
            z, _, log_prob = sde_step(
                solver, velocity, z, sigmas, index, noise_level=noise_level, generator=generator
            )
            log_probs.append(log_prob)
        trajectory.append(z)
    return SampleResult(
        latents=z, trajectory=trajectory, log_probs=torch.stack(log_probs) if log_probs else None
    )


def _sample_dpm(
    order: int, velocity_fn: VelocityFn, latents: torch.Tensor, sigmas: torch.Tensor
) -> SampleResult:
    """``dpm1`` / ``dpm2``: Euler at the first and last step, DPM-Solver++ (order 1 or 2) in between.

    With a schedule ending in 0 the last Euler step returns ``x0_hat`` exactly.
    """
    num_steps = sigmas.numel() - 1
    trajectory = [latents]
    z = latents
    prev_x0 = None
    for index in range(num_steps):
        sigma, sigma_next = float(sigmas[index]), float(sigmas[index + 1])
        velocity = velocity_fn(z, sigma_batch(sigmas[index], z.shape[0]))
        x0 = predict_x0(z, velocity, sigma)
        if index in (0, num_steps - 1):
            z = euler_step(velocity, z, sigma, sigma_next)
        else:
            previous = prev_x0 if order == 2 else None
            sigma_prev = float(sigmas[index - 1])
            z = dpm_solver_pp_update(z, x0, previous, sigma_prev, sigma, sigma_next).to(latents.dtype)
        prev_x0 = x0
        trajectory.append(z)
    return SampleResult(latents=z, trajectory=trajectory, log_probs=None)
