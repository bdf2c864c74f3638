"""Reward-hacking monitors of an evaluation: numbers that need no ground truth.

A policy that learns to please its judge rather than to edit shows it in quantities the judge
does not see. At every evaluation the trainer logs, over the held-out edits (``docs/training.md``,
"Reward hacking: the monitors"):

- ``monitor/source_ssim``, ``monitor/source_psnr``, ``monitor/changed_share``: how similar each
  edit is to its source, at the resolution the judge is sent
  (:mod:`edit_r1.rewards.similarity` defines them); a policy that redraws the scene drives SSIM and
  PSNR down and the changed share up while its reward rises;
- ``monitor/train_reward_on_eval`` and ``monitor/reward_gap``: the *training* reward of the same
  held-out edits and ``gap = mean_i (r_train(i) - r_eval(i))`` over the edits both scored, with
  ``r_eval`` the ``eval_reward_fn`` total. With an independent evaluation reward (another reward, or
  a second judge through ``EVAL_REWARD_SERVER``) a gap that grows during training means the policy
  is learning what only the training reward likes. Logged only when the two rewards differ;
- ``monitor/x0_norm``: ``mean x0^2`` of the evaluation's final latents (the training-side
  ``x0_norm`` is the same quantity over the rollouts);
- ``monitor/velocity_rms``: the per-step velocity norm of the evaluated policy along its own
  trajectory, ``||v||_2 / sqrt(d)`` per sample and step (``d`` elements), averaged; with the
  reference policy evaluated at the same points (``monitors.velocity_reference``) also
  ``monitor/velocity_rms_ref`` and ``monitor/velocity_ratio = mean_{i,step} ||v|| / ||v_ref||``,
  the inflation NormGuard (arXiv 2606.27771) reports RL methods such as NFT to cause (1.05-1.15).

The functions here are pure (images, numpy arrays and torch tensors in, numbers out): the trainer
computes the per-item arrays on each rank, gathers them and calls :func:`summarise`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edit_r1.rewards.similarity import DEFAULT_CHANGE_THRESHOLD, source_similarity

PREFIX = "monitor/"
SIMILARITY_KEYS = {"ssim": "source_ssim", "psnr": "source_psnr", "changed_share": "changed_share"}
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def similarity_arrays(
    edits: Sequence[Any], sources: Sequence[Any], threshold: float = DEFAULT_CHANGE_THRESHOLD
) -> dict[str, np.ndarray]:
    """Per-item ``source_ssim``, ``source_psnr`` and ``changed_share`` (float64 arrays)."""
    rows = [source_similarity(e, s, threshold) for e, s in zip(edits, sources, strict=True)]
    return {name: np.asarray([r[key] for r in rows], np.float64) for key, name in SIMILARITY_KEYS.items()}


def row_mean_square(x: torch.Tensor) -> np.ndarray:
    """``mean x^2`` of each row of ``(B, ...)`` (the ``x0_norm`` of one sample), float64."""
    return x.detach().double().flatten(1).pow(2).mean(1).cpu().numpy()


@dataclass
class VelocityNorms:
    """Per-row velocity norms over the steps of one batched rollout.

    :meth:`wrap` returns the velocity function the sampler calls: it evaluates the policy, records
    ``||v|| / sqrt(d)`` per row (and, with ``reference``, the reference's at the same ``(z, sigma)``
    and the per-step ratio), and returns ``v`` unchanged, so the rollout is exactly the unobserved one.
    """

    rms: list[np.ndarray] = field(default_factory=list)
    rms_ref: list[np.ndarray] = field(default_factory=list)
    ratio: list[np.ndarray] = field(default_factory=list)

    def observe(self, v: torch.Tensor, v_ref: torch.Tensor | None = None) -> None:
        rms = np.sqrt(row_mean_square(v))
        self.rms.append(rms)
        if v_ref is not None:
            rms_ref = np.sqrt(row_mean_square(v_ref))
            self.rms_ref.append(rms_ref)
            with np.errstate(divide="ignore", invalid="ignore"):
                self.ratio.append(np.where(rms_ref > 0, rms / rms_ref, np.nan))

    def wrap(self, velocity: VelocityFn, reference: VelocityFn | None = None) -> VelocityFn:
        def observed(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = velocity(z, sigma)
            self.observe(v, reference(z, sigma) if reference is not None else None)
            return v

        return observed

    def per_row(self) -> dict[str, np.ndarray]:
        """``velocity_rms`` (and ``velocity_rms_ref``, ``velocity_ratio``) per row, mean over steps."""
        out = {"velocity_rms": np.mean(self.rms, axis=0)} if self.rms else {}
        if self.rms_ref:
            out["velocity_rms_ref"] = np.mean(self.rms_ref, axis=0)
            with warnings.catch_warnings():  # a row whose reference never moved is NaN, as documented
                warnings.simplefilter("ignore", RuntimeWarning)
                out["velocity_ratio"] = np.nanmean(np.stack(self.ratio), axis=0)
        return out


def per_item_gap(train: np.ndarray, evaluation: np.ndarray) -> np.ndarray:
    """``train_i - evaluation_i`` per item (NaN where either reward failed); its mean over the
    finite items is ``monitor/reward_gap``."""
    return np.asarray(train, np.float64) - np.asarray(evaluation, np.float64)


def batch_monitors(
    samples: Sequence[Any],
    latents: torch.Tensor,
    velocity_norms: VelocityNorms | None,
    eval_total: np.ndarray,
    *,
    threshold: float = DEFAULT_CHANGE_THRESHOLD,
    train_reward: Callable[[Sequence[Any]], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The per-item monitors of one evaluation batch of ``n = len(samples)`` edits.

    ``samples`` carry ``edited_image`` and ``source_image`` (:class:`~edit_r1.rewards.RewardSample`);
    ``latents`` (at least ``n`` rows) are their final latents and ``velocity_norms`` observed their
    rollout (extra rows, e.g. lockstep padding, are dropped); ``eval_total`` is their evaluation
    reward and ``train_reward``, when given, returns their training reward totals.
    """
    n = len(samples)
    arrays = similarity_arrays(
        [s.edited_image for s in samples], [s.source_image for s in samples], threshold
    )
    arrays["x0_norm"] = row_mean_square(latents[:n])
    if velocity_norms is not None:
        arrays.update({name: values[:n] for name, values in velocity_norms.per_row().items()})
    if train_reward is not None:
        train = np.asarray(train_reward(samples), np.float64)
        arrays["train_reward_on_eval"] = train
        arrays["reward_gap"] = per_item_gap(train, eval_total)
    return arrays


def _finite_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def summarise(per_item: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """``monitor/<name>``: the mean of each per-item array over its finite entries (None if none)."""
    return {
        f"{PREFIX}{name}": _finite_mean(np.asarray(values, np.float64)) for name, values in per_item.items()
    }


def same_reward(train: Mapping[str, float], evaluation: Mapping[str, float], same_server: bool) -> bool:
    """True when the evaluation reward is the training reward (the same functions with the same
    non-zero weights, on the same server): their gap is zero by construction and is not logged."""
    return same_server and _nonzero(train) == _nonzero(evaluation)


def _nonzero(weights: Mapping[str, float]) -> dict[str, float]:
    return {name: float(w) for name, w in weights.items() if w != 0}


def evaluation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A text table of the evaluation rows of ``metrics.jsonl``: the epoch, every ``eval_reward_*``
    and every ``monitor/*`` value (``-`` where a row lacks it), one line per evaluation."""
    evaluations = [row for row in rows if any(key.startswith(PREFIX) for key in row)]
    if not evaluations:
        return "no evaluation with monitors in these metrics"
    keys = sorted({k for row in evaluations for k in row if k.startswith(("eval_reward_", PREFIX))})
    short = [key.removeprefix(PREFIX).removeprefix("eval_reward_") for key in keys]
    short = ["eval_mean" if name == "mean" else name for name in short]
    widths = [max(len(name), 6) for name in short]
    lines = ["epoch  " + "  ".join(name.rjust(w) for name, w in zip(short, widths, strict=True))]
    for row in evaluations:
        cells = [_cell(row.get(key)).rjust(w) for key, w in zip(keys, widths, strict=True)]
        lines.append(f"{row.get('step', '?'):>5}  " + "  ".join(cells))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m edit_r1.monitors RUN_DIR``: the evaluations' rewards and monitors of a run."""
    import argparse
    from pathlib import Path

    from edit_r1.tracking import METRICS_FILENAME, read_metrics

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help=f"a run directory (holding {METRICS_FILENAME})")
    args = parser.parse_args(argv)
    path = args.run_dir / METRICS_FILENAME
    if not path.is_file():
        parser.error(f"{path} does not exist: give a run directory (logdir/run_name)")
    print(evaluation_table(read_metrics(path)))


if __name__ == "__main__":
    main()
