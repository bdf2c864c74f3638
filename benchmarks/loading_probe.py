"""One torchrun launch of the ``loading`` scenario: a full-weight policy built for FSDP2 two ways.

    python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/loading_probe.py \\
        FAMILY KIT_FOLDER OUT.json [float32|bfloat16]

* ``copies``: as a policy built without ``shard_device`` (whole old/ref deep copies on every rank,
  then sharded), the baseline;
* ``deferred``: ``EditPolicy(shard_device=...)``, as the trainer builds a sharded run (old/ref on
  the meta device until ``parallelize_policy`` gives each rank its shards).

Each rank records the bytes of transformer parameters it holds (trained + old + ref, local shards
only) after construction and after sharding; rank 0 checks that both ways give the same whole
trained, old and ref tensors and writes ``OUT.json`` (every rank's numbers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from edit_r1 import distributed
from edit_r1.models.registry import load_policy
from edit_r1.parallelize import ParallelOptions, full_tensor, parallelize_policy, resident_bytes


def measure(family: str, kit: str, dist: distributed.DistInfo, deferred: bool, dtype: torch.dtype):
    policy = load_policy(
        family, kit, device=dist.device, dtype=dtype, use_lora=False,
        shard_device=dist.device if deferred else None,
    )  # fmt: skip
    modules = (policy.transformer, policy.old_transformer, policy.ref_transformer)
    # One whole transformer in the load dtype: the unit of the scenario's table.
    one_copy = sum(p.numel() for p in policy.transformer.parameters()) * dtype.itemsize
    built = {"all": resident_bytes(modules), "old_ref": resident_bytes(modules[1:])}
    parallelize_policy(policy, ParallelOptions(fsdp_transformer=True), dist)
    sharded = {"all": resident_bytes(modules), "old_ref": resident_bytes(modules[1:])}
    whole = {
        f"{which}.{name}": full_tensor(p.detach()).clone()
        for which, module in zip(("default", "old", "ref"), modules, strict=True)
        for name, p in module.named_parameters()
    }
    numbers = {"one_transformer": one_copy, "after_construction": built, "after_sharding": sharded}
    return numbers, whole


def main() -> None:
    family, kit, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dtype = getattr(torch, sys.argv[4]) if len(sys.argv) > 4 else torch.float32
    dist = distributed.init_distributed()
    results, tensors = {}, {}
    for way, deferred in (("copies", False), ("deferred", True)):
        results[way], tensors[way] = measure(family, kit, dist, deferred, dtype)
    every_rank = distributed.all_gather_json(results)
    if dist.is_main:
        same = all(torch.equal(tensors["copies"][k], tensors["deferred"][k]) for k in tensors["copies"])
        same = same and tensors["copies"].keys() == tensors["deferred"].keys()
        dtypes = {k: str(v.dtype) for k, v in tensors["deferred"].items()}
        same = same and all(str(tensors["copies"][k].dtype) == d for k, d in dtypes.items())
        out.write_text(json.dumps({"world_size": dist.world_size, "ranks": every_rank, "same_weights": same}))
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
