"""Ranks whose samples are all masked still join the update (real torchrun, gloo).

A rank that skipped the update while the others all-reduce their gradients would hang the run;
the original always runs the update (a zero masked loss still backpropagates and AdamW steps), and
so do we: every rank must end the epoch with the same weights, optimizer state and global step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edit_r1.data.toy import write_toy_dataset

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("masked_rank_probe.py")


def run_probe(nproc: int, spec: str, mode: str, out: Path, overrides: dict) -> list[dict]:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(PROBE), spec, str(out), mode, json.dumps(overrides)]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def assert_ranks_agree(ranks: list[dict]) -> None:
    assert {r["state_sha256"] for r in ranks} == {ranks[0]["state_sha256"]}, "ranks diverged"
    assert [r["global_step"] for r in ranks] == [1] * len(ranks)
    assert [r["optimizer_steps"] for r in ranks] == [[1]] * len(ranks)


def test_two_ranks_rank0_all_masked(tiny_kit, tmp_path):
    toy = tmp_path / "toy"
    write_toy_dataset(toy, 4, 1, size=64, seed=0)
    overrides = {
        "pretrained.model": str(tiny_kit / "qwen_image_edit_plus"),
        "dataset": str(toy),
        "logdir": str(tmp_path / "runs"),
        "run_name": "masked",
        "sample.num_steps": 2,
        "train.timestep_fraction": 0.5,
    }
    ranks = run_probe(2, "config/qwen_image_edit_nft.py:tiny", "rank0_failed", tmp_path / "out", overrides)
    assert not any(ranks[0]["local_mask"]) and any(ranks[1]["local_mask"])
    assert_ranks_agree(ranks)
    # Loss diagnostics are averaged over the ranks (rank 0's own loss is 0): every rank logs the same.
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and ranks[0]["metrics"]["total_loss"] > 0
    assert ranks[0]["metrics"]["group_size"] == 4 and ranks[0]["metrics"]["trained_prompt_num"] == 2


@pytest.mark.slow
def test_eight_ranks_shipped_batch_shape_with_group_filter(tiny_kit, tmp_path):
    """k = 12, 3 samples per rank: 2 groups per draw (the shipped 24 groups scaled to one draw)."""
    toy = tmp_path / "toy"
    write_toy_dataset(toy, 4, 1, size=64, seed=0)
    overrides = {
        "pretrained.model": str(tiny_kit / "flux_kontext"),
        "dataset": str(toy),
        "logdir": str(tmp_path / "runs"),
        "run_name": "eight",
        "resolution": 32,
        "sample.num_image_per_prompt": 12,
        "sample.num_groups_per_epoch": 2,
        "sample.max_train_batch_size": 3,
        "sample.ban_prompt": True,
        "sample.num_steps": 2,
        "train.timestep_fraction": 0.5,
    }
    ranks = run_probe(8, "config/kontext_nft.py:tiny", "one_group_flat", tmp_path / "out", overrides)
    masks = [r["local_mask"] for r in ranks]
    assert all(len(m) == 3 for m in masks)
    assert any(not any(m) for m in masks), f"no rank had every sample masked: {masks}"
    assert any(any(m) for m in masks)
    assert_ranks_agree(ranks)
