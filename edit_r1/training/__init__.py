"""The components the training loop (``edit_r1/trainer.py``) runs over, one file each:

* ``editing.py`` -- :class:`PolicyEditor`: roll out a batch, decode, pair each edit with its task;
* ``rollout_collector.py`` -- :class:`RolloutCollector`: an epoch's rollouts, rewards submitted;
* ``epoch_scorer.py`` -- :class:`EpochScorer`: rewards -> advantages, mask, bans, metrics
  (an :class:`EpochStats` value);
* ``updater.py`` -- :class:`Updater`: micro-batches, timesteps, the optimizer step, EMA, the
  old-policy sync (when the algorithm reads an old policy);
* ``evaluator.py`` -- :class:`Evaluator`: the EMA policy on the test split, with extra
  :class:`EvalMetric` callables;
* ``checkpointer.py`` -- :class:`Checkpointer`: save and resume the full state;
* ``forward_counter.py`` -- :class:`ForwardCounter`, :class:`RunCost`: the transformer forwards
  spent on rollouts, update and evaluation (``cost/*``);
* ``build.py`` -- :func:`build_components`: all of them wired from the typed settings;
* ``errors.py`` -- :class:`TrainingError`.

Each component receives what it uses (typed settings sections, the policy, the dataset, ...) in
its constructor; none reads a config or names a model family or an algorithm.
"""

from .checkpointer import Checkpointer, Restored
from .editing import PolicyEditor
from .epoch_scorer import EpochScorer, EpochStats
from .errors import TrainingError
from .evaluator import EvalBatch, EvalMetric, Evaluator
from .forward_counter import ForwardCounter, RunCost
from .rollout_collector import Rollout, RolloutCollector
from .updater import BoundPolicy, Updater

__all__ = [
    "BoundPolicy",
    "Checkpointer",
    "EpochScorer",
    "EpochStats",
    "EvalBatch",
    "EvalMetric",
    "Evaluator",
    "ForwardCounter",
    "PolicyEditor",
    "Restored",
    "Rollout",
    "RolloutCollector",
    "RunCost",
    "TrainingError",
    "Updater",
]
