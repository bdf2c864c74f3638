"""Score a folder of benchmark outputs with a reward server (a held-out MLLM judge).

    python scripts/evaluation.py --benchmark gedit --gedit_bench_path GEDIT_DIR --output_dir OUT \
        --reward_server host:12341 --json scores.json --markdown scores.md
    python scripts/evaluation.py --benchmark imgedit --input_path singleturn.json --root_path DIR \
        --output_dir OUT --reward_server host:12341

Each benchmark item's output is read in either layout of the sampling scripts (``--layout``):
``original`` (GEdit ``OUT/{task_type}/{key}.png``, ImgEdit ``OUT/{key}.jpg``) or ``official`` (GEdit
``OUT/fullset/{task_type}/en/{key}.png``, ImgEdit ``OUT/{key}.png``); ``auto`` (the default) takes
the layout with more outputs present. It is sent with its source image and instruction to the server, which returns the judge's expected
0-5 rating mapped to [0, 1] (docs/reward-server.md). The result holds per-task means over scored items,
the overall mean over all scored items, and counts of missing outputs and judge failures (NaN),
which are excluded from the means and never counted as 0.

This is our own held-out check (point it at a judge that was not the training reward). The
published GEdit-Bench / ImgEdit numbers come from the benchmarks' official scorers with their
hosted judges; see reproduction/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edit_r1.eval_sets import BENCHMARKS, LAYOUTS, BenchmarkItem, gedit_items, imgedit_items
from edit_r1.rewards.base import RewardSample
from edit_r1.rewards.client import RewardClient


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score benchmark outputs with a reward server.")
    parser.add_argument("--benchmark", choices=BENCHMARKS, required=True)
    parser.add_argument("--gedit_bench_path", help="GEdit-Bench saved with save_to_disk (gedit)")
    parser.add_argument("--input_path", help="ImgEdit JSON {key: {id, prompt}} (imgedit)")
    parser.add_argument("--root_path", help="folder the ImgEdit image paths are relative to (imgedit)")
    parser.add_argument("--output_dir", required=True, help="the sampling script's output folder")
    parser.add_argument(
        "--layout",
        choices=("auto", *LAYOUTS),
        default="auto",
        help="layout of --output_dir (the sampling scripts' --layout); auto: the one with more outputs",
    )
    parser.add_argument(
        "--reward_server", default=None, help="host:port[,host:port]; default: $REWARD_SERVER"
    )
    parser.add_argument("--batch_size", type=int, default=16, help="items per scoring call")
    parser.add_argument("--json", default=None, help="result file (default: OUT/evaluation.json)")
    parser.add_argument("--markdown", default=None, help="table file (default: OUT/evaluation.md)")
    return parser


def load_items(args: argparse.Namespace, layout: str) -> list[BenchmarkItem]:
    if args.benchmark == "gedit":
        if not args.gedit_bench_path:
            raise SystemExit("error: --benchmark gedit needs --gedit_bench_path")
        return gedit_items(args.gedit_bench_path, layout=layout)
    if not (args.input_path and args.root_path):
        raise SystemExit("error: --benchmark imgedit needs --input_path and --root_path")
    return imgedit_items(args.input_path, args.root_path, layout=layout)


def resolve_layout(args: argparse.Namespace, output_dir: Path) -> tuple[str, list[BenchmarkItem]]:
    """The layout to score and its items: ``--layout``, or for ``auto`` the layout with the most
    outputs present in ``output_dir`` (``original`` on a tie)."""
    if args.layout != "auto":
        return args.layout, load_items(args, args.layout)
    candidates = {layout: load_items(args, layout) for layout in LAYOUTS}
    present = {
        layout: sum((output_dir / item.output).is_file() for item in items)
        for layout, items in candidates.items()
    }
    layout = max(LAYOUTS, key=lambda name: present[name])
    return layout, candidates[layout]


def score_items(
    client: RewardClient, items: Sequence[BenchmarkItem], output_dir: Path, batch_size: int
) -> list[float]:
    """Score of each item in [0, 1]; NaN for a judge failure; None for a missing output."""
    scores: list[float | None] = [None] * len(items)
    present = [i for i, item in enumerate(items) if (output_dir / item.output).is_file()]
    for start in range(0, len(present), batch_size):
        batch = present[start : start + batch_size]
        samples = []
        for i in batch:
            with Image.open(output_dir / items[i].output) as edited:
                samples.append(
                    RewardSample(edited.convert("RGB"), items[i].load_image(), items[i].instruction)
                )
        for i, value in zip(batch, client.score(samples), strict=True):
            scores[i] = float(value)
    return scores


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(
    benchmark: str, items: Sequence[BenchmarkItem], scores: Sequence[float | None], layout: str = "original"
) -> dict:
    """Per-task and overall means over scored items, with counts of missing and failed items."""
    tasks: dict[str, list[float]] = {}
    missing = failed = 0
    for item, score in zip(items, scores, strict=True):
        tasks.setdefault(item.task, [])
        if score is None:
            missing += 1
        elif math.isnan(score):
            failed += 1
        else:
            tasks[item.task].append(score)
    scored = [s for values in tasks.values() for s in values]
    return {
        "benchmark": benchmark,
        "layout": layout,
        "num_items": len(items),
        "num_scored": len(scored),
        "num_missing": missing,
        "num_failed": failed,
        "overall": _mean(scored),
        "tasks": {task: {"mean": _mean(values), "n": len(values)} for task, values in sorted(tasks.items())},
    }


def markdown_table(result: dict) -> str:
    """| task | n | mean [0,1] | mean x5 | rows, then the overall row and the counts."""

    def cells(mean: float | None) -> str:
        return "n/a | n/a" if mean is None else f"{mean:.4f} | {5 * mean:.3f}"

    lines = [f"## {result['benchmark']}", "", "| task | n | mean [0,1] | mean x5 |", "|---|---:|---:|---:|"]
    for task, stats in result["tasks"].items():
        lines.append(f"| {task} | {stats['n']} | {cells(stats['mean'])} |")
    lines.append(f"| overall | {result['num_scored']} | {cells(result['overall'])} |")
    lines += [
        "",
        f"{result['num_missing']} missing outputs, {result['num_failed']} judge failures (excluded).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    if not output_dir.is_dir():
        raise SystemExit(f"error: --output_dir {output_dir} is not a folder")
    layout, items = resolve_layout(args, output_dir)
    print(f"scoring the {layout} layout of {output_dir}")
    client = RewardClient(args.reward_server) if args.reward_server else RewardClient.from_env()
    try:
        scores = score_items(client, items, output_dir, args.batch_size)
    finally:
        client.close()
    result = summarise(args.benchmark, items, scores, layout)
    json_path = Path(args.json or output_dir / "evaluation.json")
    markdown_path = Path(args.markdown or output_dir / "evaluation.md")
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    table = markdown_table(result)
    markdown_path.write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
