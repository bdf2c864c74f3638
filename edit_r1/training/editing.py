"""Editing a batch with the policy: roll out from fresh noise, decode, pair each edit with its task.

Shared by the rollout collector (training rollouts, the algorithm's adapter) and the evaluator
(the EMA weights, the evaluation solver); neither knows the model family: the policy is reached
through ``EditPolicy`` (``initial_noise``, ``velocity``, ``decode``, ``encode_condition``).
"""

from __future__ import annotations

from typing import Any

import torch

from edit_r1.data.dataset import center_crop_resize
from edit_r1.inference import to_pil_batch
from edit_r1.models.base import EditPolicy
from edit_r1.monitors import VelocityNorms
from edit_r1.rewards import RewardSample
from edit_r1.sampling import SampleResult, sample


def reward_sample(edit: Any, sources: Any, item: Any) -> RewardSample:
    """The edit with its task: the first source image, then any further ones (several references)."""
    first, *rest = sources if isinstance(sources, list) else [sources]
    return RewardSample(edit, first, item.prompt, item.requirement, item.extra, tuple(rest))


class PolicyEditor:
    """Edits batches of dataset items with ``policy`` at ``resolution``; ``noise_level`` is the
    stochastic solvers' eta (``sample.noise_level``, used by training and evaluation alike);
    ``velocity_reference`` (``monitors.velocity_reference``): an observed rollout also records the
    reference policy's velocity norms at the same points."""

    def __init__(
        self, policy: EditPolicy, *, resolution: int, noise_level: float, velocity_reference: bool = False
    ) -> None:
        self.policy = policy
        self.resolution = resolution
        self.noise_level = noise_level
        self.velocity_reference = velocity_reference

    def sources(self, item: Any) -> Any:
        """The item's source image centre-cropped to the resolution, or the list of its images."""
        images = [center_crop_resize(image, self.resolution) for image in item.images]
        return images[0] if len(images) == 1 else images

    def encode(self, items: list[Any], images: list[Any]) -> Any:
        """The family's condition of each (instruction, source images), one row per item."""
        return self.policy.encode_condition([item.prompt for item in items], images)

    @torch.no_grad()
    def rollout(
        self, cond, *, adapter: str, sigmas: torch.Tensor, solver: str, deterministic: bool, generator=None,
        observe: VelocityNorms | None = None,
    ) -> SampleResult:  # fmt: skip
        """One batch rolled out from fresh noise with policy ``adapter`` (states and log-probs kept);
        noise from the global generator, or from ``generator`` (one ``torch.Generator`` or one per row).
        ``observe`` records the velocity norms of every step (and the reference's at the same points
        with ``velocity_reference``) without changing the rollout."""
        z = self.policy.initial_noise(len(cond), generator)
        velocity = lambda x, s: self.policy.velocity(x, s, cond, adapter=adapter)  # noqa: E731
        if observe is not None:
            reference = lambda x, s: self.policy.velocity(x, s, cond, adapter="ref")  # noqa: E731
            velocity = observe.wrap(velocity, reference if self.velocity_reference else None)
        return sample(
            velocity,
            z,
            sigmas.to(z.device),
            solver=solver,
            deterministic=deterministic,
            noise_level=self.noise_level,
            generator=generator,
        )

    def edit_batch(self, cond, items, images, **rollout_options) -> tuple[SampleResult, list[RewardSample]]:
        """Rolls out one batch (:meth:`rollout`), decodes it and pairs each edit with its task."""
        result = self.rollout(cond, **rollout_options)
        edits = to_pil_batch(self.policy.decode(result.latents))
        samples = [
            reward_sample(edit, image, item) for edit, image, item in zip(edits, images, items, strict=True)
        ]
        return result, samples
