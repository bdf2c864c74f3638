"""Dynamic batching: items from concurrent requests are coalesced into engine batches.

Many trainer ranks post small requests at the same time; scoring each alone wastes the engine.
Every request's items go into one queue; per backend replica a worker takes the first waiting
item, gathers more until ``max_batch_size`` items or ``max_wait_s`` have passed, scores them in one
backend call and hands each result back to the future of the request it came from.

A backend with ``prepare_batch``/``score_prepared`` (see ``Backend``) gets a two-stage pipeline per
replica: a preparing thread collects and preprocesses batch n+1 while the engine thread scores
batch n, so the engine does not wait for the CPU work. The preparing thread starts collecting
only when the engine has taken the previous batch, so batches still gather everything queued
while the engine was busy.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from reward_server.backends.base import Backend, ItemResult
from reward_server.images import JudgeItem

LOGGER = logging.getLogger("reward_server")


class RetryableError(str):
    """An item's error message when the item itself was not at fault: its replica died or hung
    while holding it. ``POST /score`` marks it ``retryable`` and the trainer's client sends the item
    again (to any replica, until its deadline); every other error is final for that item."""


ScoreOrError = tuple[float | None, str | None]  # the error is a RetryableError where retrying may help


class ReplicaDied(RuntimeError):
    """A replica process died while it held a batch: those items fail (retryably), none is retried
    on the server.

    Retrying item by item would send them to the same (restarting) replica; resubmitting them
    elsewhere could let one poisonous item take every replica down in turn. The client's retry is
    bounded by its deadline instead.
    """


class ReplicaHung(ReplicaDied):
    """A replica held a batch past the per-batch deadline without answering: it was killed (and is
    restarted), and the batch's items fail retryably."""


@dataclass
class _Pending:
    item: JudgeItem
    request_id: int
    future: Future = field(default_factory=Future)


def _as_score_or_error(result: ItemResult) -> ScoreOrError:
    """A backend result as (score, None) or (None, message); out-of-range numbers are errors."""
    if isinstance(result, ReplicaDied):
        return None, RetryableError(f"{type(result).__name__}: {result}")
    if isinstance(result, BaseException):
        return None, f"{type(result).__name__}: {result}"
    value = float(result)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None, f"the judge produced an invalid score {value!r}"
    return value, None


def score_isolating_failures(
    backend: Backend, items: Sequence[JudgeItem], prepared: Any = None
) -> list[ScoreOrError]:
    """Score a batch (with its ``prepare_batch`` output, if given); if the batch call fails, score
    item by item so one failure stays one failure."""
    try:
        results = backend.score_batch(items) if prepared is None else backend.score_prepared(items, prepared)
        if len(results) != len(items):
            raise RuntimeError(f"backend returned {len(results)} results for {len(items)} items")
        return [_as_score_or_error(result) for result in results]
    except Exception as batch_error:  # noqa: BLE001 - any engine failure is reported per item below
        if len(items) == 1 or isinstance(batch_error, ReplicaDied):
            return [_as_score_or_error(batch_error)] * len(items)
        LOGGER.warning("batch of %d failed (%s); scoring its items one by one", len(items), batch_error)
        return [score_isolating_failures(backend, [item])[0] for item in items]


class DynamicBatcher:
    """Coalesces items of concurrent requests into batches of at most ``max_batch_size``."""

    def __init__(self, backends: Sequence[Backend], max_batch_size: int, max_wait_s: float = 0.005) -> None:
        if not backends:
            raise ValueError("the batcher needs at least one backend replica")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._stop = threading.Event()
        self._request_ids = iter(range(1, 2**62))
        self._id_lock = threading.Lock()
        self._backends = list(backends)
        self._workers = [
            thread for replica, backend in enumerate(backends) for thread in self._threads(backend, replica)
        ]
        for worker in self._workers:
            worker.start()

    def _threads(self, backend: Backend, replica: int) -> list[threading.Thread]:
        """One batch loop, or a preparing + an engine thread when the backend prepares batches."""
        if getattr(backend, "prepare_batch", None) is None:
            loops = {"batcher": (self._run, (backend, replica))}
        else:
            handoff: queue.Queue[tuple[list[_Pending], Any]] = queue.Queue(maxsize=1)
            slot_free = threading.Semaphore(1)
            loops = {
                "prepare": (self._prepare_loop, (backend, handoff, slot_free)),
                "engine": (self._engine_loop, (backend, replica, handoff, slot_free)),
            }
        return [
            threading.Thread(target=target, args=args, name=f"{name}-{replica}", daemon=True)
            for name, (target, args) in loops.items()
        ]

    def submit(self, items: Sequence[JudgeItem]) -> list[Future]:
        """Queue the items of one request; each future resolves to ``(score, None)`` or ``(None, error)``."""
        if self._stop.is_set():
            raise RuntimeError("the batcher is closed")
        with self._id_lock:
            request_id = next(self._request_ids)
        pending = [_Pending(item, request_id) for item in items]
        for entry in pending:
            self._queue.put(entry)
        return [entry.future for entry in pending]

    def replicas_alive(self) -> tuple[int, int]:
        """(replicas able to score now, replicas in total); in-process backends are always alive."""
        alive = sum(bool(getattr(backend, "alive", lambda: True)()) for backend in self._backends)
        return alive, len(self._backends)

    def queued(self) -> int:
        """Items waiting for a replica (approximate, for overload checks)."""
        return self._queue.qsize()

    def score(self, items: Sequence[JudgeItem], timeout_s: float | None = None) -> list[ScoreOrError]:
        """Submit and wait: one (score, error) pair per item, in order."""
        return [future.result(timeout=timeout_s) for future in self.submit(items)]

    def close(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=5)

    def _collect_batch(self) -> list[_Pending]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=max(remaining, 0.0))
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    @staticmethod
    def _ready(backend: Backend) -> bool:
        """Lets a replica process restart itself before it takes new items (see ``ReplicaProcess``)."""
        ensure_running = getattr(backend, "ensure_running", None)
        return True if ensure_running is None else bool(ensure_running())

    def _run(self, backend: Backend, replica: int) -> None:
        while not self._stop.is_set():
            if not self._ready(backend):
                continue  # its items stay queued for the live replicas
            batch = self._collect_batch()
            if batch:
                self._score_and_deliver(backend, replica, batch, prepared=None)

    def _prepare_loop(self, backend: Backend, handoff: queue.Queue, slot_free: threading.Semaphore) -> None:
        """Waits until the engine has taken the previous batch from the hand-off slot, then collects
        and prepares the next one while the engine scores that one."""
        while not self._stop.is_set():
            if not slot_free.acquire(timeout=0.1):
                continue
            batch = self._collect_batch()
            if not batch:
                slot_free.release()
                continue
            try:
                prepared = backend.prepare_batch([entry.item for entry in batch])
            except Exception as error:  # noqa: BLE001 - the engine thread then scores the batch unprepared
                LOGGER.warning(
                    "preparing a batch of %d failed (%s); scoring it unprepared", len(batch), error
                )
                prepared = None
            handoff.put((batch, prepared))  # never blocks: the engine took the previous one

    def _engine_loop(
        self, backend: Backend, replica: int, handoff: queue.Queue, slot_free: threading.Semaphore
    ) -> None:
        idle_since = time.perf_counter()
        while not self._stop.is_set():
            try:
                batch, prepared = handoff.get(timeout=0.1)
            except queue.Empty:
                continue
            slot_free.release()
            waited_ms = (time.perf_counter() - idle_since) * 1000
            self._score_and_deliver(backend, replica, batch, prepared, waited_ms)
            idle_since = time.perf_counter()

    def _score_and_deliver(
        self, backend: Backend, replica: int, batch: list[_Pending], prepared: Any, waited_ms: float = 0.0
    ) -> None:
        """Score one batch and resolve every item's future; logs the batch: its wall time, the CPU
        time of this thread meanwhile (below the wall time when other threads of the server or other
        processes hold the CPU or the GIL) and, for a pipelined replica, how long the engine sat idle
        waiting for this batch."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            results = score_isolating_failures(backend, [entry.item for entry in batch], prepared)
        except BaseException as error:  # noqa: BLE001 - never leave a request waiting forever
            results = [_as_score_or_error(error)] * len(batch)
        latency_ms = (time.perf_counter() - started) * 1000
        cpu_ms = (time.thread_time() - cpu_started) * 1000
        for entry, result in zip(batch, results, strict=True):
            entry.future.set_result(result)
        LOGGER.info(
            "batch replica=%d items=%d requests=%d failed=%d latency_ms=%.1f cpu_ms=%.1f idle_before_ms=%.1f",
            replica,
            len(batch),
            len({entry.request_id for entry in batch}),
            sum(score is None for score, _ in results),
            latency_ms,
            cpu_ms,
            waited_ms,
        )
