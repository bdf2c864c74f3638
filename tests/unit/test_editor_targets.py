"""The base editor's training targets: kept sources, perfect edits, partial edits (docs/toyworld.md)."""

from __future__ import annotations

import numpy as np
import pytest

from edit_r1.data.toy import toy_edit_scores
from edit_r1.toyworld.editor import EditorTraining, partial_edit, training_targets
from edit_r1.toyworld.images import scene_pairs


@pytest.fixture(scope="module")
def pairs():
    return scene_pairs(64, 32, seed=11, tasks=("recolor", "background"))


def test_a_partial_edit_moves_only_the_edited_region_towards_the_perfect_edit(pairs) -> None:
    examples, sources, perfect = pairs
    source, target = np.asarray(sources[0], np.float32), np.asarray(perfect[0], np.float32)
    half = np.asarray(partial_edit(sources[0], perfect[0], 0.5), np.float32)
    region = np.any(source != target, axis=-1)
    np.testing.assert_array_equal(half[~region], source[~region])
    np.testing.assert_allclose(half[region], (source[region] + target[region]) / 2, atol=0.5)
    np.testing.assert_array_equal(np.asarray(partial_edit(sources[0], perfect[0], 1.0)), target)


def test_partial_targets_keep_the_scene_and_grade_success(pairs) -> None:
    """Every partial target keeps the whole scene (preservation 1 by the ground truth) and its
    success grows with its strength: one mode, graded, unlike the keep/edit mixture."""
    from edit_r1.data.toy import metadata_record

    examples, sources, perfect = pairs
    settings = EditorTraining(partial_edits=True, seed=3)
    targets = training_targets(sources, perfect, settings)
    strengths = np.sqrt(np.random.default_rng([3, 1]).random(len(perfect)))
    scores = np.array(
        [
            (lambda e: (e.success, e.preservation))(toy_edit_scores(np.asarray(t), metadata_record(s, k, "")))
            for t, (s, k) in zip(targets, examples, strict=True)
        ]
    )
    assert scores[:, 1].min() > 0.99, scores[:, 1].min()
    assert np.corrcoef(strengths, scores[:, 0])[0, 1] > 0.8
    assert 0.3 < scores[:, 0].mean() < 0.95, scores[:, 0].mean()


def test_keep_share_targets_are_sources_or_perfect_edits(pairs) -> None:
    _, sources, perfect = pairs
    targets = training_targets(sources, perfect, EditorTraining(keep_share=0.5, seed=0))
    kept = [t is s for t, s in zip(targets, sources, strict=True)]
    assert all(k or t is p for k, t, p in zip(kept, targets, perfect, strict=True))
    assert 0.3 < np.mean(kept) < 0.7


def test_partial_edits_and_keep_share_together_are_refused(pairs) -> None:
    _, sources, perfect = pairs
    with pytest.raises(ValueError, match="partial_edits and keep_share"):
        training_targets(sources, perfect, EditorTraining(partial_edits=True, keep_share=0.5))
