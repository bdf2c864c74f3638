"""The two editing benchmarks of the reproduction, read into one item type.

* **GEdit-Bench** (stepfun-ai/GEdit-Bench), a dataset saved with ``datasets.save_to_disk``:
  columns ``key``, ``task_type``, ``instruction``, ``instruction_language`` ("en"/"cn"),
  ``input_image``, ``input_image_raw``, ``Intersection_exist``. Only English items are used (as
  the original scripts); the source image is ``input_image_raw``; the output of item ``key`` is
  ``{task_type}/{key}.png``.
* **ImgEdit** (single-turn): a JSON file ``{key: {"id": image path relative to root, "prompt":
  instruction, ...}}`` plus the root folder of the images; the output of ``key`` is ``{key}.jpg``.
  An optional ``edit_type`` field names the task used for per-task means.

Images are loaded lazily (`BenchmarkItem.load_image`), so listing a benchmark is cheap and a
broken image fails only its own item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

GEDIT_COLUMNS = ("key", "task_type", "instruction", "instruction_language")
GEDIT_IMAGE_COLUMN = "input_image_raw"
IMGEDIT_DEFAULT_TASK = "all"
BENCHMARKS = ("gedit", "imgedit")


@dataclass(frozen=True)
class BenchmarkItem:
    """One edit of a benchmark: `output` is the result's path relative to the output folder."""

    key: str
    instruction: str
    task: str
    output: str
    load_image: Callable[[], Image.Image]


def gedit_items(path: str | os.PathLike, image_column: str = GEDIT_IMAGE_COLUMN) -> list[BenchmarkItem]:
    """English items of a GEdit-Bench dataset folder (``datasets.save_to_disk``), in dataset order."""
    from datasets import load_from_disk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GEdit-Bench folder {path} does not exist")
    dataset = load_from_disk(str(path))
    missing = [c for c in (*GEDIT_COLUMNS, image_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{path}: GEdit-Bench dataset lacks columns {missing} (has {dataset.column_names})")
    meta = dataset.select_columns(list(GEDIT_COLUMNS))  # no image decoding while listing
    items = []
    for row, record in enumerate(meta):
        if record["instruction_language"] != "en":
            continue
        key, task = str(record["key"]), str(record["task_type"])
        items.append(
            BenchmarkItem(
                key=key,
                instruction=record["instruction"],
                task=task,
                output=f"{task}/{key}.png",
                load_image=_dataset_image_loader(dataset, row, image_column),
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


def imgedit_items(input_path: str | os.PathLike, root_path: str | os.PathLike) -> list[BenchmarkItem]:
    """Items of an ImgEdit JSON ``{key: {"id": relpath, "prompt": text}}``, in file order."""
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
                output=f"{key}.jpg",
                load_image=_file_image_loader(Path(os.path.normpath(root / entry["id"]))),
            )
        )
    return items


def _file_image_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB")

    return load
