"""Reward functions by name, as the config's ``reward_fn`` refers to them.

- ``mllm_score_continue``: the MLLM judge's expected score from the reward server(s) in
  ``REWARD_SERVER`` (or the ``server`` option), see :mod:`edit_r1.rewards.client`;
- ``toy_color``: the toy dataset's rule reward, ``edit_r1.data.toy.toy_target_color_score``
  (imported only when used).

A factory takes the options dict (from the config) and returns a :class:`RewardFn`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from edit_r1.rewards.base import RewardFn, RewardSample
from edit_r1.rewards.combine import CombinedReward, parse_reward_spec


def _mllm_score(options: Mapping[str, Any]) -> RewardFn:
    from edit_r1.rewards.client import RetryPolicy, RewardClient

    retry_keys = (
        "deadline_s",
        "initial_backoff_s",
        "max_backoff_s",
        "request_timeout_s",
        "server_cooldown_s",
    )
    retry = RetryPolicy(**{key: float(options[key]) for key in retry_keys if key in options})
    client_kwargs = {"retry": retry, "chunk_size": int(options.get("chunk_size", 32))}
    if options.get("server"):
        return RewardClient(options["server"], **client_kwargs).score
    return RewardClient.from_env(**client_kwargs).score


def _toy_color(options: Mapping[str, Any]) -> RewardFn:
    from edit_r1.data.toy import toy_target_color_score

    def score(samples: Sequence[RewardSample]) -> np.ndarray:
        values = []
        for sample in samples:
            try:
                values.append(float(toy_target_color_score(sample.edited_image, sample.extra)))
            except (KeyError, ValueError, TypeError):
                values.append(np.nan)  # a malformed item is masked, not rewarded 0
        return np.asarray(values, dtype=np.float64)

    return score


REWARD_FACTORIES: Mapping[str, Callable[[Mapping[str, Any]], RewardFn]] = MappingProxyType(
    {"mllm_score_continue": _mllm_score, "toy_color": _toy_color}
)


def build_reward_fn(name: str, options: Mapping[str, Any] | None = None) -> RewardFn:
    """The reward function registered as ``name``."""
    if name not in REWARD_FACTORIES:
        raise KeyError(f"unknown reward function {name!r}; known: {sorted(REWARD_FACTORIES)}")
    return REWARD_FACTORIES[name](options or {})


def build_combined_reward(spec, options: Mapping[str, Any] | None = None) -> CombinedReward:
    """A :class:`CombinedReward` from a ``reward_fn`` specification (dict, "a:0.5,b", JSON, list)."""
    weights = parse_reward_spec(spec)
    return CombinedReward(weights, {name: build_reward_fn(name, options) for name in weights})
