"""``reward``: the reward server (tiny judge; transformers backend, and with ``--backend vllm`` the
real vLLM engine) with dynamic batching vs one image per engine call, under ``c`` concurrent
trainer-like clients; plus the engine's own batch gain. Several backends (``--backend
transformers,vllm``) are measured in one run, one after the other on the same machine; the first
one's numbers are the result's ``results``/``engine``/``ratios``, every backend's are under
``backends``.

Every ratio comes twice: in wall time (throughput, what the targets are stated in) and in CPU time
(the server process's user + system seconds per scored image; the engine thread's CPU seconds per
item). On a machine whose cores other processes share, wall time measures the contention as much
as the server; CPU time per item does not wait for the CPU, so its ratios stay put (see
docs/performance.md)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    REPO_ROOT,
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


def process_cpu_s(pid: int) -> float:
    """CPU seconds process ``pid``'s live threads, and those of its child processes (vLLM's engine
    core and worker), have run so far: the sum of each thread's on-CPU nanoseconds in Linux's
    ``/proc/<pid>/task/<tid>/schedstat`` (the server's threads live as long as it does); NaN where
    there is no ``/proc``."""
    total, children = 0, []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                total += int((task / "schedstat").read_text().split()[0])
                children += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        return float("nan")
    return total / 1e9 + sum(process_cpu_s(child) for child in children)


def thread_cpu_s_per_call(fn, repeats: int) -> float:
    """Median CPU seconds of this thread for one call of ``fn`` (after one untimed call)."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        seconds.append(time.thread_time() - start)
    return median(seconds)


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
        calls = {
            "batched": lambda: backend.score_prepared(items, batch),
            "single": lambda: [backend.score_prepared(*single) for single in singles],
        }
        seconds = time_side_by_side(calls, settings.repeats, settings.warmup, torch.device(device))
        cpu = {mode: thread_cpu_s_per_call(fn, settings.repeats) / len(items) for mode, fn in calls.items()}
    finally:
        backend.close()
    per_item = {mode: median(values) / len(items) for mode, values in seconds.items()}
    return {
        "batched_s_per_item": per_item["batched"],
        "single_s_per_item": per_item["single"],
        "batched_cpu_s_per_item": cpu["batched"],
        "single_cpu_s_per_item": cpu["single"],
        "engine_batch_gain": per_item["single"] / per_item["batched"],
        "engine_batch_gain_cpu": cpu["single"] / cpu["batched"],
    }


# Server flags per backend: the vLLM engine skips torch.compile (start-up) and runs float32 on CPU.
BACKEND_FLAGS = {"transformers": (), "vllm": ("--vllm-enforce-eager", "--max-model-len", "4096")}


def engine_batch_gain_in(python: str, backend: str, judge: Path, settings: Settings) -> dict[str, float]:
    """:func:`engine_batch_gain` for a backend that lives in another venv: ``benchmarks/reward_engine.py``
    run by ``python`` (the engine, in-process there, on ``server_batch_size`` items)."""
    command = [python, str(Path(__file__).with_name("reward_engine.py")), "--backend", backend]
    command += ["--model", str(judge), "--items", str(settings.server_batch_size)]
    command += ["--repeats", str(settings.repeats)]
    if backend == "vllm":
        command += ["--option", "enforce_eager=true", "--option", "max_model_len=4096"]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ENGINE_RESULT ")]
    if done.returncode != 0 or not lines:
        raise BenchmarkError(f"the {backend} engine run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("ENGINE_RESULT "))


def summarise_runs(runs: list[tuple[float, list[float], int, float]], images: int) -> dict[str, float]:
    """Median throughput, latency percentiles, failures and the server's CPU milliseconds per image
    (over all the runs) of repeated client drives."""
    latencies = [value for _, lat, _, _ in runs for value in lat]
    return {
        "images_per_s": median([images / run[0] for run in runs]),
        "p50_latency_s": percentile(latencies, 50),
        "p99_latency_s": percentile(latencies, 99),
        "failed_items": float(sum(run[2] for run in runs)),
        "server_cpu_ms_per_image": 1000 * sum(run[3] for run in runs) / (images * len(runs)),
    }


def drive_measured(server: str, pid: int, clients: int, settings: Settings) -> tuple:
    """:func:`drive_clients` plus the server process's CPU seconds during the drive."""
    before = process_cpu_s(pid)
    wall, latencies, failures = drive_clients(
        server, clients, settings.requests_per_client, settings.images_per_request, 64
    )
    return wall, latencies, failures, process_cpu_s(pid) - before


def measure_servers(
    servers: dict[str, str], pids: dict[str, int], settings: Settings
) -> dict[str, dict[str, dict[str, float]]]:
    """``{mode: {clients: summary}}``: each concurrency, the servers alternated ``repeats`` times."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for server in servers.values():  # warm-up: first engine calls allocate
        drive_clients(server, 1, 1, settings.images_per_request, 64)
    for clients in settings.concurrency:
        runs: dict[str, list[tuple]] = {mode: [] for mode in servers}
        for _ in range(settings.repeats):
            for mode, server in servers.items():
                runs[mode].append(drive_measured(server, pids[mode], clients, settings))
        images = clients * settings.requests_per_client * settings.images_per_request
        for mode, results in runs.items():
            table.setdefault(mode, {})[str(clients)] = summarise_runs(results, images)
    return table


def run_reward(settings: Settings) -> dict[str, Any]:
    """Dynamic batching vs one image per engine call, at each concurrency, with the tiny judge, for
    each of ``settings.backends`` in turn."""
    kit = resolve_kit(settings)
    device = "cuda" if check_device(settings.device).type == "cuda" else "cpu"
    backends = {
        name: measure_backend(name, kit / JUDGE_FOLDER, device, settings) for name in settings.backends
    }
    first = backends[settings.backends[0]]
    return {
        "scenario": "reward",
        "settings": describe(settings, size="tiny"),
        **first,
        "backends": backends,
    }


def measure_backend(backend: str, judge: Path, device: str, settings: Settings) -> dict[str, Any]:
    """One backend's servers (batched and single, side by side) and its engine alone."""
    python = settings.server_python or sys.executable
    if backend == "transformers" and python == sys.executable:
        engine = engine_batch_gain(judge, device, settings)
    else:
        engine = engine_batch_gain_in(python, backend, judge, settings)
    modes = {"batched": settings.server_batch_size, "single": 1}
    extra = ("--threads", "64", *BACKEND_FLAGS.get(backend, ()))
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="edit_r1_bench_reward_") as tmp, contextlib.ExitStack() as stack:
        try:
            servers = {
                mode: stack.enter_context(
                    launch_reward_server(
                        judge, batch, device, Path(tmp) / f"{mode}.log", extra_args=extra, timeout_s=900,
                        on_start=lambda process, mode=mode: pids.__setitem__(mode, process.pid),
                        backend=backend, python=python,
                    )
                )
                for mode, batch in modes.items()
            }  # fmt: skip
        except RewardServerStartError as error:
            raise BenchmarkError(str(error)) from error
        table = measure_servers(servers, pids, settings)
    return {"results": table, "engine": engine, "ratios": reward_ratios(table, engine, settings.concurrency)}


def reward_ratios(table: dict, engine: dict[str, float], concurrency: Sequence[int]) -> dict[str, float]:
    """Batched over single, per concurrency and the minimum over 8+ clients, and that minimum's
    share of the engine-alone batch gain; each in wall time (throughput) and in CPU time."""
    ratios = {
        f"batched_vs_single_throughput_c{c}": table["batched"][str(c)]["images_per_s"]
        / table["single"][str(c)]["images_per_s"]
        for c in concurrency
    }
    cpu = {
        c: table["single"][str(c)]["server_cpu_ms_per_image"]
        / table["batched"][str(c)]["server_cpu_ms_per_image"]
        for c in concurrency
    }
    ratios.update({f"batched_vs_single_cpu_c{c}": value for c, value in cpu.items()})
    high = [c for c in concurrency if c >= 8] or list(concurrency)
    ratios["batched_vs_single_throughput"] = min(ratios[f"batched_vs_single_throughput_c{c}"] for c in high)
    ratios["batched_vs_single_cpu"] = min(cpu[c] for c in high)
    ratios["engine_batch_gain"] = engine.pop("engine_batch_gain")
    ratios["engine_batch_gain_cpu"] = engine.pop("engine_batch_gain_cpu")
    # The server's share of the hardware's own batching ceiling, both measured in this run:
    # end-to-end batched/single at 8+ clients over the engine-alone batch gain.
    ratios["share_of_engine_batch_gain"] = (
        ratios["batched_vs_single_throughput"] / ratios["engine_batch_gain"]
    )
    ratios["share_of_engine_batch_gain_cpu"] = (
        ratios["batched_vs_single_cpu"] / ratios["engine_batch_gain_cpu"]
    )
    return ratios
