"""docs/configs.md "Every key" lists every key of config/base.py with the default base.py gives it,
so the key reference cannot drift from the one place defaults are written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ml_collections
import pytest

from edit_r1.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configs.md"
# Documented in prose (one sentence), not in a table.
PROSE_SECTIONS = {"wandb"}
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


def documented() -> dict[str, str]:
    """Full key -> its default cell, from the tables of the "Every key" section."""
    text = DOC.read_text(encoding="utf-8")
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
        if len(cells) < 3:
            continue
        keys = re.findall(r"`([\w.]+)`", cells[0])
        defaults = cells[1].split(", ") if len(keys) > 1 else [cells[1]]
        if len(defaults) != len(keys):  # one default for several keys
            defaults = [cells[1]] * len(keys)
        for key, default in zip(keys, defaults, strict=True):
            rows[prefix + key] = default
    return rows


def literal(cell: str) -> object:
    """The value a default cell writes: its leading literal (``"dpm2"``, ``0 = auto``, ``384*384``,
    ``1.0 (Kontext 2.5)``); ``ValueError`` when it writes none."""
    head = re.split(r" = | \(", cell.replace("`", ""), maxsplit=1)[0].strip()
    if re.fullmatch(r"\d+\*\d+", head):
        a, b = head.split("*")
        return int(a) * int(b)
    return ast.literal_eval(head)


def test_every_base_key_is_documented_with_its_default():
    base = leaves(load_config(str(REPO / "config" / "base.py")))
    docs = documented()
    missing = sorted(k for k in base if k.split(".")[0] not in PROSE_SECTIONS and k not in docs)
    assert not missing, f"keys of config/base.py missing from docs/configs.md 'Every key': {missing}"
    unknown = sorted(set(docs) - set(base))
    assert not unknown, f"docs/configs.md documents keys config/base.py does not have: {unknown}"
    wrong = []
    for key, cell in docs.items():
        if key in DESCRIBED:
            continue
        value = base[key]
        written = literal(cell)
        same = written == value or (isinstance(value, float) and written == pytest.approx(value))
        if not same:
            wrong.append(f"{key}: docs {cell!r}, base.py {value!r}")
    assert not wrong, "docs/configs.md defaults differ from config/base.py:\n" + "\n".join(wrong)
    prose = DOC.read_text(encoding="utf-8")
    for key in (k for k in base if k.split(".")[0] in PROSE_SECTIONS):
        assert f"`{key.split('.', 1)[1]}`" in prose, key


def test_the_docs_parser_reads_cells():
    assert literal('`"dpm2"`') == "dpm2" and literal("0 = auto") == 0 and literal("384*384") == 147456
    assert literal("1.0 (Kontext 2.5)") == 1.0 and literal("False (True in shipped configs)") is False
