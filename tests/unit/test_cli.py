"""The training scripts' command line: an unknown ``--config.KEY`` is one clear line, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edit_r1.cli import unknown_override_keys

REPO = Path(__file__).resolve().parents[2]
QWEN = f"{REPO}/config/qwen_image_edit_nft.py:tiny"


def test_known_overrides_pass_and_unknown_ones_name_the_closest_keys() -> None:
    assert (
        unknown_override_keys(["--config", QWEN, "--config.save_dir=/x", "--config.train.lora_path=a"], QWEN)
        is None
    )
    line = unknown_override_keys([f"--config={QWEN}", "--config.train.learning_rat=1e-4"], QWEN)
    assert line.startswith("error: unknown config key 'train.learning_rat'") and "train.learning_rate" in line
    line = unknown_override_keys(["--config.lora_rank=8"], QWEN)  # right leaf, wrong parent
    assert "train.lora_rank" in line


def test_training_script_exits_2_with_one_line() -> None:
    command = [sys.executable, str(REPO / "scripts" / "train_nft_qwen_image_edit.py"),
               f"--config={QWEN}", "--config.sav_dir=/tmp/x"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: unknown config key 'sav_dir' in {QWEN}; closest: save_dir"
    ] or ("'sav_dir'" in result.stderr and "save_dir" in result.stderr and "Traceback" not in result.stderr)
