"""One-shot GPU check at real size (random weights, bf16): what ``scripts/gpu_check.sh`` runs.

For each family (Qwen-Image-Edit 20B, FLUX.1-Kontext 12B):

* the train-step benchmark (``scripts/benchmark.py train-step --size full``, gradient
  checkpointing, the best attention backend that runs here) without and with
  ``compile_transformer``: median step time, achieved TFLOP/s and MFU (FLOPs counted by torch's
  ``FlopCounterMode``, peak bf16 TFLOP/s of the named GPU), peak memory;
* rollout samples/s: the shipped rollout (``sample.num_steps`` dpm2 steps, old-policy velocity)
  of a batch of synthetic conditions of the real shapes, transformer only.

Results go to ``OUT/gpu_check.json``, rewritten after every stage, so a stage that runs out of the
time budget leaves the earlier ones. Without CUDA it prints one line and exits 2.

    python scripts/gpu_check.py --out results/          # on a GPU machine
    python scripts/gpu_check.py --out /tmp/x --device cpu --size small --repeats 1 --stages rollout  # on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ sits beside the installed package (it is not part of it): import it from this checkout.
sys.path.insert(0, str(REPO))

# Fastest first; the first that runs this family's attention (with a key mask where the family
# masks its text) is used.
ATTENTION_CANDIDATES = ("_flash_3", "_native_cudnn", "flash", "_native_flash", "_native_efficient")


def no_cuda_exit(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was measured",
            file=sys.stderr,
        )
        sys.exit(2)


def best_attention_backend(family: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """The first candidate whose kernel runs a real-size attention call here (None = diffusers' default)."""
    if device.type != "cuda":
        return None
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    from edit_r1.models.registry import policy_class

    q = torch.randn(1, 64, 24, 128, device=device, dtype=dtype)
    masked = policy_class(family).attention_key_mask
    mask = torch.ones(1, 1, 1, 64, device=device, dtype=torch.bool) if masked else None
    for name in ATTENTION_CANDIDATES:
        try:
            with torch.no_grad():
                dispatch_attention_fn(q, q, q, attn_mask=mask, backend=AttentionBackendName(name))
            return name
        except Exception:  # missing package, unsupported mask/arch: try the next kernel
            continue
    return None


def ensure_kit(kit: Path) -> None:
    """The tiny kit gives the random policies their scheduler and (unused) text encoders."""
    if not kit.is_dir() or not any(kit.iterdir()):
        subprocess.run(
            [sys.executable, "-m", "edit_r1.models.tiny", "build", "--out", str(kit)], check=True, cwd=REPO
        )


def train_step(settings) -> dict[str, Any]:
    from benchmarks import run_scenario

    result = run_scenario("train-step", settings)
    keep = ("median_s", "model_tflop_per_step", "achieved_tflops", "mfu", "ratios")
    out = {key: result[key] for key in keep if key in result}
    out.update({key: value for key, value in result.items() if key.startswith("peak_memory_gib")})
    return out


@torch.no_grad()
def rollout_throughput(settings, batch: int) -> dict[str, Any]:
    """Samples/s of the shipped rollout (config defaults) with the transformer at ``settings.size``."""
    from benchmarks.common import median, synchronize
    from benchmarks.policies import build_policy
    from edit_r1.config import load_config
    from edit_r1.sampling import sample, sigma_schedule
    from edit_r1.settings import RolloutSettings

    rollout = RolloutSettings.from_config(load_config(str(REPO / "config" / "base.py")))
    policy, cond = build_policy(dataclasses.replace(settings, batch_size=batch))
    device = settings.torch_device
    sigmas = sigma_schedule(rollout.steps, policy.image_seq_len, policy.scheduler_config).to(device)

    def once() -> float:
        z = policy.initial_noise(batch)
        synchronize(device)
        start = time.perf_counter()
        sample(lambda x, s: policy.velocity(x, s, cond, adapter="old"), z, sigmas,
               solver=rollout.solver, deterministic=rollout.deterministic, noise_level=rollout.noise_level)  # fmt: skip
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(settings.warmup):
        once()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [once() for _ in range(settings.repeats)]
    out = {"batch": batch, "num_steps": rollout.steps, "solver": rollout.solver,
           "median_s": median(seconds), "samples_per_s": batch / median(seconds)}  # fmt: skip
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def stages(args, family: str, backend: str | None):
    from benchmarks.common import Settings

    base = Settings(device=args.device, size=args.size, family=family, kit=args.kit, repeats=args.repeats,
                    warmup=1, batch_size=args.batch_size, gradient_checkpointing=True,
                    attention_backend=backend)  # fmt: skip
    every = {
        "train_step": lambda: train_step(base),
        "train_step_compiled": lambda: train_step(dataclasses.replace(base, compile=True)),
        "rollout": lambda: rollout_throughput(base, args.rollout_batch),
    }
    for name in args.stages.split(","):
        if name not in every:
            raise SystemExit(f"gpu_check: unknown stage {name!r}; stages are {sorted(every)}")
        yield name, every[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory of gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", choices=("small", "full"))
    parser.add_argument("--families", help="comma-separated registry names (default: every family)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1, help="train-step micro-batch")
    parser.add_argument("--rollout-batch", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stages starting later are skipped")
    parser.add_argument(
        "--stages", default="train_step,train_step_compiled,rollout", help="what to run, in order"
    )
    parser.add_argument("--kit", type=Path, default=REPO / ".tiny" / "kit")
    args = parser.parse_args(argv)
    no_cuda_exit(args.device)
    start = time.monotonic()
    ensure_kit(args.kit)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "size": args.size, "dtype": str(dtype), "families": {},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_check.json"
    from edit_r1.models.registry import family_names

    for family in args.families.split(",") if args.families else family_names():
        backend = best_attention_backend(family, device, dtype)
        entry: dict[str, Any] = {"attention_backend": backend or "default"}
        report["families"][family] = entry
        for name, run in stages(args, family, backend):
            if time.monotonic() - start > args.budget_s:
                entry[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            began = time.monotonic()
            try:
                entry[name] = run()
            except Exception as error:  # one failing stage must not hide the others' numbers
                entry[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            entry[name]["wall_s"] = time.monotonic() - began
            if device.type == "cuda":
                torch.cuda.empty_cache()
            path.write_text(json.dumps(report, indent=2) + "\n")
    report["wall_s"] = time.monotonic() - start
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
