"""Which shape an edit colours (:mod:`edit_r1.toyworld.binding`), on hand-made images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edit_r1.data.toy import Scene, Shape, Task, apply_task
from edit_r1.toyworld.__main__ import main
from edit_r1.toyworld.binding import binding_summary, shape_colours

# Three shapes in three quadrants of a black scene; the square is the one the task names.
PLACED = (
    ("triangle", "yellow", (18, 18, 29, 29)),
    ("square", "green", (3, 18, 13, 28)),
    ("circle", "red", (18, 2, 28, 12)),
)
SCENE = Scene(32, "black", tuple(Shape(kind, colour, box) for kind, colour, box in PLACED))
TASK = Task("recolor", "square", "purple")


def recoloured(kind: str):
    """The scene with the shape ``kind`` (not necessarily the named one) turned purple."""
    return apply_task(SCENE, replace(TASK, shape=kind)).render()


def test_the_perfect_edit_colours_the_named_shape_alone() -> None:
    colours = shape_colours(recoloured("square"), SCENE, "purple")
    assert colours["square"] == pytest.approx(1.0)
    assert colours["circle"] < 0.1 and colours["triangle"] < 0.1  # palette colours: match <= 0.06
    summary = binding_summary([(colours, "square")])
    assert summary["named_when_coloured"] == 1.0 and summary["coloured_share"] == 1.0


def test_the_wrong_shape_recoloured_counts_as_a_miss() -> None:
    colours = shape_colours(recoloured("circle"), SCENE, "purple")
    summary = binding_summary([(colours, "square")])
    assert summary["named"] < 0.1 and summary["max_other"] == pytest.approx(1.0)
    assert summary["named_when_coloured"] == 0.0


def test_the_unchanged_source_colours_nothing() -> None:
    summary = binding_summary([(shape_colours(SCENE.render(), SCENE, "purple"), "square")])
    assert summary["coloured_share"] == 0.0 and summary["named_when_coloured"] is None


def test_a_half_coloured_shape_reads_as_half() -> None:
    """Half of the square's inner pixels purple: its colour is about a half, below a full recolour."""
    pixels = np.asarray(SCENE.render()).copy()
    pixels[18:28, 3:8] = np.asarray(recoloured("square"))[18:28, 3:8]  # its left half
    colours = shape_colours(pixels, SCENE, "purple")
    assert 0.3 < colours["square"] < 0.7


def test_the_summary_counts_hits_among_the_coloured_edits_only() -> None:
    rows = [
        (shape_colours(recoloured("square"), SCENE, "purple"), "square"),
        (shape_colours(recoloured("circle"), SCENE, "purple"), "square"),
        (shape_colours(SCENE.render(), SCENE, "purple"), "square"),
    ]
    summary = binding_summary(rows)
    assert summary["items"] == 3
    assert summary["coloured_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["named_when_coloured"] == 0.5
    assert summary["chance"] == pytest.approx(1 / 3, abs=1e-4)  # three shapes in the scene


def test_an_edit_of_another_size_and_an_empty_summary_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="the scene is 32 px"):
        shape_colours(np.zeros((16, 16, 3), np.uint8), SCENE, "purple")
    with pytest.raises(ValueError, match="no rows"):
        binding_summary([])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recolour-binding", "--items", "0"], "--items 0"),
        (["recolour-binding", "--samples", "99"], "--samples 99"),
        (["recolour-binding", "--policy", "/nonexistent/transformer"], "not a transformer folder"),
    ],
)
def test_cli_rejects_bad_arguments_with_a_message(argv, message) -> None:
    with pytest.raises(SystemExit, match=message):
        main(argv)
