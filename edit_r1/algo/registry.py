"""The training algorithms ``config.algorithm`` names: one line per algorithm.

A new algorithm is one file in ``edit_r1/algo/`` (its :class:`~edit_r1.algo.base.Algorithm`
subclass with its settings dataclass, config problems, rollout fields, loss) plus one line here
(``docs/architecture.md``, "Adding an algorithm"). Nothing outside ``edit_r1/algo/`` names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Algorithm
from .grpo import GRPO
from .nft import NFT

ALGORITHMS: dict[str, type[Algorithm]] = {NFT.name: NFT, GRPO.name: GRPO}


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered algorithm called ``name``; a ``ValueError`` naming the valid ones otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name!r} is not one of {list(ALGORITHMS)}")
    return ALGORITHMS[name]


@dataclass(frozen=True)
class AlgorithmSettings:
    """The training algorithm (``docs/algorithm.md``, section 8).

    ``name`` (``algorithm``); ``timestep_fraction`` (``train.timestep_fraction``): trains
    ``int(N * fraction)`` of the ``N`` grid steps, for every algorithm; ``options``: the chosen
    algorithm's own ``settings_class`` value (e.g. ``NFTSettings``, ``GRPOSettings``).
    """

    name: str
    timestep_fraction: float
    options: Any

    @classmethod
    def from_config(cls, config: Any) -> AlgorithmSettings:
        cls_ = algorithm_class(str(config.algorithm))
        return cls(
            name=cls_.name,
            timestep_fraction=float(config.train.timestep_fraction),
            options=cls_.settings_class.from_config(config),
        )


def build_algorithm(settings: AlgorithmSettings, rollout: Any) -> Algorithm:
    """The :class:`~edit_r1.algo.base.Algorithm` that ``settings.name`` names, built from its own
    settings and the run's rollout settings (``edit_r1.settings.RolloutSettings``)."""
    return algorithm_class(settings.name).from_settings(
        settings.options, timestep_fraction=settings.timestep_fraction, rollout=rollout
    )
