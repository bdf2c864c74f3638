"""Runs the real Trainer (under torchrun or alone) and dumps what the tests check, per rank.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/integration/trainer_probe.py \\
        CONFIG_SPEC OUT_DIR '{"num_epochs": 2, "sample.solver": "dpm2"}'

Writes ``OUT_DIR/rank<r>.json`` with the last epoch's gathered advantages and keep-mask, whether each
trainable parameter changed, and the number of parameters.
"""

import json
import sys
from pathlib import Path

import torch

from edit_r1 import distributed
from edit_r1.config import load_config
from edit_r1.trainer import trainer_from_config


def apply_overrides(config, overrides: dict) -> None:
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value


def main() -> None:
    spec, out_dir, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    config = load_config(spec)
    apply_overrides(config, overrides)
    dist = distributed.init_distributed()
    trainer = trainer_from_config(config, dist)
    params = trainer.updater.params
    before = [p.detach().clone() for p in params]
    stats = trainer.run().stats  # the last epoch's
    result = {
        "advantages": stats.advantages.tolist(),
        "mask": stats.mask.tolist(),
        "changed": [bool(not torch.equal(b, p.detach())) for b, p in zip(before, params, strict=True)],
        "names": [name for name, _, _ in trainer.updater.policy._parameter_pairs()],
        "run_dir": str(trainer.run_dir),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main()
