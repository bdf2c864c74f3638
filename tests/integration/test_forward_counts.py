"""The transformer forwards a run logs (``cost/*``) against the count worked out by hand.

One process on the tiny kit, one epoch each. The tiny configs: 2 groups x k = 4 = 8 rollouts per
epoch of ``N = 3`` steps, ``T = int(3 * 0.99) = 2`` trained timesteps per sample; 2 held-out items
evaluated in 3 steps with the reference velocity monitor on (a second forward per step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.data.toy import write_toy_dataset
from edit_r1.trainer import trainer_from_config
from edit_r1.training.forward_counter import EVAL_KEY, ROLLOUT_KEY, TRAINING_KEY, UPDATE_KEY

REPO = Path(__file__).resolve().parents[2]
ROLLOUTS, STEPS, TRAINED, TEST_ITEMS = 8, 3, 2, 2


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, 8, TEST_ITEMS, size=64, seed=0)
    return root


def run_one_epoch(spec: str, kit: Path, data: Path, out: Path, **overrides) -> tuple[list[dict], object]:
    config = load_config(str(REPO / spec))
    config.pretrained.model = str(kit)
    config.dataset, config.logdir, config.run_name = str(data), str(out), "run"
    config.num_epochs, config.save_freq, config.eval_freq = 1, 100, 1
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    trainer = trainer_from_config(config, distributed.init_distributed(device="cpu"))
    trainer.run()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, trainer


def costs(row: dict) -> tuple[int, int, int, int]:
    return row[ROLLOUT_KEY], row[UPDATE_KEY], row[TRAINING_KEY], row[EVAL_KEY]


def expected(update_per_sample_step: int, cfg: int = 1, update_cfg: int = 1, eval_cfg: int | None = None):
    """(rollout, update, training, eval) rows: ``cfg`` doubles a guided pass's rows."""
    rollout = ROLLOUTS * STEPS * cfg
    update = ROLLOUTS * TRAINED * update_per_sample_step * update_cfg
    evaluation = TEST_ITEMS * STEPS * 2 * (cfg if eval_cfg is None else eval_cfg)  # v and v_ref per step
    return rollout, update, rollout + update, evaluation


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("lora", {}), ("full", {"use_lora": False, "train__learning_rate": 1e-4})],
)
def test_nft_counts_rollouts_its_three_training_velocities_and_evaluation(
    name, overrides, tiny_kit, toy_data, tmp_path
):
    """NFT: per trained timestep ``v`` (B rows) and ``v_old, v_ref`` (one 2B-row LoRA batch, or one
    B-row call of each copy in full-weight mode): 3 rows per sample and timestep."""
    rows, trainer = run_one_epoch(
        "config/qwen_image_edit_nft.py:tiny",
        tiny_kit / "qwen_image_edit_plus",
        toy_data,
        tmp_path,
        **overrides,
    )
    assert costs(rows[0]) == expected(3) == (24, 48, 72, 12)
    assert trainer.cost.counter.rows["other"] == 0  # every forward fell in a named phase


def test_grpo_counts_v_and_the_kl_reference_per_trained_step_and_inner_epoch(tiny_kit, toy_data, tmp_path):
    """``tiny_grpo``: two inner epochs of ``T = 2`` steps, ``v`` and (KL weight 0.04) ``v_ref``."""
    rows, _ = run_one_epoch(
        "config/qwen_image_edit_nft.py:tiny_grpo", tiny_kit / "qwen_image_edit_plus", toy_data, tmp_path
    )
    assert costs(rows[0]) == expected(2 * 2) == (24, 64, 88, 12)


def test_true_cfg_doubles_the_guided_rows_only(tiny_kit, toy_data, tmp_path):
    """Qwen's true CFG runs the negative prompt beside each row in the rollouts and the evaluation;
    NFT's training forwards stay unguided."""
    rows, _ = run_one_epoch(
        "config/qwen_image_edit_nft.py:tiny", tiny_kit / "qwen_image_edit_plus", toy_data, tmp_path,
        sample__true_cfg_scale=3.0,
    )  # fmt: skip
    assert costs(rows[0]) == expected(3, cfg=2) == (48, 48, 96, 24)


def test_kontext_counts_alike(tiny_kit, toy_data, tmp_path):
    rows, _ = run_one_epoch("config/kontext_nft.py:tiny", tiny_kit / "flux_kontext", toy_data, tmp_path)
    assert costs(rows[0]) == expected(3)


def test_grpo_with_cfg_rollouts_guides_its_training_forwards_and_stays_on_policy(
    tiny_kit, toy_data, tmp_path
):
    """``train.cfg``: v and v_ref re-score the CFG rollouts with CFG (2 rows each); one inner epoch
    before the only optimizer step, so the ratio is exactly the rollout's (an unguided re-score
    would start it far from 1). ``sample.eval_true_cfg=False`` evaluates without CFG."""
    rows, _ = run_one_epoch(
        "config/qwen_image_edit_nft.py:tiny_grpo", tiny_kit / "qwen_image_edit_plus", toy_data, tmp_path,
        sample__true_cfg_scale=4.5, train__cfg=True, train__num_inner_epochs=1, sample__eval_true_cfg=False,
    )  # fmt: skip
    assert costs(rows[0]) == expected(2, cfg=2, update_cfg=2, eval_cfg=1) == (48, 64, 112, 12)
    assert rows[0]["ratio_deviation_max"] < 1e-5


@pytest.mark.parametrize(
    ("spec", "overrides", "message", "fix"),
    [
        (
            "config/qwen_image_edit_nft.py:tiny_grpo",
            {"sample.true_cfg_scale": 4.5},
            "algorithm='grpo' re-scores the rollouts' step log-probs, and they were sampled with true CFG: "
            "set train.cfg=True",
            {"train.cfg": True},
        ),
        (
            "config/qwen_image_edit_nft.py:tiny",
            {"train.cfg": True},
            "train.cfg=True guides the training forwards",
            {"sample.guidance_scale": 3.0},  # the original's key for Qwen's true-CFG scale
        ),
        (
            "config/kontext_nft.py:tiny_grpo",
            {"train.cfg": True},
            "model_family='kontext' run no true CFG",
            {"train.cfg": False},
        ),
    ],
)
def test_guided_training_needs_cfg_rollouts_and_grpo_needs_it_with_them(spec, overrides, message, fix):
    from edit_r1.config import ConfigError, validate_config

    config = load_config(str(REPO / spec))

    def apply(values: dict) -> None:
        for dotted, value in values.items():
            section, key = dotted.split(".")
            config[section][key] = value

    apply(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config, world_size=1, check_files=False)
    apply(fix)
    validate_config(config, world_size=1, check_files=False)  # no error once fixed
