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
from edit_r1.rewards import AsyncRewardScorer, CombinedReward
from edit_r1.trainer import Trainer


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


def install_reward(trainer: Trainer, mode: str) -> None:
    if mode == "rank0_failed":

        def score(samples):
            if trainer.dist.rank == 0:
                return np.full(len(samples), np.nan)
            return _distinct_rewards(samples)

    elif mode == "one_group_flat":
        original_items = trainer._items

        def items_with_group(indices):  # the group id travels to the reward in item.extra
            items, images = original_items(indices)
            for item in items:
                item.extra["_gid"] = trainer.group_id[item.index]
            return items, images

        trainer._items = items_with_group

        draw = trainer.sampler.global_batch(0, 0)  # epoch 0's only draw, identical on every rank
        learnable = min(trainer.group_id[i] for i in draw)

        def score(samples):
            distinct = _distinct_rewards(samples)
            return np.array(
                [d if s.extra["_gid"] == learnable else 0.5 for d, s in zip(distinct, samples, strict=True)]
            )

    else:
        raise SystemExit(f"unknown mode {mode!r}")
    trainer.reward = AsyncRewardScorer(CombinedReward({"probe": 1.0}, {"probe": score}))


def main() -> None:
    spec, out_dir, mode, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    config = load_config(spec)
    apply_overrides(config, overrides)
    dist = distributed.init_distributed()
    trainer = Trainer(config, dist)
    install_reward(trainer, mode)
    trainer.evaluate = lambda epoch: {}  # epoch 0 would evaluate first; not what this probe checks
    trainer.sampler.set_epoch(0)
    metrics = trainer.train_epoch(0)
    stats = trainer.last_epoch_stats
    n = len(stats["all_mask"]) // dist.world_size
    state = [*trainer.params, *trainer.policy.old_parameters()]
    state += list(trainer.ema.shadow) if trainer.ema is not None else []
    result = {
        "global_step": trainer.global_step,
        "metrics": {
            key: metrics[key] for key in ("total_loss", "policy_loss", "group_size", "trained_prompt_num")
        },
        "local_mask": stats["all_mask"][dist.rank * n : (dist.rank + 1) * n].tolist(),
        "state_sha256": _digest([*state, *_optimizer_tensors(trainer.optimizer)]),
        "optimizer_steps": [int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()][:1],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))
    trainer.reward.close()
    trainer.tracker.finish()
    distributed.shutdown()


if __name__ == "__main__":
    main()
