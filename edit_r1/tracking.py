"""Experiment tracking: metrics.jsonl (always), wandb (optional), reward curve, eval grids, timers.

One step axis: every :meth:`Tracker.log` call names its step explicitly (the trainer passes the
global epoch), and that same number is written to ``metrics.jsonl`` and handed to ``wandb.log(...,
step=...)``; wandb's implicit step is never used (the original mixed both and wandb dropped rows).

Only rank 0 tracks: a tracker built with ``enabled=False`` (other ranks) does nothing at all.

wandb settings: ``mode`` (``online``/``offline``/``disabled``), ``project`` and ``entity`` come from
the config; the environment variable ``WANDB_MODE`` overrides the mode (so ``WANDB_MODE=offline``
or ``disabled`` works for any run without editing the config) and ``WANDB_PROJECT`` /
``WANDB_ENTITY`` fill in a project/entity the config leaves empty. ``offline`` writes under
``run_dir/wandb`` and needs no network (sync later with ``wandb sync``). wandb is imported only
when a run is actually started.

Metric names follow the original training script: train reward means ``reward_<name>`` and
``reward_mean``, evaluation ``eval_reward_<name>``, ``zero_std_ratio``, ``reward_std_mean``,
``policy_loss``, ``kl_div_loss``, ``x0_norm``, ``old_deviate``, ``lr``, ``grad_norm``, and phase
times ``time/<phase>`` from :class:`Timer` (see docs/training.md).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import textwrap
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "Tracker",
    "WandbSettings",
    "resolve_wandb_settings",
    "Timer",
    "progress",
    "save_reward_curve",
    "reward_series",
    "save_eval_grid",
    "read_metrics",
    "METRICS_FILENAME",
    "WANDB_MODES",
]

METRICS_FILENAME = "metrics.jsonl"
_WANDB_ID_FILENAME = "wandb_run_id.txt"
WANDB_MODES = ("online", "offline", "disabled")  # wandb.mode


@dataclass(frozen=True)
class WandbSettings:
    mode: str = "disabled"
    project: str | None = None
    entity: str | None = None


def resolve_wandb_settings(
    mode: str | None = None, project: str | None = None, entity: str | None = None
) -> WandbSettings:
    """Combine config values with the environment (``WANDB_MODE`` wins over ``mode``;
    ``WANDB_PROJECT``/``WANDB_ENTITY`` fill empty ``project``/``entity``)."""
    chosen = os.environ.get("WANDB_MODE") or mode or "disabled"
    if chosen == "dryrun":  # wandb's historical alias for offline
        chosen = "offline"
    if chosen not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {chosen!r} (config or WANDB_MODE)")
    return WandbSettings(
        mode=chosen,
        project=project or os.environ.get("WANDB_PROJECT") or None,
        entity=entity or os.environ.get("WANDB_ENTITY") or None,
    )


def _scalar(key: str, value: Any) -> float | int | str | bool | None:
    """A JSON-safe scalar; non-finite floats become ``None`` so the file stays strict JSON."""
    if isinstance(value, torch.Tensor | np.ndarray):
        if int(np.prod(value.shape)) != 1:
            raise TypeError(f"metric {key!r} is an array of shape {tuple(value.shape)}, not a scalar")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r} has unsupported type {type(value).__name__}")


class Tracker:
    """Logs metrics on rank 0 to ``run_dir/metrics.jsonl`` and (optionally) wandb.

    ``log(metrics, step)`` appends ``{"step": step, "time": unix_time, **metrics}`` as one line.
    Steps must not decrease. With ``enabled=False`` every method is a no-op.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        wandb: WandbSettings | None = None,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILENAME
        self.wandb_settings = wandb or WandbSettings()
        self._last_step: int | None = None
        self._wandb_run: Any = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.wandb_settings.mode != "disabled":
            self._wandb_run = self._start_wandb(run_name, config)

    def _start_wandb(self, run_name: str | None, config: Mapping[str, Any] | None) -> Any:
        import wandb  # lazy: importing wandb costs seconds and is not needed when disabled

        id_file = self.run_dir / _WANDB_ID_FILENAME
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")  # a resumed run continues the same wandb run
        return wandb.init(
            project=self.wandb_settings.project,
            entity=self.wandb_settings.entity,
            mode=self.wandb_settings.mode,
            dir=str(self.run_dir),
            id=run_id,
            resume="allow",
            name=run_name,
            config=dict(config) if config is not None else None,
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record ``metrics`` at ``step`` (the one step axis; pass the global epoch/step)."""
        if not self.enabled:
            return
        step = int(step)
        if self._last_step is not None and step < self._last_step:
            raise ValueError(f"Tracker.log: step {step} is before the previous step {self._last_step}")
        self._last_step = step
        row: dict[str, Any] = {"step": step, "time": time.time()}
        row.update({k: _scalar(k, v) for k, v in metrics.items()})
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in row.items() if k not in ("step", "time")}, step=step)

    def log_image(self, key: str, path: str | os.PathLike, step: int, caption: str | None = None) -> None:
        """Send an image file (grid, reward curve) to wandb at ``step``; files stay in the run dir."""
        if not self.enabled or self._wandb_run is None:
            return
        import wandb

        self._wandb_run.log({key: wandb.Image(str(path), caption=caption)}, step=int(step))

    def truncate_after(self, step: int) -> None:
        """Drop ``metrics.jsonl`` rows logged after ``step`` (call on resume from the checkpoint at
        ``step`` so rows of the lost epochs do not appear twice)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        kept = [row for row in read_metrics(self.metrics_path) if row["step"] <= step]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)
        self._last_step = step

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (a torn last line left by a killed run is skipped)."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: row {i + 1} is not valid JSON") from None
    return rows


class Timer:
    """Accumulated wall time per phase: ``with timer("sampling"): ...``; ``timer.metrics()`` gives
    ``{"time/sampling": seconds, ...}`` and ``reset()`` starts a new epoch.

    With ``cuda_sync=True`` CUDA is synchronised at both ends so GPU work is attributed correctly.
    """

    def __init__(self, cuda_sync: bool = False) -> None:
        self.cuda_sync = cuda_sync and torch.cuda.is_available()
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.cuda_sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda_sync:
                torch.cuda.synchronize()
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.totals.items()}

    def reset(self) -> None:
        self.totals.clear()


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    enabled: bool = True,
    total: int | None = None,
    **kwargs: Any,
) -> Any:
    """A tqdm bar shown only when ``enabled`` (pass ``dist_info.is_main``); without an iterable it is
    a manual bar (``bar.update(n)``), e.g. for waiting on reward scores."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True, **kwargs)


def _default_reward_key(key: str) -> bool:
    """Reward means only: not the spread statistics (``reward_std_mean``) or failure counts."""
    return key.startswith(("reward_", "eval_reward_")) and "std" not in key and "failed" not in key


def reward_series(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` for the numeric values of ``keys`` (default: reward means,
    i.e. ``reward_*`` / ``eval_reward_*`` without ``*std*`` and ``*failed*``); empty series dropped."""
    wanted = keys if keys is not None else sorted({k for r in rows for k in r if _default_reward_key(k)})
    series = {
        k: [
            (r["step"], r[k])
            for r in rows
            if isinstance(r.get(k), int | float) and not isinstance(r[k], bool)
        ]
        for k in wanted
    }
    return {k: v for k, v in series.items() if v}


def save_reward_curve(
    metrics_jsonl: str | os.PathLike, png_path: str | os.PathLike, keys: Sequence[str] | None = None
) -> Path | None:
    """Plot reward metrics against step into ``png_path`` (written atomically); returns the path, or
    ``None`` when the file has no reward values yet.

    Default keys: every ``reward_*`` (train means, lines) and ``eval_reward_*`` (evaluation, markers)
    except the ``*std*`` statistics and the ``*failed*`` counts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = reward_series(read_metrics(metrics_jsonl), keys)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, points in series.items():
        steps, values = zip(*points, strict=True)
        style = {"marker": "o", "linestyle": "--"} if key.startswith("eval") else {"linewidth": 1.2}
        ax.plot(steps, values, label=key, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _wrap(text: str, font: Any, width_px: int) -> list[str]:
    """Greedy word wrap so each line fits ``width_px`` with ``font``."""
    avg = max(font.getlength("abcdefghijklmnopqrstuvwxyz") / 26, 1.0)
    return textwrap.wrap(text, width=max(int(width_px / avg), 8)) or [""]


def save_eval_grid(
    items: Sequence[tuple[Image.Image, Image.Image, float | None, str]],
    path: str | os.PathLike,
    *,
    cell: int = 256,
    columns: int = 2,
    caption_lines: int = 4,
) -> Path:
    """Write a labelled grid PNG: each entry shows source | edited side by side (each resized to
    ``cell`` px square) above its score (``failed`` when ``None``) and the wrapped instruction.
    ``columns`` entries per row."""
    if not items:
        raise ValueError("save_eval_grid needs at least one (source, edited, score, instruction) item")
    font = ImageFont.load_default()
    line_h = int(font.getbbox("Ag")[3]) + 4
    text_h = line_h * (caption_lines + 1) + 6
    tile_w, tile_h = 2 * cell, cell + text_h
    columns = max(1, min(columns, len(items)))
    rows = math.ceil(len(items) / columns)
    pad = 6
    grid = Image.new("RGB", (columns * (tile_w + pad) + pad, rows * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (source, edited, score, instruction) in enumerate(items):
        x = pad + (i % columns) * (tile_w + pad)
        y = pad + (i // columns) * (tile_h + pad)
        grid.paste(source.convert("RGB").resize((cell, cell)), (x, y))
        grid.paste(edited.convert("RGB").resize((cell, cell)), (x + cell, y))
        label = "score: failed" if score is None else f"score: {score:.3f}"
        draw.text((x + 2, y + cell + 3), label, fill="black", font=font)
        for j, line in enumerate(_wrap(instruction, font, tile_w - 4)[:caption_lines]):
            draw.text((x + 2, y + cell + 3 + line_h * (j + 1)), line, fill=(60, 60, 60), font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG")
    return out
