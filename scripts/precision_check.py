"""How far two precision choices move a rollout and a velocity on the tiny kit (CPU, bf16 autocast).

    python scripts/precision_check.py [--kit .tiny/kit] [--steps 6]

1. **Rollout latents.** Final latents of a 6-step dpm2 rollout of the tiny Kontext and Qwen policies
   (bf16 compute) with the solver's states kept in float32 (ours) vs in bf16 (the original), each
   against a float32-compute rollout from the same noise: relative L2 error ``|x - x_ref| / |x_ref|``.
2. **Kontext transformer weights.** One velocity of the tiny Kontext transformer with bf16 weights
   (ours) vs float32 weights under bf16 autocast (the original), against float32 compute.

Prints one JSON object; ``docs/upstream-differences.md`` quotes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from edit_r1.models.registry import load_policy  # noqa: E402
from edit_r1.sampling import sample, sigma_schedule  # noqa: E402

FOLDERS = {"kontext": "flux_kontext", "qwen_image_edit": "qwen_image_edit_plus"}


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def build(kit: Path, family: str, dtype: torch.dtype):
    options = {"condition_area": 64 * 64} if family == "qwen_image_edit" else {}
    torch.manual_seed(0)
    return load_policy(family, kit / FOLDERS[family], device="cpu", dtype=dtype, resolution=64, **options)


def rollout(policy, cond, noise: torch.Tensor, steps: int) -> torch.Tensor:
    sigmas = sigma_schedule(steps, policy.image_seq_len, policy.scheduler_config)
    result = sample(
        lambda z, s: policy.velocity(z, s, cond, adapter="default"),
        noise,
        sigmas,
        solver="dpm2",
        deterministic=True,
        noise_level=0.0,
    )
    return result.latents


def rollout_errors(kit: Path, family: str, steps: int) -> dict[str, float]:
    reference, low = build(kit, family, torch.float32), build(kit, family, torch.bfloat16)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    cond32 = reference.encode_condition(["make the square blue"], [image])
    cond16 = low.encode_condition(["make the square blue"], [image])
    noise = reference.initial_noise(1, generator=torch.Generator().manual_seed(1)).float()
    exact = rollout(reference, cond32, noise, steps)
    return {
        "float32_states": relative_error(rollout(low, cond16, noise, steps), exact),
        "bf16_states": relative_error(rollout(low, cond16, noise.bfloat16(), steps), exact),
    }


def kontext_weight_errors(kit: Path) -> dict[str, float]:
    reference, low = build(kit, "kontext", torch.float32), build(kit, "kontext", torch.bfloat16)
    image = Image.new("RGB", (64, 64), (30, 160, 60))
    cond = reference.encode_condition(["turn the square red"], [image])
    z = reference.initial_noise(1, generator=torch.Generator().manual_seed(2)).float()
    exact = reference.velocity(z, 0.7, cond)
    bf16_weights = low.velocity(z, 0.7, cond.to(dtype=torch.bfloat16))
    low.transformer.float()  # the original: float32 weights, bf16 matmuls under autocast
    fp32_weights = low.velocity(z, 0.7, cond.to(dtype=torch.bfloat16))
    return {
        "bf16_weights": relative_error(bf16_weights, exact),
        "float32_weights_autocast": relative_error(fp32_weights, exact),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kit", type=Path, default=Path(".tiny/kit"))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    result = {
        "rollout_relative_error": {
            family: rollout_errors(args.kit, family, args.steps) for family in FOLDERS
        },
        "kontext_velocity_relative_error": kontext_weight_errors(args.kit),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
