"""The benchmark sampling loop behind ``reproduction/sampling/sampling_{qwen,kontext}_{gedit,imgedit}.py``.

Flags are those of the original scripts (``--pretrained_name_or_path --output_dir --seed
[--lora_path]``, GEdit ``--gedit_bench_path``, ImgEdit ``--input_path --root_path``) plus
overrides that default to the original settings (``--num_inference_steps``, ``--max_area``, ...).
``--layout official`` writes what the benchmarks' own evaluators read instead of the original
scripts' layout (``edit_r1.eval_sets``, ``docs/evaluation.md``).

* resumable: an item whose output file exists is skipped (outputs are written atomically);
* sharded: item ``i`` belongs to shard ``i % num_shards``. Under ``torchrun`` the shard is the
  rank and the GPU is ``LOCAL_RANK`` (one process per GPU); or pass ``--num_shards/--shard``;
* a failed item is logged, the loop goes on, and the run ends with a summary of every failure
  (also written to ``failures_shard<k>.json``) and exit status 1. Nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from edit_r1.eval_sets import LAYOUTS, BenchmarkItem, gedit_items, imgedit_items
from edit_r1.inference import (
    DEFAULT_MAX_AREA,
    SamplingSettings,
    edit,
    load_edit_policy,
    save_atomically,
    to_pil,
)
from edit_r1.models.registry import policy_class

# Help of the family-specific flags (`EditPolicy.sampling_flags`), by `SamplingSettings` field.
SAMPLING_FLAG_HELP = {
    "true_cfg_scale": "true CFG scale (> 1 runs the negative prompt)",
    "negative_prompt": "negative prompt of true CFG",
    "condition_area": "vision-encoder image area",
    "guidance_scale": "embedded guidance",
}


def build_parser(family: str, benchmark: str) -> argparse.ArgumentParser:
    defaults = SamplingSettings()
    parser = argparse.ArgumentParser(
        description=f"Sample {benchmark} with {policy_class(family).family} (base model, or base + --lora_path)."
    )
    parser.add_argument("--pretrained_name_or_path", required=True, help="base model: hub id or local folder")
    parser.add_argument("--output_dir", required=True, help="where the edited images go")
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="noise seed of every item (original: 42)"
    )
    parser.add_argument(
        "--lora_path",
        default=None,
        help="diffusers LoRA file/folder, original-release LoRA folder, training checkpoint or run folder",
    )
    parser.add_argument(
        "--lora_scale",
        type=float,
        default=None,
        help="apply the LoRA at this scale instead of its alpha / r (the original scripts: 1.0; see "
        "reproduction/README.md for the setting that reproduces the published tables)",
    )
    parser.add_argument(
        "--lora_weights",
        choices=("ema", "default"),
        default="ema",
        help="for a training checkpoint: the EMA LoRA (what evaluation uses) or the raw trained adapter",
    )
    if benchmark == "gedit":
        parser.add_argument("--gedit_bench_path", required=True, help="GEdit-Bench saved with save_to_disk")
    else:
        parser.add_argument("--input_path", required=True, help="ImgEdit JSON {key: {id, prompt}}")
        parser.add_argument(
            "--root_path", required=True, help="folder the JSON's image paths are relative to"
        )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="original",
        help="original: the original scripts' paths; official: what the benchmark's own evaluator reads",
    )
    parser.add_argument("--num_inference_steps", type=int, default=defaults.num_inference_steps)
    parser.add_argument("--max_area", type=int, default=DEFAULT_MAX_AREA, help="output pixel area (1024^2)")
    for name in policy_class(family).sampling_flags:
        default = getattr(defaults, name)
        parser.add_argument(f"--{name}", type=type(default), default=default, help=SAMPLING_FLAG_HELP[name])
    parser.add_argument("--num_shards", type=int, default=None, help="default: WORLD_SIZE (torchrun) or 1")
    parser.add_argument("--shard", type=int, default=None, help="default: RANK (torchrun) or 0")
    parser.add_argument(
        "--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu"
    )
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> SamplingSettings:
    defaults = SamplingSettings()
    return SamplingSettings(
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        max_area=args.max_area,
        true_cfg_scale=getattr(args, "true_cfg_scale", defaults.true_cfg_scale),
        negative_prompt=getattr(args, "negative_prompt", defaults.negative_prompt),
        guidance_scale=getattr(args, "guidance_scale", defaults.guidance_scale),
        condition_area=getattr(args, "condition_area", defaults.condition_area),
    )


def shard_of(args: argparse.Namespace) -> tuple[int, int]:
    """(shard, num_shards) from the flags, else from torchrun's RANK / WORLD_SIZE."""
    num_shards = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    shard = args.shard if args.shard is not None else int(os.environ.get("RANK", 0))
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise SystemExit(
            f"error: need 0 <= --shard < --num_shards, got shard={shard} num_shards={num_shards}"
        )
    return shard, num_shards


def device_of(args: argparse.Namespace) -> torch.device:
    if args.device:
        return torch.device(args.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def benchmark_items(benchmark: str, args: argparse.Namespace) -> list[BenchmarkItem]:
    if benchmark == "gedit":
        return gedit_items(args.gedit_bench_path, layout=args.layout)
    return imgedit_items(args.input_path, args.root_path, layout=args.layout)


def run(
    items: Sequence[BenchmarkItem],
    output_dir: Path,
    edit_fn,
    *,
    shard: int = 0,
    num_shards: int = 1,
) -> dict:
    """Edits the shard's items that have no output yet and writes their missing companion files;
    returns {"done", "skipped", "failed": [...]}."""
    mine = list(items)[shard::num_shards]
    todo = [item for item in mine if not _complete(item, output_dir)]
    summary = {"done": 0, "skipped": len(mine) - len(todo), "failed": []}
    for item in tqdm(todo, desc=f"shard {shard}/{num_shards}", disable=None):
        try:
            if not (output_dir / item.output).exists():
                save_atomically(edit_fn(item), output_dir / item.output)
            for relpath, load in item.companions:
                if not (output_dir / relpath).exists():
                    save_atomically(load(), output_dir / relpath)
            summary["done"] += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - one broken item must not stop the benchmark
            message = f"{type(error).__name__}: {error}"
            tqdm.write(f"FAILED {item.key}: {message}", file=sys.stderr)
            summary["failed"].append({"key": item.key, "output": item.output, "error": message,
                                      "traceback": traceback.format_exc()})  # fmt: skip
    return summary


def _complete(item: BenchmarkItem, output_dir: Path) -> bool:
    paths = [item.output, *(relpath for relpath, _ in item.companions)]
    return all((output_dir / path).exists() for path in paths)


def report(summary: dict, output_dir: Path, shard: int, num_shards: int) -> int:
    """Prints the summary; writes failures_shard<k>.json; 1 when any item failed, else 0."""
    failed = summary["failed"]
    print(
        f"shard {shard}/{num_shards}: {summary['done']} edited, {summary['skipped']} already done, "
        f"{len(failed)} failed"
    )
    failures_file = output_dir / f"failures_shard{shard}.json"
    if not failed:
        failures_file.unlink(missing_ok=True)
        return 0
    failures_file.write_text(json.dumps(failed, indent=2), encoding="utf-8")
    print(f"FAILED items ({len(failed)}), details in {failures_file}:", file=sys.stderr)
    for failure in failed:
        print(f"  {failure['key']}: {failure['error']}", file=sys.stderr)
    return 1


def main(family: str, benchmark: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of one sampling script; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser(family, benchmark).parse_args(argv)
    settings = settings_from_args(args)
    shard, num_shards = shard_of(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    items = benchmark_items(benchmark, args)
    device = device_of(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    started = time.monotonic()
    policy, lora = load_edit_policy(
        family, args.pretrained_name_or_path, settings, args.lora_path,
        lora_weights=args.lora_weights, lora_scale=args.lora_scale, device=device, dtype=dtype,
    )  # fmt: skip
    if lora is None:
        print("No LoRA given: sampling the base model")
    else:
        print(f"LoRA {lora.source}: rank {lora.rank}, alpha {lora.alpha:g} (scale {lora.scale:g})")
    request_source_size = benchmark in policy_class(family).source_size_benchmarks

    def edit_item(item: BenchmarkItem):
        image = item.load_image()
        request = image.size if request_source_size else None
        out = edit(policy, item.instruction, image, settings, use_lora=lora is not None, request_size=request)
        return to_pil(out)

    summary = run(items, output_dir, edit_item, shard=shard, num_shards=num_shards)
    print(f"{time.monotonic() - started:.1f} s")
    return report(summary, output_dir, shard, num_shards)
