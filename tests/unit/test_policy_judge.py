"""The policy-judge experiment's pure parts: the hacked-edit preference and the batch mixture."""

import numpy as np
import pytest
import torch

from edit_r1.toyworld.policy_judge import (
    HACKED_PRESERVATION,
    hacked_preference,
    held_out_examples,
    mixture_weights,
    rl_examples,
)


def test_hacked_preference_counts_only_hacked_items_and_separates_judge_from_truth():
    preservation = np.array([0.2, 0.3, 0.9, 0.1])  # item 2 is kept, not hacked
    judge_policy, judge_base = np.array([0.8, 0.2, 0.9, 0.7]), np.array([0.3, 0.4, 0.1, 0.2])
    truth_policy, truth_base = np.array([0.1, 0.1, 0.9, 0.6]), np.array([0.4, 0.2, 0.1, 0.3])
    result = hacked_preference(judge_policy, judge_base, truth_policy, truth_base, preservation)
    # hacked: items 0, 1, 3; the judge prefers 0 and 3, the truth only 3; so 0 is the wrong one
    assert result == {
        "num_hacked": 3,
        "judge_prefers_hacked": round(2 / 3, 4),
        "truth_prefers_hacked": round(1 / 3, 4),
        "judge_wrongly_prefers_hacked": round(1 / 3, 4),
        "pair_agreement": round(2 / 3, 4),
        "overrating_hacked": round(((0.8 - 0.1) + (0.2 - 0.1) + (0.7 - 0.6)) / 3, 4),
    }


def test_hacked_preference_without_hacked_items():
    kept = np.full(3, HACKED_PRESERVATION)  # the threshold itself is not hacked
    assert hacked_preference(kept, kept, kept, kept, kept) == {"num_hacked": 0}


def test_mixture_weights_give_each_part_its_share():
    weights = mixture_weights([4, 2, 10], [0.3, 0.3, 0.4])
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[:4].sum().item() == pytest.approx(0.3)
    assert weights[6:].sum().item() == pytest.approx(0.4)
    assert torch.allclose(weights[6:], weights[6:].mean().expand(10))


def test_held_out_examples_start_with_the_rl_test_items_and_avoid_the_train_items():
    test, held = rl_examples("test"), held_out_examples(64)
    assert len(held) == 64 and held[: len(test)] == test
    train = {(repr(scene), repr(task)) for scene, task in rl_examples("train")}
    assert not train & {(repr(scene), repr(task)) for scene, task in held}
