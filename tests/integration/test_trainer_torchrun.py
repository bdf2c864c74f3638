"""The trainer under real ``torchrun`` (2 CPU processes, gloo) against a real reward server.

The reward server runs the tiny Qwen2.5-VL judge with the transformers backend on 127.0.0.1; the
trainer reaches it through ``REWARD_SERVER`` exactly as on a cluster.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reward_server_fixture import start_reward_server

from edit_r1.checkpoint import read_sharded_tensors
from edit_r1.data.toy import write_toy_dataset

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("trainer_probe.py")


@pytest.fixture(scope="module")
def reward_server(tiny_kit: Path, tmp_path_factory: pytest.TempPathFactory):
    with start_reward_server(tiny_kit, tmp_path_factory.mktemp("server")) as address:
        yield address


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, 8, 2, size=64, seed=0)
    return root


def run_probe(spec: str, out: Path, overrides: dict, server: str) -> list[dict]:
    env = dict(os.environ, REWARD_SERVER=server, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(PROBE), spec, str(out), json.dumps(overrides)]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def qwen_dead_lora_names(names: list[str]) -> set[str]:
    """Qwen-Image's last block returns only its image stream, so that block's text-query and
    text-output LoRA matrices never receive a gradient (see tests/integration/test_lora_policies.py)."""
    last = max(int(n.split(".")[1]) for n in names if n.startswith("transformer_blocks."))
    dead = (f"transformer_blocks.{last}.attn.add_q_proj.", f"transformer_blocks.{last}.attn.to_add_out.")
    return {n for n in names if n.startswith(dead)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "model", "fsdp"),
    [
        ("config/qwen_image_edit_nft.py:tiny_mllm", "qwen_image_edit_plus", False),
        ("config/qwen_image_edit_nft.py:tiny_mllm", "qwen_image_edit_plus", True),
        ("config/kontext_nft.py:tiny_mllm", "flux_kontext", True),
    ],
)
def test_two_ranks_train_against_the_reward_server(
    spec, model, fsdp, tiny_kit, toy_data, reward_server, tmp_path
):
    """fsdp: the frozen text encoders are FSDP2-sharded over the two ranks (lockstep encoding)."""
    overrides = {
        "fsdp_text_encoder": fsdp,
        "pretrained.model": str(tiny_kit / model),
        "dataset": str(toy_data),
        "logdir": str(tmp_path / "runs"),
        "run_name": "probe",
        "num_epochs": 2,
        "save_freq": 1,
        "eval_freq": 1,
        "train.learning_rate": 1e-2,
    }
    ranks = run_probe(spec, tmp_path / "probe", overrides, reward_server)
    dead = qwen_dead_lora_names(ranks[0]["names"]) if model.startswith("qwen") else set()

    assert ranks[0]["advantages"] == ranks[1]["advantages"], "ranks disagree on the advantages"
    assert ranks[0]["mask"] == ranks[1]["mask"]
    assert any(a != 0 for a in ranks[0]["advantages"]), "the judge gave every sample the same score"
    for rank in ranks:
        unchanged = [
            n for n, c in zip(rank["names"], rank["changed"], strict=True) if not c and n not in dead
        ]
        assert rank["names"] and not unchanged, f"LoRA parameters did not change: {unchanged[:4]}"

    run_dir = Path(ranks[0]["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    for row in rows:
        assert math.isfinite(row["total_loss"]) and math.isfinite(row["policy_loss"])
        assert row["reward_failed"] == 0
        assert 0 <= row["reward_mllm_score_continue"] <= 1
        # the monitors are gathered over both ranks' held-out edits (docs/training.md)
        assert 0 <= row["monitor/changed_share"] <= 1 and row["monitor/velocity_rms"] > 0
    assert rows[0]["monitor/velocity_ratio"] == pytest.approx(1.0, abs=1e-6)  # before any update
    # Transformer forwards summed over both ranks, cumulative (tests/integration/test_forward_counts.py):
    # per epoch 8 rollouts x 3 steps, 8 x 2 timesteps x 3 NFT velocities, 2 held-out x 3 steps x (v, v_ref).
    cost = [
        tuple(row[f"cost/{k}transformer_forwards"] for k in ("rollout_", "update_", "", "eval_"))
        for row in rows
    ]
    assert cost == [(24, 48, 72, 12), (48, 96, 144, 24)]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    final = run_dir / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in (final / "rng").iterdir()) == ["rank0.safetensors", "rank1.safetensors"]
    default = read_sharded_tensors(final, "default")
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in default.items())
    assert (final / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (run_dir / "reward_curve.png").is_file()


@pytest.mark.slow
def test_two_ranks_train_grpo_on_pairwise_preferences(tiny_kit, toy_data, reward_server, tmp_path):
    """Flow-GRPO with the pairwise judge reward: each group (spread over both ranks) is judged whole."""
    overrides = {
        "pretrained.model": str(tiny_kit / "qwen_image_edit_plus"),
        "dataset": str(toy_data),
        "logdir": str(tmp_path / "runs"),
        "run_name": "pairwise",
        "num_epochs": 1,
        "save_freq": 1,
        "eval_freq": 100,
        "train.learning_rate": 1e-2,
        "reward_fn": {"pairwise_mllm": 1.0},
    }
    ranks = run_probe("config/qwen_image_edit_nft.py:tiny_grpo", tmp_path / "probe", overrides, reward_server)
    assert ranks[0]["advantages"] == ranks[1]["advantages"] and ranks[0]["mask"] == ranks[1]["mask"]
    assert any(a != 0 for a in ranks[0]["advantages"])
    dead = qwen_dead_lora_names(ranks[0]["names"])
    for rank in ranks:
        assert all(c or n in dead for n, c in zip(rank["names"], rank["changed"], strict=True))
    (row,) = [
        json.loads(line) for line in (Path(ranks[0]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    # 2 groups of k = 4 per epoch: 6 pairs each, both orders -> 24 judge calls, whatever the ranks hold.
    assert (row["pairwise_mllm_pairs"], row["pairwise_mllm_judge_calls"]) == (12, 24)
    assert row["reward_pairwise_mllm"] == pytest.approx(0.5)  # a whole group's win rates average 1/2
    assert row["reward_failed"] == 0
    for key in ("policy_loss", "kl_loss", "ratio_mean", "clipfrac", "total_loss"):
        assert math.isfinite(row[key]), key
    # 8 x 3 rollout rows; 8 x 2 inner epochs x 2 steps x (v, v_ref); epoch 0 is evaluated (12 rows).
    assert (row["cost/rollout_transformer_forwards"], row["cost/update_transformer_forwards"]) == (24, 64)
    assert row["cost/eval_transformer_forwards"] == 12
