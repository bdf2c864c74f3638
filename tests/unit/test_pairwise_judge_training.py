"""The toy judge's pairwise training objective and the toy pairwise question."""

from __future__ import annotations

import math

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
