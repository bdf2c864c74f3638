"""Per-GPU memory plan of a training run at real size, without a GPU.

    python -m edit_r1.memory_plan --family qwen_image_edit --gpus 8 --mode full --resolution 512
    python -m edit_r1.memory_plan --family kontext --gpus 8 --mode lora --resolution 1024 --per-gpu-batch 2
    python -m edit_r1.memory_plan --family qwen_image_edit --gpus 8 --mode full --calibrate

The real architectures (the 20.4B Qwen-Image and 11.9B FLUX.1 transformers, Qwen2.5-VL-7B,
T5-XXL + CLIP-L, the VAEs) are built on the meta device, so parameter counts are exact and nothing
is allocated. Per rank, with ``N`` GPUs, ``P`` transformer parameters and ``L`` LoRA parameters,
as :mod:`edit_r1.parallelize` lays them out (``fsdp_transformer`` on, bf16 mixed precision):

* full weights: trained float32 master shards ``4P/N``, float32 gradients ``4P/N``, AdamW moments
  ``8P/N``, EMA ``4P/N``, the old policy (float32, it follows the master weights by decay)
  ``4P/N``, the frozen reference (bf16) ``2P/N``; ``--offload-frozen`` moves old and ref to host
  memory;
* LoRA: the frozen bf16 base ``2P/N`` (``2P`` without ``fsdp_transformer``) and ``4L`` each for the
  trained adapter, its gradient, EMA and old adapter, ``8L`` for AdamW (LoRA is small: replicated);
* FSDP working set: the bf16 all-gather of the current and the prefetched block (``2 x 2 P_block``)
  and one block's unsharded gradient (bf16 + its float32 copy for the reduce-scatter, ``6 P_block``);
* the text encoders in bf16 sharded over the ranks (``fsdp_text_encoder``), the VAE in float32;
* activations with per-block gradient checkpointing (below), and a fixed 3 GiB for the CUDA
  context, kernels' workspaces and allocator slack.

**Loading** (``loading`` in the plan): with ``fsdp_transformer`` the trainer builds the policy with
``shard_device``: each rank reads the transformer into host memory in bf16 (``2P`` of host memory
per rank), the old/ref copies are meta-device shells, and ``parallelize_policy`` moves one block at
a time to the GPU, casts it to float32 and keeps only its shard, then allocates this rank's old/ref
shards and copies them from the trained shards. The device peak while loading is the sharded
weights plus one block in bf16 and in float32 (``6 P_block``); the text encoders
(``fsdp_text_encoder``) wait on the host as well and reach the device as shards. It stays below the
training peak; without
``shard_device`` every rank would first hold the trained transformer and both copies whole on the
GPU, trained and old cast to float32 (``4P + 4P + 2P``, 190 GiB for Qwen-Image).

**Activation estimate.** With checkpointing, training keeps each block's input (image + text
tokens x hidden width, bf16) for all ``n`` blocks, and in backward one block at a time is recomputed
with all of its saved activations plus the gradient of its input and output. The per-token count of
saved values inside one block, ``k`` (in units of the hidden width), is measured by running the
CPU-sized member of the same architecture (``small`` in the benchmark: same block code, width 256)
on real tensors under ``torch.autograd.graph.saved_tensors_hooks`` and dividing the saved bytes by
``tokens x width x bytes``; CPU attention saves its output and log-sum-exp, not the ``S x S``
probabilities, as the GPU's fused kernels do. Then, per rank::

    activations = B x bytes x width x S x (n + k_max + 2) + root-level saved tensors (measured, scaled)

``--calibrate`` checks the formula on the CPU: it runs forward + backward of the small model with
gradient checkpointing at a larger sequence and compares the formula with the peak of the bytes of
all live tensors that the autograd graph and the backward hold (tracked with a dispatch mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edit_r1.models.registry import POLICY_FAMILIES, policy_class
from edit_r1.parallelize import default_shard_units

GIB = 1024**3
OVERHEAD_BYTES = 3 * GIB  # CUDA context, cuBLAS/attention workspaces, allocator fragmentation
FAMILIES = tuple(POLICY_FAMILIES)


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """One run to plan (the config keys it mirrors in brackets)."""

    family: str
    gpus: int
    mode: str  # full | lora (use_lora)
    resolution: int = 512  # (resolution) target and reference images
    per_gpu_batch: int = 1  # rows of one training forward (sample.train_batch_size)
    fsdp_transformer: bool = True  # (fsdp_transformer)
    fsdp_text_encoder: bool = True  # (fsdp_text_encoder)
    offload_frozen: bool = False  # (fsdp_offload_frozen)
    lora_rank: int = 32  # (train.lora_rank)
    gpu_gib: float = 80.0


# ----------------------------------------------------------------------------- architectures


def transformer_config(family: str, size: str) -> dict[str, Any]:
    """Constructor arguments of the family's transformer at benchmark ``size`` ("full" = real)."""
    return policy_class(family).benchmark_architectures[size]


def build_transformer(family: str, size: str, device: str = "meta") -> nn.Module:
    facts = policy_class(family)
    with torch.device(device):
        return facts.transformer_class(**transformer_config(family, size))


def build_text_encoders(family: str) -> dict[str, nn.Module]:
    return policy_class(family).meta_text_encoders()


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_parameter_count(transformer: nn.Module, rank: int) -> int:
    """``r (in + out)`` for every linear layer the default LoRA targets match (both streams)."""
    from edit_r1.models.lora import DEFAULT_TARGET_MODULES

    total = 0
    for name, module in transformer.named_modules():
        if isinstance(module, nn.Linear) and any(name.endswith(t) for t in DEFAULT_TARGET_MODULES):
            total += rank * (module.in_features + module.out_features)
    return total


def largest_block(transformer: nn.Module) -> int:
    return max(count(unit) for unit in default_shard_units(transformer))


def image_tokens(family: str, resolution: int) -> int:
    """Target + reference-image tokens: each is (resolution / 16)^2 (8x VAE, 2x2 packing)."""
    return 2 * (resolution // 16) ** 2


# ----------------------------------------------------------------------------- activations


def measure_saved_per_token(family: str, grid: int = 8, text: int = 32, batch: int = 1) -> dict[str, float]:
    """Saved-for-backward values per token of each block type and of the root (outside the blocks),
    in units of the hidden width, measured on the CPU-sized model without checkpointing."""
    torch.manual_seed(0)
    model = build_transformer(family, "small", device="cpu")
    width = model.config.num_attention_heads * model.config.attention_head_dim
    tokens = batch * (2 * grid * grid + text)
    current: list[str] = ["root"]
    saved: dict[str, list[int]] = {}
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}  # weights are not activations

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved.setdefault(current[-1], [0])[-1] += tensor.untyped_storage().nbytes()
        return tensor

    def enter(module: nn.Module, *_: Any) -> None:
        current.append(type(module).__name__)
        saved.setdefault(current[-1], []).append(0)

    def leave(module: nn.Module, *_: Any) -> None:
        current.pop()

    handles = []
    for unit in default_shard_units(model):
        handles += [unit.register_forward_pre_hook(enter), unit.register_forward_hook(leave)]
    saved["root"] = [0]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**policy_class(family).transformer_call(model, batch, grid, text))
    for handle in handles:
        handle.remove()
    per_value = tokens * width * 4  # float32 on the CPU
    return {name: max(values) / per_value for name, values in saved.items()}


def activation_bytes(
    family: str, resolution: int, batch: int, k: dict[str, float], blocks: int
) -> dict[str, float]:
    """The formula of the module docstring, in bf16 (2 bytes)."""
    config = transformer_config(family, "full")
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = batch * (image_tokens(family, resolution) + policy_class(family).benchmark_text_tokens["full"])
    k_block = max(v for name, v in k.items() if name != "root")
    per_value = tokens * width * 2
    return {
        "checkpointed_block_inputs": blocks * per_value,
        "one_block_recomputed": (k_block + 2) * per_value,
        "root": k.get("root", 0.0) * per_value,
    }


# ----------------------------------------------------------------------------- the plan


def plan(settings: PlanSettings, k: dict[str, float] | None = None) -> dict[str, Any]:
    """Bytes per rank of every component (see the module docstring) and their sum."""
    if settings.family not in FAMILIES or settings.mode not in ("full", "lora") or settings.gpus < 1:
        raise ValueError(f"bad settings {settings}: family in {FAMILIES}, mode full|lora, gpus >= 1")
    transformer = build_transformer(settings.family, "full")
    p, n = count(transformer), settings.gpus
    shard = n if settings.fsdp_transformer else 1
    rows: dict[str, float] = {}
    if settings.mode == "full":
        if not settings.fsdp_transformer and n > 1:
            raise ValueError("full-weight training at real size needs fsdp_transformer")
        rows.update(
            params_fp32=4 * p / shard, grads_fp32=4 * p / shard, adamw=8 * p / shard, ema=4 * p / shard
        )
        frozen = 0 if settings.offload_frozen else 1
        rows.update(old_fp32=frozen * 4 * p / shard, ref_bf16=frozen * 2 * p / shard)
        lora = 0
    else:
        lora = lora_parameter_count(transformer, settings.lora_rank)
        rows.update(base_bf16=2 * p / shard, lora_params=4 * lora, lora_grads=4 * lora, adamw=8 * lora)
        rows.update(ema=4 * lora, old_adapter=4 * lora)
    if settings.fsdp_transformer and n > 1:
        rows["fsdp_working_set"] = largest_block(transformer) * (2 * 2 + 6)
    encoders = build_text_encoders(settings.family)
    encoder_params = sum(count(m) for m in encoders.values())
    rows["text_encoders_bf16"] = 2 * encoder_params / (n if settings.fsdp_text_encoder else 1)
    rows["vae_fp32"] = 4 * count(policy_class(settings.family).meta_vae())
    k = k or measure_saved_per_token(settings.family)
    blocks = len(default_shard_units(transformer))
    act = activation_bytes(settings.family, settings.resolution, settings.per_gpu_batch, k, blocks)
    rows["activations"] = sum(act.values())
    rows["overhead"] = OVERHEAD_BYTES
    total = sum(rows.values())
    loading = loading_bytes(settings, rows, p, largest_block(transformer))
    return {
        "settings": dataclasses.asdict(settings),
        "transformer_params": p,
        "lora_params": lora,
        "text_encoder_params": {name: count(m) for name, m in encoders.items()},
        "blocks": blocks,
        "saved_per_token": k,
        "activation_detail_gib": {key: value / GIB for key, value in act.items()},
        "per_rank_gib": {key: value / GIB for key, value in rows.items()},
        "total_gib": total / GIB,
        # Whichever is larger, loading or training, must fit.
        "fits": max(total, loading["device_peak"]) / GIB <= settings.gpu_gib,
        "loading_gib": {key: value / GIB for key, value in loading.items()},
    }


def loading_bytes(settings: PlanSettings, rows: dict[str, float], p: int, block: int) -> dict[str, float]:
    """Per rank while the policy is built and sharded (module docstring, "Loading"): host bytes of
    the transformer and the sharded text encoders read in bf16, and the device peak (sharded
    weights and encoders, one block cast in flight, the VAE). ``unsharded_build`` is what a build with whole copies would put on the
    device first (float32 trained and old, bf16 ref; the bf16 base alone in LoRA mode)."""
    weights = ("params_fp32", "old_fp32", "ref_bf16", "base_bf16", "lora_params", "old_adapter")
    sharded = settings.fsdp_transformer and settings.gpus > 1
    in_flight = 6 * block if sharded else 0
    # Sharded text encoders wait on the host too (bf16) and reach the device as shards.
    encoders_on_host = rows["text_encoders_bf16"] * settings.gpus if settings.fsdp_text_encoder else 0.0
    device = sum(rows.get(key, 0.0) for key in (*weights, "text_encoders_bf16", "vae_fp32", "overhead"))
    return {
        "host_per_rank": (2 * p if sharded else 0.0) + encoders_on_host,
        "device_peak": device + in_flight,
        "unsharded_build": (10 if settings.mode == "full" else 2) * p,
    }


def format_plan(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"{s['family']} {s['mode']} on {s['gpus']} GPUs, {s['resolution']}^2, per-GPU batch {s['per_gpu_batch']}"
        f" (transformer {result['transformer_params'] / 1e9:.2f}B params, {result['blocks']} blocks)",
    ]
    lines += [f"  {name:<20} {gib:8.2f} GiB" for name, gib in result["per_rank_gib"].items()]
    verdict = "fits" if result["fits"] else "does NOT fit"
    lines.append(
        f"  {'total per rank':<20} {result['total_gib']:8.2f} GiB ({verdict} in {s['gpu_gib']:g} GiB)"
    )
    load = result["loading_gib"]
    lines.append(
        f"  loading: device peak {load['device_peak']:.2f} GiB, host {load['host_per_rank']:.2f} GiB per rank "
        f"(a build with whole copies: {load['unsharded_build']:.2f} GiB on the device first)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- calibration


def calibrate(family: str, grid: int = 16, text: int = 64, batch: int = 2) -> dict[str, float]:
    """The activation formula against a measurement on the CPU: forward + backward of the CPU-sized
    model with gradient checkpointing, peak of activation + temporary bytes as tracked by torch's
    ``MemTracker`` (every live tensor, by role). Both in float32 here."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    k = measure_saved_per_token(family)
    torch.manual_seed(0)
    model = build_transformer(family, "small", device="cpu")
    model.enable_gradient_checkpointing()
    inputs = policy_class(family).transformer_call(model, batch, grid, text)
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        model(**inputs)[0].float().square().mean().backward()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    measured = float(peak[_MemRefType.ACT] + peak[_MemRefType.TEMP])
    width = model.config.num_attention_heads * model.config.attention_head_dim
    per_value = batch * (2 * grid * grid + text) * width * 4
    blocks = len(default_shard_units(model))
    k_block = max(v for name, v in k.items() if name != "root")
    estimate = per_value * (blocks + k_block + 2 + k["root"])
    return {"estimate_mib": estimate / 2**20, "measured_mib": measured / 2**20, "ratio": estimate / measured}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edit_r1.memory_plan", description=__doc__.split("\n")[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--mode", required=True, choices=("full", "lora"))
    parser.add_argument("--resolution", type=int, default=512, choices=(512, 1024))
    parser.add_argument("--per-gpu-batch", type=int, default=1)
    parser.add_argument(
        "--gpu-gib", type=float, default=80.0, help="memory of one GPU (80 for H100, 141 for H200)"
    )
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument(
        "--offload-frozen", action="store_true", help="old/ref shards in host memory (full mode)"
    )
    parser.add_argument("--no-fsdp-transformer", action="store_true", help="replicate the transformer (LoRA)")
    parser.add_argument(
        "--calibrate", action="store_true", help="also check the activation formula on the CPU"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.per_gpu_batch < 1:
        parser.error(f"--gpus and --per-gpu-batch must be >= 1 (got {args.gpus}, {args.per_gpu_batch})")
    settings = PlanSettings(
        family=args.family, gpus=args.gpus, mode=args.mode, resolution=args.resolution,
        per_gpu_batch=args.per_gpu_batch, fsdp_transformer=not args.no_fsdp_transformer,
        offload_frozen=args.offload_frozen, lora_rank=args.lora_rank, gpu_gib=args.gpu_gib,
    )  # fmt: skip
    try:
        result = plan(settings)
    except ValueError as error:
        parser.error(str(error))
    if args.calibrate:
        result["calibration"] = calibrate(args.family)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    if args.calibrate and not args.json:
        c = result["calibration"]
        print(f"  activation formula on the CPU model: {c['estimate_mib']:.1f} MiB estimated, "
              f"{c['measured_mib']:.1f} MiB measured (ratio {c['ratio']:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
