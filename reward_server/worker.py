"""A backend replica in its own process, for data parallelism: ``--data-parallel-size N``.

vLLM's offline engine (and a transformers model) owns the GPUs it was started on, so N replicas
are N processes, each started with ``CUDA_VISIBLE_DEVICES`` set to its own slice of
``tensor_parallel_size`` GPUs. The parent talks to each over its stdin/stdout with one JSON line
per batch, using the same request/response objects as ``POST /score`` (no pickle). The worker
moves everything libraries print onto stderr so that stdout carries protocol lines only.

Run by :class:`ReplicaProcess`; not meant to be started by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence

from reward_server.backends import build_backend
from reward_server.backends.base import BackendOptions, ItemResult
from reward_server.batcher import score_isolating_failures
from reward_server.images import JudgeItem, decode_item
from reward_server.protocol import (
    Limits,
    build_score_request,
    build_score_response,
    parse_score_request,
    parse_score_response,
)

# The parent has validated every item already; inside the worker only the pipe's size matters.
_WORKER_LIMITS = Limits(max_items=1 << 20, max_body_bytes=1 << 40, max_image_bytes=1 << 30)


def _serve(backend, limits: Limits, out) -> None:
    for line in sys.stdin.buffer:
        raw_items = parse_score_request(line, limits)
        items = [decode_item(raw, index, limits) for index, raw in enumerate(raw_items)]
        results = score_isolating_failures(backend, items)
        response = build_score_response([s for s, _ in results], [e for _, e in results])
        out.write(json.dumps(response) + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--options", required=True, help="BackendOptions as a JSON object")
    parser.add_argument("--max-image-pixels", type=int, required=True)
    args = parser.parse_args(argv)
    # Keep the real stdout for protocol lines; everything else that writes to fd 1 goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    options = BackendOptions(**json.loads(args.options))
    backend = build_backend(args.backend, options)
    out.write(json.dumps({"ready": True, "model": backend.model}) + "\n")
    out.flush()
    _serve(backend, Limits(**{**_WORKER_LIMITS.__dict__, "max_image_pixels": args.max_image_pixels}), out)


class ReplicaProcess:
    """A backend running in a worker process on its own GPUs; same interface as a backend."""

    def __init__(
        self, backend: str, options: BackendOptions, gpus: Sequence[str], max_image_pixels: int
    ) -> None:
        self.name, self.model, self.template = backend, options.model, options.template
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        options_json = json.dumps({**options.__dict__, "data_parallel_size": 1})
        command = [sys.executable, "-m", "reward_server.worker", "--backend", backend]
        command += ["--options", options_json, "--max-image-pixels", str(max_image_pixels)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._lock = threading.Lock()
        ready = self._read_line()
        if not ready.get("ready"):
            raise RuntimeError(f"replica on GPUs {gpus} did not start: {ready}")

    def _read_line(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            raise RuntimeError(f"backend replica process exited with code {code} (see its log above)")
        return json.loads(line)

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        request = build_score_request([item.raw.__dict__ for item in items])
        with self._lock:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
            scores, errors = parse_score_response(self._read_line(), len(items))
        return [
            RuntimeError(error) if score is None else score
            for score, error in zip(scores, errors, strict=True)
        ]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()


def gpu_slices(tensor_parallel_size: int, data_parallel_size: int, visible: str | None) -> list[list[str]]:
    """Replica r gets GPUs [r*TP, (r+1)*TP) of the visible devices (``CUDA_VISIBLE_DEVICES`` or 0..)."""
    needed = tensor_parallel_size * data_parallel_size
    devices = (
        [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(needed)]
    )
    if len(devices) < needed:
        raise ValueError(
            f"TP {tensor_parallel_size} x DP {data_parallel_size} needs {needed} GPUs, "
            f"CUDA_VISIBLE_DEVICES lists {len(devices)}"
        )
    return [
        devices[r * tensor_parallel_size : (r + 1) * tensor_parallel_size] for r in range(data_parallel_size)
    ]


if __name__ == "__main__":
    main()
