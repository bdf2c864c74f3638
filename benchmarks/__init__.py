"""Side-by-side speed measurements of Edit-R1 (driven by ``scripts/benchmark.py``).

Every scenario runs the framework's way and the baseline it replaces in the same process,
alternating them ``repeats`` times after ``warmup`` untimed runs, and reports medians and ratios.
One module per scenario:

- :mod:`benchmarks.train_step` -- one NFT training timestep (the trainer's own step) vs the
  original release's three separate forwards vs the bare model passes;
- :mod:`benchmarks.rollout` -- a group of ``k`` edits, condition encoded once per group vs per sample;
- :mod:`benchmarks.reward` -- the reward server with dynamic batching vs one image per engine call
  (transformers and/or vLLM backends; a vLLM engine alone runs in its own venv through
  ``benchmarks/reward_engine.py``);
- :mod:`benchmarks.epoch` -- a whole tiny epoch with ``torchrun``, time per phase;
- :mod:`benchmarks.loading` -- parameter bytes per rank while a full-weight policy is built and
  sharded, old/ref deep copies vs built on the meta device (``torchrun``, 2 and 4 processes).

:mod:`benchmarks.common` holds the settings and the timing helpers, :mod:`benchmarks.policies`
the models the scenarios time, :mod:`benchmarks.report` the text table; the reward-server launcher
is :mod:`reward_server.launcher` (shared with the tests and the toy world's learning runs). This folder is not part of the
installed package. See ``docs/performance.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import BenchmarkError, Settings, check_device
from benchmarks.epoch import run_epoch
from benchmarks.loading import run_loading
from benchmarks.report import format_table
from benchmarks.reward import run_reward
from benchmarks.rollout import run_rollout
from benchmarks.train_step import run_train_step

SCENARIOS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "train-step": run_train_step,
    "rollout": run_rollout,
    "reward": run_reward,
    "epoch": run_epoch,
    "loading": run_loading,
}

__all__ = ["SCENARIOS", "BenchmarkError", "Settings", "format_table", "run_scenario"]


def run_scenario(name: str, settings: Settings) -> dict[str, Any]:
    """Runs scenario ``name`` (one of ``SCENARIOS``) and returns its JSON-ready result."""
    if name not in SCENARIOS:
        raise BenchmarkError(f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)}")
    check_device(settings.device)
    torch.manual_seed(0)
    return SCENARIOS[name](settings)
