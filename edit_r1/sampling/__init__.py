"""Sigma schedules, solver steps and the rollout loop (pure tensor code).

The formulas: docs/algorithm.md#2-sigma-schedule and #3-rollout.
"""

from .sampler import SampleResult, sample, sigma_batch
from .schedules import compute_mu, sigma_schedule
from .solvers import (
    DPM_SOLVERS,
    SDE_SOLVERS,
    SOLVERS,
    deterministic_step,
    dpm_solver_pp_update,
    euler_step,
    gaussian_log_prob,
    predict_x0,
    sde_step,
)

__all__ = [
    "DPM_SOLVERS",
    "SDE_SOLVERS",
    "SOLVERS",
    "SampleResult",
    "compute_mu",
    "deterministic_step",
    "dpm_solver_pp_update",
    "euler_step",
    "gaussian_log_prob",
    "predict_x0",
    "sample",
    "sde_step",
    "sigma_batch",
    "sigma_schedule",
]
