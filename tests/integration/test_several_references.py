"""Several reference images end to end on the tiny kit: a dataset whose lines carry `images`, the
trainer encoding both ("Picture 1", "Picture 2"), the reward client sending both sources to a real
reward server whose tiny judge scores them, and clear errors for a model that takes one image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reward_server_fixture import start_reward_server

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.data import DatasetError, EditDataset
from edit_r1.data.toy import write_toy_dataset
from edit_r1.rewards.client import RewardClient
from edit_r1.trainer import trainer_from_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy data with a second source image on every line (the next line's image)."""
    root = write_toy_dataset(tmp_path_factory.mktemp("toy2"), 8, 2, size=64, seed=0)
    for split in ("train", "test"):
        path = root / f"{split}_metadata.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for i, record in enumerate(records):
            record["images"] = [record["image"], records[(i + 1) % len(records)]["image"]]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _config(name: str, kit_folder: str, tiny_kit: Path, data: Path, tmp_path: Path):
    config = load_config(str(REPO / name))
    config.pretrained.model = str(tiny_kit / kit_folder)
    config.dataset = str(data)
    config.logdir = str(tmp_path / "runs")
    config.num_epochs, config.save_freq, config.eval_freq = 1, 100, 1
    return config


def test_two_reference_images_train_and_reach_the_judge(tiny_kit, two_image_data, tmp_path, monkeypatch):
    item = EditDataset(two_image_data, "train")[0]
    assert item.num_images == 2 and len(item.group_key) == 3  # (instruction, image 1, image 2)
    sent = []
    encode_item = RewardClient._item

    def recording_item(self, entry):
        body = encode_item(self, entry)
        sent.append(body)
        return body

    monkeypatch.setattr(RewardClient, "_item", recording_item)
    config = _config("config/qwen_image_edit_nft.py:tiny_mllm", "qwen_image_edit_2511", tiny_kit,
                     two_image_data, tmp_path)  # fmt: skip
    with start_reward_server(tiny_kit, tmp_path) as address:
        monkeypatch.setenv("REWARD_SERVER", address)
        trainer = trainer_from_config(config, distributed.init_distributed(device="cpu"))
        trainer.run()
    metrics = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["reward_failed"] == 0 and np.isfinite(metrics[-1]["reward_mean"])
    assert np.isfinite(metrics[-1]["eval_reward_mean"])
    assert sent and all(len(entry["more_source_images"]) == 1 for entry in sent)
    assert len({entry["more_source_images"][0] for entry in sent}) > 1  # each item's own second image


def test_a_one_image_model_refuses_the_dataset_by_line(tiny_kit, two_image_data, tmp_path):
    config = _config("config/kontext_nft.py:tiny", "flux_kontext", tiny_kit, two_image_data, tmp_path)
    with pytest.raises(
        DatasetError, match=r"train_metadata.jsonl:1: 2 source images, but KontextPolicy takes one"
    ):
        trainer_from_config(config, distributed.init_distributed(device="cpu"))
