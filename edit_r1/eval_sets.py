"""The two editing benchmarks of the reproduction, read into one item type.

* **GEdit-Bench** (stepfun-ai/GEdit-Bench), a dataset saved with ``datasets.save_to_disk``:
  columns ``key``, ``task_type``, ``instruction``, ``instruction_language`` ("en"/"cn"),
  ``input_image``, ``input_image_raw``, ``Intersection_exist``. Only English items are used (as
  the original scripts); the source image is ``input_image_raw``.
* **ImgEdit** (single-turn): a JSON file ``{key: {"id": image path relative to root, "prompt":
  instruction, ...}}`` plus the root folder of the images. An optional ``edit_type`` field names the
  task used for per-task means.

Where an output goes depends on the **layout** (``LAYOUTS``):

* ``original`` (the original release's scripts): GEdit ``{task_type}/{key}.png``, ImgEdit ``{key}.jpg``.
* ``official`` (what the benchmarks' own evaluators read, ``docs/evaluation.md``): GEdit
  ``fullset/{task_type}/{instruction_language}/{key}.png`` plus the dataset's ``input_image`` as
  ``{key}_SRCIMG.png`` beside it (the official scorer opens both); ImgEdit ``{key}.png``.

Images are loaded lazily (`BenchmarkItem.load_image`), so listing a benchmark is cheap and a
broken image fails only its own item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

GEDIT_COLUMNS = ("key", "task_type", "instruction", "instruction_language")
GEDIT_IMAGE_COLUMN = "input_image_raw"
IMGEDIT_DEFAULT_TASK = "all"
GEDIT_SOURCE_COPY_COLUMN = "input_image"  # what the official GEdit scorer reads as {key}_SRCIMG.png
BENCHMARKS = ("gedit", "imgedit")
LAYOUTS = ("original", "official")


@dataclass(frozen=True)
class BenchmarkItem:
    """One edit of a benchmark: `output` is the result's path relative to the output folder;
    `companions` are files the layout wants beside it, as (relative path, image loader)."""

    key: str
    instruction: str
    task: str
    output: str
    load_image: Callable[[], Image.Image]
    companions: tuple[tuple[str, Callable[[], Image.Image]], ...] = ()


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def gedit_items(
    path: str | os.PathLike, image_column: str = GEDIT_IMAGE_COLUMN, layout: str = "original"
) -> list[BenchmarkItem]:
    """English items of a GEdit-Bench dataset folder (``datasets.save_to_disk``), in dataset order."""
    from datasets import load_from_disk

    _check_layout(layout)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GEdit-Bench folder {path} does not exist")
    dataset = load_from_disk(str(path))
    needed = (*GEDIT_COLUMNS, image_column) + ((GEDIT_SOURCE_COPY_COLUMN,) if layout == "official" else ())
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{path}: GEdit-Bench dataset lacks columns {missing} (has {dataset.column_names})")
    meta = dataset.select_columns(list(GEDIT_COLUMNS))  # no image decoding while listing
    items = []
    for row, record in enumerate(meta):
        if record["instruction_language"] != "en":
            continue
        key, task = str(record["key"]), str(record["task_type"])
        companions = ()
        if layout == "official":
            folder = f"fullset/{task}/{record['instruction_language']}"
            output = f"{folder}/{key}.png"
            companions = (
                (f"{folder}/{key}_SRCIMG.png", _dataset_image_loader(dataset, row, GEDIT_SOURCE_COPY_COLUMN)),
            )
        else:
            output = f"{task}/{key}.png"
        items.append(
            BenchmarkItem(
                key=key,
                instruction=record["instruction"],
                task=task,
                output=output,
                load_image=_dataset_image_loader(dataset, row, image_column),
                companions=companions,
            )
        )
    return items


def _dataset_image_loader(dataset, row: int, column: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        image = dataset[row][column]
        if not isinstance(image, Image.Image):
            raise TypeError(f"row {row} column {column!r} holds {type(image).__name__}, not an image")
        return image.convert("RGB")

    return load


def imgedit_items(
    input_path: str | os.PathLike, root_path: str | os.PathLike, layout: str = "original"
) -> list[BenchmarkItem]:
    """Items of an ImgEdit JSON ``{key: {"id": relpath, "prompt": text}}``, in file order."""
    _check_layout(layout)
    suffix = ".png" if layout == "official" else ".jpg"
    input_path, root = Path(input_path), Path(root_path)
    try:
        data = json.loads(input_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise FileNotFoundError(f"cannot read ImgEdit file {input_path}: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{input_path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{input_path}: expected a JSON object {{key: item}}, got {type(data).__name__}")
    items = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ValueError(f"{input_path}: item {key!r} needs a string field 'id' (image path)")
        if not isinstance(entry.get("prompt"), str):
            raise ValueError(f"{input_path}: item {key!r} needs a string field 'prompt'")
        items.append(
            BenchmarkItem(
                key=str(key),
                instruction=entry["prompt"],
                task=str(entry.get("edit_type", IMGEDIT_DEFAULT_TASK)),
                output=f"{key}{suffix}",
                load_image=_file_image_loader(Path(os.path.normpath(root / entry["id"]))),
            )
        )
    return items


def _file_image_loader(path: Path) -> Callable[[], Image.Image]:
    """Loads as the original's ImgEdit scripts did (``diffusers.utils.load_image``): EXIF
    orientation applied (``ImageOps.exif_transpose``), then RGB."""

    def load() -> Image.Image:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")

    return load
