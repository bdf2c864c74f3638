"""A synthetic editing dataset of coloured shapes, plus a rule reward that checks the edit.

Writes the upstream layout (``DIR/images/*.png``, ``DIR/{train,test}_metadata.jsonl``)::

    python -m edit_r1.data.toy --out DIR --train N --test M [--size 64] [--seed 0]

Each image is a flat background with two or three distinct shapes (circle, square, triangle) in
different quadrants. Each item asks for one of three edits:

* ``recolor``    -- "make the circle red"
* ``remove``     -- "remove the square" (its area becomes background)
* ``background`` -- "change the background to blue"

with a ``requirement`` sentence per task type. Every fourth item repeats the previous item's
instruction on a different image, so keying groups by instruction alone would merge them.

Besides the three standard fields each line carries extra fields that :class:`EditDataset` keeps in
``EditItem.extra`` and that :func:`toy_target_color_score` reads: ``task``; ``target_color``
``[r, g, b]`` (the colour the edited region must show: the new colour, or the background colour for
a removal); ``target_box`` ``[x0, y0, x1, y1]`` as fractions of width/height; ``source_fraction`` and
``target_fraction``, the shares of the box showing ``target_color`` before and after a perfect edit. Output is a pure function of
``(N, M, size, seed)``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 170),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
TASKS = ("recolor", "remove", "background")
REPEAT_EVERY = 4  # item i with i % 4 == 3 reuses item i-1's instruction on a new image
# Width of the colour match: RGB distance (in [0, 1] after dividing by sqrt(3)) at which a pixel
# counts e^-1 of a perfect match. Palette colours are >= 0.25 apart (blue/purple), so a wrong
# palette colour scores <= 0.06 while a near miss from a blurry decoder still earns partial credit.
COLOR_TOLERANCE = 0.15

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    box: Box  # pixel box (x0, y0, x1, y1), inclusive of x0/y0, exclusive of x1/y1


@dataclass(frozen=True)
class Scene:
    size: int
    background: str
    shapes: tuple[Shape, ...]

    def shape(self, kind: str) -> Shape | None:
        return next((s for s in self.shapes if s.kind == kind), None)

    def render(self) -> Image.Image:
        """Draw without anti-aliasing, so every pixel has an exact palette colour."""
        image = Image.new("RGB", (self.size, self.size), COLORS[self.background])
        draw = ImageDraw.Draw(image)
        for shape in self.shapes:
            x0, y0, x1, y1 = shape.box
            fill = COLORS[shape.color]
            if shape.kind == "circle":
                draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
            elif shape.kind == "square":
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
            else:
                draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
        return image


@dataclass(frozen=True)
class Task:
    kind: str  # recolor | remove | background
    shape: str | None  # the shape edited (None for background)
    color: str | None  # the new colour (None for remove)

    @property
    def prompt(self) -> str:
        if self.kind == "recolor":
            return f"make the {self.shape} {self.color}"
        if self.kind == "remove":
            return f"remove the {self.shape}"
        return f"change the background to {self.color}"

    def requirement(self, scene: Scene) -> str:
        if self.kind == "recolor":
            return (
                f"Only the {self.shape} changes: it must become {self.color} and keep its shape, size and "
                "position. The background and the other shapes stay exactly as they are."
            )
        if self.kind == "remove":
            return (
                f"The {self.shape} disappears completely and its area shows the {scene.background} "
                "background. The other shapes and the background stay unchanged."
            )
        return (
            f"Only the background changes, to {self.color}. Every shape keeps its colour, size and position."
        )


def apply_task(scene: Scene, task: Task) -> Scene:
    """The scene a perfect edit would produce."""
    if task.kind == "background":
        return replace(scene, background=task.color)
    if task.kind == "remove":
        return replace(scene, shapes=tuple(s for s in scene.shapes if s.kind != task.shape))
    shapes = tuple(replace(s, color=task.color) if s.kind == task.shape else s for s in scene.shapes)
    return replace(scene, shapes=shapes)


def is_applicable(scene: Scene, task: Task) -> bool:
    """The edit is visible and unambiguous: the shape exists, the colour actually changes and
    stays distinguishable from the background and the other shapes."""
    used = {scene.background} | {s.color for s in scene.shapes}
    if task.kind == "background":
        return task.color not in used
    target = scene.shape(task.shape)
    if target is None:
        return False
    return task.kind == "remove" or task.color not in used


def random_scene(rng: np.random.Generator, size: int, required_shape: str | None = None) -> Scene:
    """Two or three distinct shapes in distinct quadrants, all colours distinct from each other."""
    count = int(rng.integers(2, 4))
    kinds = list(rng.permutation(SHAPES)[:count])
    if required_shape is not None and required_shape not in kinds:
        kinds[0] = required_shape
    colors = [str(c) for c in rng.permutation(list(COLORS))[: count + 1]]
    cells = rng.permutation(4)[:count]
    half = size // 2
    shapes = []
    for kind, color, cell in zip(kinds, colors[1:], cells, strict=True):
        side = int(rng.integers(max(4, half * 5 // 10), max(5, half * 8 // 10) + 1))
        x = (cell % 2) * half + int(rng.integers(0, half - side + 1))
        y = (cell // 2) * half + int(rng.integers(0, half - side + 1))
        shapes.append(Shape(kind=str(kind), color=color, box=(x, y, x + side, y + side)))
    return Scene(size=size, background=colors[0], shapes=tuple(shapes))


def random_task(rng: np.random.Generator, scene: Scene, tasks: tuple[str, ...] = TASKS) -> Task:
    kind = str(rng.choice(tasks))
    shape = str(rng.choice([s.kind for s in scene.shapes]))
    free_colors = [c for c in COLORS if c != scene.background and all(c != s.color for s in scene.shapes)]
    color = str(rng.choice(free_colors))
    if kind == "background":
        return Task("background", None, color)
    if kind == "remove":
        return Task("remove", shape, None)
    return Task("recolor", shape, color)


def scene_for_task(rng: np.random.Generator, size: int, task: Task, max_tries: int = 1000) -> Scene:
    """A random scene on which ``task`` is applicable (rejection sampling, deterministic per rng)."""
    for _ in range(max_tries):
        scene = random_scene(rng, size, required_shape=task.shape)
        if is_applicable(scene, task):
            return scene
    raise RuntimeError(f"no applicable scene found for {task.prompt!r} in {max_tries} tries")


def generate_examples(
    num: int, size: int, rng: np.random.Generator, tasks: tuple[str, ...] = TASKS
) -> list[tuple[Scene, Task]]:
    """``num`` (scene, task) pairs of the given task kinds; every ``REPEAT_EVERY``-th repeats the
    previous instruction."""
    check_tasks(tasks)
    examples: list[tuple[Scene, Task]] = []
    for i in range(num):
        if i % REPEAT_EVERY == REPEAT_EVERY - 1:
            task = examples[-1][1]
            scene = scene_for_task(rng, size, task)
        else:
            scene = random_scene(rng, size)
            task = random_task(rng, scene, tasks)
        examples.append((scene, task))
    return examples


def check_tasks(tasks: tuple[str, ...]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ValueError(f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")


def _color_share(image: Image.Image, color: tuple[int, int, int], box: Box) -> float:
    x0, y0, x1, y1 = box
    return float(np.all(np.asarray(image)[y0:y1, x0:x1] == color, axis=-1).mean())


def target_region(scene: Scene, task: Task) -> tuple[tuple[int, int, int], Box, float, float]:
    """``(target colour, pixel box, share of the box in that colour before, and after a perfect edit)``."""
    if task.kind == "background":
        color, box = COLORS[task.color], (0, 0, scene.size, scene.size)
    else:
        box = scene.shape(task.shape).box
        color = COLORS[scene.background] if task.kind == "remove" else COLORS[task.color]
    before = _color_share(scene.render(), color, box)
    after = _color_share(apply_task(scene, task).render(), color, box)
    return color, box, before, after


def scene_record(scene: Scene, task: Task) -> dict[str, Any]:
    """The scene and the edit as plain data (``metadata["scene"]``), from which :func:`scene_from_record`
    redraws the source and the perfect edit exactly (what :func:`toy_edit_scores` compares against)."""
    return {
        "size": int(scene.size),
        "background": scene.background,
        "shapes": [[s.kind, s.color, [int(v) for v in s.box]] for s in scene.shapes],
        "edit": [task.kind, task.shape, task.color],
    }


def scene_from_record(record: Mapping[str, Any]) -> tuple[Scene, Task]:
    """The (scene, task) of a :func:`scene_record`."""
    shapes = tuple(Shape(kind, color, tuple(box)) for kind, color, box in record["shapes"])
    kind, shape, color = record["edit"]
    return Scene(int(record["size"]), record["background"], shapes), Task(kind, shape, color)


def metadata_record(scene: Scene, task: Task, image_relpath: str) -> dict[str, Any]:
    color, (x0, y0, x1, y1), before, after = target_region(scene, task)
    size = scene.size
    return {
        "prompt": task.prompt,
        "image": image_relpath,
        "requirement": task.requirement(scene),
        "task": task.kind,
        "target_color": list(color),
        "target_box": [x0 / size, y0 / size, x1 / size, y1 / size],
        "source_fraction": round(before, 6),
        "target_fraction": round(after, 6),
        "scene": scene_record(scene, task),
    }


def write_toy_dataset(
    out: str | Path,
    num_train: int,
    num_test: int,
    size: int = 64,
    seed: int = 0,
    tasks: tuple[str, ...] = TASKS,
    reference: Callable[[list[Image.Image]], list[Image.Image]] | None = None,
) -> Path:
    """Write images and both metadata files under ``out``; returns ``out`` as a Path.

    ``tasks`` restricts the edit kinds (default: all of :data:`TASKS`). ``reference`` maps images
    to the same images as an autoencoder reproduces them (the toy world's VAE); the source's and
    the perfect edit's are stored in each record as ``reference_png`` and ``reference_target_png``
    (base64 PNG), which :func:`toy_edit_scores` also accepts as a match. Without it only the exact
    drawings count."""
    if size < 16:
        raise ValueError(f"size must be >= 16 so every shape is visible, got {size}")
    if num_train < 1 or num_test < 1:
        raise ValueError(f"need at least one train and one test item, got {num_train} and {num_test}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split_index, (split, num) in enumerate((("train", num_train), ("test", num_test))):
        rng = np.random.default_rng([seed, split_index])
        lines = []
        examples = generate_examples(num, size, rng, tasks)
        sources = [scene.render() for scene, _ in examples]
        targets = [apply_task(scene, task).render() for scene, task in examples]
        refs = reference(sources + targets) if reference is not None else [None] * (2 * num)
        for i, (scene, task) in enumerate(examples):
            relpath = f"images/{split}_{i:05d}.png"
            sources[i].save(out / relpath)
            record = metadata_record(scene, task, relpath)
            if reference is not None:
                record["reference_png"], record["reference_target_png"] = (
                    encode_png(refs[i]),
                    encode_png(refs[num + i]),
                )
            lines.append(json.dumps(record))
        (out / f"{split}_metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _as_float_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 float array in [0, 1] from a PIL image, a uint8 array or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def _box_pixels(box: list[float], height: int, width: int) -> tuple[slice, slice]:
    x0, y0, x1, y1 = box
    cols = slice(math.floor(x0 * width), max(math.floor(x0 * width) + 1, math.ceil(x1 * width)))
    rows = slice(math.floor(y0 * height), max(math.floor(y0 * height) + 1, math.ceil(y1 * height)))
    return rows, cols


def toy_target_color_score(edited: Image.Image | np.ndarray, metadata: Mapping[str, Any]) -> float:
    """How well the edited image shows the requested colour where the edit should happen, in [0, 1].

    With ``c = metadata["target_color"] / 255``, the pixels ``p`` inside ``metadata["target_box"]``
    (fractions of width/height, so any output resolution works), and the shares of the box that show
    ``c`` in the source image (``s0 = metadata["source_fraction"]``, default 0) and after a perfect
    edit (``f = metadata["target_fraction"]``, default 1)::

        d(p) = ||p - c||_2 / sqrt(3)                     # RGB distance in [0, 1]
        m = mean_box(exp(-(d / 0.15)^2))                 # soft share of the box showing c
        score = clip((m - s0) / (f - s0), 0, 1)

    so the unedited source scores 0 and a perfect edit scores 1 (e.g. removing a triangle: half its
    box already shows the background, which earns nothing). It is blind to preservation: a flat
    field of the requested colour scores 1 (kept as the ``toy_color`` reward, the erasable reward
    of the earlier toy world; :func:`toy_edit_scores` is the one that checks the rest is kept).
    """
    for name in ("target_color", "target_box"):
        if name not in metadata:
            raise ValueError(f"toy_target_color_score needs metadata field {name!r}; got {sorted(metadata)}")
    pixels = _as_float_rgb(edited)
    rows, cols = _box_pixels(list(metadata["target_box"]), pixels.shape[0], pixels.shape[1])
    target = np.asarray(metadata["target_color"], dtype=np.float64) / 255.0
    distance = np.linalg.norm(pixels[rows, cols] - target, axis=-1) / math.sqrt(3.0)
    share = float(np.exp(-((distance / COLOR_TOLERANCE) ** 2)).mean())
    before = float(metadata.get("source_fraction", 0.0))
    after = float(metadata.get("target_fraction", 1.0))
    if after <= before:
        raise ValueError(f"target_fraction ({after}) must exceed source_fraction ({before})")
    return float(np.clip((share - before) / (after - before), 0.0, 1.0))


def encode_png(image: Image.Image) -> str:
    """``image`` as a base64 PNG string (lossless; ``reference_png`` of a record)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


@dataclass(frozen=True)
class EditScores:
    """The toy world's ground truth of one edit: ``score = sqrt(success * preservation)``."""

    success: float
    preservation: float
    score: float


# Pixels within this many pixels (8-neighbourhood) of the border between the edited region and
# the rest are scored by neither part: a decoder blends the two there, whatever the edit.
BORDER = 1


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` minus every pixel with a pixel outside it (or the image edge kept) within ``steps``."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1, mode="edge")
        h, w = out.shape
        out = np.logical_and.reduce(
            [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )
    return out


def _colour_match(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``exp(-(||p - r||_2 / sqrt(3) / COLOR_TOLERANCE)^2)`` per pixel (1 = same colour)."""
    distance = np.linalg.norm(pixels - reference, axis=-1) / math.sqrt(3.0)
    return np.exp(-((distance / COLOR_TOLERANCE) ** 2))


def _object_masks(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """(name, pixel mask) of the background and of each shape of the rendered ``scene``."""
    pixels = np.asarray(scene.render())
    masks = []
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box
        mask = np.zeros(pixels.shape[:2], dtype=bool)
        mask[y0:y1, x0:x1] = np.all(pixels[y0:y1, x0:x1] == COLORS[shape.color], axis=-1)
        masks.append((shape.kind, mask))
    covered = np.logical_or.reduce([m for _, m in masks]) if masks else np.zeros(pixels.shape[:2], bool)
    return [("background", ~covered), *masks]


def _pixels_at(image: Image.Image | np.ndarray, size: int, what: str) -> np.ndarray:
    if isinstance(image, Image.Image) and image.size != (size, size):
        image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = _as_float_rgb(image)
    if pixels.shape[:2] != (size, size):
        raise ValueError(f"{what} is {pixels.shape[0]}x{pixels.shape[1]}, the scene is {size} px")
    return pixels


def _references(metadata: Mapping[str, Any], references, size: int) -> list[np.ndarray]:
    """(VAE source, VAE perfect edit) from ``references`` or the record's PNG fields; [] if absent."""
    if references is None:
        names = ("reference_png", "reference_target_png")
        references = [decode_png(metadata[n]) for n in names] if all(n in metadata for n in names) else []
    return [_pixels_at(r, size, "preservation reference") for r in references]


def toy_edit_scores(
    edited: Image.Image | np.ndarray, metadata: Mapping[str, Any], references: Sequence | None = None
) -> EditScores:
    """Instruction success and preservation of a toy edit, each in [0, 1], and their geometric mean.

    From ``metadata["scene"]`` (:func:`scene_record`) the source ``S`` and the perfect edit ``T``
    are redrawn at the scene's size (the edit is resized to it if it differs). The edited region
    is ``E = {pixels where S != T}`` (the recoloured shape, or the background), the rest
    ``K = not E``; ``E-`` and ``K-`` drop the pixels within ``BORDER`` px of the other region.
    ``R_S`` and ``R_T`` are ``S`` and ``T`` as the toy world's VAE reproduces them (``references``
    if given, else the record's ``reference_png`` / ``reference_target_png``, written by
    :func:`write_toy_dataset`; without them only the exact drawings count). With
    ``match(p, q) = exp(-(||p - q|| / sqrt(3) / 0.15)^2)`` and ``c`` the requested colour::

        m(X)         = mean_{E-} max(match(X, c), match(X, R_T))
        success      = clip((m(edit) - m(S)) / (1 - m(S)), 0, 1)
        preservation = mean over the objects o the edit keeps (the other shapes, and the
                       background unless it is the edit) of
                       mean_{o and K-} max(match(edit, S), match(edit, R_S), match(edit, R_T))
        score        = sqrt(success * preservation)

    So an edit that reproduces the perfect edit exactly, or as the VAE does, scores 1 and 1 (it
    is not penalised for the VAE's blur). Every kept object counts equally: erasing one of three
    shapes costs a third whatever its size. The unchanged source scores success 0; a flat field of
    the requested colour scores preservation ~0 (palette colours are >= 0.25 apart: match <= 0.06).
    """
    if "scene" not in metadata:
        raise ValueError(f"toy_edit_scores needs metadata field 'scene'; got {sorted(metadata)}")
    scene, task = scene_from_record(metadata["scene"])
    size = scene.size
    pixels = _pixels_at(edited, size, "edited image")
    source = _as_float_rgb(scene.render())
    target = _as_float_rgb(apply_task(scene, task).render())
    refs = _references(metadata, references, size)
    edit_region = np.any(source != target, axis=-1)
    inside, outside = _erode(edit_region, BORDER), _erode(~edit_region, BORDER)
    colour = np.asarray(metadata["target_color"], dtype=np.float64) / 255.0

    def requested(image: np.ndarray) -> float:
        matches = [
            _colour_match(image[inside], colour),
            *[_colour_match(image[inside], r[inside]) for r in refs[1:]],
        ]
        return float(np.max(matches, axis=0).mean())

    before = requested(source)
    success = float(np.clip((requested(pixels) - before) / (1.0 - before), 0.0, 1.0))
    kept = np.max([_colour_match(pixels, r) for r in [source, *refs]], axis=0)
    parts = [kept[mask & outside].mean() for _, mask in _object_masks(scene) if (mask & outside).any()]
    preservation = float(np.mean(parts)) if parts else 1.0
    return EditScores(success, preservation, float(math.sqrt(success * preservation)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the toy shapes editing dataset.")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--train", type=int, required=True, help="number of train items")
    parser.add_argument("--test", type=int, required=True, help="number of test items")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated edit kinds (default {','.join(TASKS)})"
    )
    args = parser.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    try:
        check_tasks(tasks)
    except ValueError as error:
        parser.error(f"--tasks: {error}")
    out = write_toy_dataset(args.out, args.train, args.test, size=args.size, seed=args.seed, tasks=tasks)
    print(f"wrote {args.train} train and {args.test} test items to {out}")


if __name__ == "__main__":
    main()
