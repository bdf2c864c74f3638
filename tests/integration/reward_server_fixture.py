"""A real reward server subprocess (tiny Qwen2.5-VL judge, transformers backend) on 127.0.0.1.

Use from a test module in tests/integration/ (its folder is on sys.path under pytest):

    from reward_server_fixture import start_reward_server

    @pytest.fixture(scope="module")
    def reward_server(tiny_kit, tmp_path_factory):
        with start_reward_server(tiny_kit, tmp_path_factory.mktemp("server")) as address:
            yield address           # "127.0.0.1:<port>"

The launcher is the one the benchmarks use (``reward_server.launcher``): a free port,
``/health`` polled until ready, the server log quoted if it dies, terminated on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from reward_server.launcher import launch_reward_server


@contextlib.contextmanager
def start_reward_server(tiny_kit: Path, log_dir: Path) -> Iterator[str]:
    """Runs ``reward_server/reward_server.py`` with the tiny judge on CPU; yields ``host:port``."""
    with launch_reward_server(
        tiny_kit / "judge_qwen2_5_vl", max_batch_size=32, device="cpu", log=log_dir / "server.log"
    ) as address:
        yield address
