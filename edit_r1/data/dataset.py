"""The editing dataset: ``DIR/{train,test}_metadata.jsonl`` plus the images they name.

Each non-blank line is a JSON object::

    {"prompt": "make the circle red", "image": "images/0001.png", "requirement": "Only the circle ..."}

* ``prompt`` (non-empty string): the editing instruction.
* ``image`` (non-empty string): the source image, relative to ``DIR`` (an absolute path is used as is).
* ``images`` (optional, non-empty list of such strings): several source images, in order ("Picture 1",
  "Picture 2", ... for the Qwen Plus models). With ``images``, ``image`` may be left out; when both
  are given ``image`` must equal ``images[0]`` (so tools that read ``image`` see the first).
* ``requirement`` (string, optional): what a correct edit must satisfy; the MLLM judge reads it.
  A missing key counts as ``""``, as in the original (``metadata.get("requirement", "")``); the
  dataset logs how many lines lack it and ``python -m edit_r1.data check`` lists each one, because a
  missing key is often a broken export and judging without requirements changes the reward.
* any other field is kept, untouched, in :attr:`EditItem.extra` (e.g. the toy data's ``target_color``).

Every problem is reported with file, line and field. All image files are checked to exist when the
dataset is built; images are decoded only when :attr:`EditItem.image` is read.

A group (docs/algorithm.md#1-prompt-groups) is keyed by **(instruction, source image)**: the same
instruction on two images is two groups. The key uses the image path as written in the file,
normalised (``./a/../b.png`` -> ``b.png``), so it is stable across machines and usable in
checkpoints and ban lists. With several source images the key is
``(instruction, path 1, path 2, ...)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
REQUIRED_FIELDS = ("prompt", "image")
REQUIREMENT_FIELD = "requirement"
# Marks a parsed record whose line had no ``requirement`` key (filled with ""); never part of ``extra``.
MISSING_REQUIREMENT = "__requirement_missing__"
IMAGE_LIST_FIELD = "images"

GroupKey = tuple[str, ...]


class DatasetError(ValueError):
    """The metadata file or an image it names is malformed or missing."""


@dataclass(frozen=True)
class EditItem:
    """One editing task. ``image`` is decoded (RGB) on first access and then cached.

    ``image_relpaths`` / ``image_paths`` hold every source image (one unless the line has
    ``images``); ``image_relpath`` / ``image_path`` are the first.
    """

    index: int
    prompt: str
    requirement: str
    image_relpath: str
    image_path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    image_relpaths: tuple[str, ...] = ()
    image_paths: tuple[Path, ...] = ()
    line: int = 0

    def __post_init__(self) -> None:
        if not self.image_relpaths:  # a single-image item built without the lists
            object.__setattr__(self, "image_relpaths", (self.image_relpath,))
            object.__setattr__(self, "image_paths", (self.image_path,))

    @property
    def group_key(self) -> GroupKey:
        """``(instruction, normalised image relpath, ...)``: identifies the item's group."""
        return (self.prompt, *self.image_relpaths)

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @cached_property
    def images(self) -> list[Image.Image]:
        """Every source image as RGB, in order (the first is :attr:`image`)."""
        return [self.image, *(_load_rgb(path) for path in self.image_paths[1:])]

    def source(self) -> Image.Image | list[Image.Image]:
        """What a policy's ``encode_condition`` takes for this item: the image, or the list of images."""
        return self.image if self.num_images == 1 else self.images

    @cached_property
    def image(self) -> Image.Image:
        """The source image as an RGB ``PIL.Image`` (decoded lazily)."""
        return _load_rgb(self.image_path)


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Crop the largest centred square, then resize it to ``size x size`` (LANCZOS); returns RGB.

    Target and reference images are centre-cropped and resized to ``resolution`` with LANCZOS, as
    the original's training dataset does (``train_nft_qwen_image_edit.py`` ~101-116; see
    docs/models.md#how-each-model-is-conditioned).
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    width, height = image.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    if side == size:
        return square
    return square.resize((size, size), Image.Resampling.LANCZOS)


def _normalise_relpath(raw: str) -> str:
    return posixpath.normpath(raw.replace("\\", "/"))


def _parse_line(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    _check_image_list(record, where)
    if REQUIREMENT_FIELD not in record:
        record[REQUIREMENT_FIELD] = ""
        record[MISSING_REQUIREMENT] = True
    for name in (*REQUIRED_FIELDS, REQUIREMENT_FIELD):
        if name not in record:
            raise DatasetError(f"{where}: missing field {name!r} (required: {', '.join(REQUIRED_FIELDS)})")
        if not isinstance(record[name], str):
            raise DatasetError(
                f"{where}: field {name!r} must be a string, got {type(record[name]).__name__} {record[name]!r}"
            )
    for name in ("prompt", "image"):
        if not record[name].strip():
            raise DatasetError(f"{where}: field {name!r} is empty")
    return record


def _check_image_list(record: dict[str, Any], where: str) -> None:
    """Validates ``images`` and fills ``image`` from it when absent (in place)."""
    if IMAGE_LIST_FIELD not in record:
        return
    images = record[IMAGE_LIST_FIELD]
    if not isinstance(images, list) or not images:
        raise DatasetError(f"{where}: field 'images' must be a non-empty list of paths, got {images!r}")
    for i, path in enumerate(images):
        if not isinstance(path, str) or not path.strip():
            raise DatasetError(f"{where}: field 'images[{i}]' must be a non-empty string, got {path!r}")
    first = record.setdefault("image", images[0])
    if isinstance(first, str) and _normalise_relpath(first) != _normalise_relpath(images[0]):
        raise DatasetError(
            f"{where}: field 'image' ({record['image']!r}) must equal images[0] ({images[0]!r}) when both are given"
        )


def read_metadata(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every non-blank line of a metadata file, fields checked."""
    if not path.is_file():
        raise DatasetError(f"metadata file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, text in enumerate(handle, start=1):
            if text.strip():
                records.append((line_number, _parse_line(text, f"{path}:{line_number}")))
    if not records:
        raise DatasetError(f"{path}: no items")
    return records


class EditDataset:
    """Map-style dataset over ``root/{split}_metadata.jsonl``; ``dataset[i]`` is an :class:`EditItem`."""

    def __init__(self, root: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.metadata_path = self.root / f"{split}_metadata.jsonl"
        self._items = [self._make_item(i, line, record) for i, (line, record) in enumerate(self._read())]
        self.group_keys: list[GroupKey] = [item.group_key for item in self._items]

    def _read(self) -> list[tuple[int, dict[str, Any]]]:
        records = read_metadata(self.metadata_path)
        missing = sum(1 for _, record in records if record.get(MISSING_REQUIREMENT))
        if missing:
            logger.warning(
                "%s: %d of %d lines have no 'requirement' key; the judge sees an empty requirement for "
                "them (as the original). `python -m edit_r1.data check` lists them.",
                self.metadata_path, missing, len(records),
            )  # fmt: skip
        return records

    def _make_item(self, index: int, line_number: int, record: dict[str, Any]) -> EditItem:
        named = record.get(IMAGE_LIST_FIELD, [record["image"]])
        relpaths = tuple(_normalise_relpath(raw) for raw in named)
        paths = tuple(self.root / relpath for relpath in relpaths)
        for i, path in enumerate(paths):
            if not path.is_file():
                label = "image" if IMAGE_LIST_FIELD not in record else f"images[{i}]"
                raise DatasetError(
                    f"{self.metadata_path}:{line_number}: field {label!r} names a missing file: {path}"
                )
        known = (*REQUIRED_FIELDS, REQUIREMENT_FIELD, IMAGE_LIST_FIELD, MISSING_REQUIREMENT)
        extra = {k: v for k, v in record.items() if k not in known}
        return EditItem(
            index=index,
            prompt=record["prompt"],
            requirement=record["requirement"],
            image_relpath=relpaths[0],
            image_path=paths[0],
            extra=extra,
            image_relpaths=relpaths,
            image_paths=paths,
            line=line_number,
        )

    def __len__(self) -> int:
        return len(self._items)

    def image_counts(self) -> list[tuple[int, int]]:
        """``(line number, number of source images)`` of every item, in order."""
        return [(item.line, item.num_images) for item in self._items]

    def __getitem__(self, index: int) -> EditItem:
        """A fresh item each call, so decoded images are not kept alive by the dataset."""
        item = self._items[index]
        return dataclasses.replace(item, extra=dict(item.extra))

    def __repr__(self) -> str:
        groups = len(set(self.group_keys))
        return f"EditDataset({str(self.root)!r}, split={self.split!r}, items={len(self)}, groups={groups})"


def check_source_counts(datasets: list[EditDataset], max_images: int, model: str) -> int:
    """The number of source images every item has; raises :class:`DatasetError` naming file and
    line when items differ in it (a batch's rows are stacked, so they must agree) or when an item
    has more than ``max_images`` (what ``model`` takes)."""
    first = None
    for dataset in datasets:
        for line, count in dataset.image_counts():
            where = f"{dataset.metadata_path}:{line}"
            if count > max_images:
                takes = "one source image" if max_images == 1 else f"at most {max_images} source images"
                raise DatasetError(f"{where}: {count} source images, but {model} takes {takes} per edit")
            if first is None:
                first = (where, count)
            elif count != first[1]:
                raise DatasetError(
                    f"{where}: {count} source images, but {first[0]} has {first[1]}; every item of a "
                    "dataset must have the same number (items are batched together)"
                )
    return first[1] if first else 1
