"""A real reward server subprocess (tiny Qwen2.5-VL judge, transformers backend) on 127.0.0.1.

Use from a test module in tests/integration/ (its folder is on sys.path under pytest):

    from reward_server_fixture import start_reward_server

    @pytest.fixture(scope="module")
    def reward_server(tiny_kit, tmp_path_factory):
        with start_reward_server(tiny_kit, tmp_path_factory.mktemp("server")) as address:
            yield address           # "127.0.0.1:<port>"
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Polls ``url/health`` until it answers 200; fails early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"reward server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"reward server at {url} not healthy after {timeout} s")


@contextlib.contextmanager
def start_reward_server(tiny_kit: Path, log_dir: Path) -> Iterator[str]:
    """Runs ``reward_server/reward_server.py`` with the tiny judge; yields ``host:port``."""
    port = free_port()
    log = log_dir / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "reward_server" / "reward_server.py"), "--backend", "transformers",
             "--model", str(tiny_kit / "judge_qwen2_5_vl"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        try:
            wait_for_health(f"http://127.0.0.1:{port}", process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; server log:\n{log.read_text()[-3000:]}") from None
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
