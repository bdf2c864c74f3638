"""docs/configs.md "Every key" is generated from the key table (edit_r1/config_keys.py): the test
fails when the file is out of date, and, read back as a user reads it, the tables list every key of
config/base.py with the default base.py gives it (so a hand-written default cell cannot lie)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ml_collections
import pytest

from edit_r1.config import load_config
from edit_r1.config_keys import DOCS, documented, main

REPO = Path(__file__).resolve().parents[2]
# A default cell whose value is described rather than written: the key -> why.
DESCRIBED = {"train.lora_target_modules": "the module names, abbreviated as a brace pattern"}


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and key not in ("reward_fn", "eval_reward_fn"):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return out


def documented_defaults(text: str) -> dict[str, str]:
    """Full key -> its default cell, from the tables of the "Every key" section."""
    section = text[text.index("## Every key") :]
    section = section[: section.index("\n## ", 1)]
    rows: dict[str, str] = {}
    prefix = ""
    for line in section.splitlines():
        heading = re.match(r"### `(\w+)\.\*`", line)
        if heading or line.startswith("### "):
            prefix = f"{heading.group(1)}." if heading else ""
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) >= 3:
            (key,) = re.findall(r"`([\w.]+)`", cells[0])
            rows[prefix + key] = cells[1]
    return rows


def literal(cell: str) -> object:
    """The value a default cell writes: its leading literal (``"dpm2"``, ``0 = auto``, ``384*384``,
    ``1.0 (Kontext 2.5)``); ``ValueError`` when it writes none."""
    head = re.split(r" = | \(", cell.replace("`", ""), maxsplit=1)[0].strip()
    if re.fullmatch(r"\d+\*\d+", head):
        a, b = head.split("*")
        return int(a) * int(b)
    return ast.literal_eval(head)


def test_the_key_tables_are_generated_from_the_key_table():
    text = DOCS.read_text(encoding="utf-8")
    assert documented(text) == text, (
        "docs/configs.md is out of date with edit_r1/config_keys.py: run "
        "python -m edit_r1.config_keys --write-docs"
    )
    assert main(["--check-docs"]) == 0


def test_a_stale_table_is_seen_and_regenerated():
    text = DOCS.read_text(encoding="utf-8")
    stale = text.replace("| `seed` | 42 |", "| `seed` | 7 |", 1)
    assert stale != text and documented(stale) == text
    cut = text.replace("<!-- config-keys:train end -->", "", 1)
    with pytest.raises(ValueError, match="config-keys:train"):
        documented(cut)


def test_every_base_key_is_documented_with_its_default():
    base = leaves(load_config(str(REPO / "config" / "base.py")))
    docs = documented_defaults(DOCS.read_text(encoding="utf-8"))
    assert sorted(set(base) - set(docs)) == [], "keys of config/base.py missing from docs/configs.md"
    assert sorted(set(docs) - set(base)) == [], "docs/configs.md documents keys config/base.py lacks"
    wrong = []
    for key, cell in docs.items():
        if key in DESCRIBED:
            continue
        value, written = base[key], literal(cell)
        if not (written == value or (isinstance(value, float) and written == pytest.approx(value))):
            wrong.append(f"{key}: docs {cell!r}, base.py {value!r}")
    assert not wrong, "docs/configs.md defaults differ from config/base.py:\n" + "\n".join(wrong)


def test_the_docs_parser_reads_cells():
    assert literal('`"dpm2"`') == "dpm2" and literal("0 = auto") == 0 and literal("384*384") == 147456
    assert literal("1.0 (Kontext 2.5)") == 1.0 and literal("False (True in shipped configs)") is False
    assert literal('`{"mllm_score_continue": 1.0}`') == {"mllm_score_continue": 1.0}
