"""``python -m edit_r1.data check DIR``: validate a training set before a run finds its problems.

Reads ``DIR/train_metadata.jsonl`` and ``DIR/test_metadata.jsonl`` line by line and reports, with
file and line, every

* **error** (the run would fail, or an item is unusable): a line that is not a JSON object, a
  missing or non-string ``prompt`` / ``image`` field or a non-string ``requirement`` (``docs/data.md``),
  an empty instruction, an instruction longer than the reward server
  accepts (``reward_server.protocol.Limits.max_text_chars``), an image that is missing or does not
  decode, a missing metadata file or one with no items;
* **warning** (the run works, but probably not as intended): a missing ``requirement`` key (judged
  as ``""``, as the original does) or an empty one (the judge sees a blank line), an instruction so long the text encoder may truncate it, an image smaller
  than the training resolution (it is upscaled) or of extreme aspect ratio (the centre crop drops
  most of it), a duplicate ``(instruction, image)`` key within a split (that group is drawn more
  often), and a group present in both splits (evaluation then measures training items).

A summary table (items, groups, images, sizes, counts) is printed per split; the exit status is 1
when any error was found, else 0.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from edit_r1.data.dataset import MISSING_REQUIREMENT, SPLITS, DatasetError, _normalise_relpath, _parse_line
from reward_server.protocol import Limits

# The text condition keeps the original's lengths (config/base.py `max_sequence_length` = 0): Kontext's
# T5 128 tokens; Qwen 256 after the template prefix, of which a 384^2 condition image takes ~200.
# English averages 3-4 characters a token, so past ~400 characters truncation becomes likely (for
# Qwen, earlier). A rough estimate, hence only a warning.
LONG_PROMPT_CHARS = 400
EXTREME_ASPECT = 2.0  # the centre crop keeps 1/aspect of the image: below half of it beyond this


@dataclass(frozen=True)
class Finding:
    """One problem: ``level`` is "error" or "warning"; ``where`` is ``file:line`` or a file."""

    level: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.level}: {self.message}"


@dataclass
class SplitReport:
    """What ``check`` learned about one split."""

    split: str
    items: int = 0
    keys: Counter = field(default_factory=Counter)
    images: set = field(default_factory=set)
    sizes: list = field(default_factory=list)
    empty_requirements: int = 0
    prompt_chars: list = field(default_factory=list)


@dataclass
class CheckResult:
    reports: list[SplitReport]
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]


class _ImageProbe:
    """Decodes each distinct image once; remembers its size or the reason it failed."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int] | str] = {}

    def __call__(self, path: Path) -> tuple[int, int] | str:
        if path not in self._seen:
            self._seen[path] = self._probe(path)
        return self._seen[path]

    @staticmethod
    def _probe(path: Path) -> tuple[int, int] | str:
        if not path.is_file():
            return f"names a missing file: {path}"
        try:
            with Image.open(path) as image:
                image.load()  # a truncated or corrupt file fails here, not only at the header
                return image.size
        except Exception as error:  # noqa: BLE001 - PIL raises many types for a broken file
            return f"names a file that does not decode as an image ({type(error).__name__}: {error}): {path}"


def item_image_fields(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field label, path)`` of every source image of a parsed record: ``images[i]`` or ``image``."""
    if isinstance(record.get("images"), list):
        return [(f"images[{i}]", path) for i, path in enumerate(record["images"])]
    return [("image", record["image"])]


def _check_record(
    record: dict[str, Any], where: str, root: Path, report: SplitReport, probe: _ImageProbe, min_side: int
) -> list[Finding]:
    findings = []
    prompt = record["prompt"]
    report.prompt_chars.append(len(prompt))
    if len(prompt) > Limits().max_text_chars:
        findings.append(Finding("error", where, f"instruction of {len(prompt)} characters; the reward "
                                f"server accepts at most {Limits().max_text_chars}"))  # fmt: skip
    elif len(prompt) > LONG_PROMPT_CHARS:
        findings.append(Finding("warning", where, f"instruction of {len(prompt)} characters may be "
                                "truncated by the text encoder (it keeps 128 to 256 tokens, image tokens included)"))  # fmt: skip
    if record.get(MISSING_REQUIREMENT):
        report.empty_requirements += 1
        findings.append(Finding("warning", where, "no 'requirement' key: judged with an empty requirement"))
    elif not record["requirement"].strip():
        report.empty_requirements += 1
        findings.append(Finding("warning", where, "empty 'requirement': the judge sees a blank line"))
    relpaths = []
    for label, raw in item_image_fields(record):
        relpath = _normalise_relpath(raw)
        relpaths.append(relpath)
        outcome = probe(root / relpath)
        if isinstance(outcome, str):
            findings.append(Finding("error", where, f"field {label!r} {outcome}"))
            continue
        report.images.add(relpath)
        report.sizes.append(outcome)
        findings += _size_findings(outcome, where, label, min_side)
    report.keys[(prompt, *relpaths)] += 1
    return findings


def _size_findings(size: tuple[int, int], where: str, label: str, min_side: int) -> list[Finding]:
    width, height = size
    if min(width, height) < min_side:
        return [
            Finding("warning", where, f"{label} is {width}x{height}, smaller than {min_side} px: upscaled")
        ]
    if max(width, height) / min(width, height) > EXTREME_ASPECT:
        return [Finding("warning", where, f"{label} is {width}x{height}: the centre crop keeps under half")]
    return []


def check_split(
    root: Path, split: str, probe: _ImageProbe, min_side: int
) -> tuple[SplitReport, list[Finding]]:
    """Validate every line of ``root/{split}_metadata.jsonl``; never raises for bad content."""
    report, findings = SplitReport(split), []
    path = root / f"{split}_metadata.jsonl"
    if not path.is_file():
        return report, [Finding("error", str(path), "metadata file not found")]
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_number, text in enumerate(tqdm(lines, desc=f"check {split}", unit="line", disable=None), 1):
        if not text.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = _parse_line(text, where)
        except DatasetError as error:
            findings.append(Finding("error", where, str(error).removeprefix(f"{where}: ")))
            continue
        report.items += 1
        findings += _check_record(record, where, root, report, probe, min_side)
    if report.items == 0 and not any(f.level == "error" for f in findings):
        findings.append(Finding("error", str(path), "no items"))
    for key, count in report.keys.items():
        if count > 1:
            findings.append(Finding("warning", str(path), f"key {_show_key(key)} appears {count} times"))
    return report, findings


def _show_key(key: tuple[str, ...]) -> str:
    prompt = key[0] if len(key[0]) <= 60 else key[0][:57] + "..."
    return f"({prompt!r}, {', '.join(key[1:])})"


def check_dataset(root: str | Path, min_side: int = 512) -> CheckResult:
    """Check both splits and the overlap between them."""
    root = Path(root)
    if not root.is_dir():
        return CheckResult([], [Finding("error", str(root), "not a folder")])
    probe = _ImageProbe()
    reports, findings = [], []
    for split in SPLITS:
        report, split_findings = check_split(root, split, probe, min_side)
        reports.append(report)
        findings += split_findings
    shared = set(reports[0].keys) & set(reports[1].keys)
    for key in sorted(shared)[:20]:
        findings.append(Finding("warning", str(root), f"group {_show_key(key)} is in both train and test"))
    if len(shared) > 20:
        findings.append(Finding("warning", str(root), f"... {len(shared)} groups in both splits in all"))
    return CheckResult(reports, findings)


def summary_table(result: CheckResult) -> str:
    """A markdown table: one row per split."""
    rows = [
        "| split | items | groups | images | min size | max size | prompt chars (median) "
        "| missing or empty requirement | errors | warnings |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for report in result.reports:
        name = f"{report.split}_metadata.jsonl"
        errors = sum(1 for f in result.errors if name in f.where)
        warnings = sum(1 for f in result.warnings if name in f.where)
        rows.append(
            f"| {report.split} | {report.items} | {len(report.keys)} | {len(report.images)} "
            f"| {_size(report.sizes, min)} | {_size(report.sizes, max)} | {_median(report.prompt_chars)} "
            f"| {report.empty_requirements} | {errors} | {warnings} |"
        )
    return "\n".join(rows)


def _size(sizes: Sequence[tuple[int, int]], pick) -> str:
    if not sizes:
        return "-"
    width, height = pick(sizes, key=lambda s: s[0] * s[1])
    return f"{width}x{height}"


def _median(values: Sequence[int]) -> str:
    return f"{statistics.median(values):g}" if values else "-"


def print_result(result: CheckResult, max_warnings: int = 50) -> None:
    """Every error, the first ``max_warnings`` warnings, then the summary table and a verdict."""
    for finding in result.errors:
        print(finding)
    for finding in result.warnings[:max_warnings]:
        print(finding)
    hidden = len(result.warnings) - max_warnings
    if hidden > 0:
        print(f"... {hidden} more warnings (raise --max_warnings to see them)")
    print()
    print(summary_table(result))
    print()
    verdict = "FAILED" if result.errors else "OK"
    print(f"{verdict}: {len(result.errors)} errors, {len(result.warnings)} warnings")


def exit_status(result: CheckResult) -> int:
    return 1 if result.errors else 0
