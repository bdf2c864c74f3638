"""A user's judge prompt from a file (``--template-file``): rendered as the original rendered its
prompt, named with its SHA-256 in /health and in every score response. Server-side only (these run
in the judge node's own install too); the trainer's logging of the name is in test_reward_client.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests
from reward_helpers import InstructionScoreBackend, png_bytes, random_image, reward_app_server

from reward_server.cli import parse_args
from reward_server.prompt_template import TemplateError, render_prompt, template_id_for_file, template_info
from reward_server.protocol import build_score_request

# Our own wording with the original's placeholders (never the original's text).
OWN_TEXT = "Judge the second picture.\nTask: {prompt}\nMust hold: {requirement}\nReply with one digit."


@pytest.fixture
def template_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_judge_prompt.txt"
    path.write_text(OWN_TEXT, encoding="utf-8")
    return path


def test_a_template_file_renders_like_the_original(template_file: Path) -> None:
    template = template_id_for_file(template_file)
    assert render_prompt("make it red", "only the car", template) == (
        "Judge the second picture.\nTask: make it red\nMust hold: only the car\nReply with one digit."
    )
    # As the original: nothing stripped, an empty requirement stays blank (the built-in names it).
    assert render_prompt(" add a hat", "", template).endswith(
        "Task:  add a hat\nMust hold: \nReply with one digit."
    )
    assert "none beyond the instruction" in render_prompt("add a hat", "")
    info = template_info(template)
    assert info == {
        "template": "file:my_judge_prompt.txt",
        "template_sha256": hashlib.sha256(OWN_TEXT.encode()).hexdigest(),
    }


def test_a_bad_template_file_is_a_clear_error(tmp_path: Path, template_file: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("Task: {instruction}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad\.txt: placeholders must be \{prompt\}"):
        template_id_for_file(bad)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "judge", "--template-file", str(bad)])
    assert exit_info.value.code == 2
    args = parse_args(["--model", "judge", "--template-file", str(template_file)])
    assert args.template == f"file:{template_file.resolve()}"


def test_health_and_every_score_name_the_template(template_file: Path) -> None:
    backend = InstructionScoreBackend()
    backend.template = template_id_for_file(template_file)
    expected = template_info(backend.template)
    with reward_app_server([backend]) as url:
        health = requests.get(f"{url}/health", timeout=10).json()
        assert {key: health[key] for key in expected} == expected
        raw = {"image": png_bytes(random_image(0, 32)), "source_image": png_bytes(random_image(1, 32)),
               "instruction": "score=0.5"}  # fmt: skip
        body = requests.post(f"{url}/score", json=build_score_request([raw]), timeout=30).json()
        assert body["scores"] == [0.5] and {key: body[key] for key in expected} == expected
