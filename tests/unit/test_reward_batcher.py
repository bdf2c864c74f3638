"""The dynamic batcher: coalescing, routing back to the right request, failure isolation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from reward_server.batcher import DynamicBatcher, score_isolating_failures


class _Backend:
    """Score = the item's number / 10000; numbers in ``poisoned`` make the whole batch call fail."""

    name, model, template = "fake", "fake", "edit_r1_v1"

    def __init__(self, delay_s: float = 0.0, poisoned=(), results_override=None):
        self.delay_s, self.poisoned, self.results_override = delay_s, set(poisoned), results_override
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def score_batch(self, items):
        numbers = [item.instruction for item in items]
        with self.lock:
            self.batches.append(numbers)
        time.sleep(self.delay_s)
        if self.poisoned & set(numbers):
            raise RuntimeError(f"engine crashed on {sorted(self.poisoned & set(numbers))}")
        if self.results_override is not None:
            return self.results_override(numbers)
        return [n / 10000 for n in numbers]

    def close(self):
        pass


def _items(numbers):
    # The batcher only passes items through; the fake backend reads ``instruction``.
    return [SimpleNamespace(instruction=n) for n in numbers]


def test_concurrent_requests_are_coalesced_and_routed_back():
    backend = _Backend(delay_s=0.02)
    batcher = DynamicBatcher([backend], max_batch_size=16, max_wait_s=0.01)
    try:
        requests = [list(range(100 * r, 100 * r + 3)) for r in range(12)]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda numbers: batcher.score(_items(numbers)), requests))
    finally:
        batcher.close()
    for numbers, answer in zip(requests, answers, strict=True):
        assert answer == [(n / 10000, None) for n in numbers]
    assert max(len(batch) for batch in backend.batches) > 3  # several requests shared an engine call
    assert all(len(batch) <= 16 for batch in backend.batches)


def test_a_failing_item_fails_alone():
    backend = _Backend(poisoned={7})
    results = score_isolating_failures(backend, _items([5, 7, 9]))
    assert results[0] == (0.0005, None) and results[2] == (0.0009, None)
    assert results[1][0] is None and "engine crashed on [7]" in results[1][1]


def test_invalid_backend_numbers_become_errors_not_scores():
    backend = _Backend(results_override=lambda numbers: [float("nan"), 1.5, ValueError("no digits")])
    results = score_isolating_failures(backend, _items([1, 2, 3]))
    assert [score for score, _ in results] == [None, None, None]
    assert "invalid score" in results[0][1] and "no digits" in results[2][1]


def test_several_replicas_share_the_queue():
    replicas = [_Backend(delay_s=0.05), _Backend(delay_s=0.05)]
    batcher = DynamicBatcher(replicas, max_batch_size=2, max_wait_s=0.0)
    try:
        assert batcher.score(_items(range(8))) == [(n / 10000, None) for n in range(8)]
    finally:
        batcher.close()
    assert all(replica.batches for replica in replicas)


class _PipelinedBackend(_Backend):
    """Prepares on one thread and scores on another; scoring the first batch waits (up to 5 s) for
    the second batch to be prepared, which only happens if preparation overlaps the engine."""

    def __init__(self, fail_prepare=()):
        super().__init__()
        self.fail_prepare = set(fail_prepare)
        self.threads: dict[str, set[str]] = {"prepare": set(), "score": set()}
        self.scoring_started = threading.Event()
        self.second_prepared = threading.Event()
        self.overlapped: bool | None = None
        self.prepared_batches = 0

    def prepare_batch(self, items):
        self.threads["prepare"].add(threading.current_thread().name)
        numbers = [item.instruction for item in items]
        if self.fail_prepare & set(numbers):
            raise ValueError("cannot preprocess")
        self.prepared_batches += 1
        if self.prepared_batches == 2:
            self.second_prepared.set()
        return [f"prepared {n}" for n in numbers]

    def score_prepared(self, items, prepared):
        assert prepared == [f"prepared {item.instruction}" for item in items]
        self.threads["score"].add(threading.current_thread().name)
        if self.overlapped is None:
            self.scoring_started.set()
            self.overlapped = self.second_prepared.wait(timeout=5)
        return super().score_batch(items)


def test_the_next_batch_is_prepared_while_the_engine_scores():
    backend = _PipelinedBackend()
    batcher = DynamicBatcher([backend], max_batch_size=8, max_wait_s=0.0)
    try:
        first = batcher.submit(_items([1, 2]))
        assert backend.scoring_started.wait(timeout=5)
        second = batcher.submit(_items([3]))
        results = [future.result(timeout=10) for future in first + second]
    finally:
        batcher.close()
    assert results == [(0.0001, None), (0.0002, None), (0.0003, None)]
    assert backend.overlapped is True
    assert backend.threads == {"prepare": {"prepare-0"}, "score": {"engine-0"}}


def test_a_batch_that_cannot_be_prepared_is_scored_unprepared():
    backend = _PipelinedBackend(fail_prepare={1000})
    batcher = DynamicBatcher([backend], max_batch_size=8, max_wait_s=0.05)
    try:
        assert batcher.score(_items([1000, 5])) == [(0.1, None), (0.0005, None)]
    finally:
        batcher.close()
    assert [1000, 5] in backend.batches  # one score_batch call for the unprepared batch
