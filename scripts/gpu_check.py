"""One-shot GPU check at real size (random weights, bf16): what ``scripts/gpu_check.sh`` runs.

For each family (Qwen-Image-Edit 20B, FLUX.1-Kontext 12B):

* the train-step benchmark (``scripts/benchmark.py train-step --size full``, gradient
  checkpointing, the best attention backend that runs here) without and with
  ``compile_transformer``: median step time, achieved TFLOP/s and MFU (FLOPs counted by torch's
  ``FlopCounterMode``, peak bf16 TFLOP/s of the named GPU), peak memory;
* rollout samples/s: the shipped rollout (``sample.num_steps`` dpm2 steps, old-policy velocity)
  of a batch of synthetic conditions of the real shapes, transformer only.

Once per device, first: ``fsdp_dcp``, FSDP2 and DCP in a one-rank process group (NCCL on CUDA):
a stack of blocks sharded with ``fully_shard`` (bf16 parameters, float32 gradient reduction), one
optimizer step, saved with DCP and loaded into a second sharded copy through the project's
``SafeDCPReader``; the two copies must be equal. The torch features the stages use are probed
first (``torch_features`` in the JSON); a stage whose feature this torch lacks is recorded as
skipped, naming it, and the others run.

Results go to ``OUT/gpu_check.json``, rewritten after every stage, so a stage that runs out of the
time budget leaves the earlier ones. Without CUDA it prints one line and exits 2; a package that
cannot be imported is one line and exit 2 too; a stage that failed makes the exit status 1.

    python scripts/gpu_check.py --out results/          # on a GPU machine
    python scripts/gpu_check.py --out /tmp/x --device cpu --size small --repeats 1 --stages rollout  # on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import torch
except ImportError as _error:  # scripts/gpu_check.sh checks first; this covers a direct call
    print(f"gpu_check: cannot import torch ({_error}); nothing was measured", file=sys.stderr)
    sys.exit(2)

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ sits beside the installed package (it is not part of it): import it from this checkout.
sys.path.insert(0, str(REPO))

# Fastest first; the first that runs this family's attention (with a key mask where the family
# masks its text) is used.
ATTENTION_CANDIDATES = ("_flash_3", "_native_cudnn", "flash", "_native_flash", "_native_efficient")

# What each stage uses of torch beyond its core: (module, names). Probed before the stages run, so
# that a torch without one (torch 2.11 on the lent machine, 2.13 pinned here) skips only the stages
# that need it, saying so.
TORCH_FEATURES = {
    "fsdp2": ("torch.distributed.fsdp", ("fully_shard", "MixedPrecisionPolicy", "CPUOffloadPolicy")),
    "dcp": ("torch.distributed.checkpoint", ("save", "load", "FileSystemWriter", "FileSystemReader")),
    "dtensor": ("torch.distributed.tensor", ("DTensor",)),
    "flop_counter": ("torch.utils.flop_counter", ("FlopCounterMode",)),
    "sdpa_backends": ("torch.nn.attention", ("SDPBackend", "sdpa_kernel")),
    "compile": ("torch", ("compile",)),
}
STAGE_NEEDS = {
    "fsdp_dcp": ("fsdp2", "dcp", "dtensor"),
    "train_step": ("flop_counter",),
    "train_step_compiled": ("flop_counter", "compile"),
    "rollout": (),
}
# A module that cannot be imported (a missing package) ends the check with one line and status 2.
REQUIRED_MODULES = ("numpy", "safetensors", "transformers", "diffusers", "peft", "ml_collections")


def require_modules(names=REQUIRED_MODULES) -> None:
    """Import each module; the first that fails ends the check with one line naming it (status 2)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # ImportError, or a package broken against this torch
            print(f"gpu_check: cannot import {name} ({type(error).__name__}: {error}); nothing was measured",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)


def torch_features(features=TORCH_FEATURES) -> dict[str, str | None]:
    """``{feature: None}`` when this torch has every name of it, else the first missing one."""
    found: dict[str, str | None] = {}
    for feature, (module_name, names) in features.items():
        try:
            module = importlib.import_module(module_name)
            absent = [name for name in names if not hasattr(module, name)]
        except ImportError:
            absent = [""]
        found[feature] = (
            None
            if not absent
            else f"torch {torch.__version__} lacks {module_name}{'.' if absent[0] else ''}{absent[0]}"
        )
    return found


def missing_for(stage: str, features: dict[str, str | None]) -> str | None:
    """Why ``stage`` cannot run with this torch (the first feature it needs that is missing), or None."""
    reasons = [features[name] for name in STAGE_NEEDS.get(stage, ()) if features.get(name)]
    return reasons[0] if reasons else None


def no_cuda_exit(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was measured",
            file=sys.stderr,
        )
        sys.exit(2)


def best_attention_backend(
    family: str, device: torch.device, dtype: torch.dtype, tried: dict[str, str] | None = None
) -> str | None:
    """The first candidate whose kernel runs a real-size attention call here (None = diffusers'
    default); ``tried`` gets each candidate tried and "ok" or why it did not run."""
    if device.type != "cuda":
        return None
    tried = {} if tried is None else tried
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    from edit_r1.models.registry import policy_class

    q = torch.randn(1, 64, 24, 128, device=device, dtype=dtype)
    masked = policy_class(family).attention_key_mask
    mask = torch.ones(1, 1, 1, 64, device=device, dtype=torch.bool) if masked else None
    for name in ATTENTION_CANDIDATES:
        try:
            with torch.no_grad():
                dispatch_attention_fn(q, q, q, attn_mask=mask, backend=AttentionBackendName(name))
            tried[name] = "ok"
            return name
        except Exception as error:  # missing package, unsupported mask/arch: try the next kernel
            tried[name] = f"{type(error).__name__}: {error}"[:300]
            continue
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fsdp_dcp_roundtrip(device: torch.device, width: int = 1024, blocks: int = 4) -> dict[str, Any]:
    """FSDP2 + DCP in a one-rank process group (NCCL on CUDA, gloo on CPU): ``blocks`` MLP blocks
    sharded with ``fully_shard`` (bf16 compute on CUDA, float32 reduction), one AdamW step, a DCP
    save, a load into a second sharded copy (through :class:`edit_r1.checkpoint.SafeDCPReader`);
    ``max_abs_difference`` between the copies must be 0."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from edit_r1.checkpoint import SafeDCPReader

    started_group = not dist.is_initialized()
    if started_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh(device.type, (1,))
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, reduce_dtype=torch.float32
        )

        def build(seed: int) -> torch.nn.Module:
            torch.manual_seed(seed)
            model = torch.nn.Sequential(
                *[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(blocks)]
            ).to(device)
            for block in model:
                fully_shard(block, mesh=mesh, mp_policy=policy)
            return fully_shard(model, mesh=mesh, mp_policy=policy)

        model = build(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.randn(8, width, device=device)).float().pow(2).mean().backward()
        optimizer.step()
        with tempfile.TemporaryDirectory() as folder:
            dcp.save(model.state_dict(), checkpoint_id=folder)
            copy = build(1)
            state = copy.state_dict()
            dcp.load(state, storage_reader=SafeDCPReader(folder))
            copy.load_state_dict(state)
        pairs = zip(model.state_dict().values(), copy.state_dict().values(), strict=True)
        difference = max(float((a.full_tensor() - b.full_tensor()).abs().max()) for a, b in pairs)
        result = {"backend": dist.get_backend(), "sharded_parameters": sum(1 for _ in model.parameters()),
                  "max_abs_difference": difference}  # fmt: skip
        if difference != 0.0:
            raise RuntimeError(f"the DCP round trip changed the weights (max |difference| {difference})")
        return result
    finally:
        if started_group:
            dist.destroy_process_group()


def ensure_kit(kit: Path) -> None:
    """The tiny kit gives the random policies their scheduler and (unused) text encoders."""
    if not kit.is_dir() or not any(kit.iterdir()):
        command = [sys.executable, "-m", "edit_r1.models.tiny", "build", "--out", str(kit)]
        if subprocess.run(command, cwd=REPO).returncode != 0:
            print(f"gpu_check: building the tiny kit into {kit} failed (its error is above); nothing was measured",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)


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


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--no-fsdp-dcp", action="store_true", help="skip the FSDP2 + DCP round trip")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    no_cuda_exit(args.device)
    require_modules()
    start = time.monotonic()
    ensure_kit(args.kit)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch_features()
    announce_missing(features)
    report = report_header(device, dtype, args.size, features)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_check.json"

    def record(where: dict[str, Any], name: str, run) -> None:
        """Run one stage into ``where[name]`` (or record why not) and rewrite the JSON."""
        reason = missing_for(name, features)
        if reason:
            where[name] = {"skipped": reason}
        elif time.monotonic() - start > args.budget_s:
            where[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            began = time.monotonic()
            try:
                where[name] = run()
            except Exception as error:  # one failing stage must not hide the others' numbers
                where[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            where[name]["wall_s"] = time.monotonic() - began
            if device.type == "cuda":
                torch.cuda.empty_cache()
        path.write_text(json.dumps(report, indent=2) + "\n")

    if not args.no_fsdp_dcp:
        record(report, "fsdp_dcp", lambda: fsdp_dcp_roundtrip(device))
    from edit_r1.models.registry import family_names

    for family in args.families.split(",") if args.families else family_names():
        tried: dict[str, str] = {}
        backend = best_attention_backend(family, device, dtype, tried)
        entry: dict[str, Any] = {"attention_backend": backend or "default", "attention_backends_tried": tried}
        report["families"][family] = entry
        for name, run in stages(args, family, backend):
            record(entry, name, run)
    report["wall_s"] = time.monotonic() - start
    path.write_text(json.dumps(report, indent=2) + "\n")
    failed = failed_stages(report)
    print(f"gpu_check: wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def announce_missing(features: dict[str, str | None]) -> None:
    """One line per torch feature this torch lacks, naming the stages it skips."""
    for reason in sorted({reason for reason in features.values() if reason}):
        needing = [stage for stage in STAGE_NEEDS if missing_for(stage, features) == reason]
        print(f"gpu_check: {reason}: skipping {', '.join(needing) or 'nothing'}; the other stages run")


def report_header(device: torch.device, dtype: torch.dtype, size: str, features: dict) -> dict[str, Any]:
    """The JSON's fixed part: device, torch (and CUDA) version, size, dtype, the features probed."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "size": size, "dtype": str(dtype),
        "torch_features": {name: reason or "ok" for name, reason in features.items()}, "families": {},
    }  # fmt: skip


def failed_stages(report: dict[str, Any]) -> list[str]:
    """``family/stage`` (or ``stage``) of every stage that recorded an error."""
    failed = [name for name, value in report.items() if isinstance(value, dict) and "error" in value]
    for family, entry in report["families"].items():
        failed += [
            f"{family}/{name}"
            for name, value in entry.items()
            if isinstance(value, dict) and "error" in value
        ]
    return failed


if __name__ == "__main__":
    sys.exit(main())
