"""Helpers for the reward-server tests (imported by the test modules next to this file): real HTTP servers on 127.0.0.1, free ports, fake judges."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from PIL import Image
from waitress import create_server

from reward_server.app import create_app
from reward_server.batcher import DynamicBatcher
from reward_server.images import JudgeItem
from reward_server.protocol import Limits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app, threads: int = 8) -> Iterator[str]:
    """Serve a WSGI app with waitress on a free 127.0.0.1 port; yields its base URL."""
    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        try:
            server.trigger.pull_trigger(lambda: _close_all(server))
        except OSError:
            # The trigger's pipe is already gone (seen once in CI as EBADF): the loop cannot be
            # woken, so close what is left from here; the loop thread is a daemon either way.
            _close_all(server)
        thread.join(timeout=5)
        server.task_dispatcher.shutdown()


def _close_all(server) -> None:
    """Runs inside waitress's loop thread: idle keep-alive connections would keep the loop alive."""
    for channel in list(server._map.values()):
        if channel is not server.trigger and channel is not server:
            channel.close()
    server.close()


@contextmanager
def reward_app_server(
    backends: Sequence, api_key: str | None = None, max_batch_size: int = 8, limits=Limits()
):
    """A real reward-server app (batcher + Flask + waitress) around the given backend replicas."""
    batcher = DynamicBatcher(backends, max_batch_size=max_batch_size, max_wait_s=0.005)
    info = {"backend": backends[0].name, "model": backends[0].model, "template": backends[0].template}
    try:
        with serve_in_thread(create_app(batcher, info, limits, api_key=api_key), threads=24) as url:
            yield url
    finally:
        batcher.close()


class InstructionScoreBackend:
    """A fake judge whose score is written in the instruction ("score=0.25"); "fail" raises.

    It records every batch so tests can see how items were grouped.
    """

    name, model, template = "fake", "fake-judge", "edit_r1_v1"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def score_batch(self, items: Sequence[JudgeItem]) -> list:
        with self._lock:
            self.batches.append(len(items))
        results = []
        for item in items:
            if "fail" in item.instruction:
                results.append(RuntimeError(f"cannot judge {item.instruction!r}"))
            else:
                results.append(float(item.instruction.split("score=")[1].split()[0]))
        return results

    def close(self) -> None:
        pass


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
