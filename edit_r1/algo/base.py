"""The algorithm interface: what a training algorithm asks of the shared trainer loop.

The trainer owns everything that is the same for every algorithm (group sampler, rollouts,
asynchronous scoring, advantages, filter and bans, optimizer, EMA, checkpoints, tracking). An
:class:`Algorithm` owns only what differs (``docs/algorithm.md``, section 8):

* its settings (``settings_class``: a frozen dataclass whose ``from_config`` is the only code that
  knows where its keys live in a config), the problems of a config that chose it
  (:meth:`Algorithm.config_problems`, one line each naming the user's key) and how it is built from
  them (:meth:`Algorithm.from_settings`);
* which policy rolls out (``rollout_adapter``), what a rollout must keep beyond the final
  latents (:meth:`Algorithm.rollout_fields`) and whether it reads an ``old`` policy at all
  (``uses_old_policy``: only then is ``old <- d old + (1 - d) theta`` synced and checkpointed);
* which grid steps each sample trains on (:meth:`Algorithm.train_steps`, :meth:`Algorithm.step_plan`);
* the loss of one training step and its diagnostics (:meth:`Algorithm.loss`).

A config names one through ``config.algorithm``, looked up in ``edit_r1/algo/registry.py``.

Everything here is tensor code: the policy is reached only through :class:`PolicyForward`, so this
package never imports the model families, ``torch.distributed`` or a logger.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from edit_r1.sampling import SampleResult


class PolicyForward(Protocol):
    """The velocities of one micro-batch's policies, its condition already bound.

    ``velocity(z, sigma, adapter)`` with ``adapter`` in ``default`` (trained, with gradients), ``old``
    or ``ref`` (both without gradients); ``velocity_old_and_ref(z, sigma)`` returns ``(v_old, v_ref)``
    from one fused forward where the policy supports it. ``sigma`` is a float32 ``(B,)`` tensor.
    """

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, adapter: str) -> torch.Tensor: ...

    def velocity_old_and_ref(
        self, z: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class TrainBatch:
    """The rows of one training micro-batch.

    ``x0``: final latents of the rollouts ``(B, L, C)``; ``fields``: what
    :meth:`Algorithm.rollout_fields` stored, batch-first; ``advantages`` / ``mask``: ``(B,)`` from
    the shared group statistics; ``sigmas``: the rollout schedule (``N + 1`` values, ending in 0).
    """

    x0: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    sigmas: torch.Tensor
    fields: dict[str, torch.Tensor] = field(default_factory=dict)


def loss_constant_problems(config: Any) -> list[str]:
    """The checks of the two loss constants NFT and GRPO share: ``train.adv_clip_max > 0`` (the
    advantage clip ``C``) and ``train.beta >= 0`` (the KL weight)."""
    train, problems = config.train, []
    if not train.adv_clip_max > 0:
        problems.append(f"train.adv_clip_max={train.adv_clip_max!r} must be > 0")
    if train.beta < 0:
        problems.append(f"train.beta={train.beta!r} must be >= 0")
    return problems


class Algorithm(abc.ABC):
    """One RL algorithm behind the shared loop. Subclasses set the class attributes and implement
    :meth:`from_settings`, :meth:`step_plan` and :meth:`loss`.

    ``timestep_fraction``: each sample trains on ``T = int(N * timestep_fraction)`` of the ``N``
    rollout steps (at least 1).
    """

    name: ClassVar[str]  # the value of config.algorithm
    settings_class: ClassVar[type]  # frozen dataclass with from_config(config): the algorithm's keys
    rollout_adapter: ClassVar[str] = "old"  # the policy that samples the rollouts
    uses_old_policy: ClassVar[bool] = False  # reads v_old: the old policy is synced and saved
    # Re-scores the rollouts' own step log-probs: its training forwards must see the velocity that
    # sampled them, so rollouts with true CFG need guided training forwards (train.cfg).
    rescores_rollouts: ClassVar[bool] = False

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        """What is wrong with a config that chose this algorithm, one line per problem naming the
        user's key (collected into the one ``ConfigError`` of ``edit_r1.config.validate_config``)."""
        return []

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Any, *, timestep_fraction: float, rollout: Any) -> Algorithm:
        """The algorithm from its ``settings_class`` value; ``rollout`` is the run's rollout settings
        (``solver``, ``noise_level``, ...: ``edit_r1.settings.RolloutSettings``)."""

    def __init__(self, *, timestep_fraction: float) -> None:
        if not 0.0 < timestep_fraction <= 1.0:
            raise ValueError(f"timestep_fraction must lie in (0, 1], got {timestep_fraction}")
        self.timestep_fraction = timestep_fraction

    def rollout_fields(self, result: SampleResult) -> dict[str, torch.Tensor]:
        """Tensors a rollout keeps for training besides its final latents, each batch-first."""
        return {}

    def train_steps(self, num_grid_steps: int) -> int:
        """``T = int(N * timestep_fraction)``; a ``ValueError`` when that is 0."""
        count = int(num_grid_steps * self.timestep_fraction)
        if count < 1:
            raise ValueError(
                f"train.timestep_fraction={self.timestep_fraction} trains 0 of {num_grid_steps} timesteps"
            )
        return count

    @abc.abstractmethod
    def step_plan(self, batch_size: int, num_grid_steps: int) -> torch.Tensor:
        """``(B, N)`` long grid-step indices; column ``j`` is what the ``j``-th backward trains on
        (only the first :meth:`train_steps` columns are used). Draws from the global RNG."""

    @abc.abstractmethod
    def loss(
        self, forward: PolicyForward, batch: TrainBatch, steps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one training step at grid steps ``steps`` ``(B,)`` and detached diagnostics.

        The diagnostics always include ``total_loss`` (the trainer stops on a non-finite one).
        """
