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
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from reward_server.backends import build_backend
from reward_server.backends.base import BackendOptions, ItemResult
from reward_server.batcher import ReplicaDied, ReplicaHung, score_isolating_failures
from reward_server.images import JudgeItem, decode_item
from reward_server.protocol import (
    Limits,
    build_score_request,
    build_score_response,
    parse_score_request,
    parse_score_response,
)

LOGGER = logging.getLogger("reward_server")
# The parent has validated every item already; inside the worker only the pipe's size matters.
_WORKER_LIMITS = Limits(max_items=1 << 20, max_body_bytes=1 << 40, max_image_bytes=1 << 30)


def options_to_json(options: BackendOptions, **override: object) -> str:
    """The options as the JSON object a worker is started with (every field, ``override`` applied);
    :func:`options_from_json` gives back equal options (the pairwise question included)."""
    return json.dumps({**options.__dict__, **override})


def options_from_json(text: str) -> BackendOptions:
    return BackendOptions(**json.loads(text))


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
    options = options_from_json(args.options)
    backend = build_backend(args.backend, options)
    out.write(json.dumps({"ready": True, "model": backend.model, "engine": backend.engine_info}) + "\n")
    out.flush()
    _serve(backend, Limits(**{**_WORKER_LIMITS.__dict__, "max_image_pixels": args.max_image_pixels}), out)


class ReplicaProcess:
    """A backend running in a worker process on its own GPUs; same interface as a backend.

    If the process dies, the batch it held fails with :class:`ReplicaDied` (nothing is scored
    twice), :meth:`alive` turns false (``/health`` says ``degraded``) and the batcher's next call
    to :meth:`ensure_running` starts a new process; until it is ready the other replicas take the
    queued items. A failed restart is retried with a growing pause (at most a minute).

    A process that holds one batch longer than ``batch_deadline_s`` (0 = no deadline) without
    answering — hung, not dead: a stuck kernel, a deadlock, a stopped process — is killed by a
    watchdog timer (SIGKILL, which also ends a write blocked on its full stdin pipe); that batch
    fails with :class:`ReplicaHung` and the replica is restarted as a dead one would be.
    """

    def __init__(
        self,
        backend: str,
        options: BackendOptions,
        gpus: Sequence[str],
        max_image_pixels: int,
        index: int = 0,
        batch_deadline_s: float = 0.0,
    ) -> None:
        self.name, self.model, self.template = backend, options.model, options.template
        self.pairwise_template = options.pairwise_template
        self.index, self.gpus = index, list(gpus)
        self.batch_deadline_s = batch_deadline_s
        self.hung_batches = 0
        self._env = dict(os.environ)
        if gpus:
            self._env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        options_json = options_to_json(options, data_parallel_size=1)
        self._command = [sys.executable, "-m", "reward_server.worker", "--backend", backend]
        self._command += ["--options", options_json, "--max-image-pixels", str(max_image_pixels)]
        self._lock = threading.Lock()
        self._closing = False
        self.restarts = 0
        self._failed_starts = 0
        self._retry_at = 0.0
        self.engine_info: dict = {}
        self._process = self._start()

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env
        )
        ready = self._read_line(process)
        if not ready.get("ready"):
            process.kill()
            raise RuntimeError(f"judge replica {self.index} on GPUs {self.gpus} did not start: {ready}")
        self.engine_info = ready.get("engine") or {}
        LOGGER.info("judge replica %d ready (pid %d, GPUs %s)", self.index, process.pid, self.gpus or "-")
        return process

    def _read_line(self, process: subprocess.Popen) -> dict:
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            raise ReplicaDied(
                f"judge replica {self.index} (pid {process.pid}) exited with code {code} (see its log above)"
            )
        return json.loads(line)

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        """Whether the worker process is running (False from the moment it dies until restarted)."""
        return self._process.poll() is None

    def ensure_running(self) -> bool:
        """Restart a dead worker; False while it cannot be restarted (the caller then skips it)."""
        if self.alive() or self._closing:
            return self.alive()
        if time.monotonic() < self._retry_at:
            time.sleep(0.1)
            return False
        with self._lock:
            LOGGER.warning(
                "judge replica %d (pid %d) is dead (exit code %s); restarting it",
                self.index,
                self._process.pid,
                self._process.returncode,
            )
            try:
                self._process = self._start()
            except (OSError, RuntimeError, ValueError) as error:
                self._failed_starts += 1
                pause = min(2.0**self._failed_starts, 60.0)
                self._retry_at = time.monotonic() + pause
                LOGGER.error(
                    "restarting judge replica %d failed (%s); next try in %.0fs", self.index, error, pause
                )
                return False
            self._failed_starts = 0
            self.restarts += 1
            LOGGER.info("judge replica %d restarted (pid %d)", self.index, self._process.pid)
            return True

    def _watchdog(self, process: subprocess.Popen, overdue: threading.Event, done: threading.Event):
        """A timer that kills ``process`` after the batch deadline unless ``done`` is set by then."""
        if not self.batch_deadline_s:
            return None

        def expire() -> None:
            if not done.is_set():
                overdue.set()
                process.kill()

        timer = threading.Timer(self.batch_deadline_s, expire)
        timer.daemon = True
        timer.start()
        return timer

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        request = build_score_request([item.raw.__dict__ for item in items])
        with self._lock:
            process = self._process
            overdue, done = threading.Event(), threading.Event()
            timer = self._watchdog(process, overdue, done)
            try:
                process.stdin.write(json.dumps(request).encode() + b"\n")
                process.stdin.flush()
                answer = self._read_line(process)
            except (BrokenPipeError, ReplicaDied) as error:
                code = process.wait()
                if overdue.is_set():
                    self.hung_batches += 1
                    LOGGER.error(
                        "judge replica %d (pid %d) held a batch of %d past the %.0f s batch deadline; "
                        "killed it, restarting",
                        self.index, process.pid, len(items), self.batch_deadline_s,
                    )  # fmt: skip
                    raise ReplicaHung(
                        f"judge replica {self.index} (pid {process.pid}) did not answer this batch of "
                        f"{len(items)} within the {self.batch_deadline_s:g} s batch deadline "
                        "(--batch-deadline-s); it was killed and is being restarted; these items were "
                        "not scored and may be sent again"
                    ) from error
                raise ReplicaDied(
                    f"judge replica {self.index} (pid {process.pid}) died with exit code {code} while "
                    f"scoring this batch of {len(items)}; these items were not scored and the replica "
                    "is being restarted"
                ) from error
            finally:
                done.set()
                if timer is not None:
                    timer.cancel()
        scores, errors = parse_score_response(answer, len(items))
        return [
            RuntimeError(error) if score is None else score
            for score, error in zip(scores, errors, strict=True)
        ]

    def close(self) -> None:
        self._closing = True
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


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
