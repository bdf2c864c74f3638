"""Flow-GRPO in the shared trainer on the tiny Qwen kit: on-policy ratio, learning signal, exact resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_trainer import checkpoint_tensors, metrics_without_times

from edit_r1 import distributed
from edit_r1.algo import build_algorithm
from edit_r1.config import load_config
from edit_r1.data.toy import write_toy_dataset
from edit_r1.trainer import build_trainer, prepare_settings, trainer_from_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, 8, 2, size=64, seed=0)
    return root


def grpo_config(tiny_kit: Path, toy_data: Path, logdir: Path, run_name: str, **overrides):
    config = load_config(str(REPO / "config/qwen_image_edit_nft.py:tiny_grpo"))
    config.pretrained.model = str(tiny_kit / "qwen_image_edit_plus")
    config.dataset = str(toy_data)
    config.logdir = str(logdir)
    config.run_name = run_name
    config.save_freq = 10
    config.eval_freq = 100
    for key, value in overrides.items():
        config[key] = value
    return config


class RecordingAlgorithm:
    """The run's algorithm, handed to the trainer, recording every step's diagnostics."""

    def __init__(self, algorithm) -> None:
        self.algorithm, self.recorded = algorithm, []

    def __getattr__(self, name: str):
        return getattr(self.algorithm, name)

    def loss(self, forward, batch, steps):
        loss, info = self.algorithm.loss(forward, batch, steps)
        self.recorded.append({key: float(value) for key, value in info.items()})
        return loss, info


@pytest.fixture(scope="module")
def straight(tiny_kit, toy_data, tmp_path_factory):
    """Two epochs of ``tiny_grpo`` (checkpoints after each), recording every step's diagnostics."""
    config = grpo_config(tiny_kit, toy_data, tmp_path_factory.mktemp("grpo"), "straight", num_epochs=2)
    config.save_freq = 1
    config.train.learning_rate = 3e-2
    dist = distributed.init_distributed(device="cpu")
    settings, plan = prepare_settings(config, dist)
    algorithm = RecordingAlgorithm(build_algorithm(settings.algorithm, settings.rollout))
    assert (
        algorithm.name == "grpo" and algorithm.rollout_adapter == "default" and not algorithm.uses_old_policy
    )
    trainer = build_trainer(settings, dist, plan=plan, logged_config=config.to_dict(), algorithm=algorithm)
    before = [p.detach().clone() for p in trainer.updater.params]
    trainer.run()
    return SimpleNamespace(trainer=trainer, recorded=algorithm.recorded, before=before)


def test_first_inner_step_is_on_policy_and_the_second_is_not(straight):
    # Per epoch: 8 samples = 2 micro-batches of 4, 2 trained steps each, 2 inner epochs; one
    # optimizer step per pass.
    assert len(straight.recorded) == 2 * (2 * 2 * 2)
    first_pass, second_pass = straight.recorded[:4], straight.recorded[4:8]
    for (
        info
    ) in first_pass:  # the weights that sampled the rollouts: the recomputed log-prob is the stored one
        assert info["ratio_deviation_max"] < 1e-5, info
    assert all(info["ratio_deviation_max"] > 1e-4 for info in second_pass), second_pass
    assert all(info["kl_loss"] > 0 for info in second_pass)  # the policy left the reference
    updater = straight.trainer.updater
    changed = [not torch.equal(b, p.detach()) for b, p in zip(straight.before, updater.params, strict=True)]
    assert sum(changed) > len(changed) // 2
    assert updater.global_step == 4
    row = metrics_without_times(straight.trainer.run_dir)[0]
    for key in ("policy_loss", "kl_loss", "clipfrac", "approx_kl", "ratio_mean", "total_loss"):
        assert key in row


def test_grpo_resume_continues_bit_for_bit(straight, tiny_kit, toy_data, tmp_path):
    checkpoint = straight.trainer.run_dir / "checkpoints" / "checkpoint-1"
    config = grpo_config(tiny_kit, toy_data, tmp_path, "resumed", num_epochs=2, resume_from=str(checkpoint))
    config.save_freq = 1
    config.train.learning_rate = 3e-2
    resumed = trainer_from_config(config, distributed.init_distributed(device="cpu"))
    resumed.run()
    assert resumed.first_epoch == 1
    groups = ("default", "ema", "optimizer")  # GRPO never reads an old policy, so saves none
    a, b = (
        checkpoint_tensors(straight.trainer.run_dir, 2, groups),
        checkpoint_tensors(resumed.run_dir, 2, groups),
    )
    with pytest.raises(KeyError, match="'old'"):
        checkpoint_tensors(straight.trainer.run_dir, 2, ("old",))
    for group in a:
        for name in a[group]:
            assert torch.equal(a[group][name], b[group][name]), f"{group}/{name} differs after resume"
    assert metrics_without_times(straight.trainer.run_dir)[1:] == metrics_without_times(resumed.run_dir)
