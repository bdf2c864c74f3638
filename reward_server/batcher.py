"""Dynamic batching: items from concurrent requests are coalesced into engine batches.

Many trainer ranks post small requests at the same time; scoring each alone wastes the engine.
Every request's items go into one queue; one worker thread per backend replica takes the first
waiting item, gathers more until ``max_batch_size`` items or ``max_wait_s`` have passed, scores
them in one backend call and hands each result back to the future of the request it came from.
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

from reward_server.backends.base import Backend, ItemResult
from reward_server.images import JudgeItem

LOGGER = logging.getLogger("reward_server")
ScoreOrError = tuple[float | None, str | None]


@dataclass
class _Pending:
    item: JudgeItem
    request_id: int
    future: Future = field(default_factory=Future)


def _as_score_or_error(result: ItemResult) -> ScoreOrError:
    """A backend result as (score, None) or (None, message); out-of-range numbers are errors."""
    if isinstance(result, BaseException):
        return None, f"{type(result).__name__}: {result}"
    value = float(result)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None, f"the judge produced an invalid score {value!r}"
    return value, None


def score_isolating_failures(backend: Backend, items: Sequence[JudgeItem]) -> list[ScoreOrError]:
    """Score a batch; if the batch call fails, score item by item so one failure stays one failure."""
    try:
        results = backend.score_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"backend returned {len(results)} results for {len(items)} items")
        return [_as_score_or_error(result) for result in results]
    except Exception as batch_error:  # noqa: BLE001 - any engine failure is reported per item below
        if len(items) == 1:
            return [_as_score_or_error(batch_error)]
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
        # Replicas are copies of one backend, so the first one's preprocessing serves them all.
        self._prepare = getattr(backends[0], "prepare", None)
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._stop = threading.Event()
        self._request_ids = iter(range(1, 2**62))
        self._id_lock = threading.Lock()
        self._workers = [
            threading.Thread(
                target=self._run, args=(backend, replica), name=f"batcher-{replica}", daemon=True
            )
            for replica, backend in enumerate(backends)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, items: Sequence[JudgeItem]) -> list[Future]:
        """Queue the items of one request; each future resolves to ``(score, None)`` or ``(None, error)``.

        Runs the backend's ``prepare`` on the calling thread first (see ``Backend``).
        """
        if self._stop.is_set():
            raise RuntimeError("the batcher is closed")
        with self._id_lock:
            request_id = next(self._request_ids)
        pending = [_Pending(self._prepared(item), request_id) for item in items]
        for entry in pending:
            self._queue.put(entry)
        return [entry.future for entry in pending]

    def _prepared(self, item: JudgeItem) -> JudgeItem:
        """The backend-prepared item; unprepared if preparation fails, so that the engine call
        reports the failure for this item alone (``score_isolating_failures``)."""
        if self._prepare is None:
            return item
        try:
            return self._prepare(item)
        except Exception as error:  # noqa: BLE001 - surfaced per item by the engine call
            LOGGER.debug("preparing an item failed (%s); the engine call will report it", error)
            return item

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

    def _run(self, backend: Backend, replica: int) -> None:
        while not self._stop.is_set():
            batch = self._collect_batch()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = score_isolating_failures(backend, [entry.item for entry in batch])
            except BaseException as error:  # noqa: BLE001 - never leave a request waiting forever
                results = [_as_score_or_error(error)] * len(batch)
            latency_ms = (time.perf_counter() - started) * 1000
            for entry, result in zip(batch, results, strict=True):
                entry.future.set_result(result)
            LOGGER.info(
                "batch replica=%d items=%d requests=%d failed=%d latency_ms=%.1f",
                replica,
                len(batch),
                len({entry.request_id for entry in batch}),
                sum(score is None for score, _ in results),
                latency_ms,
            )
