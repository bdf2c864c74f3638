"""A real reward server subprocess on a free loopback port, for the benchmarks, the toy world's
learning runs and the tests.

:func:`launch_reward_server` runs ``reward_server/reward_server.py`` (transformers backend unless
told otherwise), polls
``/health`` until it answers, quotes the server log if it dies, and terminates it on exit. It needs
nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the reward_server package


class RewardServerStartError(RuntimeError):
    """The reward server subprocess exited or did not become healthy; the message quotes its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launch_reward_server(
    judge: Path,
    max_batch_size: int,
    device: str,
    log: Path,
    extra_args: Sequence[str] = ("--threads", "64"),
    timeout_s: float = 180.0,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    backend: str = "transformers",
    python: str | None = None,
) -> Iterator[str]:
    """A real reward server subprocess (``backend``, default transformers) on a free loopback port;
    yields host:port.

    ``extra_args`` are appended to the server's command line (e.g. ``--template NAME``);
    ``on_start`` gets the healthy process (the benchmark reads its CPU time); ``python`` is the
    interpreter to run it with (default this one; another venv's, e.g. vLLM's)."""
    port = free_port()
    command = [
        python or sys.executable, str(REPO_ROOT / "reward_server" / "reward_server.py"),
        "--backend", backend, "--model", str(judge), "--host", "127.0.0.1", "--port", str(port),
        "--max-batch-size", str(max_batch_size), "--device", device, *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        try:
            wait_for_health(f"http://127.0.0.1:{port}", process, log, timeout_s)
            if on_start is not None:
                on_start(process)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    """Polls ``url/health`` until it answers 200; raises when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RewardServerStartError(
                f"reward server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RewardServerStartError(f"reward server {url} not healthy after {timeout_s:.0f} s; log: {log}")
