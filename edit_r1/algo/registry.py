"""``config.algorithm`` -> an :class:`~edit_r1.algo.base.Algorithm` built from the config's keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Algorithm
from .grpo import GRPO
from .nft import NFT


def _nft(config: Any) -> Algorithm:
    from edit_r1.settings import LossSettings  # where the loss constants live in the config

    return NFT(
        timestep_fraction=config.train.timestep_fraction, **LossSettings.from_config(config).as_kwargs()
    )


def _grpo(config: Any) -> Algorithm:
    train = config.train
    return GRPO(
        timestep_fraction=train.timestep_fraction,
        solver=config.sample.solver,
        noise_level=config.sample.noise_level,
        clip_range=train.clip_range,
        kl_beta=train.beta,
        adv_clip_max=train.adv_clip_max,
    )


ALGORITHMS: dict[str, Callable[[Any], Algorithm]] = {"nft": _nft, "grpo": _grpo}


def build_algorithm(config: Any) -> Algorithm:
    """The algorithm ``config.algorithm`` names, with its settings read from the config."""
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={config.algorithm!r} is not one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[config.algorithm](config)
