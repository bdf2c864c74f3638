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
from reward_server.prompt_template import judge_prompt_info
from reward_server.protocol import Limits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app, threads: int = 8, port: int = 0) -> Iterator[str]:
    """Serve a WSGI app with waitress on 127.0.0.1 (a free port unless given); yields its base URL."""
    server = create_server(app, host="127.0.0.1", port=port, threads=threads)
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
    backends: Sequence, api_key: str | None = None, max_batch_size: int = 8, limits=Limits(), port: int = 0
):
    """A real reward-server app (batcher + Flask + waitress) around the given backend replicas."""
    batcher = DynamicBatcher(backends, max_batch_size=max_batch_size, max_wait_s=0.005)
    first = backends[0]
    info = {
        "backend": first.name,
        "model": first.model,
        **judge_prompt_info(first.template, first.pairwise_template),
    }
    if getattr(first, "engine_info", None):
        info["engine"] = first.engine_info
    try:
        with serve_in_thread(
            create_app(batcher, info, limits, api_key=api_key), threads=24, port=port
        ) as url:
            yield url
    finally:
        batcher.close()


class InstructionScoreBackend:
    """A fake judge whose score is written in the instruction ("score=0.25"); "fail" raises.

    It records every batch so tests can see how items were grouped.
    """

    name, model, template = "fake", "fake-judge", "edit_r1_v1"
    pairwise_template: str | None = "edit_r1_v1"

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


def encode_file(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _halves(size=(20, 10)) -> Image.Image:
    """Left half red, right half blue: any rotation or mirroring shows."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[:, : size[0] // 2] = (255, 0, 0)
    array[:, size[0] // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def unusual_images() -> dict[str, tuple[bytes, np.ndarray]]:
    """Each legitimate unusual file and the RGB pixels a viewer shows for it."""
    halves = _halves()
    gradient16 = (np.arange(16 * 8).reshape(8, 16) * 500).astype(np.uint16)
    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (3, 0, 6, 4))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    frames = [Image.new("RGB", (8, 8), (250, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 250))]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    ramp = np.arange(32) * 8
    photo = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1)
    return {
        "1x1 png": (png_bytes(Image.new("RGB", (1, 1), (9, 8, 7))), np.array([[[9, 8, 7]]])),
        "16-bit grey png": (
            encode_file(Image.fromarray(gradient16), "PNG"),
            np.repeat((gradient16 // 257)[..., None], 3, 2),
        ),
        "cmyk jpeg": (
            encode_file(halves.convert("CMYK"), "JPEG", quality=95),
            np.asarray(halves).astype(int),
        ),
        "progressive jpeg": (
            encode_file(Image.fromarray(photo.astype(np.uint8)), "JPEG", quality=95, progressive=True),
            photo,
        ),
        "palette png with transparency": (
            encode_file(palette, "PNG", transparency=0),
            np.array([[[255, 255, 255]] * 3 + [[0, 255, 0]] * 3] * 4),  # transparent -> white
        ),
        "animated gif (first frame)": (animated.getvalue(), np.full((8, 8, 3), (250, 0, 0))),
        "lossless webp": (encode_file(halves, "WEBP", lossless=True), np.asarray(halves).astype(int)),
        "exif-rotated jpeg": (
            encode_file(halves, "JPEG", quality=95, exif=exif),
            np.asarray(halves.transpose(Image.Transpose.ROTATE_270)).astype(int),
        ),
    }
