"""Runs one epoch of the real Trainer where some ranks have every sample masked; dumps per-rank state.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/integration/masked_rank_probe.py \\
        CONFIG_SPEC OUT_DIR MODE '{"sample.ban_prompt": true}'

MODE ``rank0_failed``: rank 0's reward function fails (NaN) for every sample, other ranks score
their samples with distinct rewards, so rank 0 has nothing to learn from and the others do.
MODE ``one_group_flat``: every rank scores the first group of the epoch's draw with distinct
rewards and every other group with a constant (std 0, filtered out by ``sample.ban_prompt``);
ranks that drew only flat groups have every sample masked.

Writes ``OUT_DIR/rank<r>.json``: ``global_step``, this rank's keep-mask, and one sha256 over the
trainable weights, the old policy, the EMA shadow and the optimizer state.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from trainer_probe import apply_overrides

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.rewards import CombinedReward
from edit_r1.trainer import trainer_from_config


def _digest(tensors) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state_dict()["state"].values():
        for key in sorted(state):
            yield torch.as_tensor(state[key])


def _distinct_rewards(samples) -> np.ndarray:
    """Different finite values within a batch (a group keeps a large std)."""
    return np.array([0.1 + 0.6 * (i % 3) / 2 + 0.01 * i for i in range(len(samples))])


class NoEvaluation:
    """Epoch 0 would evaluate first; not what this probe checks."""

    def due(self, epoch: int) -> bool:
        return False


def group_id_of(collector):
    """A reward sample's group id, from its instruction and the toy fields that tell items apart."""

    def fingerprint(instruction, extra) -> str:
        return json.dumps([instruction, dict(extra)], sort_keys=True)

    dataset = collector.dataset
    ids = {fingerprint(dataset[i].prompt, dataset[i].extra): gid for i, gid in enumerate(collector.group_id)}
    return lambda sample: ids[fingerprint(sample.instruction, sample.extra)]


def build(config, dist, mode: str):
    """The trainer with the probe's reward handed in; the reward reads the built trainer's draw."""
    built: dict = {}

    def score(samples):
        if mode == "rank0_failed":
            return np.full(len(samples), np.nan) if dist.rank == 0 else _distinct_rewards(samples)
        distinct = _distinct_rewards(samples)
        gid = built["group_id_of"]
        return np.array(
            [d if gid(s) == built["learnable"] else 0.5 for d, s in zip(distinct, samples, strict=True)]
        )

    if mode not in ("rank0_failed", "one_group_flat"):
        raise SystemExit(f"unknown mode {mode!r}")
    reward = CombinedReward({"probe": 1.0}, {"probe": score})
    trainer = trainer_from_config(config, dist, reward=reward, evaluator=NoEvaluation())
    collector = trainer.collector
    draw = collector.sampler.global_batch(0, 0)  # epoch 0's only draw, identical on every rank
    built.update(group_id_of=group_id_of(collector), learnable=min(collector.group_id[i] for i in draw))
    return trainer


def main() -> None:
    spec, out_dir, mode, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    config = load_config(spec)
    apply_overrides(config, overrides)
    dist = distributed.init_distributed()
    trainer = build(config, dist, mode)
    trainer.collector.sampler.set_epoch(0)
    epoch = trainer.train_epoch(0)
    metrics, stats, updater = epoch.metrics, epoch.stats, trainer.updater
    n = len(stats.mask) // dist.world_size
    state = [*updater.params, *updater.policy.old_parameters()]
    state += list(updater.ema.shadow) if updater.ema is not None else []
    result = {
        "global_step": updater.global_step,
        "metrics": {
            key: metrics[key] for key in ("total_loss", "policy_loss", "group_size", "trained_prompt_num")
        },
        "local_mask": stats.mask[dist.rank * n : (dist.rank + 1) * n].tolist(),
        "state_sha256": _digest([*state, *_optimizer_tensors(updater.optimizer)]),
        "optimizer_steps": [int(s["step"]) for s in updater.optimizer.state_dict()["state"].values()][:1],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))
    trainer.collector.close(wait=True)
    trainer.tracker.finish()
    distributed.shutdown()


if __name__ == "__main__":
    main()
