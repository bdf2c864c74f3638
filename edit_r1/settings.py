"""Typed settings: the config sections the code consumes, read once at the boundary.

A config (``config/*.py``, ml_collections) keeps the original release's keys for users; the code
below the boundary receives these frozen dataclasses whose field names say what each value is
(``config.beta`` is the NFT strength ``nft_beta``, ``config.train.beta`` the KL weight ``kl_beta``).
Each ``from_config`` is the only place that knows where its values live in the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LossSettings:
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
    def from_config(cls, config: Any) -> LossSettings:
        return cls(
            nft_beta=float(config.beta),
            kl_beta=float(config.train.beta),
            adv_clip_max=float(config.train.adv_clip_max),
            adv_mode=str(config.train.adv_mode),
        )

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`edit_r1.algo.nft_loss`."""
        return dataclasses.asdict(self)


def build_algorithm(config: Any):
    """The :class:`~edit_r1.algo.Algorithm` that ``config.algorithm`` names, with its settings read
    from the config (NFT: :class:`LossSettings`; GRPO: the rollout solver and noise, ``train.clip_range``,
    ``train.beta`` as KL weight, ``train.adv_clip_max``); both use ``train.timestep_fraction``."""
    from edit_r1.algo import ALGORITHMS, GRPO, NFT

    name = config.algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name!r} is not one of {sorted(ALGORITHMS)}")
    train = config.train
    if name == NFT.name:
        return NFT(
            timestep_fraction=float(train.timestep_fraction), **LossSettings.from_config(config).as_kwargs()
        )
    return GRPO(
        timestep_fraction=float(train.timestep_fraction),
        solver=str(config.sample.solver),
        noise_level=float(config.sample.noise_level),
        clip_range=float(train.clip_range),
        kl_beta=float(train.beta),
        adv_clip_max=float(train.adv_clip_max),
    )
