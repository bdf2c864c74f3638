"""The cost of a run in transformer forward passes: the rows of every call of the policy's transformers.

DiffusionNFT's claim of 3-25x efficiency over Flow-GRPO is made in forward passes and wall time,
not in rollouts: one rollout of ``N`` steps costs ``N`` forwards (``2N`` under true CFG), and each
algorithm's update adds its own (NFT: ``v`` plus ``v_old`` and ``v_ref`` at ``T`` timesteps, ``3T``
per sample; Flow-GRPO: ``v`` and, with a KL term, ``v_ref`` at ``T`` steps, ``2T``). So the count is
taken where the compute happens: a forward pre-hook on each transformer module of the policy (the
trained one and, in full-weight mode, the old and reference copies) adds the batch size of the call's
``hidden_states``. Counted in rows, one row being one sample through the whole transformer: a batch
of ``B`` counts ``B``; true CFG's batched conditional and negative rows count ``2B``; a LoRA
mixed-adapter batch of ``v_old`` and ``v_ref`` counts ``2B``. A backward pass is not a forward and
is not counted (gradient checkpointing recomputes blocks inside the backward, not the call).

:class:`RunCost` splits the count into the phases of an epoch (rollouts, update, evaluation), sums
it over the ranks and carries it across a resume (``docs/training.md``, "Metrics").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from edit_r1 import distributed

# The logged counters (cumulative since the run's start, summed over every rank).
ROLLOUT_KEY = "cost/rollout_transformer_forwards"
UPDATE_KEY = "cost/update_transformer_forwards"
TRAINING_KEY = "cost/transformer_forwards"  # every forward spent on training: rollouts + update
EVAL_KEY = "cost/eval_transformer_forwards"
COST_KEYS = (ROLLOUT_KEY, UPDATE_KEY, TRAINING_KEY, EVAL_KEY)
PHASES = ("rollout", "update", "eval")


def call_rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The batch size of one transformer call: ``hidden_states`` (keyword or first argument)."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden, torch.Tensor):
        raise TypeError("a counted transformer must be called with a hidden_states tensor")
    return int(hidden.shape[0])


class ForwardCounter:
    """Counts the rows of every call of ``modules`` (forward pre-hooks), by phase.

    ``rows[phase]``: rows counted while :meth:`phase` named it; calls outside any phase count
    under ``"other"`` (none in a training run: the trainer names each phase that runs forwards).
    """

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        self.rows: dict[str, int] = {name: 0 for name in (*PHASES, "other")}
        self.current = "other"
        self._handles = [
            module.register_forward_pre_hook(self._count, with_kwargs=True) for module in modules
        ]

    def _count(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.rows[self.current] += call_rows(args, kwargs)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Counts the calls inside this block under ``name``."""
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def close(self) -> None:
        """Removes the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class RunCost:
    """The run's cumulative forwards over every rank: ``counter``'s rows of this process plus the
    totals a resumed run started from (``start``, as :meth:`state` wrote them in the checkpoint)."""

    def __init__(self, counter: ForwardCounter, start: dict[str, int] | None = None) -> None:
        self.counter = counter
        self.start = {phase: int((start or {}).get(phase, 0)) for phase in PHASES}
        self.totals = dict(self.start)  # as of the last metrics() call

    def metrics(self) -> dict[str, int]:
        """The cumulative counters of every rank (one all-reduce, so every rank calls it):
        ``cost/rollout_*``, ``cost/update_*``, their sum ``cost/transformer_forwards`` and
        ``cost/eval_transformer_forwards``."""
        local = torch.tensor([self.counter.rows[p] for p in PHASES], dtype=torch.int64)
        summed = [int(v) for v in distributed.all_reduce_sum(local).tolist()]
        self.totals = {p: self.start[p] + s for p, s in zip(PHASES, summed, strict=True)}
        return {
            ROLLOUT_KEY: self.totals["rollout"],
            UPDATE_KEY: self.totals["update"],
            TRAINING_KEY: self.totals["rollout"] + self.totals["update"],
            EVAL_KEY: self.totals["eval"],
        }

    def state(self) -> dict[str, int]:
        """The totals of the last :meth:`metrics` call, for the checkpoint (a resumed run starts there)."""
        return dict(self.totals)
