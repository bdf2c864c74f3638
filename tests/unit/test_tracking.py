"""Tracking: metrics.jsonl rows, step axis, wandb settings, reward curve and eval grid images."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edit_r1.tracking import (
    METRICS_FILENAME,
    Timer,
    Tracker,
    WandbSettings,
    progress,
    read_metrics,
    resolve_wandb_settings,
    reward_series,
    save_eval_grid,
    save_reward_curve,
)


def test_metrics_jsonl_rows(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    before = time.time()
    tracker.log({"reward_avg": torch.tensor(0.25), "zero_std_ratio": np.float32(0.5), "banned": 3}, step=0)
    tracker.log({"policy_loss": float("nan"), "lr": 3e-4, "phase": "train", "ok": True}, step=1)
    tracker.log({"eval_reward_avg": np.array([0.75])}, step=1)  # same step twice is allowed
    lines = (tmp_path / METRICS_FILENAME).read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # strict JSON: NaN was written as null
    assert [r["step"] for r in rows] == [0, 1, 1]
    assert rows[0]["reward_avg"] == 0.25 and rows[0]["zero_std_ratio"] == 0.5 and rows[0]["banned"] == 3
    assert rows[1]["policy_loss"] is None and rows[1]["lr"] == 3e-4 and rows[1]["phase"] == "train"
    assert rows[1]["ok"] is True and rows[2]["eval_reward_avg"] == 0.75
    assert all(before <= r["time"] <= time.time() for r in rows)
    assert "NaN" not in "".join(lines)


def test_step_must_not_go_back(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    tracker.log({"a": 1}, step=5)
    with pytest.raises(ValueError, match="step 4 is before"):
        tracker.log({"a": 1}, step=4)


def test_bad_metric_values_rejected(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    with pytest.raises(TypeError, match="'x0_norm'.*shape"):
        tracker.log({"x0_norm": torch.ones(3)}, step=0)
    with pytest.raises(TypeError, match="'cfg'"):
        tracker.log({"cfg": {"a": 1}}, step=0)


def test_disabled_tracker_is_a_no_op(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path / "run", enabled=False, wandb=WandbSettings(mode="online"))
    tracker.log({"reward_avg": 1.0}, step=0)
    tracker.truncate_after(0)
    tracker.finish()
    assert not (tmp_path / "run").exists()


def test_truncate_after_on_resume(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    for step in range(5):
        tracker.log({"reward_avg": step / 10}, step=step)
    resumed = Tracker(tmp_path)
    resumed.truncate_after(2)
    resumed.log({"reward_avg": 0.9}, step=3)
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILENAME)] == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        resumed.log({"a": 1}, step=2)


def test_read_metrics_skips_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILENAME
    path.write_text('{"step": 0, "a": 1}\n{"step": 1, "a"')
    assert read_metrics(path) == [{"step": 0, "a": 1}]
    path.write_text('{"step": 0\n{"step": 1, "a": 1}\n')
    with pytest.raises(ValueError, match="row 1"):
        read_metrics(path)


def test_wandb_settings_from_config_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_wandb_settings() == WandbSettings("disabled", None, None)
    assert resolve_wandb_settings("online", "edit-r1", "me") == WandbSettings("online", "edit-r1", "me")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    assert resolve_wandb_settings("online", None, "me") == WandbSettings("offline", "from-env", "me")
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        resolve_wandb_settings("online")


def test_wandb_offline_needs_no_network(tmp_path: Path) -> None:
    """Offline mode with an unreachable server address: the run is written locally, steps explicit."""
    script = textwrap.dedent(
        f"""
        from edit_r1.tracking import Tracker, resolve_wandb_settings
        tracker = Tracker({str(tmp_path)!r}, wandb=resolve_wandb_settings("online", "edit-r1-test"),
                          run_name="t", config={{"seed": 42}})
        tracker.log({{"reward_avg": 0.5}}, step=10)
        tracker.log({{"reward_avg": 0.625}}, step=20)
        tracker.finish()
        """
    )
    env = dict(os.environ, WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    assert run_files[0].name == f"run-{run_id}.wandb"  # resumed runs reuse this id
    assert b"reward_avg" in run_files[0].read_bytes()
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILENAME)] == [10, 20]


def test_reward_curve_png(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    for step in range(12):
        row = {
            "reward_avg": 0.3 + 0.02 * step,
            "reward_std_mean": 0.1,
            "reward_failed": 2,
            "policy_loss": 1.0,
        }
        if step % 5 == 0:
            row["eval_reward_avg"] = 0.35 + 0.02 * step
        tracker.log(row, step=step)
    series = reward_series(read_metrics(tmp_path / METRICS_FILENAME))
    assert sorted(series) == ["eval_reward_avg", "reward_avg"]  # not std statistics or failure counts
    assert [step for step, _ in series["eval_reward_avg"]] == [0, 5, 10]
    png = save_reward_curve(tmp_path / METRICS_FILENAME, tmp_path / "plots" / "reward_curve.png")
    assert png == tmp_path / "plots" / "reward_curve.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (700, 400)
    assert not list((tmp_path / "plots").glob("*.tmp*"))

    empty = tmp_path / "empty"
    Tracker(empty).log({"policy_loss": 1.0}, step=0)
    assert save_reward_curve(empty / METRICS_FILENAME, empty / "curve.png") is None
    assert not (empty / "curve.png").exists()


def test_eval_grid_png(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (50, 50), (0, 0, 255))
    items = [
        (red, blue, 0.8125, "make the red square blue " * 6),
        (blue, red, None, "undo it"),
        (red, red, 0.0, ""),
    ]
    path = save_eval_grid(items, tmp_path / "grids" / "eval_010.png", cell=64, columns=2)
    with Image.open(path) as img:
        grid = img.convert("RGB")
    assert grid.width == 2 * (2 * 64 + 6) + 6
    assert grid.height > 2 * 64  # two rows of tiles plus captions
    pad = 6
    assert grid.getpixel((pad + 10, pad + 10)) == (255, 0, 0)  # first source
    assert grid.getpixel((pad + 64 + 10, pad + 10)) == (0, 0, 255)  # first edit
    caption = np.asarray(grid.crop((pad, pad + 64, pad + 128, pad + 64 + 20)))
    assert (caption < 128).any()  # the score label was drawn
    with pytest.raises(ValueError):
        save_eval_grid([], tmp_path / "none.png")


def test_timer_accumulates_phases() -> None:
    timer = Timer()
    for _ in range(2):
        with timer("sampling"):
            time.sleep(0.01)
    with timer("training"):
        pass
    metrics = timer.metrics()
    assert set(metrics) == {"time/sampling", "time/training"}
    assert metrics["time/sampling"] >= 0.02 and math.isfinite(metrics["time/training"])
    timer.reset()
    assert timer.metrics() == {}


def test_progress_bar_only_when_enabled() -> None:
    shown, hidden = io.StringIO(), io.StringIO()
    assert list(progress(range(3), desc="sampling", enabled=True, file=shown)) == [0, 1, 2]
    assert list(progress(range(3), desc="sampling", enabled=False, file=hidden)) == [0, 1, 2]
    assert "sampling" in shown.getvalue() and "3/3" in shown.getvalue()
    assert hidden.getvalue() == ""
    manual = io.StringIO()
    with progress(desc="scoring", enabled=True, total=4, file=manual) as bar:
        bar.update(4)
    assert "4/4" in manual.getvalue()
