"""The toy world's two-axis ground truth (``toy_edit_scores``) on hand-made images, and its rewards."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edit_r1.data.toy import (
    COLORS,
    Scene,
    Shape,
    Task,
    apply_task,
    decode_png,
    metadata_record,
    toy_edit_scores,
    toy_target_color_score,
    write_toy_dataset,
)
from edit_r1.rewards.base import RewardSample
from edit_r1.rewards.registry import build_reward_fn

SCENE = Scene(
    size=32,
    background="white",
    shapes=(
        Shape("circle", "red", (2, 2, 12, 12)),
        Shape("square", "green", (18, 3, 28, 13)),
        Shape("triangle", "blue", (4, 18, 14, 28)),
    ),
)
BACKGROUND = Task("background", None, "yellow")
RECOLOR = Task("recolor", "square", "purple")


def scores(image: Image.Image, task: Task, references=None):
    return toy_edit_scores(image, metadata_record(SCENE, task, ""), references=references)


@pytest.mark.parametrize("task", [BACKGROUND, RECOLOR])
def test_perfect_edit_scores_one_on_both_axes(task: Task) -> None:
    result = scores(apply_task(SCENE, task).render(), task)
    assert (result.success, result.preservation, result.score) == pytest.approx((1.0, 1.0, 1.0))


@pytest.mark.parametrize("task", [BACKGROUND, RECOLOR])
def test_unchanged_source_keeps_everything_and_succeeds_at_nothing(task: Task) -> None:
    result = scores(SCENE.render(), task)
    assert result.success < 0.02 and result.preservation == pytest.approx(1.0) and result.score < 0.15


@pytest.mark.parametrize("task", [BACKGROUND, RECOLOR])
def test_flat_field_of_the_requested_colour_preserves_nothing(task: Task) -> None:
    flat = Image.new("RGB", (32, 32), COLORS[task.color])
    result = scores(flat, task)
    assert result.success == pytest.approx(1.0) and result.preservation < 0.05 and result.score < 0.25
    # the preservation-blind rule rewards the flat field fully: the erasable reward
    assert toy_target_color_score(flat, metadata_record(SCENE, task, "")) == pytest.approx(1.0)


def test_erasing_one_of_three_kept_shapes_costs_a_third_of_preservation() -> None:
    erased = replace(SCENE, shapes=SCENE.shapes[1:])  # the circle is gone
    result = scores(apply_task(erased, BACKGROUND).render(), BACKGROUND)
    assert result.success == pytest.approx(1.0, abs=0.02)
    assert result.preservation == pytest.approx(2 / 3, abs=0.03)


def test_moved_shape_loses_preservation() -> None:
    moved = replace(SCENE, shapes=(Shape("circle", "red", (8, 8, 18, 18)), *SCENE.shapes[1:]))
    result = scores(apply_task(moved, RECOLOR).render(), RECOLOR)
    assert result.success == pytest.approx(1.0) and result.preservation < 0.85


def test_wrong_shape_recoloured_fails_the_instruction_and_changes_another_shape() -> None:
    wrong = apply_task(SCENE, Task("recolor", "circle", "purple")).render()
    result = scores(wrong, RECOLOR)
    assert result.success < 0.02 and result.preservation == pytest.approx(2 / 3, abs=0.03)
    assert result.score < 0.15


def test_colour_bleeding_into_the_shapes_lowers_preservation_in_proportion() -> None:
    pixels = np.asarray(apply_task(SCENE, BACKGROUND).render()).copy()
    pixels[2:7, 2:12] = COLORS["yellow"]  # the top half of the circle's box turns yellow
    result = scores(Image.fromarray(pixels), BACKGROUND)
    assert result.success == pytest.approx(1.0) and 0.7 < result.preservation < 0.95


def test_a_vae_like_reproduction_is_accepted_as_preserved() -> None:
    """With a blurred, colour-shifted source and perfect edit as references (what a VAE does to
    them), the same reproduction of the perfect edit scores ~1 on both axes; without them the
    shifted colours are penalised."""

    def reproduce(image: Image.Image) -> Image.Image:
        shifted = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.int16) + 25
        return Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))

    source, perfect = reproduce(SCENE.render()), reproduce(apply_task(SCENE, BACKGROUND).render())
    accepted = scores(perfect, BACKGROUND, references=(source, perfect))
    strict = scores(perfect, BACKGROUND)
    assert accepted.success == pytest.approx(1.0) and accepted.preservation == pytest.approx(1.0)
    assert strict.preservation < accepted.preservation - 0.1


def test_a_small_image_of_another_size_is_resized_to_the_scene() -> None:
    perfect = apply_task(SCENE, RECOLOR).render().resize((64, 64), Image.Resampling.NEAREST)
    assert scores(perfect, RECOLOR).score > 0.9


def test_missing_scene_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs metadata field 'scene'"):
        toy_edit_scores(np.zeros((4, 4, 3), dtype=np.uint8), {"target_color": [0, 0, 0]})


def test_dataset_records_carry_the_scene_and_the_references(tmp_path) -> None:
    blur = ImageFilter.GaussianBlur(0.8)
    root = write_toy_dataset(
        tmp_path, 4, 2, size=32, seed=1, reference=lambda images: [im.filter(blur) for im in images]
    )
    record = json.loads((root / "train_metadata.jsonl").read_text().splitlines()[0])
    source = Image.open(root / record["image"]).convert("RGB")
    assert np.array_equal(np.asarray(decode_png(record["reference_png"])), np.asarray(source.filter(blur)))
    assert "reference_target_png" in record and record["scene"]["size"] == 32
    sample = RewardSample(
        edited_image=source, source_image=source, instruction=record["prompt"], extra=record
    )
    values = {name: build_reward_fn(name)([sample])[0] for name in ("toy_edit", "toy_edit_success")}
    values["toy_edit_preservation"] = build_reward_fn("toy_edit_preservation")([sample])[0]
    assert values["toy_edit_success"] < 0.02 and values["toy_edit_preservation"] == pytest.approx(1.0)
    assert values["toy_edit"] == pytest.approx(np.sqrt(values["toy_edit_success"]))
    broken = sample._replace(extra={"prompt": "x"})
    assert np.isnan(build_reward_fn("toy_edit")([broken])[0])
