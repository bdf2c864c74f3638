"""Runs several real Trainers one after another in one torchrun launch (sharded and unsharded).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/integration/fsdp_probe.py \\
        OUT_DIR '[{"name": "qwen-lora-fsdp", "spec": "config/qwen_image_edit_nft.py:tiny", "overrides": {...}}]'

Each case trains with its overrides (``logdir``/``run_name`` are set to ``OUT_DIR/runs/<name>``).
For a case with ``resume_from``, rank 0 writes ``OUT_DIR/<name>-loaded.safetensors``: the whole
``default``/``old``/``ema`` tensors right after the resume (before any training), gathered from the
shards. ``OUT_DIR/<name>.json`` records the world size, whether the transformer was sharded and
the first epoch. ``OUT_DIR/<name>-rank<r>-loading.json`` records, around the trainer's
``parallelize_policy``, the bytes of the old/ref copies this rank held before and after sharding,
the most its shards may hold, and whether the ref copy equals the trained weights right then.
"""

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.parallelize import full_tensor, like_param, parallelize_policy, resident_bytes
from edit_r1.trainer import Trainer, trainer_from_config
from edit_r1.training import build as build_module


def apply_overrides(config, overrides: dict) -> None:
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value


def loaded_tensors(trainer: Trainer) -> dict:
    updater = trainer.updater
    names = updater.policy.trainable_parameter_names()
    groups = {"default": updater.params, "old": updater.policy.old_parameters()}
    if updater.ema is not None:
        groups["ema"] = [like_param(s, p) for s, p in zip(updater.ema.shadow, updater.params, strict=True)]
    return {
        f"{group}.{name}": full_tensor(t.detach()).cpu().contiguous()
        for group, tensors in groups.items()
        for name, t in zip(names, tensors, strict=True)
    }


def shard_bound(params, world_size: int) -> int:
    """The most bytes one rank's FSDP2 shards of ``params`` (dim-0 chunks) can hold."""
    return sum(
        math.ceil(p.shape[0] / world_size) * (p.numel() // p.shape[0]) * p.element_size() if p.dim() else
        p.element_size() for p in params
    )  # fmt: skip


def recording_parallelize(record: dict):
    """``parallelize_policy`` that notes the old/ref copies' bytes before and after it."""

    def wrapper(policy, options, dist_info):
        frozen = [m for m in (policy.old_transformer, policy.ref_transformer) if m is not None]
        before = resident_bytes(frozen)
        plan = parallelize_policy(policy, options, dist_info)
        params = [p for m in frozen for p in m.parameters()]
        record.update(
            old_ref_before=before,
            old_ref_after=resident_bytes(frozen),
            old_ref_one_copy=sum(p.numel() * p.element_size() for p in params),
            old_ref_shard_bound=shard_bound(params, dist_info.world_size),
        )
        if policy.ref_transformer is not None:
            ref = dict(policy.ref_transformer.named_parameters())
            record["ref_equals_trained"] = all(
                torch.equal(full_tensor(ref[n].detach()), full_tensor(p.detach()).to(ref[n].dtype))
                for n, p in policy.transformer.named_parameters()
            )
        return plan

    return wrapper


def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    dist = distributed.init_distributed()
    for case in cases:
        config = load_config(case["spec"])
        apply_overrides(config, {**case["overrides"], "logdir": str(out / "runs"), "run_name": case["name"]})
        record: dict = {}
        build_module.parallelize_policy = recording_parallelize(record)
        trainer = trainer_from_config(config, dist)
        (out / f"{case['name']}-rank{dist.rank}-loading.json").write_text(json.dumps(record))
        if config.resume_from:
            tensors = loaded_tensors(trainer)
            if dist.is_main:
                save_file(tensors, str(out / f"{case['name']}-loaded.safetensors"))
        trainer.run()
        if dist.is_main:
            info = {
                "world_size": dist.world_size,
                "sharded": trainer.updater.sharded_transformer,
                "first_epoch": trainer.first_epoch,
                "is_dtensor": type(trainer.updater.params[0]).__name__ == "DTensor",
            }
            (out / f"{case['name']}.json").write_text(json.dumps(info))
        distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main()
