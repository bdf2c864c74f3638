"""Atomic, complete training checkpoints for exact resume.

Layout of one checkpoint (``run_dir/checkpoints/checkpoint-<epoch>/``)::

    sharded/                      torch.distributed.checkpoint (DCP) of the sharded state: one file of
                                  shards per rank plus ``.metadata`` (the global layout); loads onto
                                  any number of ranks (resharding)
    tensors/<group>.safetensors   named groups of small replicated tensors (rank 0)
    states/<name>.pt              torch-native state dicts (optimizer, grad scaler, lr scheduler)
    rng/rank<r>.safetensors       RNG state of every rank (python, numpy, torch CPU/CUDA)
    metadata.json                 epoch, global step, sampler state, banned groups, ...
    config.json                   the run's config
    ...                           whatever the ``exporters`` write (e.g. the EMA LoRA, diffusers format)
    COMPLETE                      manifest (JSON), written last

Atomicity: everything is written into ``checkpoints/.tmp-checkpoint-<epoch>/``, every file and
directory is fsync'ed, the ``COMPLETE`` manifest is written last, and only then the directory is
renamed to ``checkpoint-<epoch>`` (a single ``rename`` on one filesystem). A crash at any point
leaves either the previous checkpoints untouched plus a hidden temp directory (ignored and
cleaned up by the next save) or the new complete checkpoint. Readers only accept directories named
``checkpoint-<int>`` that hold a parseable ``COMPLETE`` manifest.

Integrity: the manifest records the size and SHA-256 of every file in the checkpoint directory
(whatever wrote it), so a flipped byte or a truncated file is found at resume
(:func:`verify_checkpoint`); :func:`resolve_resume_checkpoint` then falls back to the previous
complete checkpoint with a warning naming the bad file, or stops with :class:`CheckpointCorrupted`.
A failed write (e.g. ENOSPC) raises :class:`CheckpointWriteError` on every rank, naming the file
and the reason; the temp directory is removed and the previous checkpoints stay as they were.

No arbitrary unpickling: tensors use safetensors; the ``states/*.pt`` files are written with
``torch.save`` and read with ``torch.load(weights_only=True)``, which only rebuilds tensors and
plain containers/numbers/strings (an optimizer's state dict) and refuses any other object.

DCP's own reader unpickles its ``.metadata`` file; :class:`SafeDCPReader` reads it with an
unpickler that only rebuilds DCP's layout records (tensor sizes, dtypes, offsets), and only tensors
are put into the sharded state, so DCP's pickled-object path is never used.

Distributed protocol (works unchanged in a single process): rank 0 creates the temp directory;
barrier; every rank writes its shards of ``sharded`` (DCP, a collective) and its own RNG file, and
rank 0 writes all shared files; barrier; rank 0 fsyncs, writes the manifest (every file of the
directory with its size), renames and prunes; barrier. ``run_dir`` must be on a filesystem every
rank can see (as for any multi-node run that saves from rank 0 and resumes on all ranks).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from edit_r1 import distributed

__all__ = [
    "CheckpointState",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "checkpoint_epoch",
    "verify_checkpoint",
    "resolve_resume_checkpoint",
    "CheckpointCorrupted",
    "CheckpointWriteError",
    "load_sharded",
    "read_sharded_tensors",
    "SafeDCPReader",
    "CHECKPOINTS_DIRNAME",
    "COMPLETE_MARKER",
]

CHECKPOINTS_DIRNAME = "checkpoints"
SHARDED_DIRNAME = "sharded"
COMPLETE_MARKER = "COMPLETE"
FORMAT_VERSION = 1
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_HASH_CHUNK = 8 << 20


class CheckpointCorrupted(ValueError):
    """A checkpoint file is missing, has the wrong size or the wrong SHA-256; the message names it."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (on any rank); the message says which file and why."""


@dataclass
class CheckpointState:
    """Everything a checkpoint holds; the trainer fills the dicts and gets the same back on load.

    - ``sharded``: nested dict of tensors and DTensors (FSDP2 shards), written by every rank through
      ``torch.distributed.checkpoint``; restore it in place with :func:`load_sharded` (any world
      size). Only tensors: non-tensor values belong in ``metadata``.
    - ``tensors``: group name -> state dict of tensors (e.g. ``{"default_adapter": ..., "old_adapter":
      ..., "ema": ...}``), saved with safetensors (moved to CPU; tensors sharing storage are copied).
    - ``states``: name -> torch-native state dict (``optimizer.state_dict()``, ``scaler.state_dict()``),
      restricted to what ``torch.load(weights_only=True)`` accepts.
    - ``metadata``: JSON-able dict (epoch, global_step, sampler state, bans as lists, ...).
    - ``config``: JSON-able dict of the run's config (``config.to_dict()``), or ``None``.
    - ``rng``: this rank's RNG state from :func:`edit_r1.distributed.get_rng_state`, or ``None``.
    - ``path``/``epoch``/``world_size``: filled by :func:`load_checkpoint`.
    """

    sharded: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] | None = None
    path: Path | None = None
    epoch: int | None = None
    world_size: int | None = None


# ----------------------------------------------------------------------------- discovery


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """The epoch encoded in a ``checkpoint-<epoch>`` directory name."""
    match = _CKPT_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named checkpoint-<epoch>")
    return int(match.group(1))


def _read_manifest(ckpt: Path) -> dict[str, Any] | None:
    marker = ckpt / COMPLETE_MARKER
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT_VERSION else None


def _is_complete(ckpt: Path) -> bool:
    return ckpt.is_dir() and _CKPT_RE.match(ckpt.name) is not None and _read_manifest(ckpt) is not None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run (``run_dir`` or its ``checkpoints/`` folder), oldest first."""
    root = Path(run_dir)
    folder = root / CHECKPOINTS_DIRNAME if (root / CHECKPOINTS_DIRNAME).is_dir() else root
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _is_complete(p)]
    return sorted(found, key=checkpoint_epoch)


def latest_checkpoint(path: str | os.PathLike) -> Path | None:
    """Resolve ``resume_from``: a checkpoint directory, a run directory or its ``checkpoints/``.

    A checkpoint directory must be complete (else ``ValueError``); for a run directory the newest
    complete checkpoint is returned, or ``None`` if it has none. Temp and incomplete directories
    are never returned. A missing path raises ``FileNotFoundError``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"resume path {p} does not exist")
    if _CKPT_RE.match(p.name) and p.is_dir():
        if not _is_complete(p):
            raise ValueError(f"checkpoint {p} is incomplete (no valid {COMPLETE_MARKER} manifest)")
        return p
    if not p.is_dir():
        raise ValueError(f"resume path {p} is neither a checkpoint directory nor a run directory")
    complete = list_checkpoints(p)
    return complete[-1] if complete else None


# ----------------------------------------------------------------------------- writing helpers


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"{kind} name {name!r} must match {_NAME_RE.pattern} (it becomes a file name)")


def _fsync_path(path: Path) -> None:
    """fsync a file or directory so the data (or the directory entries) reach the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _cpu_unshared(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing storage (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _write_json(path: Path, obj: Any) -> None:
    try:
        text = json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot write {path.name}: content is not JSON-serialisable ({err})") from err
    path.write_text(text + "\n", encoding="utf-8")


def _remove_dir(path: Path) -> None:
    """Delete a directory by first renaming it to a hidden trash name, so a half-deleted
    checkpoint can never look complete."""
    if not path.exists():
        return
    trash = path.parent / f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale(folder: Path) -> None:
    """Remove leftovers of crashed saves/prunes (only one save is ever in flight)."""
    for p in folder.iterdir():
        if p.name.startswith((_TRASH_PREFIX, _TMP_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)


def _write_shared(tmp: Path, state: CheckpointState, exporters: Iterable[Callable[[Path], None]]) -> None:
    if state.tensors:
        (tmp / "tensors").mkdir()
    for name, group in state.tensors.items():
        _check_name("tensor group", name)
        save_file(
            _cpu_unshared(group, f"tensor group {name!r}"), str(tmp / "tensors" / f"{name}.safetensors")
        )
    if state.states:
        (tmp / "states").mkdir()
    for name, sd in state.states.items():
        _check_name("state", name)
        torch.save(sd, tmp / "states" / f"{name}.pt")
    _write_json(tmp / "metadata.json", state.metadata)
    if state.config is not None:
        _write_json(tmp / "config.json", state.config)
    for export in exporters:
        export(tmp)


def _write_rng(tmp: Path, rank: int, rng: Mapping[str, torch.Tensor] | None) -> None:
    if rng is None:
        return
    path = tmp / "rng" / f"rank{rank}.safetensors"
    save_file(_cpu_unshared(rng, f"rng state of rank {rank}"), str(path))
    _fsync_path(path)


def _finalize(tmp: Path, final: Path, epoch: int, world_size: int) -> None:
    _fsync_tree(tmp)
    files = {
        str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "format": FORMAT_VERSION,
        "epoch": epoch,
        "world_size": world_size,
        "created_unix": time.time(),
        "files": files,
    }
    _write_json(tmp / COMPLETE_MARKER, manifest)
    _fsync_path(tmp / COMPLETE_MARKER)
    _fsync_path(tmp)
    _remove_dir(final)  # re-saving the same epoch (e.g. after a resume) replaces the old one
    os.replace(tmp, final)
    _fsync_path(final.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_write_error(error: BaseException, where: Path) -> str:
    """One line: what failed, where, and what to do when the disk is full."""
    text = f"{type(error).__name__}: {error}"
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
        text += f" -- the device holding {where} is full; free space there or set logdir elsewhere"
    return text


def _prune(folder: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    complete = list_checkpoints(folder)
    for old in complete[: max(len(complete) - keep_last, 0)]:
        _remove_dir(old)


# ----------------------------------------------------------------------------- public API


def save_checkpoint(
    run_dir: str | os.PathLike,
    epoch: int,
    state: CheckpointState,
    *,
    keep_last: int | None = None,
    dist_info: distributed.DistInfo | None = None,
    exporters: Iterable[Callable[[Path], None]] = (),
) -> Path:
    """Write ``run_dir/checkpoints/checkpoint-<epoch>/`` atomically; returns its path on every rank.

    Call on every rank with that rank's ``state.rng``; only rank 0's tensors/states/metadata/config
    are written (under DDP they are identical on all ranks). ``exporters`` are called on rank 0 with
    the temp directory, so their output (e.g. a diffusers-format LoRA) is part of the atomic
    checkpoint. ``keep_last`` keeps only the newest N complete checkpoints (``None`` keeps all).
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    info = dist_info or distributed.current_dist_info()
    folder = Path(run_dir) / CHECKPOINTS_DIRNAME
    final = folder / f"checkpoint-{epoch}"
    tmp = folder / f"{_TMP_PREFIX}{final.name}"
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        _clean_stale(folder)
        (tmp / "rng").mkdir(parents=True)
    distributed.barrier()
    failure = None
    try:
        if state.sharded:
            _write_sharded(tmp / SHARDED_DIRNAME, state.sharded)
        _write_rng(tmp, info.rank, state.rng)
        if info.is_main:
            _write_shared(tmp, state, exporters)
    except (TypeError, ValueError):
        if info.is_main:  # a caller's mistake (names, non-JSON metadata): not a disk problem
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as error:  # noqa: BLE001 - OSError, SafetensorError, torch's writer errors
        failure = f"rank {info.rank}: {_describe_write_error(error, folder)}"
    _raise_if_any_rank_failed(failure, tmp, final, info)
    if info.is_main:
        try:
            _finalize(tmp, final, epoch, info.world_size)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(
                f"finishing {final} failed: {_describe_write_error(error, folder)}; {_previous_note(folder)}"
            ) from error
        _prune(folder, keep_last)
    distributed.barrier()
    return final


def _write_sharded(folder: Path, sharded: Mapping[str, Any]) -> None:
    """Every rank writes its shards (DCP ``save`` is a collective; replicated tensors are written once)."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save

    _check_only_tensors(sharded, "sharded state")
    writer = FileSystemWriter(str(folder), single_file_per_rank=True, sync_files=True, thread_count=1)
    with warnings.catch_warnings():  # DCP warns when it saves in one process: expected there
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_save(dict(sharded), storage_writer=writer, no_dist=not distributed.is_dist_active())


def _check_only_tensors(tree: Any, where: str) -> None:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            _check_only_tensors(value, f"{where}[{key!r}]")
    elif not isinstance(tree, torch.Tensor):
        raise TypeError(f"{where} is a {type(tree).__name__}; the sharded state holds tensors only")


class _LayoutUnpickler(pickle.Unpickler):
    """Rebuilds only DCP's metadata records (classes of ``torch.distributed.checkpoint``), the torch
    values they hold (sizes, dtypes, layouts) and paths; any other global is refused."""

    _EXTRA = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # a layout by name
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint."):
            found = super().find_class(module, name)
            if isinstance(found, type):  # records and enums, never a function
                return found
        elif (module, name) in self._EXTRA:
            return super().find_class(module, name)
        elif module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeDCPReader(FileSystemReader):
        """DCP's file reader with :class:`_LayoutUnpickler` for the ``.metadata`` file."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as stream:
                metadata = _LayoutUnpickler(io.BytesIO(stream.read())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeDCPReader


def SafeDCPReader(path: str | os.PathLike):  # noqa: N802 (a class built lazily: DCP imports are slow)
    """A ``torch.distributed.checkpoint`` reader of ``path`` that never unpickles arbitrary objects."""
    return _safe_reader_class()(str(path))


def _sharded_dir(ckpt: str | os.PathLike) -> Path:
    folder = Path(ckpt) / SHARDED_DIRNAME
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} has no sharded state ({SHARDED_DIRNAME}/.metadata)")
    return folder


def load_sharded(ckpt: str | os.PathLike, state: dict[str, Any]) -> None:
    """Fill ``state`` (the same nested layout that was saved, tensors or DTensors of any sharding)
    in place from checkpoint ``ckpt``; a collective on every rank of the current process group.
    The number of ranks may differ from the saving run: DCP reads each rank's slices."""
    from torch.distributed.checkpoint import load as dcp_load

    reader = SafeDCPReader(_sharded_dir(ckpt))
    with warnings.catch_warnings():  # DCP warns when it loads in one process: expected there
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_load(state, storage_reader=reader, no_dist=not distributed.is_dist_active())


def read_sharded_tensors(ckpt: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Whole CPU tensors of the sharded state whose flattened key starts with ``prefix.`` (keys
    returned without it), read in this process alone (no process group needed), e.g.
    ``read_sharded_tensors(ckpt, "default")`` is the trained weights."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = _sharded_dir(ckpt)
    metadata = SafeDCPReader(folder).read_metadata()
    start = f"{prefix}." if prefix else ""
    wanted = {
        key: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(start) and isinstance(meta, TensorStorageMetadata)
    }
    if not wanted:
        raise KeyError(f"checkpoint {ckpt} holds no sharded tensors under {prefix!r}")
    with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the point
        warnings.simplefilter("ignore", UserWarning)
        dcp_load(wanted, storage_reader=SafeDCPReader(folder), no_dist=True)
    return {key[len(start) :]: value for key, value in wanted.items()}


def _previous_note(folder: Path) -> str:
    previous = list_checkpoints(folder)
    return f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"


def _raise_if_any_rank_failed(failure: str | None, tmp: Path, final: Path, info) -> None:
    """Every rank learns whether any rank failed to write (instead of waiting at a barrier forever)."""
    failures = [f for f in distributed.all_gather_json(failure) if f]
    if not failures:
        return
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier()  # every rank returns once the temp directory is gone
    raise CheckpointWriteError(
        f"writing {final.name} under {final.parent} failed ({'; '.join(failures)}); "
        f"{_previous_note(final.parent)}"
    )


def _verify_files(ckpt: Path, manifest: Mapping[str, Any], checksums: bool = True) -> None:
    """Every file the manifest lists is there with its size (and SHA-256, when recorded and asked)."""
    for rel, record in manifest.get("files", {}).items():
        size, digest = (record, None) if isinstance(record, int) else (record["size"], record.get("sha256"))
        p = ckpt / rel
        if not p.is_file():
            raise CheckpointCorrupted(f"checkpoint {ckpt} is damaged: {rel} is missing")
        if p.stat().st_size != size:
            raise CheckpointCorrupted(
                f"checkpoint {ckpt} is damaged: {rel} has {p.stat().st_size} bytes, {size} were written"
            )
        if checksums and digest is not None and _sha256(p) != digest:
            raise CheckpointCorrupted(
                f"checkpoint {ckpt} is damaged: {rel} does not match the SHA-256 recorded when it was written"
            )


def verify_checkpoint(ckpt: str | os.PathLike) -> None:
    """Check a complete checkpoint's files against its manifest; raises :class:`CheckpointCorrupted`."""
    path = Path(ckpt)
    manifest = _read_manifest(path)
    if manifest is None:
        raise CheckpointCorrupted(f"checkpoint {path} has no valid {COMPLETE_MARKER} manifest")
    _verify_files(path, manifest)


def resolve_resume_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: the newest intact one at ``path`` (see :func:`latest_checkpoint`).

    Each candidate is verified (sizes and SHA-256); a damaged one is skipped with a warning naming
    the bad file, falling back to the previous complete checkpoint of the same folder. ``None`` if
    there is no complete checkpoint at all; :class:`CheckpointCorrupted` if every one is damaged.
    """
    newest = latest_checkpoint(path)
    if newest is None:
        return None
    older = [p for p in list_checkpoints(newest.parent) if checkpoint_epoch(p) < checkpoint_epoch(newest)]
    problems = []
    for candidate in [newest, *reversed(older)]:
        try:
            verify_checkpoint(candidate)
        except CheckpointCorrupted as error:
            problems.append(str(error))
            warnings.warn(f"{error}; falling back to the previous complete checkpoint", stacklevel=2)
            continue
        return candidate
    raise CheckpointCorrupted(
        f"no intact checkpoint to resume from under {newest.parent}: {'; '.join(problems)}"
    )


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def load_checkpoint(
    path: str | os.PathLike,
    *,
    rank: int | None = None,
    map_location: str | torch.device = "cpu",
    checksums: bool = True,
) -> CheckpointState:
    """Load a checkpoint (or the latest complete one of a run directory).

    ``rank`` selects the RNG file (default: this process's rank). If the checkpoint holds RNG states
    but none for this rank (written with a different world size), ``rng`` is ``None`` and a warning
    says the resume will not be bit-exact. Files are checked against the manifest's sizes and, with
    ``checksums`` (pass False when :func:`resolve_resume_checkpoint` has just verified it), SHA-256.
    """
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint under {path}")
    manifest = _read_manifest(ckpt)
    assert manifest is not None  # latest_checkpoint only returns complete checkpoints
    _verify_files(ckpt, manifest, checksums)
    if rank is None:
        rank = distributed.current_dist_info().rank
    state = CheckpointState(path=ckpt, epoch=int(manifest["epoch"]), world_size=int(manifest["world_size"]))
    for f in sorted((ckpt / "tensors").glob("*.safetensors")):
        state.tensors[f.stem] = load_file(str(f), device=str(map_location))
    for f in sorted((ckpt / "states").glob("*.pt")):
        state.states[f.stem] = torch.load(f, map_location=map_location, weights_only=True)
    state.metadata = _load_json(ckpt / "metadata.json")
    if (ckpt / "config.json").is_file():
        state.config = _load_json(ckpt / "config.json")
    rng_file = ckpt / "rng" / f"rank{rank}.safetensors"
    if rng_file.is_file():
        state.rng = load_file(str(rng_file))
    elif any((ckpt / "rng").glob("rank*.safetensors")):
        warnings.warn(
            f"{ckpt} has no RNG state for rank {rank} (saved with world size {state.world_size}); "
            "resuming without it is not bit-exact",
            stacklevel=2,
        )
    return state
