"""``epoch``: whole tiny epochs with ``torchrun`` (CPU processes), the time of each phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, BenchmarkError, Settings, describe, median, resolve_kit

EPOCH_PHASES = ("sampling", "scoring_wait", "training", "sync")


def epoch_summary(metrics_path: Path) -> dict[str, Any]:
    """Per-epoch phase times from a run's metrics.jsonl and the median split over its epochs
    (the first epoch too, unless there are several: it carries one-off warm-up costs)."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    epochs = [row for row in rows if any(f"time/{phase}" in row for phase in EPOCH_PHASES)]
    if not epochs:
        raise BenchmarkError(f"{metrics_path}: no epoch with time/* metrics")
    steady = epochs[1:] if len(epochs) > 1 else epochs
    per_epoch = [
        {phase: float(row.get(f"time/{phase}", 0.0)) for phase in (*EPOCH_PHASES, "evaluation")}
        for row in epochs
    ]
    split = {
        phase: median([float(row.get(f"time/{phase}", 0.0)) for row in steady]) for phase in EPOCH_PHASES
    }
    total = sum(split.values())
    return {
        "per_epoch_s": per_epoch,
        "median_split_s": split,
        "ratios": {
            f"{phase}_fraction": value / total if total > 0 else 0.0 for phase, value in split.items()
        },
    }


def run_epoch(settings: Settings) -> dict[str, Any]:
    """``settings.epochs`` tiny epochs of ``settings.family`` (its ``scripts/train_nft_<family>.py``
    with ``config/<family>_nft.py:tiny``) with torchrun and ``settings.nproc`` CPU processes."""
    from edit_r1.data.toy import write_toy_dataset
    from edit_r1.models.registry import policy_class

    kit = resolve_kit(settings)
    with tempfile.TemporaryDirectory(prefix="edit_r1_bench_epoch_") as tmp:
        data = Path(tmp) / "data"
        write_toy_dataset(data, num_train=16, num_test=4)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={settings.nproc}",
            str(REPO_ROOT / "scripts" / f"train_nft_{settings.family}.py"),
            "--config", str(REPO_ROOT / "config" / f"{settings.family}_nft.py") + ":tiny",
            f"--config.logdir={tmp}/runs", f"--config.num_epochs={settings.epochs}",
            f"--config.pretrained.model={kit / policy_class(settings.family).tiny_kit_folder}",
            f"--config.dataset={data}",
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchmarkError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
        metrics = sorted(Path(tmp, "runs").rglob("metrics.jsonl"))
        if not metrics:
            raise BenchmarkError(f"no metrics.jsonl under {tmp}/runs")
        summary = epoch_summary(metrics[0])
    return {"scenario": "epoch", "settings": describe(settings, size="tiny"), "wall_s": wall, **summary}
