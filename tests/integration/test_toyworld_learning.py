"""DiffusionNFT must keep learning in the toy world (``docs/toyworld.md``).

One process, the committed toy editor, the ``:toy`` config (128 rollouts and one optimizer step per
epoch), the preservation-blind rule reward ``toy_color`` (no reward server), 4 epochs: the held-out rule score of the
32 test edits (fixed noise, so the same weights always score the same) must rise clearly.
"""

from __future__ import annotations

import pytest

from edit_r1.toyworld.learning import train_in_toy_world, write_dataset

# Measured (held-out rule score, epoch 0 -> 4; the seed also draws the evaluation noise): seed 0
# 0.598 -> 0.776, seed 1 0.604 -> 0.688, seed 2 0.626 -> 0.717; seed 0 at learning rate 1e-12 (no
# learning) 0.598 -> 0.605. The margin sits between the no-learning drift and the smallest gain.
MIN_GAIN = 0.05


@pytest.mark.slow
def test_nft_raises_the_held_out_rule_score_of_the_toy_editor(tmp_path) -> None:
    overrides = ["--config.eval_freq=4", "--config.eval_reward_fn={'toy_color': 1.0}"]
    dataset = write_dataset(tmp_path / "data")
    curve = train_in_toy_world(
        tmp_path / "run", seed=0, epochs=5, reward="rule_blind", dataset=dataset, overrides=overrides
    )
    scores = [point["rule_blind"] for point in curve]
    assert [point["epoch"] for point in curve] == [0, 4], curve
    assert scores[1] - scores[0] >= MIN_GAIN, scores
