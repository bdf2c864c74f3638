"""Checkpoint format: round trips, atomicity under failure and crashes, pruning, resolution."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edit_r1 import checkpoint as checkpoint_module
from edit_r1.checkpoint import (
    COMPLETE_MARKER,
    CheckpointCorrupted,
    CheckpointState,
    CheckpointWriteError,
    checkpoint_epoch,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_sharded,
    read_sharded_tensors,
    resolve_resume_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from edit_r1.distributed import get_rng_state, set_rng_state


def _state(value: float = 1.0) -> CheckpointState:
    return CheckpointState(
        tensors={"ema": {"w": torch.full((2, 3), value)}},
        metadata={"epoch": int(value), "global_step": 10 * int(value)},
        config={"seed": 42},
    )


def _trained_optimizer() -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_tensors_optimizer_metadata_config(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    shared = torch.randn(4)
    state = CheckpointState(
        tensors={
            "default_adapter": {k: v.clone() for k, v in model.state_dict().items()},
            "old_adapter": {
                "a": torch.randn(3, 2, dtype=torch.bfloat16),
                "tied": shared,
                "tied_view": shared,
            },
        },
        states={"optimizer": opt.state_dict(), "scaler": {"scale": 65536.0, "_growth_tracker": 3}},
        metadata={
            "epoch": 7,
            "global_step": 21,
            "sampler": {"epoch": 7, "seed": 42},
            "banned": [["a", "x.png"]],
        },
        config={"train": {"learning_rate": 3e-4}, "resolution": 512},
    )
    path = save_checkpoint(tmp_path, 7, state)
    assert path == tmp_path / "checkpoints" / "checkpoint-7"
    loaded = load_checkpoint(tmp_path)
    assert loaded.epoch == 7 and loaded.world_size == 1 and loaded.path == path
    for group, tensors in state.tensors.items():
        assert loaded.tensors[group].keys() == tensors.keys()
        for key, value in tensors.items():
            assert loaded.tensors[group][key].dtype == value.dtype
            assert torch.equal(loaded.tensors[group][key], value)
    assert loaded.metadata == state.metadata and loaded.config == state.config
    assert loaded.states["scaler"] == state.states["scaler"]

    # The restored optimizer continues exactly like the original one.
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict(loaded.tensors["default_adapter"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    opt2.load_state_dict(loaded.states["optimizer"])
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_rng_state_restore_reproduces_next_draws(tmp_path: Path) -> None:
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    save_checkpoint(tmp_path, 0, CheckpointState(rng=get_rng_state()))
    expected = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.randn(3))
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)
    set_rng_state(load_checkpoint(tmp_path).rng)
    got = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.randn(3))
    assert torch.equal(expected[0], got[0])
    assert expected[1:3] == got[1:3]
    np.testing.assert_array_equal(expected[3], got[3])


def test_exception_during_save_keeps_previous_checkpoint_latest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _state(1.0))

    def failing_export(folder: Path) -> None:
        (folder / "lora").mkdir()
        (folder / "lora" / "half_written.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(CheckpointWriteError, match="RuntimeError: disk full"):
        save_checkpoint(tmp_path, 2, _state(2.0), exporters=[failing_export])
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint-1"
    assert not (tmp_path / "checkpoints" / "checkpoint-2").exists()
    assert torch.equal(load_checkpoint(tmp_path).tensors["ema"]["w"], torch.full((2, 3), 1.0))


def test_non_json_metadata_fails_without_leaving_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="metadata.json"):
        save_checkpoint(tmp_path, 3, CheckpointState(metadata={"banned": {("a", "b")}}))
    assert latest_checkpoint(tmp_path) is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


def test_process_killed_mid_save_leaves_previous_checkpoint_latest(tmp_path: Path) -> None:
    """A real crash (os._exit inside the save, no cleanup runs) never yields a corrupt latest."""
    script = textwrap.dedent(
        f"""
        import os, torch
        from edit_r1.checkpoint import CheckpointState, save_checkpoint
        state = CheckpointState(tensors={{"ema": {{"w": torch.ones(3)}}}}, metadata={{"epoch": 1}})
        save_checkpoint({str(tmp_path)!r}, 1, state)
        def die(folder):
            (folder / "partial.bin").write_bytes(b"x")
            os._exit(9)
        save_checkpoint({str(tmp_path)!r}, 2, state, exporters=[die])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    folder = tmp_path / "checkpoints"
    assert (folder / ".tmp-checkpoint-2").is_dir()  # the crash left its temp dir behind ...
    assert latest_checkpoint(tmp_path) == folder / "checkpoint-1"  # ... which is never picked
    save_checkpoint(tmp_path, 2, _state(2.0))  # the next save cleans the leftover
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-1", "checkpoint-2"]


def test_incomplete_or_foreign_dirs_are_ignored(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 4, _state(4.0))
    folder = tmp_path / "checkpoints"
    (folder / "checkpoint-9").mkdir()  # no marker: e.g. copied by hand and interrupted
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / COMPLETE_MARKER).write_text("{not json")
    (folder / "checkpoint-final").mkdir()
    assert latest_checkpoint(tmp_path) == folder / "checkpoint-4"
    with pytest.raises(ValueError, match="incomplete"):
        latest_checkpoint(folder / "checkpoint-9")
    with pytest.raises(ValueError, match="incomplete"):
        load_checkpoint(folder / "checkpoint-10")


def test_keep_last_prunes_oldest(tmp_path: Path) -> None:
    for epoch in (0, 30, 60, 90, 120):
        save_checkpoint(tmp_path, epoch, _state(float(epoch)), keep_last=2)
    assert [checkpoint_epoch(p) for p in list_checkpoints(tmp_path)] == [90, 120]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-120", "checkpoint-90"]
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, 150, _state(), keep_last=0)


def test_latest_checkpoint_resolution(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        latest_checkpoint(run)
    run.mkdir()
    assert latest_checkpoint(run) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(run)
    for epoch in (2, 10, 9):  # numeric, not lexicographic, order
        save_checkpoint(run, epoch, _state(float(epoch)))
    folder = run / "checkpoints"
    assert latest_checkpoint(run) == folder / "checkpoint-10"
    assert latest_checkpoint(folder) == folder / "checkpoint-10"
    assert latest_checkpoint(folder / "checkpoint-9") == folder / "checkpoint-9"
    assert load_checkpoint(folder / "checkpoint-9").metadata["epoch"] == 9
    with pytest.raises(ValueError, match="neither"):
        latest_checkpoint(folder / "checkpoint-9" / "metadata.json")


def test_resave_same_epoch_replaces(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 5, _state(1.0))
    save_checkpoint(tmp_path, 5, _state(2.0))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-5"]
    assert torch.equal(load_checkpoint(tmp_path).tensors["ema"]["w"], torch.full((2, 3), 2.0))


def test_damaged_file_detected(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, _state())
    tensor_file = path / "tensors" / "ema.safetensors"
    tensor_file.write_bytes(tensor_file.read_bytes()[:-4])
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


class _NotAllowed:
    """An arbitrary class: weights_only loading must refuse to rebuild it."""


def test_states_are_loaded_weights_only(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, CheckpointState(states={"optimizer": {"evil": _NotAllowed()}}))
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path)


def test_bad_group_name_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tensor group name"):
        save_checkpoint(tmp_path, 1, CheckpointState(tensors={"../escape": {"w": torch.ones(1)}}))
    assert latest_checkpoint(tmp_path) is None


def test_exporter_output_is_part_of_checkpoint_and_manifest(tmp_path: Path) -> None:
    def export_lora(folder: Path) -> None:
        (folder / "lora_ema").mkdir()
        (folder / "lora_ema" / "adapter_config.json").write_text(json.dumps({"r": 32, "lora_alpha": 64}))

    path = save_checkpoint(tmp_path, 30, _state(), exporters=[export_lora])
    manifest = json.loads((path / COMPLETE_MARKER).read_text())
    assert "lora_ema/adapter_config.json" in manifest["files"]
    assert manifest["epoch"] == 30 and manifest["world_size"] == 1


def test_missing_rng_for_rank_warns(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, CheckpointState(rng=get_rng_state()))
    assert load_checkpoint(tmp_path, rank=0).rng is not None
    with pytest.warns(UserWarning, match="not bit-exact"):
        assert load_checkpoint(tmp_path, rank=3).rng is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_restore(tmp_path: Path) -> None:
    torch.cuda.manual_seed_all(7)
    save_checkpoint(tmp_path, 0, CheckpointState(rng=get_rng_state()))
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(8)
    set_rng_state(load_checkpoint(tmp_path).rng)
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def _flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_records_size_and_sha256_of_every_file(tmp_path: Path) -> None:
    state = _state()
    state.rng = get_rng_state()
    path = save_checkpoint(
        tmp_path,
        1,
        state,
        exporters=[lambda d: (d / "lora").mkdir() or (d / "lora" / "w.bin").write_bytes(b"x")],
    )
    files = json.loads((path / COMPLETE_MARKER).read_text())["files"]
    on_disk = sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER
    )
    assert sorted(files) == on_disk and "rng/rank0.safetensors" in files and "lora/w.bin" in files
    assert all(len(record["sha256"]) == 64 and record["size"] > 0 for record in files.values())
    verify_checkpoint(path)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_latest_checkpoint_falls_back_with_a_warning_naming_the_file(tmp_path: Path, damage) -> None:
    save_checkpoint(tmp_path, 1, _state(1.0))
    latest = save_checkpoint(tmp_path, 2, _state(2.0))
    bad = latest / "tensors" / "ema.safetensors"
    if damage == "flipped byte":
        _flip_byte(bad)  # same size: only the checksum can tell
    else:
        bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(CheckpointCorrupted, match="tensors/ema.safetensors"):
        load_checkpoint(latest)
    with pytest.warns(UserWarning, match=r"checkpoint-2 is damaged: tensors/ema.safetensors .*falling back"):
        chosen = resolve_resume_checkpoint(tmp_path)
    assert chosen == tmp_path / "checkpoints" / "checkpoint-1"
    assert torch.equal(load_checkpoint(chosen).tensors["ema"]["w"], torch.full((2, 3), 1.0))


def test_no_intact_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    only = save_checkpoint(tmp_path, 1, _state())
    _flip_byte(only / "metadata.json", offset=3)
    with pytest.warns(UserWarning), pytest.raises(CheckpointCorrupted) as raised:
        resolve_resume_checkpoint(only)
    assert "no intact checkpoint to resume from" in str(raised.value) and "metadata.json" in str(raised.value)


def _disk_full_after(limit: int):
    """A stand-in for safetensors' writer on a full disk: some bytes land, then ENOSPC."""

    def write(tensors, filename, metadata=None):  # noqa: ARG001 - same signature
        with open(filename, "wb") as handle:
            handle.write(b"\0" * limit)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    return write


def test_no_space_left_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, 1, _state(1.0))
    monkeypatch.setattr(checkpoint_module, "save_file", _disk_full_after(1000))
    with pytest.raises(CheckpointWriteError) as raised:
        save_checkpoint(tmp_path, 2, _state(2.0))
    message = str(raised.value)
    assert "No space left on device" in message and "ema.safetensors" in message
    assert f"the device holding {tmp_path / 'checkpoints'} is full" in message
    assert f"the previous checkpoint {tmp_path / 'checkpoints' / 'checkpoint-1'} is intact" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-1"]  # temp dir removed
    verify_checkpoint(tmp_path / "checkpoints" / "checkpoint-1")
    assert torch.equal(load_checkpoint(tmp_path).tensors["ema"]["w"], torch.full((2, 3), 1.0))


def test_sharded_state_round_trip_in_one_process(tmp_path: Path) -> None:
    """The DCP part: written into the atomic checkpoint, listed in the manifest, read back whole
    (read_sharded_tensors) and in place (load_sharded)."""
    saved = {
        "default": {"a.weight": torch.randn(3, 4)},
        "optimizer": {"a.weight": {"step": torch.tensor(2.0)}},
    }
    path = save_checkpoint(tmp_path, 1, CheckpointState(sharded=saved))
    manifest = json.loads((path / "COMPLETE").read_text())
    assert "sharded/.metadata" in manifest["files"]
    assert torch.equal(read_sharded_tensors(path, "default")["a.weight"], saved["default"]["a.weight"])
    assert read_sharded_tensors(path, "optimizer") == {"a.weight.step": torch.tensor(2.0)}
    target = {
        "default": {"a.weight": torch.zeros(3, 4)},
        "optimizer": {"a.weight": {"step": torch.tensor(0.0)}},
    }
    load_sharded(path, target)
    assert torch.equal(target["default"]["a.weight"], saved["default"]["a.weight"])
    assert float(target["optimizer"]["a.weight"]["step"]) == 2.0
    with pytest.raises(TypeError, match="tensors only"):
        save_checkpoint(tmp_path, 2, CheckpointState(sharded={"lr": 0.1}))
    assert latest_checkpoint(tmp_path) == path


class _Gadget:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_forged_dcp_metadata_is_refused(tmp_path: Path, capsys) -> None:
    import pickle

    path = save_checkpoint(tmp_path, 1, CheckpointState(sharded={"default": {"w": torch.ones(2)}}))
    (path / "sharded" / ".metadata").write_bytes(pickle.dumps(_Gadget()))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        read_sharded_tensors(path, "default")
    assert "must never run" not in capsys.readouterr().out
