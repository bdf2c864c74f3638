"""One-step update rules of the rollout solvers (docs/algorithm.md#3-rollout), as pure tensor functions.

Conventions (rectified flow, as in Qwen-Image and FLUX):

- ``z_sigma = (1 - sigma) x0 + sigma eps``; the model predicts the velocity ``v = eps - x0``;
- the data prediction is ``x0_hat = z - sigma v``;
- a step goes from ``sigma = sigmas[index]`` to ``sigma_next = sigmas[index + 1] < sigma``.

Every update is computed in float32 (``latents.float()``, ``velocity.float()``) whatever the model
dtype and cast back to the dtype of ``latents``. Scalar coefficients are Python floats computed from
the float32 sigmas in double precision; torch rounds them to float32 when they multiply a tensor,
which gives exactly the float32 products diffusers computes.

Stochastic steps (``flow``, ``ddim``, ``dance``) are Gaussian transitions ``z' ~ N(mean, std^2)``
with one scalar ``std`` per step; :func:`sde_step` returns the sample and its log-density averaged
over the non-batch dimensions (what a GRPO-style likelihood ratio needs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SDE_SOLVERS: tuple[str, ...] = ("flow", "ddim", "dance")
DPM_SOLVERS: tuple[str, ...] = ("dpm1", "dpm2")
SOLVERS: tuple[str, ...] = SDE_SOLVERS + DPM_SOLVERS

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class Transition:
    """Gaussian one-step transition ``z' ~ N(mean, std^2 I)`` plus the data prediction of the step."""

    mean: torch.Tensor
    std: float
    x0_pred: torch.Tensor


def check_solver(solver: str) -> None:
    """Raise ``ValueError`` naming the valid options when ``solver`` is unknown."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")


def check_sigmas(sigmas: torch.Tensor) -> None:
    """A schedule is a 1-D tensor of at least 2 values in [0, 1], strictly decreasing."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D tensor with at least 2 values, got shape {tuple(sigmas.shape)}"
        )
    values = sigmas.double()
    if not bool(torch.all(values[1:] < values[:-1])):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    if float(values[0]) > 1.0 or float(values[-1]) < 0.0:
        raise ValueError(f"sigmas must lie in [0, 1], got {sigmas.tolist()}")


def _sigma_pair(sigmas: torch.Tensor, index: int) -> tuple[float, float]:
    if not 0 <= index < sigmas.numel() - 1:
        raise IndexError(f"step index {index} out of range for {sigmas.numel()} sigmas")
    return float(sigmas[index]), float(sigmas[index + 1])


def predict_x0(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Data prediction ``x0_hat = z - sigma v`` (float32)."""
    return latents.float() - sigma * velocity.float()


def euler_step(
    velocity: torch.Tensor, latents: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """Plain Euler ``z' = z + (sigma_next - sigma) v`` in float32, cast back to ``latents.dtype``.

    Same arithmetic as diffusers' ``FlowMatchEulerDiscreteScheduler.step`` (upcast sample, ``sample +
    dt * model_output``), so a float32 rollout is bit-identical to the pipeline's.
    """
    dt = sigma_next - sigma
    return (latents.float() + dt * velocity.float()).to(latents.dtype)


def flow_transition(
    velocity: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, index: int, noise_level: float
) -> Transition:
    """Flow-GRPO SDE step.

    ``std_t = eta sqrt(sigma / (1 - sigma))`` (at ``sigma = 1`` the denominator uses ``sigmas[1]``),
    ``dt = sigma_next - sigma``,
    ``mean = z (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt``,
    ``std = std_t sqrt(-dt)``.
    """
    sigma, sigma_next = _sigma_pair(sigmas, index)
    z, v = latents.float(), velocity.float()
    dt = sigma_next - sigma
    sigma_for_denominator = float(sigmas[1]) if sigma == 1.0 else sigma
    std_t = noise_level * math.sqrt(sigma / (1 - sigma_for_denominator))
    mean = z * (1 + std_t**2 * dt / (2 * sigma)) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return Transition(mean=mean, std=std_t * math.sqrt(-dt), x0_pred=z - sigma * v)


def ddim_transition(
    velocity: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, index: int, noise_level: float
) -> Transition:
    """DDIM step in flow parametrisation, with ``s = sigma``, ``t = sigma_next``.

    ``eps_hat = (z - (1 - s) x0_hat) / s``,
    ``rho = eta t sqrt(1 - t^2 (1 - s)^2 / (s^2 (1 - t)^2))``,
    ``mean = (1 - t) x0_hat + sqrt(t^2 - rho^2) eps_hat``, ``std = rho``. Needs ``eta <= 1``.
    """
    s, t = _sigma_pair(sigmas, index)
    x0 = predict_x0(latents, velocity, s)
    eps_hat = (latents.float() - (1 - s) * x0) / s
    rho = noise_level * t * math.sqrt(1 - t**2 * (1 - s) ** 2 / (s**2 * (1 - t) ** 2))
    if rho > t:
        raise ValueError(
            f"ddim needs noise_level <= 1 (got {noise_level}): the noise would exceed sigma_next"
        )
    mean = (1 - t) * x0 + math.sqrt(t**2 - rho**2) * eps_hat
    return Transition(mean=mean, std=rho, x0_pred=x0)


def dance_transition(
    velocity: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, index: int, noise_level: float
) -> Transition:
    """DanceGRPO SDE step.

    ``ds = sigma_next - sigma``, ``score = -(z - (1 - sigma) x0_hat) / sigma^2``,
    ``mean = z + ds v - (eta^2 / 2) score ds``, ``std = eta sqrt(sigma - sigma_next)``.
    """
    sigma, sigma_next = _sigma_pair(sigmas, index)
    z, v = latents.float(), velocity.float()
    ds = sigma_next - sigma
    x0 = z - sigma * v
    score = -(z - (1 - sigma) * x0) / sigma**2
    mean = z + ds * v - (noise_level**2 / 2) * score * ds
    return Transition(mean=mean, std=noise_level * math.sqrt(sigma - sigma_next), x0_pred=x0)


TRANSITIONS = {"flow": flow_transition, "ddim": ddim_transition, "dance": dance_transition}


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Per-sample ``mean_over_non_batch_dims(-(x - mean)^2 / (2 std^2) - log std - log sqrt(2 pi))``.

    A zero-variance transition (``std == 0``: the last ``ddim`` step, or ``noise_level = 0``) is
    deterministic and carries no likelihood; its log-prob is defined as 0 (upstream returned NaN).
    """
    reduce_dims = tuple(range(1, mean.ndim))
    if std == 0.0:
        return torch.zeros(mean.shape[0], dtype=torch.float32, device=mean.device)
    log_density = -((sample.float() - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=reduce_dims)


def standard_normal(shape: torch.Size, generator: Generator, device: torch.device) -> torch.Tensor:
    """float32 N(0, I) noise of ``shape`` on ``device``.

    ``generator`` may be ``None`` (global RNG), one ``torch.Generator`` (noise drawn on its device,
    then moved), or one generator per sample (row ``i`` drawn from ``generator[i]``), as in diffusers'
    ``randn_tensor``.
    """
    if generator is None:
        return torch.randn(shape, device=device, dtype=torch.float32)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(
            device
        )
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    rows = [standard_normal(shape[1:], g, device) for g in generator]
    return torch.stack(rows)


def sde_step(
    solver: str,
    velocity: torch.Tensor,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    index: int,
    *,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generator = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step ``sigmas[index] -> sigmas[index + 1]`` of ``flow``, ``ddim`` or ``dance``.

    Returns ``(prev_sample, x0_pred, log_prob)``: ``prev_sample = mean + std eps`` (or the given
    ``prev_sample``), cast to ``latents.dtype``; ``x0_pred = z - sigma v`` in ``latents.dtype``;
    ``log_prob`` the float32 ``(B,)`` Gaussian log-density of the *returned* sample (after the cast,
    so re-scoring a stored sample gives the same number) averaged over non-batch dims. Gradients
    flow from ``log_prob`` to ``velocity`` through the mean; ``prev_sample`` is detached.
    """
    if solver not in TRANSITIONS:
        check_solver(solver)
        raise ValueError(f"sde_step supports {', '.join(SDE_SOLVERS)}; {solver!r} is deterministic only")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if prev_sample is not None and generator is not None:
        raise ValueError("pass either prev_sample (to score it) or generator (to draw one), not both")
    transition = TRANSITIONS[solver](velocity, latents, sigmas, index, noise_level)
    if prev_sample is None:
        noise = standard_normal(transition.mean.shape, generator, transition.mean.device)
        prev_sample = (transition.mean.detach() + transition.std * noise).to(latents.dtype)
    log_prob = gaussian_log_prob(prev_sample.detach(), transition.mean, transition.std)
    return prev_sample, transition.x0_pred.to(latents.dtype), log_prob


def deterministic_step(
    solver: str, velocity: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, index: int
) -> torch.Tensor:
    """The ``eta = 0`` step of ``flow`` / ``ddim`` / ``dance`` (all Euler in exact arithmetic).

    ``flow`` is computed literally as :func:`euler_step` so that it matches diffusers bit for bit;
    ``ddim`` and ``dance`` use their own ``eta = 0`` means, ``(1-t) x0_hat + t eps_hat`` and
    ``z + ds v``.
    """
    if solver == "flow":
        sigma, sigma_next = _sigma_pair(sigmas, index)
        return euler_step(velocity, latents, sigma, sigma_next)
    if solver not in TRANSITIONS:
        check_solver(solver)
        raise ValueError(f"deterministic_step supports {', '.join(SDE_SOLVERS)}, not {solver!r}")
    return TRANSITIONS[solver](velocity, latents, sigmas, index, 0.0).mean.to(latents.dtype)


def log_snr(sigma: float) -> float:
    """``lambda = log(alpha / sigma)`` with ``alpha = 1 - sigma``; -inf at sigma = 1, +inf at sigma = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1 - sigma) / sigma)


def dpm_solver_pp_update(
    latents: torch.Tensor,
    x0_pred: torch.Tensor,
    prev_x0_pred: torch.Tensor | None,
    sigma_prev: float,
    sigma: float,
    sigma_next: float,
) -> torch.Tensor:
    """Multistep DPM-Solver++ (data prediction) middle step, float32 in and out.

    With ``alpha = 1 - sigma``, ``lambda = log(alpha / sigma)``, ``h = lambda_next - lambda``,
    ``h_prev = lambda - lambda_prev``, ``r0 = h_prev / h``:
    ``z' = (sigma_next / sigma) z - alpha_next (e^-h - 1) (D0 + D1 / 2)``, ``D0 = x0_hat_i``,
    ``D1 = (x0_hat_i - x0_hat_{i-1}) / r0``. First order (``dpm1``) when ``prev_x0_pred`` is None.
    When ``sigma_prev = 1`` (``lambda_prev = -inf``), ``1 / r0 = 0`` and the step is first order.
    """
    lam, lam_next = log_snr(sigma), log_snr(sigma_next)
    h = lam_next - lam
    data_coef = -(1 - sigma_next) * (math.exp(-h) - 1.0)
    update = x0_pred
    if prev_x0_pred is not None:
        inv_r0 = h / (lam - log_snr(sigma_prev))
        update = x0_pred + (0.5 * inv_r0) * (x0_pred - prev_x0_pred)
    return (sigma_next / sigma) * latents.float() + data_coef * update
