"""A user's judge prompt from a file (``--template-file``, and the pairwise question from
``--pairwise-template-file``): rendered as the original rendered its prompt, named with its SHA-256
in /health and in every score response; a server without a pairwise question refuses pairwise
items. Server-side only (these run in the judge node's own install too); the trainer's logging of
the names is in test_reward_client.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from reward_helpers import InstructionScoreBackend, png_bytes, random_image, reward_app_server

from reward_server.backends.base import BackendOptions
from reward_server.cli import options_from_args, parse_args, server_info
from reward_server.prompt_template import (
    AUTO,
    NoPairwiseTemplateError,
    TemplateError,
    judge_prompt_info,
    pairwise_template_id_for_file,
    pairwise_template_info,
    render_item_prompt,
    render_pairwise_prompt,
    render_prompt,
    resolve_pairwise_template,
    template_id_for_file,
    template_info,
)
from reward_server.protocol import build_score_request
from reward_server.worker import options_from_json, options_to_json

REPO = Path(__file__).resolve().parents[2]

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


# --- the pairwise question from a file (--pairwise-template-file) -------------------------------

OWN_PAIR_TEXT = "Two edits of the first picture.\nTask: {prompt}\nMust hold: {requirement}\nBetter: 1 or 2?"


@pytest.fixture
def pairwise_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_pairwise_question.txt"
    path.write_text(OWN_PAIR_TEXT, encoding="utf-8")
    return path


def test_a_pairwise_template_file_is_rendered_exactly(pairwise_file: Path, template_file: Path) -> None:
    pairwise = pairwise_template_id_for_file(pairwise_file)
    assert render_pairwise_prompt(" add a hat", "", pairwise) == (
        "Two edits of the first picture.\nTask:  add a hat\nMust hold: \nBetter: 1 or 2?"
    )  # as a pointwise file: nothing stripped, an empty requirement stays blank
    item = SimpleNamespace(instruction="make it red", requirement="only the car", pairwise=True, sources=[0])
    own = template_id_for_file(template_file)
    assert render_item_prompt(item, own, pairwise) == (
        "Two edits of the first picture.\nTask: make it red\nMust hold: only the car\nBetter: 1 or 2?"
    )
    assert pairwise_template_info(pairwise) == {
        "pairwise_template": "file:my_pairwise_question.txt",
        "pairwise_template_sha256": hashlib.sha256(OWN_PAIR_TEXT.encode()).hexdigest(),
    }
    # A built-in template keeps its own pairwise question; a pointwise file has none.
    assert render_item_prompt(item, "toy_v1") == render_pairwise_prompt("make it red", "", "toy_v1")
    assert resolve_pairwise_template(AUTO, own) is None
    assert pairwise_template_info(None) == {"pairwise_template": None, "pairwise_template_sha256": None}
    with pytest.raises(NoPairwiseTemplateError, match="--pairwise-template-file"):
        render_item_prompt(item, own)
    assert render_item_prompt(SimpleNamespace(**{**item.__dict__, "pairwise": False}), own) == render_prompt(
        "make it red", "only the car", own
    )


BAD_PAIRWISE_FILES = [
    (
        "roles.txt",
        "{image_roles} Task: {prompt}",
        "placeholders must be {prompt} (required) and {requirement}",
    ),
    ("pref_grpo_name.txt", "Text instruction - {instruction}", "found ['instruction']"),
    ("braces.txt", "Task: {prompt} {", "write literal braces as {{ and }}"),
    ("latin1.txt", b"Task: {prompt} caf\xe9", "cannot read it"),
]


@pytest.mark.parametrize(("name", "text", "says"), BAD_PAIRWISE_FILES, ids=[c[0] for c in BAD_PAIRWISE_FILES])
def test_a_bad_pairwise_template_file_is_refused_naming_it(tmp_path: Path, name, text, says) -> None:
    bad = tmp_path / name
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TemplateError) as error:
        pairwise_template_id_for_file(bad)
    assert str(error.value).startswith(f"pairwise template file {bad.resolve()}: ")
    assert says in str(error.value)


def test_the_cli_refuses_a_bad_pairwise_template_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "question.txt"
    bad.write_text("Compare: {instruction}", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "reward_server",
        "--model",
        "judge",
        "--pairwise-template-file",
        str(bad),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"pairwise template file {bad.resolve()}: placeholders" in errors[0]
    missing = str(tmp_path / "absent.txt")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "judge", "--pairwise-template-file", missing])
    assert exit_info.value.code == 2


def test_the_pairwise_question_travels_from_the_command_line_to_every_replica(
    pairwise_file: Path, template_file: Path
) -> None:
    """``--template-file`` alone: no pairwise question; ``--pairwise-template-file`` overrides the
    built-in template's; the choice survives the worker process's JSON options."""
    own, pairwise = template_id_for_file(template_file), pairwise_template_id_for_file(pairwise_file)
    cases = {
        (): ("edit_r1_v1", "edit_r1_v1"),
        ("--template", "toy_v1"): ("toy_v1", "toy_v1"),
        ("--template-file", str(template_file)): (own, None),
        ("--template-file", str(template_file), "--pairwise-template-file", str(pairwise_file)): (
            own,
            pairwise,
        ),
        ("--template", "toy_v1", "--pairwise-template-file", str(pairwise_file)): ("toy_v1", pairwise),
    }
    for flags, (template, expected) in cases.items():
        args = parse_args(["--model", "judge", *flags])
        options = options_from_args(args)
        assert (options.template, options.pairwise_template) == (template, expected), flags
        assert options_from_json(options_to_json(options, data_parallel_size=1)).pairwise_template == expected
        assert server_info(args) == {
            "backend": "vllm",
            "model": "judge",
            **judge_prompt_info(template, expected),
        }
    assert BackendOptions(model="judge", template="toy_v1").pairwise_template == "toy_v1"
    assert BackendOptions(model="judge", template=own).pairwise_template is None


def _pair_item(instruction: str) -> dict:
    image, other, source = (png_bytes(random_image(seed, 32)) for seed in range(3))
    return {
        "kind": "pairwise",
        "image": image,
        "image_b": other,
        "source_image": source,
        "instruction": instruction,
    }


def test_a_server_without_a_pairwise_question_refuses_pairwise_items_before_judging(
    template_file: Path,
) -> None:
    """``--template-file`` only: a request holding a pairwise item is a 400 naming the item and the fix,
    and no judge work is done; pointwise requests are served as before."""
    options = options_from_args(parse_args(["--model", "judge", "--template-file", str(template_file)]))
    backend = InstructionScoreBackend()
    backend.template, backend.pairwise_template = options.template, options.pairwise_template
    pointwise = {"image": png_bytes(random_image(0, 32)), "source_image": png_bytes(random_image(1, 32)),
                 "instruction": "score=0.5"}  # fmt: skip
    with reward_app_server([backend]) as url:
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["pairwise_template"] is None and health["pairwise_template_sha256"] is None
        request = build_score_request([pointwise, pointwise, _pair_item("score=0.25")])
        refused = requests.post(f"{url}/score", json=request, timeout=30)
        assert refused.status_code == 400
        message = refused.json()["error"]
        assert message.startswith("items[2]: a pairwise item, but this server has no pairwise question")
        assert "--pairwise-template-file PATH" in message and "--template (edit_r1_v1, toy_v1)" in message
        assert backend.batches == []  # refused before any judge work
        served = requests.post(f"{url}/score", json=build_score_request([pointwise]), timeout=30).json()
        assert served["scores"] == [0.5] and served["pairwise_template"] is None


def test_with_a_pairwise_file_pairwise_items_are_scored_and_named(
    template_file: Path, pairwise_file: Path
) -> None:
    flags = ["--template-file", str(template_file), "--pairwise-template-file", str(pairwise_file)]
    options = options_from_args(parse_args(["--model", "judge", *flags]))
    backend = InstructionScoreBackend()
    backend.template, backend.pairwise_template = options.template, options.pairwise_template
    expected = {
        "pairwise_template": "file:my_pairwise_question.txt",
        "pairwise_template_sha256": hashlib.sha256(OWN_PAIR_TEXT.encode()).hexdigest(),
    }
    with reward_app_server([backend]) as url:
        health = requests.get(f"{url}/health", timeout=10).json()
        assert {key: health[key] for key in expected} == expected
        body = requests.post(f"{url}/score", json=build_score_request([_pair_item("score=0.25")]), timeout=30)
        assert body.status_code == 200, body.text
        assert body.json()["scores"] == [0.25] and {key: body.json()[key] for key in expected} == expected
