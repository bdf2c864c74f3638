"""Server-test fixtures. ``tiny_judge`` is the tiny Qwen2.5-VL judge folder.

Set ``EDIT_R1_TINY_JUDGE`` to a judge folder built by ``python -m edit_r1.models.tiny build`` to use
it without importing the training package (the server-only check, ``make test-server-min``, runs
in a venv that has the server's dependencies only); otherwise it comes from the shared tiny kit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_JUDGE_ENV = "EDIT_R1_TINY_JUDGE"


@pytest.fixture(scope="session")
def tiny_judge(request: pytest.FixtureRequest) -> Path:
    given = os.environ.get(TINY_JUDGE_ENV)
    if given:
        path = Path(given)
        if not (path / "config.json").is_file():
            raise pytest.UsageError(f"{TINY_JUDGE_ENV}={given} is not a judge checkpoint folder")
        return path
    return request.getfixturevalue("tiny_kit") / "judge_qwen2_5_vl"
