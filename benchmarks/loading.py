"""``loading``: parameter bytes a rank holds while a full-weight policy is built and FSDP2-sharded.

Per family and world size (2 and 4 CPU processes, gloo), one ``torchrun`` launch of
``benchmarks/loading_probe.py`` builds the policy two ways side by side: ``copies`` (whole old/ref
deep copies on every rank, then sharded: what the trainer did before ``shard_device``) and
``deferred`` (old/ref on the meta device, each rank allocating only its shards). Reported per way:
the most transformer-parameter bytes any rank held at either moment (after construction, after
sharding), in units of one unsharded transformer, and whether both ways gave the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, BenchmarkError, Settings, describe, resolve_kit

PROBE = Path(__file__).with_name("loading_probe.py")
WORLD_SIZES = (2, 4)


def launch(family: str, folder: Path, nproc: int, dtype: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edit_r1_bench_loading_") as tmp:
        out = Path(tmp) / "loading.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   str(PROBE), family, str(folder), str(out), dtype]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            raise BenchmarkError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def peaks(result: dict[str, Any], way: str) -> dict[str, float]:
    """The most bytes any rank held, over both moments, in units of one unsharded transformer."""
    rows = [rank[way] for rank in result["ranks"]]
    one = rows[0]["one_transformer"]
    moments = ("after_construction", "after_sharding")
    return {
        "all": max(row[m]["all"] for row in rows for m in moments) / one,
        "old_ref": max(row[m]["old_ref"] for row in rows for m in moments) / one,
    }


def run_loading(settings: Settings) -> dict[str, Any]:
    """Both families at 2 and 4 ranks, float32 (the CPU load dtype)."""
    from edit_r1.models.registry import family_names, policy_class

    kit = resolve_kit(settings)
    table: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    same = True
    for family in family_names():
        for nproc in WORLD_SIZES:
            result = launch(family, kit / policy_class(family).tiny_kit_folder, nproc, "float32")
            same = same and bool(result["same_weights"])
            copies, deferred = peaks(result, "copies"), peaks(result, "deferred")
            key = f"{family}_{nproc}ranks"
            table[key] = {
                "copies_all": copies["all"], "copies_old_ref": copies["old_ref"],
                "deferred_all": deferred["all"], "deferred_old_ref": deferred["old_ref"],
            }  # fmt: skip
            ratios[f"{key}_peak_copies_over_deferred"] = copies["all"] / deferred["all"]
    if not same:
        raise BenchmarkError("the deferred build gave other weights than the deep copies")
    return {
        "scenario": "loading",
        "settings": describe(settings, size="tiny"),
        "peak_in_transformers": table,
        "same_weights": same,
        "ratios": ratios,
    }
