"""Benchmarks of Edit-R1: each scenario measures the framework's way and the baseline side by side.

    python scripts/benchmark.py train-step [--size tiny|small|full] [--device cuda] [--json out.json]
    python scripts/benchmark.py rollout    # condition once per group vs per sample (k = 12)
    python scripts/benchmark.py reward     # reward server: dynamic batching vs one image per call
    python scripts/benchmark.py reward --backend transformers,vllm --server-python .venv-vllm/bin/python
    python scripts/benchmark.py epoch      # a tiny torchrun epoch (2 CPU processes), time per phase
    python scripts/benchmark.py loading    # full-weight FSDP build: bytes per rank, copies vs meta
    python scripts/benchmark.py learning   # toy world: held-out reward vs samples (scripts/benchmark_learning.py)

Prints a table and, with ``--json PATH``, writes ``{"scenario", "ratios", ...}``. CPU with the tiny
kit by default; ``--device cuda --size full`` builds randomly initialised real-size transformers
(Qwen-Image 20B / FLUX 12B). See docs/performance.md and the ``benchmarks/`` folder
(one module per scenario).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# benchmarks/ sits beside the installed package (it is not part of it): import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import SCENARIOS, BenchmarkError, Settings, format_table, run_scenario  # noqa: E402
from edit_r1.models.registry import family_names  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--json", type=Path, help="write the result object here")
    parser.add_argument("--device", default=defaults.device, help="cpu or cuda")
    parser.add_argument(
        "--size", default=defaults.size, choices=("tiny", "small", "full"), help="train-step model"
    )
    parser.add_argument("--family", default=defaults.family, choices=family_names())
    parser.add_argument(
        "--kit", type=Path, help="tiny kit folder (default .tiny/kit, else built in a temp dir)"
    )
    parser.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="timed rounds (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed rounds first")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="train-step micro-batch")
    parser.add_argument("--resolution", type=int, help="pixels (default 64 tiny, 128 small, 512 full)")
    parser.add_argument(
        "--group-size", type=int, default=defaults.group_size, help="rollout: k edits per group"
    )
    parser.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="train-step: torch.compile the blocks (compile_transformer)"
    )
    parser.add_argument(
        "--attention-backend",
        help="train-step: diffusers attention backend (attention_backend), e.g. _native_cudnn",
    )
    parser.add_argument(
        "--text-tokens",
        type=int,
        help="train-step/rollout: text length (default: the family's training length)",
    )
    parser.add_argument("--concurrency", default="1,8,32", help="reward: comma-separated client counts")
    parser.add_argument(
        "--backend",
        default="transformers",
        help="reward: comma-separated judge backends measured in turn (transformers, vllm)",
    )
    parser.add_argument(
        "--server-python",
        help="reward: the interpreter of the reward server and engine runs (vllm: make test-vllm's "
        ".venv-vllm/bin/python); default this one",
    )
    parser.add_argument("--requests-per-client", type=int, default=defaults.requests_per_client)
    parser.add_argument("--images-per-request", type=int, default=defaults.images_per_request)
    parser.add_argument("--server-batch-size", type=int, default=defaults.server_batch_size)
    parser.add_argument("--nproc", type=int, default=defaults.nproc, help="epoch: torchrun processes")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epoch: epochs to run")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    try:
        concurrency = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    except ValueError:
        raise SystemExit(
            f"--concurrency must be comma-separated integers, got {args.concurrency!r}"
        ) from None
    backends = tuple(name.strip() for name in args.backend.split(",") if name.strip())
    unknown = sorted(set(backends) - {"transformers", "vllm"})
    if unknown or not backends:
        raise SystemExit(f"--backend takes transformers and/or vllm, got {args.backend!r}")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} / {args.warmup}")
    return Settings(
        device=args.device, size=args.size, family=args.family, kit=args.kit, repeats=args.repeats,
        warmup=args.warmup, batch_size=args.batch_size, resolution=args.resolution,
        group_size=args.group_size, lora_rank=args.lora_rank,
        gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
        attention_backend=args.attention_backend, text_tokens=args.text_tokens, concurrency=concurrency,
        requests_per_client=args.requests_per_client, images_per_request=args.images_per_request,
        server_batch_size=args.server_batch_size, nproc=args.nproc, epochs=args.epochs,
        backends=backends, server_python=args.server_python,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["learning"]:  # its own module and flags: scripts/benchmark_learning.py
        from benchmark_learning import main as learning_main

        return learning_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        result = run_scenario(args.scenario, settings_from_args(args))
    except BenchmarkError as error:
        print(f"benchmark {args.scenario}: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
