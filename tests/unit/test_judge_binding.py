"""What teaches the toy judge which shape the instruction names (docs/toyworld.md, "The judge on
both axes"): name pairs, the shape-token targets of the source image and their loss, and the batch
shares of the training set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit_r1.data.toy import COLORS, SHAPES, Scene, Shape, Task, scene_from_record, toy_edit_scores
from edit_r1.toyworld.judge import (
    JudgeTraining,
    judge_record,
    name_pair_triples,
    sampling_weights,
    shape_token_loss,
    shape_token_targets,
)


def test_name_pairs_show_one_edit_under_the_other_name_then_its_own() -> None:
    sources, edits, records = name_pair_triples(6, 32, seed=1)
    assert len(edits) == len(records) == 12
    for i in range(0, 12, 2):
        (scene_a, task_a), (scene_b, task_b) = (scene_from_record(r["scene"]) for r in records[i : i + 2])
        assert scene_a == scene_b and task_a.color == task_b.color and task_a.shape != task_b.shape
        assert edits[i] is edits[i + 1] and sources[i].tobytes() == scene_a.render().tobytes()
        wrong, right = (toy_edit_scores(edits[j], records[j]) for j in (i, i + 1))
        assert wrong.success == 0.0 and wrong.score == 0.0
        assert right.success == pytest.approx(1.0) and right.preservation == pytest.approx(1.0)


def test_shape_token_targets_state_the_share_of_each_token_each_shape_covers() -> None:
    square = Shape(kind="square", color="red", box=(0, 0, 8, 8))  # exactly token (0, 0) of 8 px tokens
    straddling = Shape(kind="triangle", color="blue", box=(20, 16, 28, 24))  # half of tokens (2, 2), (2, 3)
    scene = Scene(size=32, background="white", shapes=(square, straddling))
    record = judge_record(scene, Task("background", None, "green"))
    targets = shape_token_targets([record], grid=4)[0].numpy()
    assert targets.shape == (16, len(SHAPES))
    assert targets[0, SHAPES.index("square")] == 1.0 and targets[0].sum() == 1.0
    triangle = targets[:, SHAPES.index("triangle")]
    assert (
        triangle[2 * 4 + 2] > 0
        and triangle[2 * 4 + 3] > 0
        and triangle.sum()
        == pytest.approx(
            np.all(np.asarray(scene.render())[16:24, 20:28] == COLORS["blue"], axis=-1).sum() / 64
        )
    )
    assert targets[:, SHAPES.index("circle")].sum() == 0.0
    assert targets[[1, 4, 15]].sum() == 0.0  # tokens with no shape


def test_shape_token_loss_reads_the_first_images_tokens_only() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3)
    embeddings = torch.randn(2, 9, 4)
    image_mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    firsts = torch.stack([embeddings[0, [1, 2]], embeddings[1, [2, 3]]])
    with torch.no_grad():
        exact = head(firsts)
    assert shape_token_loss(head, embeddings, image_mask, exact).item() == pytest.approx(0.0, abs=1e-12)
    shifted = exact + torch.tensor([1.0, 0.0, 0.0])
    assert shape_token_loss(head, embeddings, image_mask, shifted).item() == pytest.approx(
        2.0
    )  # 2 tokens x 1
    embeddings[:, [4, 5]] += 100.0  # the second image's tokens do not count
    assert shape_token_loss(head, embeddings, image_mask, exact).item() == pytest.approx(0.0, abs=1e-12)


def test_sampling_weights_give_each_part_its_batch_share() -> None:
    settings = JudgeTraining(num_train=10, num_train_editor=4, editor_rounds=2, num_name_pairs=3)
    weights = sampling_weights(settings)
    assert len(weights) == 10 + 8 + 6 and weights.sum().item() == pytest.approx(1.0)
    synthetic, editor, pairs = weights[:10].sum(), weights[10:18].sum(), weights[18:].sum()
    assert pairs.item() == pytest.approx(settings.name_pair_share)
    assert editor.item() == pytest.approx((1 - settings.name_pair_share) * settings.editor_share)
    assert synthetic.item() == pytest.approx((1 - settings.name_pair_share) * (1 - settings.editor_share))
    without = sampling_weights(
        JudgeTraining(num_train=10, num_train_editor=4, editor_rounds=2, num_name_pairs=0)
    )
    assert len(without) == 18 and without[10:].sum().item() == pytest.approx(settings.editor_share)
