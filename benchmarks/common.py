"""What every scenario shares: the settings, the error, side-by-side timing, the tiny kit."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from edit_r1.models.registry import family_names, policy_class

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KIT = REPO_ROOT / ".tiny" / "kit"


@dataclasses.dataclass
class Settings:
    """What to measure and how often. ``resolution`` None picks 64 (tiny), 128 (small), 512 (full)."""

    device: str = "cpu"
    size: str = "tiny"
    family: str = dataclasses.field(default_factory=lambda: family_names()[0])
    kit: Path | None = None
    repeats: int = 5
    warmup: int = 1
    batch_size: int = 2
    resolution: int | None = None
    group_size: int = 12
    lora_rank: int = 32
    gradient_checkpointing: bool = False
    compile: bool = False
    attention_backend: str | None = None
    text_tokens: int | None = None  # None: the family's length (tiny: TINY_MAX_TEXT_LENGTH, else per size)
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests_per_client: int = 2
    images_per_request: int = 3
    server_batch_size: int = 32
    nproc: int = 2
    epochs: int = 2
    # reward: the judge backends measured side by side, and the interpreter that runs their server
    # (and the engine-alone run): e.g. .venv-vllm/bin/python for vllm; None = this one.
    backends: tuple[str, ...] = ("transformers",)
    server_python: str | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32

    def image_size(self) -> int:
        return self.resolution or {"tiny": 64, "small": 128, "full": 512}[self.size]


class BenchmarkError(RuntimeError):
    """A scenario cannot run with the given settings (missing CUDA, kit, server failure)."""


def describe(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The settings of a result as JSON-ready values, plus ``extra``."""
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}
    out["concurrency"] = list(settings.concurrency)
    out["resolution"] = settings.image_size()
    out["torch"] = torch.__version__
    return {**out, **extra}


# ----------------------------------------------------------------------------------- timing
def check_device(device: str) -> torch.device:
    """``device`` as a torch device; a clear error when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            "--device cuda was requested but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); run on a GPU host or use --device cpu"
        )
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall seconds of each candidate, interleaved round by round so drifts (other processes,
    thermal state) hit every candidate alike; ``warmup`` untimed rounds first."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(warmup + repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of ``values``."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return float(ordered[rank])


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, Any], key: str) -> Iterator[None]:
    """Stores the peak allocated GiB of the block in ``out[key]`` (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out[key] = torch.cuda.max_memory_allocated(device) / 2**30


# ----------------------------------------------------------------------------------- tiny kit
def resolve_kit(settings: Settings) -> Path:
    """The tiny kit folder: ``settings.kit``, else ``.tiny/kit``, else a fresh build in a temp dir."""
    from edit_r1.models.tiny import build_all

    if settings.kit is not None:
        folder = policy_class(settings.family).tiny_kit_folder
        if not (Path(settings.kit) / folder).is_dir():
            raise BenchmarkError(f"--kit {settings.kit}: no {folder}/ inside")
        return Path(settings.kit)
    if all((DEFAULT_KIT / policy_class(name).tiny_kit_folder).is_dir() for name in family_names()):
        return DEFAULT_KIT
    out = Path(tempfile.mkdtemp(prefix="edit_r1_bench_kit_"))
    build_all(out)
    settings.kit = out
    return out
