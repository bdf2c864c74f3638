"""The evaluation's reward-hacking monitors in a real (tiny, one-process) training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.data.toy import write_toy_dataset
from edit_r1.trainer import trainer_from_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, 8, 3, size=64, seed=0)
    return root


def evaluations(tiny_kit: Path, toy_data: Path, run_dir: Path, **keys) -> list[dict]:
    """The evaluation rows of a 2-epoch tiny run (evaluated before each epoch)."""
    config = load_config(str(REPO / "config/qwen_image_edit_nft.py:tiny"))
    config.pretrained.model = str(tiny_kit / "qwen_image_edit_plus")
    config.dataset, config.logdir, config.run_name = str(toy_data), str(run_dir.parent), run_dir.name
    config.num_epochs, config.eval_freq, config.save_freq = 2, 1, 2
    config.train.learning_rate = 3e-2  # one step must move the velocity visibly
    for dotted, value in keys.items():
        section, _, leaf = dotted.rpartition(".")
        (config[section] if section else config)[leaf] = value
    trainer_from_config(config, distributed.init_distributed(device="cpu")).run()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "eval_reward_mean" in row]


def test_every_evaluation_logs_the_monitors_and_the_gap(tiny_kit, toy_data, tmp_path):
    rows = evaluations(
        tiny_kit, toy_data, tmp_path / "gap",
        reward_fn={"toy_color": 1.0, "source_consistency": 0.3}, eval_reward_fn={"toy_color": 1.0},
    )  # fmt: skip
    assert [row["step"] for row in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= row["monitor/changed_share"] <= 1.0 and row["monitor/source_ssim"] <= 1.0
        assert row["monitor/source_psnr"] > 0 and row["monitor/x0_norm"] > 0
        assert row["monitor/velocity_rms"] > 0 and row["monitor/velocity_rms_ref"] > 0
        # the gap is the training reward (rule + 0.3 consistency) minus the evaluation reward (rule)
        gap = row["monitor/train_reward_on_eval"] - row["eval_reward_mean"]
        assert row["monitor/reward_gap"] == pytest.approx(gap, abs=1e-9)
        assert row["monitor/reward_gap"] >= 0  # 0.3 x a consistency in [0, 1]
    # before any update the trained policy is the reference; one lr-3e-2 step moves it
    assert rows[0]["monitor/velocity_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert abs(rows[1]["monitor/velocity_ratio"] - 1.0) > 1e-4


def test_no_gap_when_evaluation_reuses_the_training_reward_and_no_reference_when_off(
    tiny_kit, toy_data, tmp_path
):
    rows = evaluations(
        tiny_kit, toy_data, tmp_path / "same", **{"monitors.velocity_reference": False, "num_epochs": 1}
    )
    assert rows and all("monitor/reward_gap" not in row for row in rows)  # tiny: toy_color in both
    assert all("monitor/velocity_ratio" not in row and "monitor/velocity_rms" in row for row in rows)


@pytest.mark.parametrize("same_noise", [True, False])
def test_paired_evaluation_reuses_epoch_zeros_noise(tiny_kit, toy_data, tmp_path, same_noise):
    """With ``sample.eval_same_noise`` a policy that did not move scores the same at every
    evaluation; with fresh noise per epoch the same policy scores differently."""
    rows = evaluations(
        tiny_kit, toy_data, tmp_path / f"paired_{same_noise}",
        **{"train.learning_rate": 1e-12, "sample.eval_same_noise": same_noise, "monitors.velocity_reference": False},
    )  # fmt: skip
    first, second = rows
    keys = ("eval_reward_mean", "monitor/source_ssim", "monitor/x0_norm")
    if same_noise:
        assert all(second[k] == pytest.approx(first[k], abs=1e-6) for k in keys)
    else:
        assert any(abs(second[k] - first[k]) > 1e-4 for k in keys)
