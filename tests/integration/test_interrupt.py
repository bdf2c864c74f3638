"""Fault: SIGTERM to ``torchrun`` during training (2 CPU ranks, gloo, the real training script).

Every rank stops within 30 s, no process of the run outlives ``torchrun``, the last complete
checkpoint verifies, and resuming from it ends bit for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from process_tree import session_members

from edit_r1.checkpoint import list_checkpoints, read_sharded_tensors, verify_checkpoint
from edit_r1.data.toy import write_toy_dataset

REPO = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 30.0


def _launch(
    tiny_kit: Path, data: Path, logdir: Path, run_name: str, epochs: int, resume: str = "", **options
):
    """The training script under torchrun (2 ranks), or as one plain process with ``ranks=1``."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    if options.get("ranks") == 1:
        launcher = []
    command = [sys.executable, *launcher, str(REPO / "scripts" / "train_nft_qwen_image_edit.py"),
               f"--config={REPO}/config/qwen_image_edit_nft.py:{options.get('config', 'tiny')}",
               f"--config.pretrained.model={tiny_kit / 'qwen_image_edit_plus'}",
               f"--config.dataset={data}", f"--config.logdir={logdir}", f"--config.run_name={run_name}",
               f"--config.num_epochs={epochs}", "--config.save_freq=1", "--config.eval_freq=100",
               f"--config.resume_from={resume}", *options.get("extra", [])]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", **options.get("env", {}))
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own session: every process it starts can be found afterwards
    )  # fmt: skip
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(process.stdout), daemon=True).start()
    return process, log


def _finish(process, log, timeout_s: float = 600) -> None:
    assert process.wait(timeout=timeout_s) == 0, "".join(log[-40:])


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, 8, 2, size=64, seed=0)
    return root


def _interrupt_after_first_checkpoint(tiny_kit, toy_data, logdir: Path, run_name: str, send) -> Path:
    """Start a 2-epoch run, ``send(torchrun_pid)`` once checkpoint-1 is complete, check the stop."""
    run_dir = logdir / run_name
    process, log = _launch(tiny_kit, toy_data, logdir, run_name, epochs=2)
    try:
        deadline = time.monotonic() + 600
        # checkpoint-0 (the starting weights) is written at once; wait for the first trained one.
        while len(list_checkpoints(run_dir)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_checkpoints(run_dir), "no checkpoint before the deadline:\n" + "".join(log[-40:])
        sent = time.monotonic()
        send(process.pid)
        code = process.wait(timeout=120)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert stopped_after < STOP_WITHIN_S, f"torchrun took {stopped_after:.1f}s to stop"
    assert code != 0, "".join(log[-40:])  # interrupted, not finished
    time.sleep(0.5)
    assert session_members(process.pid) == [], "processes of the run outlived torchrun"
    output = "".join(log)
    assert "interrupted: stopping (the last complete checkpoint is intact)" in output, output[-3000:]
    last = list_checkpoints(run_dir)[-1]
    verify_checkpoint(last)
    return last


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_and_the_last_checkpoint_resumes_exactly(
    tiny_kit, toy_data, tmp_path
):
    logdir = tmp_path / "runs"
    run_dir = logdir / "interrupted"
    last = _interrupt_after_first_checkpoint(
        tiny_kit, toy_data, logdir, "interrupted", lambda pid: os.kill(pid, signal.SIGTERM)
    )
    resumed = _launch(tiny_kit, toy_data, logdir, "interrupted", epochs=2, resume=str(run_dir))
    straight = _launch(tiny_kit, toy_data, logdir, "straight", epochs=2)
    _finish(*resumed)
    _finish(*straight)
    assert f"resumed from {last}" in "".join(resumed[1])
    for group in ("default", "old", "ema", "optimizer"):
        a = read_sharded_tensors(logdir / "straight" / "checkpoints" / "checkpoint-2", group)
        b = read_sharded_tensors(run_dir / "checkpoints" / "checkpoint-2", group)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{group} differs after resume"


@pytest.mark.slow
def test_ctrl_c_stops_every_rank(tiny_kit, toy_data, tmp_path):
    """Ctrl-C in a terminal: SIGINT to torchrun and its workers at once (the foreground group)."""
    _interrupt_after_first_checkpoint(
        tiny_kit, toy_data, tmp_path / "runs", "ctrl_c", lambda pid: os.killpg(pid, signal.SIGINT)
    )


def test_sigterm_while_waiting_for_the_judge_exits_at_once(tiny_kit, toy_data, tmp_path):
    """A judge that accepts the connection and never answers (request time-out 600 s): SIGTERM still
    ends the run at once, without waiting for the reward request's thread."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    held, reached = [], threading.Event()

    def accept() -> None:
        while True:
            try:
                held.append(black_hole.accept()[0])
            except OSError:
                return
            reached.set()

    threading.Thread(target=accept, daemon=True).start()
    port = black_hole.getsockname()[1]
    process, log = _launch(
        tiny_kit, toy_data, tmp_path / "runs", "stalled", epochs=1, ranks=1, config="tiny_mllm",
        env={"REWARD_SERVER": f"127.0.0.1:{port}"},
        extra=["--config.reward_client.request_timeout_s=600", "--config.reward_client.deadline_s=900"],
    )  # fmt: skip
    try:
        assert reached.wait(timeout=600), "the trainer never asked the judge:\n" + "".join(log[-40:])
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        black_hole.close()
        for connection in held:
            connection.close()
    assert code == 130, "".join(log[-40:])
    assert stopped_after < 10, f"took {stopped_after:.1f}s"
    assert "interrupted: stopping" in "".join(log)
