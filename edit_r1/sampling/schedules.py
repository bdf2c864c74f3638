"""Sigma schedules of the flow-matching samplers (docs/algorithm.md#2-sigma-schedule).

The schedule is the one diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps`` builds when a
pipeline passes ``sigmas = linspace(1, 1/N, N)`` and a resolution-dependent ``mu``. The arithmetic
is done the same way (numpy float32 after the linspace, float32 tensor at the end), so the values
are bit-identical to ``scheduler.sigmas`` and a rollout here equals a diffusers pipeline rollout.
Timesteps passed to the transformers are ``1000 * sigma`` (``num_train_timesteps``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# Diffusers' defaults for the keys a scheduler config may leave out.
_DEFAULTS: dict[str, Any] = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "shift": 1.0,
    "shift_terminal": None,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
}
_UNSUPPORTED_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")


def compute_mu(image_seq_len: int, scheduler_config: Mapping[str, Any]) -> float:
    """Resolution-dependent shift ``mu = a * L + b`` (diffusers' ``calculate_shift``).

    ``a = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)``,
    ``b = base_shift - a * base_image_seq_len``, ``L`` the number of packed target-latent tokens.
    """
    cfg = _with_defaults(scheduler_config)
    slope = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
    intercept = cfg["base_shift"] - slope * cfg["base_image_seq_len"]
    return image_seq_len * slope + intercept


def time_shift(mu: float, sigmas: np.ndarray, kind: str = "exponential") -> np.ndarray:
    """Shift sigmas towards the noisy end.

    exponential: ``s' = e^mu / (e^mu + 1/s - 1)``; linear: ``s' = mu / (mu + 1/s - 1)``.
    """
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
    if kind == "linear":
        return mu / (mu + (1 / sigmas - 1) ** 1.0)
    raise ValueError(f"scheduler_config['time_shift_type'] = {kind!r}; expected 'exponential' or 'linear'")


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """Stretch so the last sigma equals ``terminal``: ``s'' = 1 - (1 - s') (1 - terminal) / (1 - s'_last)``.

    A one-step schedule ``[1]`` has ``s'_last = 1`` and nothing to stretch; it is returned unchanged
    (diffusers divides by zero there and returns NaN).
    """
    one_minus = 1 - sigmas
    if one_minus[-1] == 0:
        return sigmas
    scale = one_minus[-1] / (1 - terminal)
    return 1 - (one_minus / scale)


def sigma_schedule(num_steps: int, image_seq_len: int, scheduler_config: Mapping[str, Any]) -> torch.Tensor:
    """Sigmas of an ``num_steps``-step rollout: a float32 tensor of length ``num_steps + 1`` ending in 0.

    ``s = linspace(1, 1/N, N)``; with dynamic shifting ``s' = time_shift(mu(L), s)`` (see
    :func:`compute_mu`), otherwise the static ``s' = shift s / (1 + (shift - 1) s)``; if the config
    has ``shift_terminal`` (Qwen-Image: 0.02), :func:`stretch_to_terminal`; then 0 is appended.

    ``scheduler_config`` uses diffusers' scheduler keys (``base_image_seq_len``,
    ``max_image_seq_len``, ``base_shift``, ``max_shift``, optional ``shift_terminal``, ...), so a
    pipeline's ``scheduler.config`` can be passed as is.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if image_seq_len < 1:
        raise ValueError(f"image_seq_len must be >= 1, got {image_seq_len}")
    cfg = _with_defaults(scheduler_config)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
    if cfg["use_dynamic_shifting"]:
        sigmas = time_shift(compute_mu(image_seq_len, cfg), sigmas, cfg["time_shift_type"])
    else:
        shift = cfg["shift"]
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if cfg["shift_terminal"]:
        sigmas = stretch_to_terminal(sigmas, cfg["shift_terminal"])
    sigmas_t = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    return torch.cat([sigmas_t, torch.zeros(1)])


def _with_defaults(scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill diffusers' defaults and reject options this schedule does not implement."""
    cfg = dict(_DEFAULTS)
    cfg.update({k: v for k, v in dict(scheduler_config).items() if v is not None or k == "shift_terminal"})
    for flag in _UNSUPPORTED_FLAGS:
        if cfg.get(flag):
            raise ValueError(f"scheduler_config[{flag!r}] = True is not supported by sigma_schedule")
    if cfg["max_image_seq_len"] == cfg["base_image_seq_len"]:
        raise ValueError("scheduler_config: max_image_seq_len must differ from base_image_seq_len")
    return cfg
