"""The toy judge's pairwise training objective and the toy pairwise question."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edit_r1.toyworld.pairwise_judge import pairwise_loss
from reward_server.prompt_template import PAIRWISE_TEMPLATES, TEMPLATES, render_pairwise_prompt


def test_pairwise_loss_is_the_cross_entropy_against_the_bradley_terry_preference() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    scores = torch.tensor([[0.6, 0.5], [0.2, 0.2]])
    target = [1 / (1 + math.exp(-0.1 / 0.05)), 0.5]  # sigmoid((s_1 - s_2) / temperature)
    p_first = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))]  # softmax over the two logits
    expected = -sum(
        t * math.log(p) + (1 - t) * math.log(1 - p) for t, p in zip(target, p_first, strict=True)
    ) / len(target)
    assert pairwise_loss(logits, scores, temperature=0.05).item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_loss_is_smallest_at_the_target_preference() -> None:
    scores = torch.tensor([[0.7, 0.6]])
    target_logit = 0.1 / 0.05  # logit "1" - logit "2" whose softmax equals sigmoid(0.1 / 0.05)
    at_target = pairwise_loss(torch.tensor([[target_logit, 0.0]]), scores, 0.05)
    for shift in (-1.0, -0.1, 0.1, 1.0):
        assert pairwise_loss(torch.tensor([[target_logit + shift, 0.0]]), scores, 0.05) > at_target
    swapped = pairwise_loss(torch.tensor([[0.0, target_logit]]), scores.flip(1), 0.05)
    assert swapped.item() == pytest.approx(at_target.item())  # the order of the edits does not matter


def test_the_toy_template_has_a_short_pairwise_question() -> None:
    assert set(TEMPLATES) == set(PAIRWISE_TEMPLATES)  # every built-in template can judge pairs
    text = render_pairwise_prompt(" make the background red ", "", "toy_v1")
    assert text == "Edit: make the background red\nBetter, 1 or 2:"


def test_hard_pairs_put_a_good_edit_against_a_hard_negative_the_ground_truth_ranks_lower() -> None:
    from edit_r1.data.toy import toy_edit_scores
    from edit_r1.toyworld.pairwise_judge import hard_pairs

    sources, goods, negatives, records = hard_pairs(48, 32, seed=3, tasks=("background", "recolor"))
    assert len(sources) == len(goods) == len(negatives) == len(records) == 48
    good = np.asarray([toy_edit_scores(e, r).score for e, r in zip(goods, records, strict=True)])
    bad = np.asarray([toy_edit_scores(e, r).score for e, r in zip(negatives, records, strict=True)])
    # measured: means 0.72 against 0.37, the good edit higher for 73 %; half the negatives (the flat
    # field, the wrong shape, the source) score below 0.1, a kept shape moved or bled over keeps more
    assert good.mean() > bad.mean() + 0.25 and (good > bad).mean() >= 0.65, (good, bad)
    assert 0.3 <= (bad < 0.1).mean() <= 0.7


def test_degraded_edit_draws_only_the_kinds_asked_for() -> None:
    from edit_r1.data.toy import COLORS, Scene, Shape, Task
    from edit_r1.toyworld.judge import degraded_edit

    scene = Scene(size=32, background="white", shapes=(Shape("square", "red", (4, 4, 12, 12)),))
    task = Task("background", None, "green")
    rng = np.random.default_rng(0)
    flats = [np.asarray(degraded_edit(scene, task, rng, ("flat",)), dtype=np.float64) for _ in range(8)]
    green = np.asarray(COLORS["green"], dtype=np.float64)
    # a flat field with at most a faint trace of the scene (0.3), plus noise of at most 16 grey levels
    assert all(np.abs(f - green).mean() < 0.3 * 255 for f in flats)
    with pytest.raises(ValueError, match="unknown edit kinds \\['smudge'\\]"):
        degraded_edit(scene, task, rng, ("smudge",))


def test_pair_batches_draw_the_hard_pairs_at_their_share() -> None:
    from edit_r1.toyworld.pairwise_judge import PairwiseTraining, pair_sampling_weights

    settings = PairwiseTraining(num_synthetic=10, num_editor=30, num_hard=5, num_name_pairs=4)
    weights = pair_sampling_weights(settings)
    assert weights.shape == (2 * (10 + 30 + 5 + 4),) and weights.sum().item() == pytest.approx(1.0)
    assert weights[-8:].sum().item() == pytest.approx(0.2)  # the name pairs come last, both orders
    assert weights[-18:-8].sum().item() == pytest.approx(0.3)  # the hard pairs before them
    assert torch.unique(weights[:-18]).numel() == 1  # synthetic and editor pairs in proportion
    none = pair_sampling_weights(
        PairwiseTraining(num_synthetic=10, num_editor=30, num_hard=0, num_name_pairs=0)
    )
    assert none.shape == (80,) and torch.allclose(none, torch.full((80,), 1 / 80, dtype=torch.float64))
