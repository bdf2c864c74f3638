"""Distributed helpers: single process without torchrun, and a real 2-rank torchrun job (gloo, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edit_r1 import distributed
from edit_r1.checkpoint import CheckpointState, load_checkpoint, save_checkpoint
from edit_r1.parallelize import sharded_frozen_module

_WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    from torch import nn

    from edit_r1 import distributed as D
    from edit_r1.checkpoint import CheckpointState, load_checkpoint, save_checkpoint
    from edit_r1.parallelize import sharded_frozen_module

    out_dir = Path(sys.argv[1])
    info = D.init_distributed()
    r = info.rank
    result = {"rank": r, "world_size": info.world_size, "device": str(info.device)}

    # Variable first dimension: rank 0 sends 2 rows, rank 1 sends 3 (and an empty/bool case).
    rows = torch.arange((r + 2) * 3, dtype=torch.float32).reshape(r + 2, 3) + 100 * r
    result["gathered"] = D.all_gather_tensor(rows).tolist()
    result["gathered_empty"] = D.all_gather_tensor(torch.ones(r, 2)).shape[0]
    result["gathered_bool"] = D.all_gather_tensor(torch.tensor([r == 0, True])).tolist()
    in_place = torch.tensor([float(r), 2.0 * r])
    returned = D.all_reduce_mean(in_place)
    result["mean"] = in_place.tolist()
    result["mean_returns_same"] = returned is in_place
    summed = torch.tensor([r + 1], dtype=torch.int64)
    D.all_reduce_sum(summed)
    result["sum"] = summed.tolist()
    bans = [["make it red", "images/a.png"]] if r == 0 else [["ignored", "x"]]
    result["bans"] = D.broadcast_object(bans, src=0)
    result["gathered_json"] = D.all_gather_json({"rank": r, "keys": ["k%d" % i for i in range(r + 1)]})

    # Per-rank seeds and an RNG round trip through a 2-rank checkpoint.
    D.seed_everything(42, r)
    result["first_draw"] = torch.rand(2).tolist()
    ckpt = save_checkpoint(
        out_dir / "run", 3, CheckpointState(
            tensors={"ema": {"w": torch.full((2,), 7.0)}},
            metadata={"epoch": 3, "banned": bans},
            rng=D.get_rng_state(),
        ), dist_info=info, keep_last=1,
    )
    expected = torch.rand(3)
    loaded = load_checkpoint(out_dir / "run")
    D.set_rng_state(loaded.rng)
    result["rng_restored"] = torch.equal(torch.rand(3), expected)
    result["ckpt"] = str(ckpt)
    result["loaded_world_size"] = loaded.world_size
    result["loaded_ema"] = loaded.tensors["ema"]["w"].tolist()

    # ENOSPC on rank 1 only (its RNG file): every rank raises the same error instead of hanging.
    import errno, os
    from edit_r1 import checkpoint as C
    real_save_file = C.save_file
    def disk_full(tensors, filename, metadata=None):
        if "rank1" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real_save_file(tensors, filename, metadata)
    C.save_file = disk_full
    try:
        save_checkpoint(out_dir / "run", 4, CheckpointState(metadata={"epoch": 4}, rng=D.get_rng_state()),
                        dist_info=info, keep_last=1)
        result["enospc_error"] = None
    except C.CheckpointWriteError as error:
        result["enospc_error"] = str(error)
    C.save_file = real_save_file
    result["after_enospc"] = [p.name for p in sorted((out_dir / "run" / "checkpoints").iterdir())]

    # FSDP2 sharding of a frozen module gives the same outputs as the full module.
    torch.manual_seed(0)  # identical weights on both ranks
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 8)
            self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = self.embed(x)
            for block in self.blocks:
                x = torch.tanh(block(x))
            return self.head(x)

    enc = Encoder()
    x = torch.randn(3, 6)
    with torch.no_grad():
        full = enc(x).clone()
        local_numel = sum(p.numel() for p in enc.parameters())
        sharded = sharded_frozen_module(enc, info)
        result["fsdp_matches"] = torch.allclose(sharded(x), full, atol=1e-6)
    result["fsdp_local_numel"] = sum(p.to_local().numel() for p in sharded.parameters())
    result["full_numel"] = local_numel
    result["fsdp_frozen"] = not any(p.requires_grad for p in sharded.parameters())

    (out_dir / f"rank{r}.json").write_text(json.dumps(result))
    D.barrier()
    D.shutdown()
    """
)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    work = tmp_path_factory.mktemp("torchrun")
    script = work / "worker.py"
    script.write_text(_WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # torchrun binds a free rendezvous port itself: no race with other processes
        str(script),
        str(work),
    ]
    for _attempt in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        # Seen once in ~15 runs (a fresh-clone CI run, other jobs on the 2 cores): rank 1 aborted in
        # C++ ("terminate called without an active exception", SIGABRT) with no Python traceback; it
        # did not recur in isolation or under parallel load. Only that abort is retried, once; any
        # Python failure or wrong result still fails the test.
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]


def test_torchrun_a_failed_checkpoint_write_on_one_rank_fails_every_rank(
    two_rank_results: list[dict],
) -> None:
    for rank in two_rank_results:
        error = rank["enospc_error"]
        assert (
            error
            and "rank 1: OSError: [Errno 28] No space left on device" in error
            and "rank1.safetensors" in error
        )
        assert "checkpoint-3 is intact" in error
        assert rank["after_enospc"] == ["checkpoint-3"]


def test_torchrun_world_and_device(two_rank_results: list[dict]) -> None:
    assert [(r["rank"], r["world_size"], r["device"]) for r in two_rank_results] == [
        (0, 2, "cpu"),
        (1, 2, "cpu"),
    ]


def test_torchrun_all_gather_variable_sizes(two_rank_results: list[dict]) -> None:
    expected = [[0, 1, 2], [3, 4, 5]] + [[100 + i, 101 + i, 102 + i] for i in (0, 3, 6)]
    for res in two_rank_results:
        assert res["gathered"] == expected
        assert res["gathered_empty"] == 1  # rank 0 sent zero rows
        assert res["gathered_bool"] == [True, True, False, True]
        assert res["mean"] == [0.5, 1.0] and res["mean_returns_same"]  # in place, like dist.all_reduce
        assert res["sum"] == [3]


def test_torchrun_object_exchange(two_rank_results: list[dict]) -> None:
    for res in two_rank_results:
        assert res["bans"] == [["make it red", "images/a.png"]]
        assert res["gathered_json"] == [{"rank": 0, "keys": ["k0"]}, {"rank": 1, "keys": ["k0", "k1"]}]


def test_torchrun_rng_per_rank_and_checkpoint(two_rank_results: list[dict]) -> None:
    r0, r1 = two_rank_results
    assert r0["first_draw"] != r1["first_draw"]  # seed + rank: different noise per rank
    for res in two_rank_results:
        assert res["rng_restored"]  # each rank got its own RNG file back
        assert res["loaded_world_size"] == 2 and res["loaded_ema"] == [7.0, 7.0]
    ckpt = Path(r0["ckpt"])
    assert ckpt == Path(r1["ckpt"]) and ckpt.name == "checkpoint-3"
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank0.safetensors", "rank1.safetensors"]
    assert [p.name for p in ckpt.parent.iterdir()] == ["checkpoint-3"]  # no temp dirs left


def test_torchrun_fsdp2_frozen_module(two_rank_results: list[dict]) -> None:
    for res in two_rank_results:
        assert res["fsdp_matches"] and res["fsdp_frozen"]
    # The parameters are split across the two ranks.
    assert sum(r["fsdp_local_numel"] for r in two_rank_results) == two_rank_results[0]["full_numel"]
    assert two_rank_results[0]["fsdp_local_numel"] < two_rank_results[0]["full_numel"]


def test_single_process_without_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.device) == (0, 1, True, torch.device("cpu"))
    assert not distributed.is_dist_active()
    t = torch.randn(3, 2)
    assert distributed.all_gather_tensor(t) is t
    assert distributed.all_reduce_mean(t) is t
    with pytest.raises(TypeError, match="floating-point"):
        distributed.all_reduce_mean(torch.ones(2, dtype=torch.int64))
    assert distributed.broadcast_object([["a", "b.png"]]) == [["a", "b.png"]]
    assert distributed.all_gather_json({"x": (1, 2)}) == [{"x": [1, 2]}]
    module = torch.nn.Linear(2, 2)
    assert sharded_frozen_module(module, info) is module
    assert not any(p.requires_grad for p in module.parameters())
    distributed.barrier()
    path = save_checkpoint(tmp_path, 0, CheckpointState(rng=distributed.get_rng_state()), dist_info=info)
    assert load_checkpoint(path).rng is not None


def test_rank0_print(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANK", "1")
    distributed.rank0_print("hidden")
    monkeypatch.setenv("RANK", "0")
    distributed.rank0_print("shown")
    assert capsys.readouterr().out == "shown\n"


def test_bad_environment_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        distributed.init_distributed()


def test_a_gpu_process_of_the_second_node_uses_its_local_rank_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Global rank 3 of two nodes x 2 GPUs is local rank 1: it must take cuda:1 (its node has GPUs
    0 and 1 only), bind NCCL to it and get the config's timeout; recorded through fakes of the
    CUDA and process-group calls (no GPU here)."""
    import datetime

    calls: dict = {}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.setdefault("set_device", index))
    monkeypatch.setattr(distributed, "is_dist_active", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.update(kwargs))
    info = distributed.init_distributed(timeout_s=90)
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (3, 1, 4, False)
    assert info.device == torch.device("cuda", 1) and calls["set_device"] == 1
    assert calls["backend"] == "nccl" and calls["device_id"] == torch.device("cuda", 1)
    assert calls["rank"] == 3 and calls["timeout"] == datetime.timedelta(seconds=90)
    with pytest.raises(ValueError, match="process-group timeout must be > 0 s"):
        distributed.init_distributed(timeout_s=0)
