"""Which shape does an editor colour? The binding of a shape recolour, measured per shape.

A recolour ("make the square red") succeeds only if the colour lands on the named shape. The
ground truth's success reads the named shape alone, so an editor that colours shapes at random
and one that never colours anything can score alike. For each held-out recolour this measures,
on every shape of the scene, how much of the shape shows the requested colour::

    colour(shape) = mean over the shape's pixels, less a 1 px border, of match(edit, c)

with the ground truth's ``match(p, q) = exp(-(||p - q|| / sqrt(3) / 0.15)^2)`` and ``c`` the
requested colour, and reports over the items: the mean ``colour`` of the named shape, the mean of
the most-coloured other shape, the share of edits where some shape is coloured (its ``colour`` at
least ``threshold``), and of those the share where the most-coloured shape is the named one.
An editor that reads the shape word puts that last share near 1; one that does not, near the
chance of picking the named shape among the scene's two or three (``chance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edit_r1.data.toy import BORDER, COLORS, Scene, _as_float_rgb, _colour_match, _erode, _object_masks

COLOURED = 0.3  # a shape counts as coloured when this much of it shows the requested colour


def shape_colours(edit: Image.Image | np.ndarray, scene: Scene, colour: str) -> dict[str, float]:
    """``{shape kind: mean match(edit, colour)}`` over each shape's pixels less a ``BORDER`` px rim."""
    pixels = _as_float_rgb(edit)
    if pixels.shape[:2] != (scene.size, scene.size):
        raise ValueError(f"edit is {pixels.shape[0]}x{pixels.shape[1]}, the scene is {scene.size} px")
    wanted = np.asarray(COLORS[colour], dtype=np.float64) / 255.0
    result = {}
    for kind, mask in _object_masks(scene)[1:]:
        inner = _erode(mask, BORDER)
        inner = inner if inner.any() else mask  # a shape too small to erode is read whole
        result[kind] = float(_colour_match(pixels[inner], wanted).mean())
    return result


def binding_summary(rows: Sequence[tuple[dict[str, float], str]], threshold: float = COLOURED) -> dict:
    """Summary of ``(shape_colours, named kind)`` rows (see the module docstring): ``named``,
    ``max_other``, ``coloured_share``, ``named_when_coloured`` (None when nothing is coloured),
    ``chance`` (what ``named_when_coloured`` would be if the coloured shape were any of its
    scene's shapes alike: the mean of ``1 / shapes`` over the coloured edits), ``items``."""
    if not rows:
        raise ValueError("binding_summary: no rows")
    named = [colours[kind] for colours, kind in rows]
    other = [max((v for k, v in colours.items() if k != kind), default=0.0) for colours, kind in rows]
    coloured = [(colours, kind) for colours, kind in rows if max(colours.values()) >= threshold]
    hits = [max(colours, key=colours.get) == kind for colours, kind in coloured]
    return {
        "items": len(rows),
        "named": round(float(np.mean(named)), 4),
        "max_other": round(float(np.mean(other)), 4),
        "coloured_share": round(len(coloured) / len(rows), 4),
        "named_when_coloured": round(float(np.mean(hits)), 4) if hits else None,
        "chance": round(float(np.mean([1 / len(c) for c, _ in coloured])), 4) if coloured else None,
    }


def recolour_binding(
    pipeline_dir: Path,
    transformer_dir: Path | None = None,
    num_items: int = 128,
    samples: int = 2,
    num_steps: int = 4,
    seed: int = 3100,
) -> dict:
    """:func:`binding_summary` of a policy's edits of ``num_items`` held-out recolours (scenes of
    ``seed``; the base editor's evaluation draws 3000 + its seed), ``samples`` noise draws each,
    deterministic Euler with ``num_steps`` steps as the build evaluates the editor."""
    from edit_r1.toyworld.editor import encode_pairs, generate
    from edit_r1.toyworld.images import scene_pairs, to_images
    from edit_r1.toyworld.policy_judge import load_source
    from edit_r1.toyworld.world import SIZE

    policy = load_source(pipeline_dir, transformer_dir)
    examples, sources, _ = scene_pairs(num_items, SIZE, seed, ("recolor",))
    cond, _ = encode_pairs(policy, examples, sources, sources)
    rows = []
    for draw in range(samples):
        edits = to_images(generate(policy, cond, num_steps, seed=draw))
        rows += [
            (shape_colours(e, scene, task.color), task.shape)
            for e, (scene, task) in zip(edits, examples, strict=True)
        ]
    return binding_summary(rows)
