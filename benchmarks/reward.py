"""``reward``: the reward server (tiny judge, transformers backend) with dynamic batching vs one
image per engine call, under ``c`` concurrent trainer-like clients; plus the engine's own batch gain."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BenchmarkError,
    Settings,
    check_device,
    describe,
    median,
    percentile,
    resolve_kit,
    time_side_by_side,
)
from reward_server.launcher import RewardServerStartError, launch_reward_server

JUDGE_FOLDER = "judge_qwen2_5_vl"


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


def summarise_runs(runs: list[tuple[float, list[float], int]], images: int) -> dict[str, float]:
    """Median throughput, latency percentiles and failures of repeated client drives."""
    latencies = [value for _, lat, _ in runs for value in lat]
    return {
        "images_per_s": median([images / wall for wall, _, _ in runs]),
        "p50_latency_s": percentile(latencies, 50),
        "p99_latency_s": percentile(latencies, 99),
        "failed_items": float(sum(f for _, _, f in runs)),
    }


def measure_servers(servers: dict[str, str], settings: Settings) -> dict[str, dict[str, dict[str, float]]]:
    """``{mode: {clients: summary}}``: each concurrency, the servers alternated ``repeats`` times."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for server in servers.values():  # warm-up: first engine calls allocate
        drive_clients(server, 1, 1, settings.images_per_request, 64)
    for clients in settings.concurrency:
        runs: dict[str, list[tuple[float, list[float], int]]] = {mode: [] for mode in servers}
        for _ in range(settings.repeats):
            for mode, server in servers.items():
                runs[mode].append(
                    drive_clients(
                        server, clients, settings.requests_per_client, settings.images_per_request, 64
                    )
                )
        images = clients * settings.requests_per_client * settings.images_per_request
        for mode, results in runs.items():
            table.setdefault(mode, {})[str(clients)] = summarise_runs(results, images)
    return table


def run_reward(settings: Settings) -> dict[str, Any]:
    """Dynamic batching vs one image per engine call, at each concurrency, with the tiny judge."""
    kit = resolve_kit(settings)
    device = "cuda" if check_device(settings.device).type == "cuda" else "cpu"
    engine = engine_batch_gain(kit / JUDGE_FOLDER, device, settings)
    modes = {"batched": settings.server_batch_size, "single": 1}
    with tempfile.TemporaryDirectory(prefix="edit_r1_bench_reward_") as tmp, contextlib.ExitStack() as stack:
        try:
            servers = {
                mode: stack.enter_context(
                    launch_reward_server(kit / JUDGE_FOLDER, batch, device, Path(tmp) / f"{mode}.log")
                )
                for mode, batch in modes.items()
            }
        except RewardServerStartError as error:
            raise BenchmarkError(str(error)) from error
        table = measure_servers(servers, settings)
    ratios = {
        f"batched_vs_single_throughput_c{c}": table["batched"][str(c)]["images_per_s"]
        / table["single"][str(c)]["images_per_s"]
        for c in settings.concurrency
    }
    high = [c for c in settings.concurrency if c >= 8] or list(settings.concurrency)
    ratios["batched_vs_single_throughput"] = min(ratios[f"batched_vs_single_throughput_c{c}"] for c in high)
    ratios["engine_batch_gain"] = engine.pop("engine_batch_gain")
    # The server's share of the hardware's own batching ceiling, both measured in this run:
    # end-to-end batched/single throughput at 8+ clients over the engine-alone batch gain.
    ratios["share_of_engine_batch_gain"] = (
        ratios["batched_vs_single_throughput"] / ratios["engine_batch_gain"]
    )
    return {
        "scenario": "reward",
        "settings": describe(settings, size="tiny"),
        "results": table,
        "engine": engine,
        "ratios": ratios,
    }
