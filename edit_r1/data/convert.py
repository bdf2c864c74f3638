"""``python -m edit_r1.data convert``: build the training layout from common public formats.

Sources (``--from``):

* ``imgedit``: ImgEdit's JSON ``{key: {"id": image path relative to --root_path, "prompt": ...}}``
  (the layout of its single-turn benchmark file; other fields such as ``edit_type`` are kept, the
  key as ``source_key``).
* ``folder``: a folder of images (``--images DIR``) plus a CSV or JSONL of instructions
  (``--instructions FILE``) with the columns ``image`` (relative to the folder), ``prompt`` (or
  ``instruction``) and optionally ``requirement``; other columns are kept.
* ``jsonl``: any JSON-lines file whose field names are given by ``--prompt_field``,
  ``--image_field`` (a path or a list of paths) and ``--requirement_field``; image paths are
  relative to ``--root_path`` (default: the file's folder).

The output is ``OUT/{train,test}_metadata.jsonl`` and ``OUT/images/NNNNNN.ext`` (copied, symlinked or
hard-linked with ``--mode``). Train and test are split by **source image** with ``--seed``: every
item of one image lands on the same side, so no test image was seen in training. Invalid inputs
(missing image, empty instruction) are listed with file and line (or key) and nothing is written,
unless ``--skip_invalid`` drops them. The result is then checked as ``check`` does.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

SOURCES = ("imgedit", "folder", "jsonl")
MODES = ("copy", "symlink", "hardlink")


class ConvertError(ValueError):
    """The input cannot be converted; the message names the file and what is wrong."""


@dataclass
class SourceItem:
    """One item read from a source: absolute image paths, texts, kept fields, and where it came from."""

    where: str
    images: list[Path]
    prompt: str
    requirement: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConvertError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ConvertError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None


def read_imgedit(input_path: Path, root: Path) -> list[SourceItem]:
    """Items of an ImgEdit JSON ``{key: {"id", "prompt", ...}}``, in file order."""
    data = _read_json(input_path)
    if not isinstance(data, dict):
        raise ConvertError(f"{input_path}: expected a JSON object {{key: item}}, got {type(data).__name__}")
    items = []
    for key, entry in data.items():
        where = f"{input_path}[{key!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ConvertError(f"{where}: needs a string field 'id' (the image path)")
        if not isinstance(entry.get("prompt"), str):
            raise ConvertError(f"{where}: needs a string field 'prompt'")
        extra = {k: v for k, v in entry.items() if k not in ("id", "prompt")}
        extra["source_key"] = str(key)
        items.append(SourceItem(where, [root / entry["id"]], entry["prompt"], "", extra))
    return items


def _rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of a CSV (header row = line 1) or a JSONL file."""
    if not path.is_file():
        raise ConvertError(f"instructions file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield reader.line_num, dict(row)
        return
    with path.open(encoding="utf-8") as handle:
        for line_number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise ConvertError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ConvertError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            yield line_number, row


def read_table(
    path: Path, root: Path, prompt_fields: tuple[str, ...], image_field: str, requirement_field: str
) -> list[SourceItem]:
    """Items of a CSV/JSONL whose rows name an image (or a list) relative to ``root``."""
    items = []
    for line_number, row in _rows(path):
        where = f"{path}:{line_number}"
        prompt_field = next((f for f in prompt_fields if f in row), None)
        if prompt_field is None or image_field not in row:
            raise ConvertError(
                f"{where}: needs the fields {image_field!r} and {' or '.join(map(repr, prompt_fields))}"
            )
        images = row[image_field]
        images = images if isinstance(images, list) else [images]
        if not images or not all(isinstance(p, str) and p.strip() for p in images):
            raise ConvertError(f"{where}: field {image_field!r} must be a path or a non-empty list of paths")
        prompt, requirement = row[prompt_field], row.get(requirement_field) or ""
        if not isinstance(prompt, str) or not isinstance(requirement, str):
            raise ConvertError(f"{where}: {prompt_field!r} and {requirement_field!r} must be strings")
        used = {prompt_field, image_field, requirement_field}
        extra = {k: v for k, v in row.items() if k not in used}
        items.append(SourceItem(where, [root / p for p in images], prompt, requirement, extra))
    return items


def validate(items: list[SourceItem]) -> tuple[list[SourceItem], list[str]]:
    """``(usable items, problems)``: an item needs a non-empty instruction and existing image files."""
    usable, problems = [], []
    for item in items:
        missing = [str(p) for p in item.images if not p.is_file()]
        if not item.prompt.strip():
            problems.append(f"{item.where}: empty instruction")
        elif missing:
            problems.append(f"{item.where}: missing image file(s) {', '.join(missing)}")
        else:
            usable.append(item)
    return usable, problems


def split_by_image(
    items: list[SourceItem], test_fraction: float, num_test: int | None, seed: int
) -> tuple[list[SourceItem], list[SourceItem]]:
    """``(train, test)``: distinct first source images are shuffled with ``seed``; the first
    ``num_test`` (default ``max(1, round(test_fraction * images))``) go to test with all their items.
    Both splits must be non-empty (training evaluates on test). Item order is kept in each split."""
    firsts = sorted({str(item.images[0].resolve()) for item in items})
    if num_test is None:
        num_test = max(1, round(test_fraction * len(firsts)))
    if not 1 <= num_test < len(firsts):
        raise ConvertError(
            f"cannot put {num_test} of {len(firsts)} distinct source images in test: both splits need "
            "at least one (the trainer evaluates on test)"
        )
    random.Random(seed).shuffle(firsts)
    test_images = set(firsts[:num_test])
    train = [it for it in items if str(it.images[0].resolve()) not in test_images]
    test = [it for it in items if str(it.images[0].resolve()) in test_images]
    return train, test


def place_images(items: list[SourceItem], out: Path, mode: str) -> dict[Path, str]:
    """Copy/link every distinct image to ``out/images/NNNNNN.ext`` (numbered by first appearance);
    returns the map from source path to the relative path written in the metadata."""
    targets: dict[Path, str] = {}
    for item in items:
        for path in item.images:
            resolved = path.resolve()
            if resolved not in targets:
                targets[resolved] = f"images/{len(targets):06d}{path.suffix.lower()}"
    (out / "images").mkdir(parents=True, exist_ok=True)
    for source, relpath in tqdm(targets.items(), desc=f"{mode} images", unit="image", disable=None):
        _place(source, out / relpath, mode)
    return targets


def _place(source: Path, target: Path, mode: str) -> None:
    if mode == "copy":
        shutil.copyfile(source, target)
    elif mode == "symlink":
        target.symlink_to(source)
    else:
        try:
            os.link(source, target)
        except OSError as error:
            raise ConvertError(
                f"cannot hard-link {source} to {target} ({error}); use --mode copy or symlink"
            ) from None


def write_split(path: Path, items: list[SourceItem], targets: dict[Path, str]) -> None:
    """One JSON line per item: prompt, image (and images for several sources), requirement, kept fields."""
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            relpaths = [targets[p.resolve()] for p in item.images]
            record = {"prompt": item.prompt, "image": relpaths[0], "requirement": item.requirement}
            if len(relpaths) > 1:
                record["images"] = relpaths
            record.update({k: v for k, v in item.extra.items() if k not in record})
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless ``overwrite`` (then the old layout is removed)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConvertError(f"output folder {out} is not empty (pass --overwrite to replace its dataset)")
        for name in ("train_metadata.jsonl", "test_metadata.jsonl"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def convert(
    items: list[SourceItem],
    out: str | Path,
    *,
    test_fraction: float = 0.05,
    num_test: int | None = None,
    seed: int = 0,
    mode: str = "copy",
    skip_invalid: bool = False,
    overwrite: bool = False,
) -> tuple[int, int, list[str]]:
    """Write the layout; returns ``(train items, test items, dropped problems)``.

    Raises :class:`ConvertError` listing every problem when an item is invalid and not ``skip_invalid``.
    """
    if mode not in MODES:
        raise ConvertError(f"--mode must be one of {MODES}, got {mode!r}")
    if not items:
        raise ConvertError("the source holds no items")
    usable, problems = validate(items)
    if problems and not skip_invalid:
        listed = "\n  ".join(problems)
        raise ConvertError(f"{len(problems)} invalid items (pass --skip_invalid to drop them):\n  {listed}")
    if not usable:
        raise ConvertError("no valid items left")
    train, test = split_by_image(usable, test_fraction, num_test, seed)
    out = Path(out)
    prepare_output(out, overwrite)
    targets = place_images(train + test, out, mode)
    write_split(out / "train_metadata.jsonl", train, targets)
    write_split(out / "test_metadata.jsonl", test, targets)
    return len(train), len(test), problems
