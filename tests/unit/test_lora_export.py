"""``save_diffusers_lora`` runs on rank 0 alone: it must hand peft no sharded tensor to gather (peft
>= 0.22 gathers DTensors itself, a collective the other ranks never join, which crashed every
sharded LoRA checkpoint with a gloo size mismatch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# One process, its own world-size-1 gloo group (kept out of the pytest process, whose other tests
# must not see an active process group): a Linear whose weight is a DTensor sharded on dim 0.
SCRIPT = r"""
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from edit_r1.models.lora import _local_parameters, save_diffusers_lora

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
layer = torch.nn.Linear(4, 2)
layer.weight = torch.nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Shard(0)]))
local = _local_parameters(layer)
result = {"sharded": local.sharded, "any_dtensor": any(isinstance(t, DTensor) for t in local.tensors.values()),
          "names": sorted(local.tensors)}
try:
    save_diffusers_lora(object, sys.argv[2], layer, "default", [])
except ValueError as error:
    result["error"] = str(error)
dist.destroy_process_group()
print(json.dumps(result))
"""


def test_a_sharded_transformers_lora_is_exported_from_gathered_weights_only(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store"), str(tmp_path / "lora")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sharded"] and not result["any_dtensor"]  # local shards, nothing left to gather
    assert result["names"] == ["bias", "weight"]
    assert "pass weights" in result["error"]
    assert not (tmp_path / "lora").exists()  # refused before writing anything
