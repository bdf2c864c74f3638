"""The editing dataset: ``DIR/{train,test}_metadata.jsonl`` plus the images they name.

Each non-blank line is a JSON object::

    {"prompt": "make the circle red", "image": "images/0001.png", "requirement": "Only the circle ..."}

* ``prompt`` (non-empty string): the editing instruction.
* ``image`` (non-empty string): the source image, relative to ``DIR`` (an absolute path is used as is).
* ``requirement`` (string, required, may be ``""``): what a correct edit must satisfy; the MLLM judge
  reads it. It is required like upstream: a missing key is usually a broken export, and silently
  judging without requirements would change the reward. Write ``""`` to opt out explicitly.
* any other field is kept, untouched, in :attr:`EditItem.extra` (e.g. the toy data's ``target_color``).

Every problem is reported with file, line and field. All image files are checked to exist when the
dataset is built; images are decoded only when :attr:`EditItem.image` is read.

A group (docs/algorithm.md#1-prompt-groups) is keyed by **(instruction, source image)**: the same
instruction on two images is two groups. The key uses the image path as written in the file,
normalised (``./a/../b.png`` -> ``b.png``), so it is stable across machines and usable in
checkpoints and ban lists.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

SPLITS = ("train", "test")
REQUIRED_FIELDS = ("prompt", "image", "requirement")

GroupKey = tuple[str, str]


class DatasetError(ValueError):
    """The metadata file or an image it names is malformed or missing."""


@dataclass(frozen=True)
class EditItem:
    """One editing task. ``image`` is decoded (RGB) on first access and then cached."""

    index: int
    prompt: str
    requirement: str
    image_relpath: str
    image_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group_key(self) -> GroupKey:
        """``(instruction, normalised image relpath)``: identifies the item's group."""
        return (self.prompt, self.image_relpath)

    @cached_property
    def image(self) -> Image.Image:
        """The source image as an RGB ``PIL.Image`` (decoded lazily)."""
        with Image.open(self.image_path) as image:
            return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Crop the largest centred square, then resize it to ``size x size`` (bicubic); returns RGB.

    As the original (docs/models.md#how-each-model-is-conditioned): target and reference images
    are centre-cropped and resized to ``resolution``.
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
    return square.resize((size, size), Image.Resampling.BICUBIC)


def _normalise_relpath(raw: str) -> str:
    return posixpath.normpath(raw.replace("\\", "/"))


def _parse_line(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
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
        return read_metadata(self.metadata_path)

    def _make_item(self, index: int, line_number: int, record: dict[str, Any]) -> EditItem:
        relpath = _normalise_relpath(record["image"])
        image_path = self.root / relpath
        if not image_path.is_file():
            raise DatasetError(
                f"{self.metadata_path}:{line_number}: field 'image' names a missing file: {image_path}"
            )
        extra = {k: v for k, v in record.items() if k not in REQUIRED_FIELDS}
        return EditItem(
            index=index,
            prompt=record["prompt"],
            requirement=record["requirement"],
            image_relpath=relpath,
            image_path=image_path,
            extra=extra,
        )

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> EditItem:
        """A fresh item each call, so decoded images are not kept alive by the dataset."""
        item = self._items[index]
        return EditItem(
            index=item.index,
            prompt=item.prompt,
            requirement=item.requirement,
            image_relpath=item.image_relpath,
            image_path=item.image_path,
            extra=dict(item.extra),
        )

    def __repr__(self) -> str:
        groups = len(set(self.group_keys))
        return f"EditDataset({str(self.root)!r}, split={self.split!r}, items={len(self)}, groups={groups})"
