"""DiffusionNFT must keep learning in the toy world (``docs/toyworld.md``).

One process, the committed toy editor, the ``:toy`` config (128 rollouts and one optimizer step per
epoch), the ground-truth reward ``toy_edit`` (no reward server), 4 epochs, on shape recolours and
background edits: the held-out ground truth of the 32 test edits (fixed noise, so the same weights
always score the same) must rise clearly, its success part too; the same run at learning rate
1e-12 (no learning) must not rise so.

Measured (seed 0, epoch 0 -> 4): ground truth 0.216 -> 0.310, success 0.191 -> 0.371, preservation
0.848 -> 0.694; at learning rate 1e-12: 0.216 -> 0.207, preservation 0.858. Preservation falls
while the ground truth rises, so it is not asserted here: keeping it is the open part of
issue 26 (docs/toyworld.md, "Reinforcement learning in the toy world").
"""

from __future__ import annotations

import pytest

from edit_r1.toyworld.learning import train_in_toy_world, write_dataset

# The margins sit between the no-learning drift and the smallest measured gain (docs/toyworld.md).
MIN_GAIN = 0.05
EVAL = "--config.eval_reward_fn={'toy_edit': 1.0, 'toy_edit_success': 0.0, 'toy_edit_preservation': 0.0}"


def _curve(tmp_path, name: str, dataset, extra: tuple[str, ...] = ()) -> list[dict]:
    overrides = ["--config.eval_freq=4", EVAL, *extra]
    curve = train_in_toy_world(
        tmp_path / name, seed=0, epochs=5, reward="rule", dataset=dataset, overrides=overrides
    )
    assert [point["epoch"] for point in curve] == [0, 4], curve
    return curve


@pytest.mark.slow
def test_nft_raises_the_ground_truth_and_its_success(tmp_path) -> None:
    dataset = write_dataset(tmp_path / "data")
    before, after = _curve(tmp_path, "run", dataset)
    assert after["rule"] - before["rule"] >= MIN_GAIN, (before, after)
    assert after["success"] > before["success"], (before, after)
    still, moved = _curve(tmp_path, "control", dataset, ("--config.train.learning_rate=1e-12",))
    assert still["rule"] == pytest.approx(before["rule"], abs=1e-6)  # same weights, same noise
    assert moved["rule"] - still["rule"] < MIN_GAIN, (still, moved)
