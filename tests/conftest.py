"""Project-wide pytest setup: offline mode, a small thread budget, and the shared tiny model kit.

``tiny_kit`` builds the three tiny checkpoint folders of :mod:`edit_r1.models.tiny` once per test
session (a few seconds). Set ``EDIT_R1_TINY_KIT`` to a directory built with
``python -m edit_r1.models.tiny build --out DIR`` to reuse it instead.
"""

from __future__ import annotations

import os
from pathlib import Path

# Nothing in the test suite may reach a model hub; set before transformers/diffusers are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# The CI machine is small and shared: more intra-op threads only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_KIT_ENV = "EDIT_R1_TINY_KIT"


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding ``qwen_image_edit_plus/``, ``flux_kontext/`` and ``judge_qwen2_5_vl/``."""
    from edit_r1.models.tiny import KIT_NAMES, build_all

    reused = os.environ.get(TINY_KIT_ENV)
    if reused:
        root = Path(reused)
        missing = [name for name in KIT_NAMES if not (root / name).is_dir()]
        if missing:
            raise pytest.UsageError(
                f"{TINY_KIT_ENV}={reused} is not a built tiny kit (missing {missing}); build it with "
                f"`python -m edit_r1.models.tiny build --out {reused}`"
            )
        return root
    root = tmp_path_factory.mktemp("tiny_kit")
    build_all(root)
    return root
