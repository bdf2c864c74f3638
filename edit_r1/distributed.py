"""Distributed glue: process-group setup, tensor collectives, seeding and RNG state.

Process groups and collectives live here; sharding (FSDP2) lives in ``edit_r1/parallelize.py``;
the algorithm modules stay pure tensor code.

Launch modes, all handled by :func:`init_distributed`:

* plain ``python script.py`` — one process, no process group, every collective is the identity;
* ``torchrun --nproc_per_node=N script.py`` — reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
  NCCL when CUDA is available, gloo on CPU;
* multi-node — torchrun's usual ``--nnodes/--node_rank/--rdzv_endpoint`` (or ``--master_addr``)
  flags; nothing extra is needed here.

Object collectives (:func:`broadcast_object`, :func:`all_gather_json`) move JSON encoded as a byte
tensor, never pickle, so a rank can only ever receive data, never code.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "current_dist_info",
    "shutdown",
    "barrier",
    "is_dist_active",
    "all_gather_tensor",
    "all_reduce_mean",
    "all_reduce_sum",
    "broadcast_object",
    "all_gather_json",
    "rank0_print",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
]

_MAX_NDIM = 8  # shapes are exchanged as fixed-size int64 descriptors of this many dims


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    ``is_main`` is true on global rank 0, the only rank that prints, logs and writes shared files.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Synchronise all ranks (no-op in a single process)."""
        barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from err


def init_distributed(
    backend: str | None = None, device: str | None = None, timeout_s: float | None = None
) -> DistInfo:
    """Initialise the process group from torchrun's environment, or fall back to one process.

    ``backend`` defaults to ``"nccl"`` when CUDA is available and ``"gloo"`` otherwise.
    ``device`` (``"cpu"``/``"cuda"``) forces the device type; by default CUDA is used when present,
    with ``cuda:LOCAL_RANK`` (the node-local index torchrun gives, not the global rank) made the
    current device. ``timeout_s`` is the process group's timeout (the trainer passes the config's
    ``dist_timeout_s``; None = torch's default): a collective that some rank does not join within it
    fails on the ranks waiting in it (gloo raises; NCCL's watchdog aborts the process), so a rank
    that hangs without dying ends the run too. Calling it again after the group exists just returns
    the current ``DistInfo``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    launched_by_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched_by_torchrun and not is_dist_active():
        chosen = backend or ("nccl" if use_cuda else "gloo")
        kwargs: dict[str, Any] = {"backend": chosen, "rank": rank, "world_size": world_size}
        if timeout_s is not None:
            if timeout_s <= 0:
                raise ValueError(f"the process-group timeout must be > 0 s, got {timeout_s!r}")
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        if chosen == "nccl":
            kwargs["device_id"] = dev  # binds the communicator to this rank's GPU up front
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


# torch.distributed's collectives, as they appear in a traceback (the innermost one is reported).
_COLLECTIVES = frozenset({
    "all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce", "all_to_all",
    "all_to_all_single", "barrier", "broadcast", "broadcast_object_list", "gather", "monitored_barrier",
    "recv", "reduce", "reduce_scatter", "reduce_scatter_tensor", "scatter", "send",
})  # fmt: skip
_FAILURE_KEY = "edit_r1/collective_failure"
REPORT_GRACE_S = 5.0  # how long a failing rank waits for the others' reports (they time out together)


def failed_collective(error: BaseException) -> tuple[str, list[str]] | None:
    """``(collective, callers)`` when ``error`` was raised inside a torch.distributed collective:
    its name and the nearest three frames outside torch that called it (``file:function``), from the
    traceback; None for any other error."""
    frames = traceback.extract_tb(error.__traceback__)
    in_torch = [os.sep + "torch" + os.sep in frame.filename for frame in frames]
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if frame.name in _COLLECTIVES and in_torch[index] and "distributed" in frame.filename:
            callers = [
                f"{_short(f.filename)}:{f.name}"
                for f, t in zip(frames[:index], in_torch[:index], strict=True)
                if not t
            ]
            return frame.name, callers[::-1][:3]
    return None


def _short(filename: str) -> str:
    """``.../edit_r1/trainer.py`` -> ``edit_r1/trainer.py`` (the path from the package folder on)."""
    parts = filename.split(os.sep)
    for anchor in ("edit_r1", "scripts", "tests", "benchmarks"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) - 1 :])
    return os.path.basename(filename)


def ranks_not_reporting(rank: int, world_size: int, grace_s: float = REPORT_GRACE_S) -> list[int] | None:
    """After a collective failed here: post this rank's report to torchrun's store and wait up to
    ``grace_s`` for the other ranks' (every rank waiting in the same collective fails within about
    the same second); the ranks that did not report are the ones that never reached it — hung or
    dead. None when there is no torchrun store to ask (a plain process, or node 0 is gone)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or world_size < 2:
        return None
    prefix = f"{_FAILURE_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    try:
        store = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=grace_s))
        store.set(f"{prefix}/{rank}", "1")
        deadline = time.monotonic() + grace_s
        while True:
            missing = [r for r in range(world_size) if not store.check([f"{prefix}/{r}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.2)
    except (RuntimeError, OSError, ValueError):  # the store went away with its node: say nothing
        return None


def describe_collective_failure(error: BaseException, rank: int, timeout_s: float | None) -> str | None:
    """One line for a collective that failed on this rank: which collective, called from where,
    whether it timed out (``dist_timeout_s``) or a peer dropped out, and torch's own message; None
    for an error that did not come from a collective. (:func:`ranks_not_reporting` then says which
    ranks never reached it.)"""
    found = failed_collective(error)
    if found is None:
        return None
    collective, callers = found
    said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    timed_out = "timed out" in said.lower() or "timeout" in said.lower()
    limit = f" of {timeout_s:g} s (dist_timeout_s)" if timeout_s else ""
    how = (
        f"did not complete within the process-group timeout{limit}"
        if timed_out
        else "failed: a peer rank dropped out"
    )
    where = f" (called from {' <- '.join(callers)})" if callers else ""
    return f"[rank {rank}] error: collective {collective}{where} {how}; torch: {said}"


def current_dist_info() -> DistInfo:
    """The ``DistInfo`` of the existing process group (or of a single process), without initialising
    anything. The device is the current CUDA device when CUDA is initialised, else the CPU."""
    if is_dist_active():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    local_rank = _env_int("LOCAL_RANK", 0)
    on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_dist_active() -> bool:
    """True when a process group exists (torchrun launch), even with world size 1."""
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    """Destroy the process group if one exists."""
    if is_dist_active():
        dist.destroy_process_group()


def barrier() -> None:
    """Block until every rank arrives (no-op without a process group)."""
    if not is_dist_active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _world_size() -> int:
    return dist.get_world_size() if is_dist_active() else 1


def _comm_device() -> torch.device:
    """Device the backend communicates on: the current GPU for NCCL, the CPU for gloo."""
    if is_dist_active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _shape_descriptor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.dim() == 0 or t.dim() > _MAX_NDIM:
        raise ValueError(f"all_gather_tensor needs 1 to {_MAX_NDIM} dims, got shape {tuple(t.shape)}")
    desc = torch.full((_MAX_NDIM + 1,), -1, dtype=torch.int64, device=device)
    desc[0] = t.dim()
    desc[1 : t.dim() + 1] = torch.tensor(t.shape, dtype=torch.int64)
    return desc


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order.

    The first dimension may differ between ranks (including 0); the trailing dims and dtype must
    agree. Sizes are exchanged first, then every rank pads to the largest size, gathers, and trims.
    The result is on ``t``'s device. Without a process group it returns ``t`` itself.
    """
    if _world_size() == 1:
        return t
    comm = _comm_device()
    descs = [torch.empty(_MAX_NDIM + 1, dtype=torch.int64, device=comm) for _ in range(_world_size())]
    dist.all_gather(descs, _shape_descriptor(t, comm))
    shapes = [tuple(d[1 : int(d[0]) + 1].tolist()) for d in descs]
    if any(s[1:] != tuple(t.shape[1:]) for s in shapes):
        raise ValueError(f"all_gather_tensor: trailing shapes differ between ranks: {shapes}")
    max_rows = max(s[0] for s in shapes)
    # gloo has no bool collectives; uint8 carries the same bits.
    send = t.detach().to(device=comm, dtype=torch.uint8 if t.dtype == torch.bool else t.dtype)
    padded = torch.zeros((max_rows, *t.shape[1:]), dtype=send.dtype, device=comm)
    padded[: t.shape[0]] = send
    chunks = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(chunks, padded.contiguous())
    out = torch.cat([c[: s[0]] for c, s in zip(chunks, shapes, strict=True)], dim=0)
    return out.to(device=t.device, dtype=t.dtype)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks **in place** (like ``torch.distributed.all_reduce``) and return it.

    A tensor that is not on the backend's device (a CPU tensor under NCCL) is reduced through a
    temporary copy and written back. Without a process group ``t`` is returned unchanged.
    """
    if _world_size() == 1:
        return t
    comm = _comm_device()
    buf = t.data if t.device == comm else t.detach().to(comm)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t.data:
        t.data.copy_(buf)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a floating-point ``t`` over ranks **in place** and return it."""
    if not t.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating-point tensor, got {t.dtype}")
    if _world_size() == 1:
        return t
    all_reduce_sum(t)
    t.data.div_(_world_size())
    return t


def _json_bytes(obj: Any) -> torch.Tensor:
    try:
        payload = json.dumps(obj).encode("utf-8")
    except TypeError as err:
        raise TypeError(f"object to exchange between ranks is not JSON-serialisable: {err}") from err
    return (
        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if payload
        else torch.empty(0, dtype=torch.uint8)
    )


def _from_json_bytes(t: torch.Tensor) -> Any:
    return json.loads(bytes(t.cpu().tolist()).decode("utf-8"))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a small JSON-able object from rank ``src`` to every rank; returns it on all ranks.

    Goes through JSON, so tuples come back as lists and dict keys as strings (callers convert, e.g.
    ban sets are sent as sorted lists of ``[instruction, image]`` pairs). Other ranks' ``obj`` is
    ignored. Without a process group it returns a JSON round-trip of ``obj``.
    """
    if _world_size() == 1:
        return json.loads(json.dumps(obj))
    comm = _comm_device()
    is_src = dist.get_rank() == src
    payload = _json_bytes(obj).to(comm) if is_src else torch.empty(0, dtype=torch.uint8, device=comm)
    length = torch.tensor([payload.numel()], dtype=torch.int64, device=comm)
    dist.broadcast(length, src=src)
    if not is_src:
        payload = torch.empty(int(length.item()), dtype=torch.uint8, device=comm)
    dist.broadcast(payload, src=src)
    return _from_json_bytes(payload)


def all_gather_json(obj: Any) -> list[Any]:
    """Gather one JSON-able object per rank; returns the list in rank order on every rank."""
    payload = _json_bytes(obj)
    if _world_size() == 1:
        return [_from_json_bytes(payload)]
    comm = _comm_device()
    lengths = all_gather_tensor(torch.tensor([payload.numel()], dtype=torch.int64, device=comm))
    flat = all_gather_tensor(payload.to(comm)).cpu()
    out, start = [], 0
    for n in lengths.tolist():
        out.append(_from_json_bytes(flat[start : start + n]))
        start += n
    return out


def rank0_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on global rank 0 only (rank taken from the process group, else ``$RANK``)."""
    rank = dist.get_rank() if is_dist_active() else _env_int("RANK", 0)
    if rank == 0:
        print(*args, **kwargs)


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (CPU and every GPU) with ``seed + rank``; returns that seed.

    The rank offset gives each rank different initial noise (the source of diversity within a
    prompt group); the group sampler keeps its own generator seeded identically on all ranks.
    """
    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)  # also seeds every CUDA device
    return effective


def get_rng_state() -> dict[str, torch.Tensor]:
    """Snapshot the python, numpy, torch CPU and CUDA generators as a flat dict of CPU tensors.

    Flat tensors (no tuples, no pickle) so the state goes straight into a safetensors file.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    if np_name != "MT19937":
        raise ValueError(f"unsupported numpy global generator {np_name!r}")
    state = {
        "python.version": torch.tensor([py_version], dtype=torch.int64),
        "python.state": torch.tensor(py_state, dtype=torch.int64),
        "python.gauss_next": torch.tensor(
            [float("nan") if py_gauss is None else py_gauss], dtype=torch.float64
        ),
        "numpy.keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy.pos_has_gauss": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy.cached_gaussian": torch.tensor([np_gauss], dtype=torch.float64),
        "torch.cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch.cuda.{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore generators from :func:`get_rng_state`; the next random draw equals the saved one's."""
    missing = {
        "python.version",
        "python.state",
        "python.gauss_next",
        "numpy.keys",
        "torch.cpu",
    } - state.keys()
    if missing:
        raise KeyError(f"RNG state lacks {sorted(missing)}")
    gauss = float(state["python.gauss_next"][0])
    random.setstate(
        (
            int(state["python.version"][0]),
            tuple(int(x) for x in state["python.state"].tolist()),
            None if gauss != gauss else gauss,  # NaN encodes "no cached gaussian"
        )
    )
    pos, has_gauss = (int(x) for x in state["numpy.pos_has_gauss"].tolist())
    np.random.set_state(
        (
            "MT19937",
            state["numpy.keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(state["numpy.cached_gaussian"][0]),
        )
    )
    torch.set_rng_state(state["torch.cpu"].to(torch.uint8).cpu())
    cuda_keys = sorted(
        (k for k in state if k.startswith("torch.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1])
    )
    if cuda_keys and torch.cuda.is_available():
        if len(cuda_keys) != torch.cuda.device_count():
            raise ValueError(
                f"RNG state holds {len(cuda_keys)} CUDA generators but {torch.cuda.device_count()} "
                "devices are visible; resume on the same hardware layout"
            )
        torch.cuda.set_rng_state_all([state[k].to(torch.uint8).cpu() for k in cuda_keys])
