"""Weighted combination of reward functions, scored asynchronously so scoring overlaps sampling.

The config's ``reward_fn`` names the functions and their weights. Accepted forms (the dict is the
config's; the strings are the ones Pref-GRPO users know):

- a mapping ``{"mllm_score_continue": 1.0, "toy_color": 0.5}``;
- ``"a,b"`` (weight 1 each) or ``"a:0.5,b:1.0"``;
- a JSON object string ``'{"a": 0.5}'`` or a JSON list ``'["a", "b"]'``; a list of names.

Total reward: ``r = sum_f w_f * r_f``. A sample any function failed on (NaN) has a NaN total, so it
is masked rather than scored by the remaining functions alone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from edit_r1.rewards.base import RewardFn, RewardSample


def _weight(name: str, value: object) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"reward_fn: weight of {name!r} is {value!r}, not a number") from None
    if not math.isfinite(weight):
        raise ValueError(f"reward_fn: weight of {name!r} is {weight}")
    return weight


def _from_list(names: Sequence[object]) -> dict[str, float]:
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"reward_fn: every entry of {list(names)!r} must be a function name")
    return {name.strip(): 1.0 for name in names}


def _from_string(spec: str) -> dict[str, float]:
    text = spec.strip()
    if text.startswith(("{", "[")):
        try:
            return parse_reward_spec(json.loads(text))
        except json.JSONDecodeError as error:
            raise ValueError(f"reward_fn: {spec!r} is not valid JSON ({error})") from None
    weights: dict[str, float] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, value = entry.partition(":")
        weights[name.strip()] = _weight(name.strip(), value) if sep else 1.0
    return weights


def parse_reward_spec(spec: Mapping[str, object] | Sequence[str] | str) -> dict[str, float]:
    """``{name: weight}`` from any accepted form; raises ``ValueError`` naming the bad part."""
    if isinstance(spec, str):
        weights = _from_string(spec)
    elif isinstance(spec, Mapping):
        weights = {str(name).strip(): _weight(str(name), value) for name, value in spec.items()}
    elif isinstance(spec, Sequence):
        weights = _from_list(spec)
    else:
        raise ValueError(f"reward_fn: unsupported specification {spec!r}")
    if not weights or any(not name for name in weights):
        raise ValueError(f"reward_fn: no reward function named in {spec!r}")
    return weights


def mean_ignoring_nan(values: np.ndarray) -> float | None:
    """The mean of the finite values (a failed score is NaN); None when there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


@dataclass(frozen=True)
class RewardOutput:
    """The weighted total and each function's own scores (for logging), all aligned with the batch."""

    total: np.ndarray
    components: dict[str, np.ndarray]


class CombinedReward:
    """``r = sum_f w_f r_f`` over named reward functions."""

    def __init__(self, weights: Mapping[str, float], functions: Mapping[str, RewardFn]) -> None:
        missing = sorted(set(weights) - set(functions))
        if missing:
            raise ValueError(f"reward_fn: no function for {missing}")
        self.weights = dict(weights)
        self.functions = {name: functions[name] for name in weights}

    def __call__(self, samples: Sequence[RewardSample]) -> RewardOutput:
        components = {}
        for name, function in self.functions.items():
            scores = np.asarray(function(samples), dtype=np.float64)
            if scores.shape != (len(samples),):
                raise ValueError(
                    f"reward function {name!r} returned shape {scores.shape} for {len(samples)} samples"
                )
            components[name] = scores
        total = np.zeros(len(samples), dtype=np.float64)
        for name, scores in components.items():
            total += self.weights[name] * scores  # NaN propagates: a failed component masks the sample
        return RewardOutput(total=total, components=components)


class RewardWaitTimeout(RuntimeError):
    """The rewards of an epoch were not all scored within ``reward_client.wait_deadline_s``."""


def _waiting_on(reward: Callable) -> str:
    """What a reward waits on, for messages: the judge servers of its clients, else its names."""
    functions = getattr(reward, "functions", {})
    servers = [s for f in functions.values() for s in getattr(getattr(f, "__self__", None), "servers", ())]
    if servers:
        return f"the reward server(s) {', '.join(dict.fromkeys(servers))} (reward {', '.join(functions)})"
    return f"the reward function(s) {', '.join(functions) or getattr(reward, '__name__', repr(reward))}"


class AsyncRewardScorer:
    """Runs a reward on a background thread: ``submit`` after each rollout batch, ``result()`` later.

    The scoring work is HTTP waiting and image encoding, so a thread overlaps it with the GPU
    sampling of the next batch. Futures complete in submission order (one worker by default).
    """

    def __init__(
        self, reward: Callable[[Sequence[RewardSample]], RewardOutput], max_workers: int = 1
    ) -> None:
        self.reward = reward
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reward")

    def submit(self, samples: Sequence[RewardSample]) -> Future:
        """A future resolving to the reward's output for ``samples`` (a copy of the list is scored)."""
        future = self._pool.submit(self.reward, list(samples))
        future.edits = len(samples)  # for the wait's message
        return future

    def wait(
        self, futures: Sequence[Future], deadline_s: float, on_each: Callable[[], None] | None = None
    ) -> list[RewardOutput]:
        """Every future's output, in order, all within ``deadline_s`` from now (``on_each`` after
        each); else :class:`RewardWaitTimeout` naming what was waited on and what is unscored. A
        future that failed raises its own error."""
        started = time.monotonic()
        outputs = []
        for index, future in enumerate(futures):
            remaining = deadline_s - (time.monotonic() - started)
            try:
                outputs.append(future.result(timeout=max(remaining, 0.0)))
            except FutureTimeout:
                unscored = sum(getattr(f, "edits", 0) for f in futures[index:])
                raise RewardWaitTimeout(
                    f"waited {deadline_s:g} s (reward_client.wait_deadline_s) for this epoch's rewards from "
                    f"{_waiting_on(self.reward)}: {index} of {len(futures)} batches scored, {len(futures) - index} "
                    f"({unscored} edits) not yet; the judge has been slower than training for that long "
                    "(add judge replicas or servers, or raise reward_client.wait_deadline_s)"
                ) from None
            if on_each is not None:
                on_each()
        return outputs

    def close(self, wait: bool = True) -> None:
        """Stop the worker; ``wait=False`` drops queued batches and returns at once (a batch being
        scored finishes in the background, its result is discarded)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
