"""DiffusionNFT must learn to edit in the toy world while keeping the scene (``docs/toyworld.md``).

One process, the committed toy editor, the ``:toy`` config (128 rollouts and one optimizer step per
epoch), 4 epochs on shape recolours and background edits, rewarded by the ground truth ``toy_edit``
plus 1.5 x its preservation part (no reward server): the held-out ground truth of the 32 test edits
(paired evaluation, ``sample.eval_same_noise``: every evaluation draws epoch 0's noise, so the same
weights always score the same) must rise, its success part too, and its preservation part must
not fall below epoch 0's by more than 0.05; the same run at learning rate 1e-12 (no learning)
must not rise so.

Measured on the committed partial-edit editor (seed 0, epoch 0 -> 4, paired): ground truth
0.300 -> 0.394, success 0.236 -> 0.338, preservation 0.866 -> 0.831; the control stays at 0.300
exactly. Four epochs at weight 1.5 trade some scene for colour; holding preservation within issue
26's 0.02 takes weight 2.0 and 40-48 epochs (``:toy_keep``, ``make demo``; ``docs/toyworld.md``,
"On the partial-edit editor"), too long for this test, so the tolerance here is the measured
loss plus a margin and the test guards the learning. On the keep-pair editor before it, the same
test measured 0.216 -> 0.271 with preservation 0.847 -> 0.808.
"""

from __future__ import annotations

import pytest

from edit_r1.toyworld.learning import train_in_toy_world, write_dataset

# The margins sit between the no-learning drift and the smallest measured gain (docs/toyworld.md).
MIN_GAIN = 0.06  # measured 0.094; the no-learning control moves by 0 (paired noise)
PRESERVATION_TOLERANCE = 0.05  # measured -0.035 at this weight and length (see above)
REWARD = "--config.reward_fn={'toy_edit': 1.0, 'toy_edit_preservation': 1.5}"
EVAL = "--config.eval_reward_fn={'toy_edit': 1.0, 'toy_edit_success': 0.0, 'toy_edit_preservation': 0.0}"


def _curve(tmp_path, name: str, dataset, extra: tuple[str, ...] = ()) -> list[dict]:
    overrides = ["--config.eval_freq=4", REWARD, EVAL, *extra]
    curve = train_in_toy_world(
        tmp_path / name, seed=0, epochs=5, reward="rule", dataset=dataset, overrides=overrides
    )
    assert [point["epoch"] for point in curve] == [0, 4], curve
    return curve


@pytest.mark.slow
def test_nft_raises_success_and_keeps_the_scene(tmp_path) -> None:
    dataset = write_dataset(tmp_path / "data")
    before, after = _curve(tmp_path, "run", dataset)
    assert after["rule"] - before["rule"] >= MIN_GAIN, (before, after)
    assert after["success"] > before["success"], (before, after)
    assert after["preservation"] >= before["preservation"] - PRESERVATION_TOLERANCE, (before, after)
    still, moved = _curve(tmp_path, "control", dataset, ("--config.train.learning_rate=1e-12",))
    assert still["rule"] == pytest.approx(before["rule"], abs=1e-6)  # same weights, same noise
    assert moved["rule"] - still["rule"] < MIN_GAIN, (still, moved)
