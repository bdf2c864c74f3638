"""Several nodes on one machine: two ``torchrun`` launchers joined by a c10d rendezvous on 127.0.0.1
(``--nnodes=2 --nproc_per_node=2``), the real training script, the tiny Qwen config, the rule reward
and the group filter on (gloo, CPU; its std threshold lowered to 0.002, since the rule reward of a
random tiny editor varies by less than the shipped 0.05 and every group would be masked).

Checked: the two-node run ends with the weights of a one-node ``--nproc_per_node=4`` run (to 1e-5,
while training moved them by far more); each process got its node-local ``LOCAL_RANK`` while logging
and checkpoint files follow the global rank; a SIGKILLed rank ends both launchers in bounded time
with the last complete checkpoint intact; and that checkpoint resumes on one node of four processes
to the same end as the uninterrupted runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from process_tree import session_members

from edit_r1.checkpoint import list_checkpoints, read_sharded_tensors, verify_checkpoint
from edit_r1.data.toy import write_toy_dataset

pytestmark = pytest.mark.cluster  # make test-cluster

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("node_probe.py")
GROUPS = ("default", "old", "ema", "optimizer")
TOLERANCE = 1e-5
STOP_WITHIN_S = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Run:
    """One training run: its launchers (one per node), their output, the probe's records."""

    def __init__(self, root: Path, name: str, nnodes: int, nproc: int, epochs: int, extra=(), resume=""):
        self.root, self.name, self.out = root, name, root / f"{name}-probe"
        self.run_dir = root / "runs" / name
        port = free_port()
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
                    "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={name}"]  # fmt: skip
        training = [str(PROBE), str(self.out), "--",
                    f"--config={REPO}/config/qwen_image_edit_nft.py:tiny",
                    f"--config.pretrained.model={root / 'kit' / 'qwen_image_edit_plus'}",
                    f"--config.dataset={root / 'toy'}", f"--config.logdir={root / 'runs'}", f"--config.run_name={name}",
                    f"--config.num_epochs={epochs}", "--config.save_freq=1", "--config.eval_freq=100",
                    "--config.sample.ban_prompt=True", "--config.sample.ban_std_thres=0.002", "--config.sample.num_groups_per_epoch=4",
                    "--config.sample.max_train_batch_size=2", "--config.sample.num_steps=2",
                    f"--config.resume_from={resume}", *extra]  # fmt: skip
        env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.launchers, self.logs = [], []
        for _ in range(nnodes):
            process = subprocess.Popen([*launcher, *training], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
            log: list[str] = []
            threading.Thread(target=lambda p=process, lg=log: lg.extend(p.stdout), daemon=True).start()
            self.launchers.append(process)
            self.logs.append(log)

    def output(self) -> str:
        return "\n---\n".join("".join(log) for log in self.logs)

    def wait(self, timeout_s: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout_s
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.launchers]
        finally:
            self.kill()

    def kill(self) -> None:
        for process in self.launchers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)

    def finish(self) -> None:
        codes = self.wait()
        assert codes == [0] * len(codes), self.output()[-6000:]

    def procs(self) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted(self.out.glob("proc-*.json"))]

    def checkpoint(self, epoch: int) -> Path:
        return self.run_dir / "checkpoints" / f"checkpoint-{epoch}"


def tensors(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {group: read_sharded_tensors(ckpt, group) for group in GROUPS}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def root(tiny_kit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nodes")
    (root / "kit").symlink_to(tiny_kit)
    write_toy_dataset(root / "toy", 8, 2, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def one_node(root: Path) -> Run:
    """The reference: one launcher of four processes, 2 epochs."""
    run = Run(root, "one_node", nnodes=1, nproc=4, epochs=2)
    run.finish()
    return run


def test_two_nodes_train_to_the_weights_of_one_node(root: Path, one_node: Run):
    two = Run(root, "two_nodes", nnodes=2, nproc=2, epochs=2)
    two.finish()
    start, end = tensors(one_node.checkpoint(1)), tensors(one_node.checkpoint(2))
    theirs = tensors(two.checkpoint(2))
    assert max_difference(start["default"], end["default"]) > 1e-4, (
        "training did not move the weights"
    )  # 1.0e-3 measured
    for group in GROUPS:
        assert max_difference(end[group], theirs[group]) <= TOLERANCE, group
    procs = two.procs()
    assert [p["rank"] for p in procs] == [0, 1, 2, 3]
    for proc in procs:  # torchrun's node-local index is the process's local rank (its device index)
        assert proc["local_rank"] == int(proc["env"]["LOCAL_RANK"]) == proc["rank"] % 2
        assert int(proc["env"]["GROUP_RANK"]) == proc["rank"] // 2 and proc["world_size"] == 4
        assert proc["is_main"] == (proc["rank"] == 0) and proc["device"] == "cpu"
    # Logging follows the global rank: the launcher of rank 0 printed the run's messages, the
    # other node (whose local rank 0 is global rank 2) none of them; metrics were written once.
    main_node = next(i for i, p in enumerate(two.launchers) if p.pid == procs[0]["launcher_pid"])
    assert "saved " in "".join(two.logs[main_node])
    assert "saved " not in "".join(two.logs[1 - main_node]) and "done: run" not in "".join(
        two.logs[1 - main_node]
    )
    metrics = (two.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len([json.loads(line) for line in metrics if '"epoch"' in line]) == len(
        [
            json.loads(line)
            for line in (one_node.run_dir / "metrics.jsonl").read_text().splitlines()
            if '"epoch"' in line
        ]
    )
    # Checkpoint files are named by global rank: every one of the four wrote its own RNG state.
    assert sorted(p.name for p in (two.checkpoint(2) / "rng").iterdir()) == [
        f"rank{r}.safetensors" for r in range(4)
    ]


def test_a_killed_rank_ends_both_nodes_and_the_checkpoint_resumes_on_one_node(root: Path, one_node: Run):
    run = Run(root, "killed", nnodes=2, nproc=2, epochs=2)
    try:
        deadline = time.monotonic() + 600
        while len(list_checkpoints(run.run_dir)) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in run.launchers), run.output()[-4000:]
            time.sleep(0.2)
        victim = next(p for p in run.procs() if p["rank"] == 3)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        codes = [p.wait(timeout=120) for p in run.launchers]
        stopped_after = time.monotonic() - killed_at
    finally:
        run.kill()
    assert all(code != 0 for code in codes), run.output()[-4000:]
    assert stopped_after < STOP_WITHIN_S, f"the launchers took {stopped_after:.1f}s to stop"
    time.sleep(0.5)
    assert [session_members(p.pid) for p in run.launchers] == [[], []], "processes outlived their launcher"
    last = list_checkpoints(run.run_dir)[-1]
    verify_checkpoint(last)
    print(f"killed rank 3: both launchers stopped {stopped_after:.1f} s later; last complete: {last.name}")
    # The last complete checkpoint resumes on one node of four processes and ends where the
    # uninterrupted run ends.
    resumed = Run(root, "killed", nnodes=1, nproc=4, epochs=2, resume=str(run.run_dir))
    resumed.finish()
    assert f"resumed from {last}" in resumed.output()
    end, theirs = tensors(one_node.checkpoint(2)), tensors(resumed.checkpoint(2))
    for group in GROUPS:
        assert max_difference(end[group], theirs[group]) <= TOLERANCE, group


def test_a_rank_that_hangs_in_a_collective_ends_the_run_at_the_process_group_timeout(root: Path):
    """Fault: rank 2 (local rank 0 of the second node) sleeps inside ``all_gather`` without dying.
    With ``dist_timeout_s=5`` the ranks waiting in that collective fail, name it, where it was
    called from, and rank 2 as the one that never arrived; both launchers end, the last complete
    checkpoint verifies."""
    run = Run(root, "hung", nnodes=2, nproc=2, epochs=2, extra=["--config.dist_timeout_s=5"])
    try:
        deadline = time.monotonic() + 600
        while len(list_checkpoints(run.run_dir)) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in run.launchers), run.output()[-4000:]
            time.sleep(0.2)
        (run.out / "hang-rank-2").touch()
        hung_at = time.monotonic()
        codes = [p.wait(timeout=180) for p in run.launchers]
        stopped_after = time.monotonic() - hung_at
    finally:
        run.kill()
    output = run.output()
    assert all(code != 0 for code in codes), output[-4000:]
    assert "[probe] rank 2 hangs inside all_gather" in output
    assert "error: collective all_gather (called from " in output, output[-4000:]
    assert "did not complete within the process-group timeout of 5 s (dist_timeout_s)" in output
    assert "rank(s) [2] never reached that collective (hung or dead" in output, output[-4000:]
    assert stopped_after < STOP_WITHIN_S, f"the launchers took {stopped_after:.1f}s to stop"
    time.sleep(0.5)
    assert [session_members(p.pid) for p in run.launchers] == [[], []], "processes outlived their launcher"
    last = list_checkpoints(run.run_dir)[-1]
    verify_checkpoint(last)
    print(f"rank 2 hung: both launchers stopped {stopped_after:.1f} s later; last complete: {last.name}")
    print("".join(line for log in run.logs for line in log if "collective" in line))
