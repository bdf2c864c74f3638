"""The evaluator: the EMA policy on the test split, deterministic ``flow``, ``eval_num_steps``.

The rollouts' true CFG (a family's negative-prompt guidance) applies unless ``sample.eval_true_cfg`` is off.

Each test item has its own seeded noise (``eval_generator``), so evaluation never draws from the
training generators and a score depends on neither the rank nor the world size that computed it;
with ``sample.eval_same_noise`` every evaluation reuses epoch 0's noise (paired evaluation).
Every evaluation logs ``eval_reward_<name>`` and ``eval_reward_mean`` (the eval reward's mean over
every rank's items, failed scores left out) and one ``eval_<name>`` per name of each extra
:class:`EvalMetric` handed in (e.g. a reward-hacking monitor); rank 0 saves a grid of 8 edits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edit_r1 import distributed
from edit_r1.algo import EMA
from edit_r1.data import EditDataset
from edit_r1.monitors import VelocityNorms, batch_monitors, summarise
from edit_r1.parallelize import local_shards
from edit_r1.rewards import CombinedReward, RewardOutput, RewardSample
from edit_r1.rewards.combine import mean_ignoring_nan
from edit_r1.sampling import SampleResult
from edit_r1.settings import EvaluationSettings, MonitorSettings
from edit_r1.tracking import Timer, Tracker, progress, save_eval_grid

from .editing import PolicyEditor


@dataclasses.dataclass(frozen=True)
class EvalBatch:
    """One evaluated batch of this rank: the edits with their tasks, the rollout that made them
    (``result.latents``, ``result.trajectory``) and the eval reward's scores, all row-aligned."""

    epoch: int
    samples: list[RewardSample]
    result: SampleResult
    rewards: RewardOutput
    velocity_norms: VelocityNorms


class EvalMetric(Protocol):
    """An extra per-evaluation metric: ``names`` it reports (known on every rank, since each is
    one collective), and per batch one value per sample for each name (NaN = no value). The
    evaluator logs ``eval_<name>``: the mean of the finite values over every rank's test items."""

    names: tuple[str, ...]

    def __call__(self, batch: EvalBatch) -> Mapping[str, np.ndarray]: ...


def eval_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The noise of test item ``index`` at ``epoch``: its own generator, seeded from
    ``SeedSequence([seed, epoch, index])``."""
    state = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


class Evaluator:
    """Evaluates ``editor``'s policy (with the EMA weights swapped in, if kept) on ``test_set``.

    ``lockstep``: every rank runs the same number of (collective) forwards, padding its share of
    the items; ``sharded_transformer``: the padding rows are rolled out too (FSDP forwards are
    collectives), otherwise they are dropped before the rollout.
    """

    def __init__(
        self,
        *,
        editor: PolicyEditor,
        test_set: EditDataset,
        reward: CombinedReward,
        sigmas: torch.Tensor,
        settings: EvaluationSettings,
        seed: int,
        dist: distributed.DistInfo,
        lockstep: bool,
        sharded_transformer: bool,
        ema: EMA | None,
        params: Sequence[torch.nn.Parameter],
        timer: Timer,
        tracker: Tracker,
        run_dir: Path,
        monitors: MonitorSettings,
        gap_reward: CombinedReward | None = None,
        metrics: Sequence[EvalMetric] = (),
    ) -> None:
        self.editor, self.test_set, self.reward, self.sigmas = editor, test_set, reward, sigmas
        self.settings, self.seed, self.dist = settings, seed, dist
        self.lockstep, self.sharded_transformer = lockstep, sharded_transformer
        self.ema, self.params, self.timer, self.tracker, self.run_dir = ema, params, timer, tracker, run_dir
        self.monitors, self.gap_reward, self.metrics = monitors, gap_reward, list(metrics)

    def due(self, epoch: int) -> bool:
        """Evaluation runs every ``eval_freq`` epochs, before the epoch's sampling (as upstream)."""
        return epoch % self.settings.every_epochs == 0

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """``eval_reward_*`` and each extra metric's ``eval_*`` of the EMA policy at ``epoch``."""
        indices, real = self._indices()
        values: dict[str, list[np.ndarray]] = {name: [] for name in self._names()}
        grid: list[tuple[Any, Any, float | None, str]] = []
        monitored: list[dict[str, np.ndarray]] = []
        ema = (
            self.ema.applied(local_shards(self.params)) if self.ema is not None else contextlib.nullcontext()
        )
        # sample.eval_true_cfg=False: plain conditional passes, whatever CFG the rollouts use
        guidance = contextlib.nullcontext() if self.settings.true_cfg else self.editor.policy.unguided()
        with self.timer("evaluation"), ema, guidance:
            for start in progress(
                range(0, len(indices), self.settings.batch_per_gpu), desc="eval", enabled=self.dist.is_main
            ):
                batch = self._evaluate_batch(
                    epoch, indices[start : start + self.settings.batch_per_gpu], real - start
                )
                if batch is None:
                    continue
                for name, column in self._values(batch).items():
                    values[name].append(column)
                monitored.append(self._monitor_batch(batch))
                grid.extend(
                    (x.source_image, x.edited_image, float(s) if math.isfinite(s) else None, x.instruction)
                    for x, s in zip(batch.samples, batch.rewards.total, strict=True)
                )
        metrics = {name: self._gathered_mean(columns) for name, columns in values.items()}
        metrics.update(self._gather_monitors(monitored))
        if self.dist.is_main and grid:
            path = save_eval_grid(grid[:8], self.run_dir / "samples" / f"eval_epoch{epoch:05d}.png")
            self.tracker.log_image("eval_grid", path, step=epoch)
        return metrics

    def _noise_epoch(self, epoch: int) -> int:
        """The epoch whose noise the evaluation at ``epoch`` draws: epoch 0's when paired."""
        return 0 if self.settings.same_noise else epoch

    def _indices(self) -> tuple[list[int], int]:
        """This rank's test items (every ``world_size``-th) and how many are real: in lockstep the
        list is padded to the same length on every rank."""
        indices = list(range(self.dist.rank, len(self.test_set), self.dist.world_size))
        real = len(indices)
        if self.lockstep:
            per_rank = -(-len(self.test_set) // self.dist.world_size)
            indices += [indices[-1] if indices else 0] * (per_rank - real)
        return indices, real

    def _evaluate_batch(self, epoch: int, batch: list[int], real_left: int) -> EvalBatch | None:
        """Edits and scores one batch; ``real_left``: how many of its rows (from the first) are real."""
        items = [self.test_set[i] for i in batch]
        images = [self.editor.sources(item) for item in items]
        cond = self.editor.encode(items, images)
        keep = max(0, min(len(items), real_left))  # drop lockstep padding
        if not self.sharded_transformer:  # padding rows need no rollout
            if keep == 0:
                return None
            items, images, cond = items[:keep], images[:keep], cond.index_select(list(range(keep)))
        norms = VelocityNorms()
        result, samples = self.editor.edit_batch(
            cond, items, images, adapter="default", sigmas=self.sigmas,
            solver=self.settings.solver, deterministic=self.settings.deterministic,
            generator=[eval_generator(self.seed, self._noise_epoch(epoch), i) for i in batch[: len(items)]],
            observe=norms,
        )  # fmt: skip
        samples = samples[:keep]
        if not samples:
            return None
        rewards = self.reward(samples)
        return EvalBatch(epoch=epoch, samples=samples, result=result, rewards=rewards, velocity_norms=norms)

    def _monitor_batch(self, batch: EvalBatch) -> dict[str, np.ndarray]:
        """The reward-hacking monitors of one evaluation batch (``edit_r1/monitors.py``)."""
        gap = self.gap_reward
        train_reward = (lambda samples: gap(samples).total) if gap is not None else None
        return batch_monitors(
            batch.samples, batch.result.latents, batch.velocity_norms, batch.rewards.total,
            threshold=self.monitors.change_threshold, train_reward=train_reward,
        )  # fmt: skip

    def _gather_monitors(self, batches: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
        """``monitor/*`` means over every rank's held-out edits (a rank without edits sends none)."""
        # Rank 0 always has edits: its names make every rank gather the same arrays.
        names = distributed.broadcast_object(sorted(batches[0]) if batches else [])
        gathered = {}
        for name in names:
            local = np.concatenate([b[name] for b in batches]) if batches else np.zeros(0)
            values = distributed.all_gather_tensor(torch.from_numpy(local).to(self.dist.device))
            gathered[name] = values.cpu().numpy()
        return summarise(gathered)

    def _names(self) -> list[str]:
        """Every logged name, in order: ``eval_reward_<name>``, ``eval_reward_mean``, the extras."""
        names = [f"eval_reward_{name}" for name in self.reward.weights] + ["eval_reward_mean"]
        return names + [f"eval_{name}" for metric in self.metrics for name in metric.names]

    def _values(self, batch: EvalBatch) -> dict[str, np.ndarray]:
        """The per-sample values of one batch under every logged name."""
        out = {f"eval_reward_{name}": batch.rewards.components[name] for name in self.reward.weights}
        out["eval_reward_mean"] = batch.rewards.total
        for metric in self.metrics:
            found = metric(batch)
            for name in metric.names:
                out[f"eval_{name}"] = np.asarray(found[name], dtype=np.float64).reshape(-1)
        return out

    def _gathered_mean(self, columns: list[np.ndarray]) -> float | None:
        """The mean of the finite values over every rank's batches (one all-gather)."""
        local = np.concatenate(columns) if columns else np.zeros(0)
        gathered = distributed.all_gather_tensor(torch.from_numpy(local).to(self.dist.device)).cpu().numpy()
        return mean_ignoring_nan(gathered)
