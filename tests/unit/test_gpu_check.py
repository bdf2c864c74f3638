"""scripts/gpu_check.sh: one line and status 2 without CUDA; its stages' code path on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit on a machine without CUDA")
def test_without_cuda_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was measured"
    ]
    assert not (tmp_path / "out").exists()


def test_rollout_stage_writes_the_json_on_a_cpu(tiny_kit, tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path), "--device", "cpu",
               "--size", "small", "--repeats", "1", "--stages", "rollout", "--families", "qwen_image_edit",
               "--rollout-batch", "1", "--kit", str(tiny_kit)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rollout = report["families"]["qwen_image_edit"]["rollout"]
    assert "error" not in rollout, rollout
    assert rollout["samples_per_s"] > 0 and rollout["num_steps"] == 6 and rollout["batch"] == 1
    assert report["families"]["qwen_image_edit"]["attention_backend"] == "default"
