"""The evaluator with an extra per-evaluation metric handed in (how the reward-hacking monitors
plug in): every item's value reaches the log as ``eval_<name>``, the mean over the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.data.toy import write_toy_dataset
from edit_r1.trainer import trainer_from_config
from edit_r1.training import EvalBatch

REPO = Path(__file__).resolve().parents[2]


class SourceChange:
    """Mean absolute pixel change of each edit from its source, in [0, 1]; records what it saw."""

    names = ("source_change", "always_nan")

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, batch: EvalBatch) -> dict[str, np.ndarray]:
        change = [
            float(np.abs(np.asarray(s.edited_image, float) - np.asarray(s.source_image, float)).mean() / 255)
            for s in batch.samples
        ]
        self.seen += change
        return {"source_change": np.asarray(change), "always_nan": np.full(len(change), np.nan)}


def test_an_extra_metric_is_logged_as_the_mean_over_the_test_split(tiny_kit: Path, tmp_path: Path):
    write_toy_dataset(tmp_path / "toy", 4, 3, size=64, seed=0)
    config = load_config(str(REPO / "config/qwen_image_edit_nft.py:tiny"))
    config.pretrained.model = str(tiny_kit / "qwen_image_edit_plus")
    config.dataset, config.logdir, config.run_name = str(tmp_path / "toy"), str(tmp_path / "runs"), "eval"
    config.sample.test_batch_size = 2  # two batches: 2 + 1 items
    metric = SourceChange()
    trainer = trainer_from_config(config, distributed.init_distributed(device="cpu"), eval_metrics=[metric])
    metrics = trainer.evaluator.evaluate(0)
    trainer.collector.close(wait=False)
    trainer.tracker.finish()
    assert len(metric.seen) == 3 and all(0 < value <= 1 for value in metric.seen)
    assert metrics["eval_source_change"] == pytest.approx(np.mean(metric.seen))
    assert metrics["eval_always_nan"] is None  # no finite value: no mean
    assert np.isfinite(metrics["eval_reward_mean"])
