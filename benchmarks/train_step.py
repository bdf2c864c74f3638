"""``train-step``: one NFT training timestep, three ways, side by side.

- ``framework``: the trainer's own step, :meth:`edit_r1.algo.NFT.loss_at` on the policy bound as the
  trainer binds it (``BoundPolicy``), then the backward (fused no-grad old+ref forward, trained
  forward, ``nft_loss``, backward);
- ``original``: the original release's three separate forwards (old, trained, reference) on the
  fully padded prompt, and the same loss;
- ``bare``: the model passes a timestep cannot avoid, without any framework code.

The loss constants are the config's defaults (``config/base.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.common import (
    REPO_ROOT,
    Settings,
    check_device,
    describe,
    median,
    peak_memory,
    time_side_by_side,
)
from benchmarks.policies import build_policy
from edit_r1.algo import NFTSettings

# Dense bf16 peak of known accelerators (TFLOP/s), for model FLOPs utilisation.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def default_loss_settings() -> NFTSettings:
    """The loss constants of ``config/base.py`` (the original release's defaults)."""
    from edit_r1.config import load_config

    return NFTSettings.from_config(load_config(str(REPO_ROOT / "config" / "base.py")))


class TrainStepInputs:
    """One micro-batch of the training step: clean latents, condition, times and advantages."""

    def __init__(self, policy, cond, generator: torch.Generator) -> None:
        batch = len(cond)
        channels = policy.transformer.config.in_channels
        self.x0 = torch.randn(batch, policy.image_seq_len, channels, generator=generator).to(policy.device)
        self.t = torch.rand(batch, generator=generator).clamp(0.05, 0.95).to(policy.device)
        self.cond = cond
        self.advantages = torch.linspace(-1.0, 1.0, batch)
        self.mask = torch.ones(batch, dtype=torch.bool)
        eps = torch.randn(self.x0.shape, generator=generator).to(policy.device)
        t_b = self.t.view(-1, 1, 1)
        self.x_t = (1 - t_b) * self.x0 + t_b * eps


def framework_step(policy, loss: NFTSettings, inputs: TrainStepInputs) -> dict[str, torch.Tensor]:
    """The framework's timestep at the inputs' explicit times: :meth:`edit_r1.algo.NFT.loss_at` on
    the policy bound as the trainer binds it, then a backward. Returns the detached loss terms (a
    ``float()`` here would sync the GPU)."""
    from edit_r1.algo import NFT
    from edit_r1.training.updater import BoundPolicy

    algorithm = NFT(timestep_fraction=1.0, **loss.as_kwargs())
    value, info = algorithm.loss_at(
        BoundPolicy(policy, inputs.cond), inputs.x0, inputs.t, inputs.advantages, inputs.mask
    )
    value.backward()
    return {key: torch.as_tensor(item).detach() for key, item in info.items()}


def padded_framework_step(policy, loss: NFTSettings, inputs: TrainStepInputs) -> None:
    """The framework's timestep with the text padding kept: the fused forward's gain alone."""
    with untrimmed_text(policy):
        framework_step(policy, loss, inputs)


@contextlib.contextmanager
def untrimmed_text(policy) -> Iterator[None]:
    """The original release feeds the transformer the prompt padded to its full stored length;
    Qwen's framework forward trims the all-padding tail (``trim_text_padding``), Kontext cannot."""
    if not hasattr(policy, "trim_text_padding"):
        yield
        return
    trims, policy.trim_text_padding = policy.trim_text_padding, False
    try:
        yield
    finally:
        policy.trim_text_padding = trims


def original_step(policy, loss: NFTSettings, inputs: TrainStepInputs) -> None:
    """The original release's timestep: three separate forwards (old, trained, reference)."""
    from edit_r1.algo import nft_loss

    x0, t, cond = inputs.x0, inputs.t, inputs.cond
    eps = torch.randn_like(x0)
    t_b = t.view(-1, 1, 1)
    x_t = (1 - t_b) * x0 + t_b * eps
    with untrimmed_text(policy):
        v_old = policy.velocity(x_t, t, cond, adapter="old")
        v = policy.velocity(x_t, t, cond, adapter="default")
        v_ref = policy.velocity(x_t, t, cond, adapter="ref")
    value, info = nft_loss(
        v, v_old, v_ref, x_t, x0, t, inputs.advantages.to(x0.device), inputs.mask.to(x0.device),
        **loss.as_kwargs(),
    )  # fmt: skip
    value.backward()
    _ = {key: float(item) for key, item in info.items()}  # the original logged these too


class BarePasses:
    """The model passes a timestep cannot avoid, with inputs prepared outside the timed region:
    one no-grad forward of 2B rows (old adapter | no adapter) and one forward+backward of the policy."""

    def __init__(self, policy, inputs: TrainStepInputs) -> None:
        from edit_r1.models.lora import row_adapter

        self.policy = policy
        self.inputs = inputs
        n = len(inputs.cond)
        self.z2 = torch.cat([inputs.x_t, inputs.x_t])
        self.t2 = torch.cat([inputs.t, inputs.t])
        self.cond2 = type(inputs.cond).cat([inputs.cond, inputs.cond])
        self.rows2 = [row_adapter("old")] * n + [row_adapter("ref")] * n

    def __call__(self) -> None:
        policy, inputs = self.policy, self.inputs
        with torch.no_grad(), policy.autocast():
            policy._forward_rows(policy.transformer, self.z2, self.t2, self.cond2, self.rows2)
        with policy.autocast():
            v = policy._forward_rows(policy.transformer, inputs.x_t, inputs.t, inputs.cond, None)
        v.float().square().mean().backward()


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` as counted by torch's FlopCounterMode (matmuls, attention, convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def candidates_of(policy, inputs: TrainStepInputs) -> dict[str, Callable[[], None]]:
    """The ways to time: framework, original, bare (and, where the text is trimmed, padded)."""
    loss = default_loss_settings()
    candidates: dict[str, Callable[[], None]] = {
        "framework": lambda: framework_step(policy, loss, inputs),
        "original": lambda: original_step(policy, loss, inputs),
        "bare": BarePasses(policy, inputs),
    }
    if hasattr(policy, "trim_text_padding"):  # what the fused forward alone gains (Qwen trims text)
        candidates["framework_padded"] = lambda: padded_framework_step(policy, loss, inputs)
    return candidates


def step_ratios(medians: dict[str, float]) -> dict[str, float]:
    ratios = {
        "framework_vs_original": medians["framework"] / medians["original"],
        "framework_vs_bare": medians["framework"] / medians["bare"],
        "speedup_vs_original": medians["original"] / medians["framework"],
    }
    if "framework_padded" in medians:
        ratios["framework_padded_vs_original"] = medians["framework_padded"] / medians["original"]
    return ratios


def run_train_step(settings: Settings) -> dict[str, Any]:
    """framework vs original (three forwards) vs bare passes; medians, ratios, FLOPs, memory."""
    device = check_device(settings.device)
    policy, cond = build_policy(settings)
    if settings.compile:
        policy.compile()
    candidates = candidates_of(policy, TrainStepInputs(policy, cond, torch.Generator().manual_seed(1)))
    memory: dict[str, float] = {}
    for name, fn in candidates.items():  # peak memory of each way, once, before timing
        with peak_memory(device, memory, f"peak_memory_gib_{name}"):
            fn()
    seconds = time_side_by_side(candidates, settings.repeats, settings.warmup, device)
    for param in policy.trainable_parameters():
        param.grad = None
    medians = {name: median(values) for name, values in seconds.items()}
    flops = count_flops(candidates["bare"])
    result: dict[str, Any] = {
        "scenario": "train-step",
        "settings": describe(settings, tokens=policy.image_seq_len),
        "median_s": medians,
        "seconds": seconds,
        "ratios": step_ratios(medians),
        "framework_overhead": medians["framework"] / medians["bare"] - 1.0,
        "model_tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / medians["framework"] / 1e12,
        **memory,
    }
    peak = peak_tflops(device)
    if peak is not None:
        result["mfu"] = result["achieved_tflops"] / peak
    return result
