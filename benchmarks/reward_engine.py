"""The judge engine alone, in its own process: one ``score_batch`` call on N items vs N calls of one.

Run by :mod:`benchmarks.reward` with the reward server's interpreter (``--server-python``), because
the vLLM engine lives in its own venv (``make test-vllm``'s ``.venv-vllm``) without the trainer's
packages; so this module imports nothing but the reward server and the standard library, and
prints one JSON line. The vLLM backend has no separate preparing stage (vLLM renders the prompts
and images inside ``LLM.chat``), so its calls include that work; the engine's CPU time is spent in
its own worker processes and is counted with them (``/proc`` of this process and its children).

    python -m benchmarks.reward_engine --backend vllm --model DIR --items 32 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path


def items(count: int, size: int = 64) -> list:
    """The benchmark's items (one source, distinct edits), decoded as the server decodes them."""
    from PIL import Image

    from reward_server.images import decode_item
    from reward_server.protocol import Limits, RawItem

    def png(colour: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    source = png((40, 80, 200))
    raws = [
        RawItem(png(((37 * i) % 256, (91 * i) % 256, 120)), source, "make the background orange", "")
        for i in range(count)
    ]
    return [decode_item(raw, index, Limits()) for index, raw in enumerate(raws)]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid`` and all its descendants (Linux ``/proc``; NaN elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        children: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        return float("nan")
    return total + sum(tree_cpu_s(child) for child in children)


def measure(backend, batch: list, repeats: int) -> dict[str, float]:
    """Seconds (wall and CPU of the process tree) per item, batched vs one call per item, alternated."""
    calls = {
        "batched": lambda: backend.score_batch(batch),
        "single": lambda: [backend.score_batch([item]) for item in batch],
    }
    for fn in calls.values():  # warm-up: the first calls allocate and compile
        fn()
    wall: dict[str, list[float]] = {mode: [] for mode in calls}
    cpu: dict[str, list[float]] = {mode: [] for mode in calls}
    for _ in range(repeats):
        for mode, fn in calls.items():
            cpu_before, start = tree_cpu_s(os.getpid()), time.perf_counter()
            fn()
            wall[mode].append(time.perf_counter() - start)
            cpu[mode].append(tree_cpu_s(os.getpid()) - cpu_before)
    per_item = {mode: statistics.median(values) / len(batch) for mode, values in wall.items()}
    cpu_item = {mode: statistics.median(values) / len(batch) for mode, values in cpu.items()}
    return {
        "batched_s_per_item": per_item["batched"],
        "single_s_per_item": per_item["single"],
        "batched_cpu_s_per_item": cpu_item["batched"],
        "single_cpu_s_per_item": cpu_item["single"],
        "engine_batch_gain": per_item["single"] / per_item["batched"],
        "engine_batch_gain_cpu": cpu_item["single"] / cpu_item["batched"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--option", action="append", default=[], help="BackendOptions field=JSON value")
    args = parser.parse_args(argv)
    from reward_server.backends import BackendOptions, build_backend

    options = dict(option.split("=", 1) for option in args.option)
    backend = build_backend(
        args.backend, BackendOptions(model=args.model, **{k: json.loads(v) for k, v in options.items()})
    )
    try:
        result = measure(backend, items(args.items), args.repeats)
    finally:
        backend.close()
    print("ENGINE_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
