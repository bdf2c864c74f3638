"""Side-by-side speed measurements of Edit-R1 (driven by ``scripts/benchmark.py``).

Every scenario runs the framework's way and the baseline it replaces in the same process,
alternating them ``repeats`` times after ``warmup`` untimed runs, and reports medians and ratios:

- ``train-step``: one NFT training timestep as ``Trainer._train_timestep`` runs it (fused no-grad
  old+ref forward, trained forward, ``nft_loss``, backward) vs the original release's three
  separate forwards vs the bare model passes (the same two passes without any framework code).
- ``rollout``: a group of ``k`` edits with the condition encoded once per group vs once per sample.
- ``reward``: the reward server (tiny judge, transformers backend) with dynamic batching vs one
  image per engine call, under ``c`` concurrent trainer-like clients.
- ``epoch``: a whole tiny epoch with ``torchrun`` (2 CPU processes), time per phase.

Sizes: ``tiny`` loads the tiny kit (CPU, seconds); ``small`` and ``full`` build randomly
initialised transformers from an architecture config (``full`` = Qwen-Image 20B / FLUX 12B, for a
GPU) and feed them synthetic conditions of the real shapes: speed and memory do not need weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KIT = REPO_ROOT / ".tiny" / "kit"
KIT_FOLDER = {"qwen_image_edit": "qwen_image_edit_plus", "kontext": "flux_kontext"}

# SPEC defaults of the loss (config/base.py): NFT beta, KL beta, advantage clip, advantage mode.
LOSS_CONFIG = {"beta": 1.0, "train": {"beta": 1e-4, "adv_clip_max": 5.0, "adv_mode": "all"}}

# Dense bf16 peak of known accelerators (TFLOP/s), for model FLOPs utilisation.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

# Architecture configs of the transformers (diffusers constructor arguments).
TRANSFORMER_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen_image_edit": {
        # Qwen-Image (20B): 60 dual-stream blocks, 24 heads x 128, Qwen2.5-VL-7B states (3584).
        "full": dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=60,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            axes_dims_rope=(16, 56, 56),
        ),
        # CPU-sized member of the same family: 4 blocks of width 256, same latent layout.
        "small": dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=4,
            attention_head_dim=32,
            num_attention_heads=8,
            joint_attention_dim=256,
            axes_dims_rope=(8, 12, 12),
        ),
    },
    "kontext": {
        # FLUX.1 (12B): 19 double + 38 single blocks, 24 heads x 128, T5-XXL (4096) + CLIP-L pooled (768).
        "full": dict(
            patch_size=1,
            in_channels=64,
            out_channels=None,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
        "small": dict(
            patch_size=1,
            in_channels=64,
            out_channels=None,
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=32,
            num_attention_heads=8,
            joint_attention_dim=256,
            pooled_projection_dim=64,
            guidance_embeds=True,
            axes_dims_rope=(8, 12, 12),
        ),
    },
}
# Text tokens of the synthetic condition (Qwen pads/truncates to max_text_length; Kontext's T5 to 512).
TEXT_TOKENS = {"qwen_image_edit": {"small": 64, "full": 256}, "kontext": {"small": 64, "full": 512}}
# Real Qwen prompts fill most of the 256 stored positions: a 384^2 condition image is 196 vision
# tokens, plus "Picture 1:", the instruction and the assistant prefix (~30). Kontext's T5 has no mask.
USED_TEXT_FRACTION = 226 / 256


@dataclasses.dataclass
class Settings:
    """What to measure and how often. ``resolution`` None picks 64 (tiny), 128 (small), 512 (full)."""

    device: str = "cpu"
    size: str = "tiny"
    family: str = "qwen_image_edit"
    kit: Path | None = None
    repeats: int = 5
    warmup: int = 1
    batch_size: int = 2
    resolution: int | None = None
    group_size: int = 12
    lora_rank: int = 32
    gradient_checkpointing: bool = False
    compile: bool = False
    attention_backend: str | None = None
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests_per_client: int = 2
    images_per_request: int = 3
    server_batch_size: int = 32
    nproc: int = 2
    epochs: int = 2

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32

    def image_size(self) -> int:
        return self.resolution or {"tiny": 64, "small": 128, "full": 512}[self.size]


class BenchmarkError(RuntimeError):
    """A scenario cannot run with the given settings (missing CUDA, kit, server failure)."""


# ----------------------------------------------------------------------------------- timing
def check_device(device: str) -> torch.device:
    """``device`` as a torch device; a clear error when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            "--device cuda was requested but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); run on a GPU host or use --device cpu"
        )
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall seconds of each candidate, interleaved round by round so drifts (other processes,
    thermal state) hit every candidate alike; ``warmup`` untimed rounds first."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(warmup + repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of ``values``."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return float(ordered[rank])


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, Any], key: str) -> Iterator[None]:
    """Stores the peak allocated GiB of the block in ``out[key]`` (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out[key] = torch.cuda.max_memory_allocated(device) / 2**30


# ----------------------------------------------------------------------------------- policies
def resolve_kit(settings: Settings) -> Path:
    """The tiny kit folder: ``settings.kit``, else ``.tiny/kit``, else a fresh build in a temp dir."""
    from edit_r1.models.tiny import build_all

    if settings.kit is not None:
        if not (Path(settings.kit) / KIT_FOLDER[settings.family]).is_dir():
            raise BenchmarkError(f"--kit {settings.kit}: no {KIT_FOLDER[settings.family]}/ inside")
        return Path(settings.kit)
    if all((DEFAULT_KIT / name).is_dir() for name in KIT_FOLDER.values()):
        return DEFAULT_KIT
    out = Path(tempfile.mkdtemp(prefix="edit_r1_bench_kit_"))
    build_all(out)
    settings.kit = out
    return out


def lora_settings(rank: int):
    from edit_r1.models.lora import LoraSettings

    return LoraSettings(rank=rank, alpha=2 * rank, init="gaussian")


def tiny_policy(settings: Settings):
    """The tiny kit's policy of ``settings.family`` loaded as the trainer loads it."""
    from edit_r1.models.registry import load_policy

    size = settings.image_size()
    options = {"condition_area": size * size} if settings.family == "qwen_image_edit" else {}
    return load_policy(
        settings.family,
        resolve_kit(settings) / KIT_FOLDER[settings.family],
        device=settings.torch_device,
        dtype=settings.dtype,
        resolution=size,
        lora=lora_settings(min(settings.lora_rank, 8)),
        gradient_checkpointing=settings.gradient_checkpointing,
        attention_backend=settings.attention_backend,
        max_text_length=256,  # as the tiny config: the chat template alone is ~130 tokens
        **options,
    )


def random_transformer(family: str, size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised transformer of the real (``full``) or CPU-sized (``small``) architecture,
    allocated directly on ``device`` in ``dtype`` (a 20B model never exists in float32)."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel

    cls = QwenImageTransformer2DModel if family == "qwen_image_edit" else FluxTransformer2DModel
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**TRANSFORMER_CONFIGS[family][size]).eval()
    finally:
        torch.set_default_dtype(previous)


def real_vae_on_meta(family: str) -> torch.nn.Module:
    """The family's real VAE architecture on the meta device (no memory): the policy only needs its
    config (latent scale factor) for the training step."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage

    with torch.device("meta"):
        if family == "qwen_image_edit":
            return AutoencoderKLQwenImage()  # defaults = Qwen-Image VAE (scale 8, 16 channels)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
        )


def random_policy(settings: Settings):
    """A policy around a random ``settings.size`` transformer; text encoders and scheduler come from
    the tiny kit (they are not run by the training step, whose conditions are synthetic)."""
    from edit_r1.models.registry import policy_class

    kit = tiny_policy(dataclasses.replace(settings, device="cpu"))
    transformer = random_transformer(settings.family, settings.size, settings.torch_device, settings.dtype)
    shared = dict(
        transformer=transformer,
        vae=real_vae_on_meta(settings.family),
        scheduler=kit.scheduler,
        resolution=settings.image_size(),
        lora=lora_settings(settings.lora_rank),
        gradient_checkpointing=settings.gradient_checkpointing,
        attention_backend=settings.attention_backend,
        dtype=settings.dtype,
        max_text_length=TEXT_TOKENS[settings.family][settings.size],
    )
    if settings.family == "qwen_image_edit":
        encoders = dict(text_encoder=kit.text_encoder, processor=kit.processor)
    else:
        encoders = dict(
            text_encoder=kit.text_encoder,
            tokenizer=kit.tokenizer,
            text_encoder_2=kit.text_encoder_2,
            tokenizer_2=kit.tokenizer_2,
        )
    return policy_class(settings.family)(**shared, **encoders)


def synthetic_condition(policy, batch: int, generator: torch.Generator):
    """A condition of the real shapes (text states, reference latents on the target grid)."""
    from edit_r1.models.kontext import KontextCondition
    from edit_r1.models.qwen_image_edit import QwenCondition

    device, config = policy.device, policy.transformer.config
    grid = policy.latent_grid
    tokens = policy.max_text_length

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=policy.dtype)

    ref = randn(batch, grid[0] * grid[1], config.in_channels)
    if policy.family == "qwen_image_edit":
        mask = torch.zeros(batch, tokens, dtype=torch.long, device=device)
        mask[:, : round(tokens * USED_TEXT_FRACTION)] = 1
        return QwenCondition(
            prompt_embeds=randn(batch, tokens, config.joint_attention_dim),
            prompt_mask=mask,
            ref_latents=ref,
            ref_grid=grid,
        )
    return KontextCondition(
        prompt_embeds=randn(batch, tokens, config.joint_attention_dim),
        pooled_prompt_embeds=randn(batch, config.pooled_projection_dim),
        ref_latents=ref,
        ref_grid=grid,
    )


def build_policy(settings: Settings):
    """The policy of ``settings.size`` and one batch of conditions for it."""
    generator = torch.Generator().manual_seed(0)
    if settings.size == "tiny":
        from PIL import Image

        policy = tiny_policy(settings)
        image = Image.new("RGB", (settings.image_size(),) * 2, (200, 40, 40))
        cond = policy.encode_condition(
            ["make the square blue"] * settings.batch_size,
            [image] * settings.batch_size,
            group_keys=list(range(settings.batch_size)),
        )
        return policy, cond
    if settings.size not in ("small", "full"):
        raise BenchmarkError(f"--size must be tiny, small or full, got {settings.size!r}")
    policy = random_policy(settings)
    return policy, synthetic_condition(policy, settings.batch_size, generator)


# ----------------------------------------------------------------------------------- train-step
@dataclasses.dataclass
class TimestepHost:
    """The state ``Trainer._train_timestep`` reads (config, policy, global_step), so the benchmark
    times the trainer's own method rather than a copy of it."""

    policy: Any
    config: ml_collections.ConfigDict
    global_step: int = 0


class TrainStepInputs:
    """One micro-batch of the training step: clean latents, condition, times and advantages."""

    def __init__(self, policy, cond, generator: torch.Generator) -> None:
        batch = len(cond)
        channels = policy.transformer.config.in_channels
        self.x0 = torch.randn(batch, policy.image_seq_len, channels, generator=generator).to(policy.device)
        self.t = torch.rand(batch, generator=generator).clamp(0.05, 0.95).to(policy.device)
        self.cond = cond
        self.rows = torch.arange(batch)
        advantages = torch.linspace(-1.0, 1.0, batch)
        self.stats = {"advantages": advantages, "mask": torch.ones(batch, dtype=torch.bool)}
        eps = torch.randn(self.x0.shape, generator=generator).to(policy.device)
        t_b = self.t.view(-1, 1, 1)
        self.x_t = (1 - t_b) * self.x0 + t_b * eps


def framework_step(host: TimestepHost, inputs: TrainStepInputs) -> None:
    """The framework's timestep: ``Trainer._train_timestep`` itself."""
    from edit_r1.trainer import Trainer

    Trainer._train_timestep(host, inputs.x0, inputs.cond, inputs.t, inputs.stats, inputs.rows, 1)


def padded_framework_step(host: TimestepHost, inputs: TrainStepInputs) -> None:
    """The framework's timestep with the text padding kept: the fused forward's gain alone."""
    with untrimmed_text(host.policy):
        framework_step(host, inputs)


def padded_ratio(medians: dict[str, float]) -> dict[str, float]:
    if "framework_padded" not in medians:
        return {}
    return {"framework_padded_vs_original": medians["framework_padded"] / medians["original"]}


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


def original_step(host: TimestepHost, inputs: TrainStepInputs) -> None:
    """The original release's timestep: three separate forwards (old, trained, reference)."""
    from edit_r1.algo import nft_loss

    policy, config = host.policy, host.config
    x0, t, cond = inputs.x0, inputs.t, inputs.cond
    eps = torch.randn_like(x0)
    t_b = t.view(-1, 1, 1)
    x_t = (1 - t_b) * x0 + t_b * eps
    with untrimmed_text(policy):
        v_old = policy.velocity(x_t, t, cond, adapter="old")
        v = policy.velocity(x_t, t, cond, adapter="default")
        v_ref = policy.velocity(x_t, t, cond, adapter="ref")
    loss, info = nft_loss(
        v, v_old, v_ref, x_t, x0, t,
        inputs.stats["advantages"].to(x0.device), inputs.stats["mask"].to(x0.device),
        nft_beta=config.beta, kl_beta=config.train.beta,
        adv_clip_max=config.train.adv_clip_max, adv_mode=config.train.adv_mode,
    )  # fmt: skip
    loss.backward()
    _ = {key: float(value) for key, value in info.items()}  # the original logged these too


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


def run_train_step(settings: Settings) -> dict[str, Any]:
    """framework vs original (three forwards) vs bare passes; medians, ratios, FLOPs, memory."""
    device = check_device(settings.device)
    policy, cond = build_policy(settings)
    if settings.compile:
        policy.compile()
    host = TimestepHost(policy=policy, config=ml_collections.ConfigDict(LOSS_CONFIG))
    inputs = TrainStepInputs(policy, cond, torch.Generator().manual_seed(1))
    bare = BarePasses(policy, inputs)
    candidates = {
        "framework": lambda: framework_step(host, inputs),
        "original": lambda: original_step(host, inputs),
        "bare": bare,
    }
    if hasattr(policy, "trim_text_padding"):  # what the fused forward alone gains (Qwen trims text)
        candidates["framework_padded"] = lambda: padded_framework_step(host, inputs)
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
        "ratios": {
            "framework_vs_original": medians["framework"] / medians["original"],
            "framework_vs_bare": medians["framework"] / medians["bare"],
            "speedup_vs_original": medians["original"] / medians["framework"],
            **padded_ratio(medians),
        },
        "framework_overhead": medians["framework"] / medians["bare"] - 1.0,
        "model_tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / medians["framework"] / 1e12,
        **memory,
    }
    peak = peak_tflops(device)
    if peak is not None:
        result["mfu"] = result["achieved_tflops"] / peak
    return result


def describe(settings: Settings, **extra: Any) -> dict[str, Any]:
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}
    out["concurrency"] = list(settings.concurrency)
    out["resolution"] = settings.image_size()
    out["torch"] = torch.__version__
    return {**out, **extra}


# ----------------------------------------------------------------------------------- rollout
class CallCounter:
    """Counts forward calls and rows of the policy's condition encoders (text/vision encoders)."""

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
        cond = type_cat(
            [
                policy.encode_condition([text], [image])
                for text, image in zip(instructions, images, strict=True)
            ]
        )
    z = policy.initial_noise(len(cond))
    with torch.no_grad():
        result = sample(
            lambda x, s: policy.velocity(x, s, cond, adapter="old"),
            z, sigmas.to(z.device), solver="dpm2", deterministic=True, noise_level=0.7,
        )  # fmt: skip
        policy.decode(result.latents)


def type_cat(conditions: list):
    return type(conditions[0]).cat(conditions)


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
    calls: dict[str, int] = {}
    for name, per_group in (("per_group", True), ("per_sample", False)):
        counter = CallCounter(policy)
        rollout_group(policy, instructions, images, per_group, sigmas)
        calls[name] = counter.calls
        counter.close()
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


# ----------------------------------------------------------------------------------- reward
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def reward_server(judge: Path, max_batch_size: int, device: str, log: Path) -> Iterator[str]:
    """A real reward server subprocess (transformers backend) on a free loopback port; yields host:port."""
    port = free_port()
    command = [
        sys.executable, str(REPO_ROOT / "reward_server" / "reward_server.py"),
        "--backend", "transformers", "--model", str(judge), "--host", "127.0.0.1", "--port", str(port),
        "--max-batch-size", str(max_batch_size), "--device", device, "--threads", "64",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        try:
            wait_for_health(f"http://127.0.0.1:{port}", process, log)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(
                f"reward server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise BenchmarkError(f"reward server {url} not healthy after {timeout_s:.0f} s; log: {log}")


def reward_samples(count: int, size: int) -> list:
    """Edited/source image pairs like a rollout batch (distinct colours, one instruction each)."""
    from PIL import Image

    from edit_r1.rewards import RewardSample

    source = Image.new("RGB", (size, size), (40, 80, 200))
    return [
        RewardSample(
            Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, 120)),
            source,
            "make the background orange",
            "only the background changes",
            {},
        )
        for i in range(count)
    ]


def drive_clients(server: str, clients: int, requests_per_client: int, images_per_request: int, size: int):
    """``clients`` threads, each a trainer rank scoring ``requests_per_client`` rollout batches of
    ``images_per_request`` images through ``RewardClient``; returns (wall s, request latencies, NaNs)."""
    from edit_r1.rewards.client import RewardClient

    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_loop() -> None:
        client = RewardClient(server)
        batch = reward_samples(images_per_request, size)
        barrier.wait()
        for _ in range(requests_per_client):
            start = time.perf_counter()
            scores = client.score(batch)
            with lock:
                latencies.append(time.perf_counter() - start)
                failures[0] += int((scores != scores).sum())
        client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, failures[0]


def engine_batch_gain(judge: Path, device: str, settings: Settings) -> dict[str, float]:
    """The judge engine alone, in process: seconds per item of one engine call on a prepared batch
    of ``server_batch_size`` items vs one call per prepared item (processor work excluded, as the
    server's pipeline overlaps it). Their ratio bounds what batching can gain end to end."""
    from reward_server.backends import BackendOptions, build_backend
    from reward_server.images import JudgeItem
    from reward_server.protocol import RawItem

    backend = build_backend("transformers", BackendOptions(model=str(judge), device=device))
    try:
        items = [
            JudgeItem(RawItem(b"", b"", s.instruction, s.requirement), s.edited_image, s.source_image)
            for s in reward_samples(settings.server_batch_size, 64)
        ]
        batch = backend.prepare_batch(items)
        singles = [([item], backend.prepare_batch([item])) for item in items]
        seconds = time_side_by_side(
            {
                "batched": lambda: backend.score_prepared(items, batch),
                "single": lambda: [backend.score_prepared(*single) for single in singles],
            },
            settings.repeats,
            settings.warmup,
            torch.device(device),
        )
    finally:
        backend.close()
    per_item = {mode: median(values) / len(items) for mode, values in seconds.items()}
    return {
        "batched_s_per_item": per_item["batched"],
        "single_s_per_item": per_item["single"],
        "engine_batch_gain": per_item["single"] / per_item["batched"],
    }


def run_reward(settings: Settings) -> dict[str, Any]:
    """Dynamic batching vs one image per engine call, at each concurrency, with the tiny judge."""
    kit = resolve_kit(settings)
    device = "cuda" if check_device(settings.device).type == "cuda" else "cpu"
    engine = engine_batch_gain(kit / "judge_qwen2_5_vl", device, settings)
    modes = {"batched": settings.server_batch_size, "single": 1}
    table: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="edit_r1_bench_reward_") as tmp, contextlib.ExitStack() as stack:
        servers = {
            mode: stack.enter_context(
                reward_server(kit / "judge_qwen2_5_vl", batch, device, Path(tmp) / f"{mode}.log")
            )
            for mode, batch in modes.items()
        }
        for server in servers.values():  # warm-up: first engine calls allocate
            drive_clients(server, 1, 1, settings.images_per_request, 64)
        for clients in settings.concurrency:
            runs: dict[str, list[tuple[float, list[float], int]]] = {mode: [] for mode in modes}
            for _ in range(settings.repeats):
                for mode, server in servers.items():
                    runs[mode].append(
                        drive_clients(
                            server, clients, settings.requests_per_client, settings.images_per_request, 64
                        )
                    )
            images = clients * settings.requests_per_client * settings.images_per_request
            for mode, results in runs.items():
                latencies = [value for _, lat, _ in results for value in lat]
                table.setdefault(mode, {})[str(clients)] = {
                    "images_per_s": median([images / wall for wall, _, _ in results]),
                    "p50_latency_s": percentile(latencies, 50),
                    "p99_latency_s": percentile(latencies, 99),
                    "failed_items": float(sum(f for _, _, f in results)),
                }
    ratios = {
        f"batched_vs_single_throughput_c{c}": table["batched"][str(c)]["images_per_s"]
        / table["single"][str(c)]["images_per_s"]
        for c in settings.concurrency
    }
    high = [c for c in settings.concurrency if c >= 8] or list(settings.concurrency)
    ratios["batched_vs_single_throughput"] = min(ratios[f"batched_vs_single_throughput_c{c}"] for c in high)
    ratios["engine_batch_gain"] = engine.pop("engine_batch_gain")
    return {
        "scenario": "reward",
        "settings": describe(settings, size="tiny"),
        "results": table,
        "engine": engine,
        "ratios": ratios,
    }


# ----------------------------------------------------------------------------------- epoch
EPOCH_PHASES = ("sampling", "scoring_wait", "training", "sync")


def epoch_summary(metrics_path: Path) -> dict[str, Any]:
    """Per-epoch phase times from a run's metrics.jsonl and the median split over its epochs
    (the first epoch too, unless there are several: it carries one-off warm-up costs)."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    epochs = [row for row in rows if any(f"time/{phase}" in row for phase in EPOCH_PHASES)]
    if not epochs:
        raise BenchmarkError(f"{metrics_path}: no epoch with time/* metrics")
    steady = epochs[1:] if len(epochs) > 1 else epochs
    per_epoch = [
        {phase: float(row.get(f"time/{phase}", 0.0)) for phase in (*EPOCH_PHASES, "evaluation")}
        for row in epochs
    ]
    split = {
        phase: median([float(row.get(f"time/{phase}", 0.0)) for row in steady]) for phase in EPOCH_PHASES
    }
    total = sum(split.values())
    return {
        "per_epoch_s": per_epoch,
        "median_split_s": split,
        "ratios": {
            f"{phase}_fraction": value / total if total > 0 else 0.0 for phase, value in split.items()
        },
    }


def run_epoch(settings: Settings) -> dict[str, Any]:
    """``settings.epochs`` tiny epochs with torchrun and ``settings.nproc`` CPU processes."""
    kit = resolve_kit(settings)
    with tempfile.TemporaryDirectory(prefix="edit_r1_bench_epoch_") as tmp:
        data = Path(tmp) / "data"
        from edit_r1.data.toy import write_toy_dataset

        write_toy_dataset(data, num_train=16, num_test=4)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={settings.nproc}",
            str(REPO_ROOT / "scripts" / "train_nft_qwen_image_edit.py"),
            "--config", str(REPO_ROOT / "config" / "qwen_image_edit_nft.py") + ":tiny",
            f"--config.logdir={tmp}/runs", f"--config.num_epochs={settings.epochs}",
            f"--config.pretrained.model={kit / KIT_FOLDER['qwen_image_edit']}", f"--config.dataset={data}",
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchmarkError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
        metrics = sorted(Path(tmp, "runs").rglob("metrics.jsonl"))
        if not metrics:
            raise BenchmarkError(f"no metrics.jsonl under {tmp}/runs")
        summary = epoch_summary(metrics[0])
    return {"scenario": "epoch", "settings": describe(settings, size="tiny"), "wall_s": wall, **summary}


SCENARIOS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "train-step": run_train_step,
    "rollout": run_rollout,
    "reward": run_reward,
    "epoch": run_epoch,
}


def run_scenario(name: str, settings: Settings) -> dict[str, Any]:
    """Runs scenario ``name`` (one of ``SCENARIOS``) and returns its JSON-ready result."""
    if name not in SCENARIOS:
        raise BenchmarkError(f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)}")
    check_device(settings.device)
    torch.manual_seed(0)
    return SCENARIOS[name](settings)


# ----------------------------------------------------------------------------------- report
def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a scenario result (medians, throughput, ratios)."""
    lines = [f"== {result['scenario']} =="]
    for key in ("median_s", "samples_per_s", "encoder_calls", "median_split_s", "engine"):
        if key in result:
            lines.append(f"{key}:")
            lines.extend(f"  {name:<14} {value:>12.4g}" for name, value in result[key].items())
    if "results" in result:
        lines.append(f"  {'mode':<8} {'clients':>7} {'images/s':>10} {'p50 s':>8} {'p99 s':>8}")
        for mode, by_clients in result["results"].items():
            for clients, row in by_clients.items():
                lines.append(
                    f"  {mode:<8} {clients:>7} {row['images_per_s']:>10.2f} "
                    f"{row['p50_latency_s']:>8.3f} {row['p99_latency_s']:>8.3f}"
                )
    extras = ("framework_overhead", "achieved_tflops", "mfu", "wall_s")
    lines.extend(f"{key}: {result[key]:.4g}" for key in extras if key in result)
    lines.extend(f"{key}: {value:.3f}" for key, value in result.items() if key.startswith("peak_memory"))
    lines.append("ratios:")
    lines.extend(f"  {name:<36} {value:.3f}" for name, value in result["ratios"].items())
    return "\n".join(lines)
