"""Runs the real training script under torchrun and records where each process sits.

    python -m torch.distributed.run --nnodes=2 --nproc_per_node=2 --rdzv_backend=c10d \\
        --rdzv_endpoint=127.0.0.1:PORT tests/integration/node_probe.py OUT_DIR -- --config=... [flags]

Before training, every process writes ``OUT_DIR/proc-<RANK>.json``: torchrun's ``RANK``,
``LOCAL_RANK``, ``GROUP_RANK`` (the node), its pid and its launcher's pid, and what
:func:`edit_r1.distributed.init_distributed` made of them (rank, local rank, device, main or not).

Fault injection for the hung-rank test: once the file ``OUT_DIR/hang-rank-<RANK>`` exists, that
rank's next ``torch.distributed.all_gather`` sleeps (an hour) before it enters the collective — a
rank that hangs without dying, as a stuck kernel or a deadlocked data loader does.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch.distributed as torch_dist

from edit_r1 import distributed

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))


def record_init(out: Path):
    original = distributed.init_distributed

    def init_and_record(*args, **kwargs):
        info = original(*args, **kwargs)
        where = {
            "env": {
                k: os.environ.get(k)
                for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
            },
            "pid": os.getpid(),
            "launcher_pid": os.getppid(),
            "rank": info.rank,
            "local_rank": info.local_rank,
            "world_size": info.world_size,
            "device": str(info.device),
            "is_main": info.is_main,
        }
        (out / f"proc-{info.rank}.json").write_text(json.dumps(where))
        return info

    distributed.init_distributed = init_and_record


def hang_on_request(out: Path) -> None:
    original = torch_dist.all_gather
    flag = out / f"hang-rank-{os.environ.get('RANK', '0')}"

    def all_gather(*args, **kwargs):
        if flag.exists():
            print(f"[probe] rank {os.environ.get('RANK')} hangs inside all_gather", flush=True)
            time.sleep(3600)
        return original(*args, **kwargs)

    torch_dist.all_gather = all_gather


def main() -> None:
    out = Path(sys.argv[1])
    separator = sys.argv.index("--")
    out.mkdir(parents=True, exist_ok=True)
    record_init(out)
    hang_on_request(out)
    import train_nft_qwen_image_edit as script

    script.run(script.main, script.DEFAULT_CONFIG, [sys.argv[0], *sys.argv[separator + 1 :]])


if __name__ == "__main__":
    main()
