"""``rollout``: a group of ``k`` edits of one item, condition encoded once per group vs once per sample."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benchmarks.common import Settings, check_device, describe, median, peak_memory, time_side_by_side
from benchmarks.policies import tiny_policy


class CallCounter:
    """Counts forward calls of the policy's condition encoders (text/vision encoders)."""

    def __init__(self, policy) -> None:
        names = ("text_encoder", "text_encoder_2")
        self.modules = [getattr(policy, n) for n in names if getattr(policy, n, None) is not None]
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in self.modules]

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def rollout_group(
    policy, instructions: list[str], images: list, per_group: bool, sigmas: torch.Tensor
) -> None:
    """Encode, roll out (deterministic dpm2 with the old policy, as in training) and decode one group."""
    from edit_r1.sampling import sample

    if per_group:
        cond = policy.encode_condition(instructions, images)  # identical pairs: one encoder pass
    else:
        conds = [
            policy.encode_condition([text], [image]) for text, image in zip(instructions, images, strict=True)
        ]
        cond = type(conds[0]).cat(conds)
    z = policy.initial_noise(len(cond))
    with torch.no_grad():
        result = sample(
            lambda x, s: policy.velocity(x, s, cond, adapter="old"),
            z, sigmas.to(z.device), solver="dpm2", deterministic=True, noise_level=0.7,
        )  # fmt: skip
        policy.decode(result.latents)


def count_encoder_calls(policy, instructions, images, sigmas) -> dict[str, int]:
    calls: dict[str, int] = {}
    for name, per_group in (("per_group", True), ("per_sample", False)):
        counter = CallCounter(policy)
        rollout_group(policy, instructions, images, per_group, sigmas)
        calls[name] = counter.calls
        counter.close()
    return calls


def run_rollout(settings: Settings) -> dict[str, Any]:
    """A group of ``k`` edits of one item: condition once per group vs once per sample."""
    from PIL import Image

    from edit_r1.sampling import sigma_schedule

    device = check_device(settings.device)
    policy = tiny_policy(dataclasses.replace(settings, size="tiny"))
    k = settings.group_size
    image = Image.new("RGB", (settings.image_size(),) * 2, (30, 160, 60))
    instructions, images = ["turn the square red"] * k, [image] * k
    sigmas = sigma_schedule(6, policy.image_seq_len, policy.scheduler_config)
    calls = count_encoder_calls(policy, instructions, images, sigmas)
    memory: dict[str, float] = {}
    with peak_memory(device, memory, "peak_memory_gib"):
        rollout_group(policy, instructions, images, True, sigmas)
    seconds = time_side_by_side(
        {
            "per_group": lambda: rollout_group(policy, instructions, images, True, sigmas),
            "per_sample": lambda: rollout_group(policy, instructions, images, False, sigmas),
        },
        settings.repeats, settings.warmup, device,
    )  # fmt: skip
    medians = {name: median(values) for name, values in seconds.items()}
    return {
        "scenario": "rollout",
        "settings": describe(settings, size="tiny", tokens=policy.image_seq_len),
        "encoder_calls": calls,
        "median_s": medians,
        "seconds": seconds,
        "samples_per_s": {name: k / value for name, value in medians.items()},
        "ratios": {
            "encoder_calls_ratio": calls["per_sample"] / max(1, calls["per_group"]),
            "samples_per_s_ratio": medians["per_sample"] / medians["per_group"],
        },
        **memory,
    }
