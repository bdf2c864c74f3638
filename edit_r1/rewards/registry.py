"""Reward functions by name, as the config's ``reward_fn`` refers to them.

- ``mllm_score_continue``: the MLLM judge's expected score from the reward server(s) in
  ``REWARD_SERVER`` (or the ``server`` option), see :mod:`edit_r1.rewards.client`;
- ``toy_color``: the toy dataset's preservation-blind rule, ``edit_r1.data.toy.toy_target_color_score``
  (the share of the edited region showing the requested colour: a flat field of it scores 1);
- ``toy_edit``: the toy world's ground truth, ``sqrt(success * preservation)`` of
  ``edit_r1.data.toy.toy_edit_scores``, and its two parts on their own as ``toy_edit_success``
  and ``toy_edit_preservation`` (weight 0 in ``eval_reward_fn`` logs them); all imported only when used;
- ``source_consistency``: SSIM of the edit to its (first) source image, clipped to [0, 1]
  (:func:`edit_r1.rewards.similarity.ssim`); no server, no ground truth. A defence against edits
  that redraw the whole image: it also lowers the reward of the requested change itself, so it is
  combined with the judge at a small weight (``docs/training.md``, "Reward hacking: a defence");
- ``pairwise_mllm`` (a *group* reward): each edit's win rate against the other edits of its group,
  judged pairwise by the same server (:mod:`edit_r1.rewards.pairwise`); option ``pairs_per_sample``.

A factory takes the typed ``reward_client`` settings
(:class:`~edit_r1.rewards.client.RewardClientSettings`) and returns a :class:`RewardFn`. A group reward
needs the whole epoch's group, so the trainer scores it after sampling (not per batch); its
weight adds its win rate to the same total as the per-batch rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from edit_r1.rewards.base import RewardFn, RewardSample
from edit_r1.rewards.client import RewardClient, RewardClientSettings
from edit_r1.rewards.combine import CombinedReward, parse_reward_spec
from reward_server.protocol import PROMPT_FIELDS


def _mllm_score(settings: RewardClientSettings) -> RewardFn:
    from edit_r1.rewards.client import RewardClient

    return RewardClient.from_settings(settings).score


def _pairwise_mllm(settings: RewardClientSettings, seed: int):
    from edit_r1.rewards.client import RewardClient
    from edit_r1.rewards.pairwise import PairwiseJudgeReward

    compare = RewardClient.from_settings(settings).compare
    return PairwiseJudgeReward(compare, pairs_per_sample=settings.pairs_per_sample, seed=seed)


def _toy_color(settings: RewardClientSettings) -> RewardFn:
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


def _source_consistency(settings: RewardClientSettings) -> RewardFn:
    from edit_r1.rewards.similarity import ssim

    def score(samples: Sequence[RewardSample]) -> np.ndarray:
        values = []
        for sample in samples:
            try:
                values.append(min(max(ssim(sample.edited_image, sample.source_image), 0.0), 1.0))
            except (ValueError, TypeError):
                values.append(np.nan)  # an unreadable image is masked, not rewarded 0
        return np.asarray(values, dtype=np.float64)

    return score


def _toy_edit(part: str) -> Callable[[RewardClientSettings], RewardFn]:
    """A factory of one field (``score``, ``success`` or ``preservation``) of ``toy_edit_scores``."""

    def factory(settings: RewardClientSettings) -> RewardFn:
        from edit_r1.data.toy import toy_edit_scores

        def score(samples: Sequence[RewardSample]) -> np.ndarray:
            values = []
            for sample in samples:
                try:
                    values.append(float(getattr(toy_edit_scores(sample.edited_image, sample.extra), part)))
                except (KeyError, ValueError, TypeError):
                    values.append(np.nan)  # a malformed item is masked, not rewarded 0
            return np.asarray(values, dtype=np.float64)

        return score

    return factory


REWARD_FACTORIES: Mapping[str, Callable[[RewardClientSettings], RewardFn]] = MappingProxyType(
    {
        "mllm_score_continue": _mllm_score,
        "toy_color": _toy_color,
        "toy_edit": _toy_edit("score"),
        "toy_edit_success": _toy_edit("success"),
        "toy_edit_preservation": _toy_edit("preservation"),
        "source_consistency": _source_consistency,
    }
)
# Rewards of a whole group (every rank's samples of it), scored once per epoch after sampling.
GROUP_REWARD_FACTORIES: Mapping[str, Callable[[RewardClientSettings, int], Any]] = MappingProxyType(
    {"pairwise_mllm": _pairwise_mllm}
)
KNOWN_REWARDS = frozenset(REWARD_FACTORIES) | frozenset(GROUP_REWARD_FACTORIES)


ClientOptions = RewardClientSettings | Mapping[str, Any] | None


def split_reward_spec(spec) -> tuple[dict[str, float], dict[str, float]]:
    """``(per-batch weights, group weights)`` of a ``reward_fn`` specification (any accepted form)."""
    weights = parse_reward_spec(spec)
    group = {name: w for name, w in weights.items() if name in GROUP_REWARD_FACTORIES}
    return {name: w for name, w in weights.items() if name not in group}, group


def build_group_rewards(weights: Mapping[str, float], options: ClientOptions = None, seed: int = 0) -> dict:
    """``{name: (weight, group reward)}`` for the group rewards named in ``weights``; ``seed`` seeds
    their pair plans (``seed + epoch``)."""
    settings = client_settings(options)
    return {name: (w, GROUP_REWARD_FACTORIES[name](settings, seed)) for name, w in weights.items()}


def client_settings(options: ClientOptions) -> RewardClientSettings:
    """``options`` as settings: settings as given, a mapping of ``reward_client`` keys converted."""
    if isinstance(options, RewardClientSettings):
        return options
    return RewardClientSettings.from_mapping(options or {})


def build_reward_fn(name: str, options: ClientOptions = None) -> RewardFn:
    """The reward function registered as ``name``."""
    if name not in REWARD_FACTORIES:
        raise KeyError(f"unknown reward function {name!r}; known: {sorted(REWARD_FACTORIES)}")
    return REWARD_FACTORIES[name](client_settings(options))


def build_combined_reward(spec, options: ClientOptions = None) -> CombinedReward:
    """A :class:`CombinedReward` of the per-batch rewards of a ``reward_fn`` specification (dict,
    "a:0.5,b", JSON, list); group rewards in it are left to :func:`build_group_rewards`."""
    weights, _group = split_reward_spec(spec)
    settings = client_settings(options)
    return CombinedReward(weights, {name: build_reward_fn(name, settings) for name in weights})


def judge_templates(
    reward: CombinedReward, ask: bool = True, group_rewards: Mapping[str, tuple[float, Any]] | None = None
) -> dict[str, Any]:
    """``{"judge_templates": {reward name: {"template", "template_sha256", "pairwise_template",
    "pairwise_template_sha256"}}}`` of every reward that a judge server computes (the per-batch
    rewards and the group rewards such as ``pairwise_mllm``), from its ``/health``, for the run's
    logged config: a reward curve can then be traced to the judge's prompt. A judge that does not
    answer yet is noted (``{"error": ...}``), not fatal; ``{}`` when no reward is a judge's or
    ``ask`` is false (ranks other than 0)."""
    found: dict[str, Any] = {}
    for name, client in _judge_clients(reward, group_rewards or {}) if ask else ():
        try:
            health = client.health()
            found[name] = {key: health.get(key) for key in PROMPT_FIELDS}
        except Exception as error:  # noqa: BLE001 - any transport error: log it, training may still wait
            found[name] = {"error": f"{type(error).__name__}: {error}"}
    return {"judge_templates": found} if found else {}


def _judge_clients(
    reward: CombinedReward, group_rewards: Mapping[str, tuple[float, Any]]
) -> list[tuple[str, RewardClient]]:
    """(name, client) of every reward scored by a judge server: a per-batch reward is a client's
    bound ``score``, a group reward (:class:`edit_r1.rewards.pairwise.PairwiseJudgeReward`) holds a
    client's bound ``compare``."""
    bound = [*reward.functions.items()]
    bound += [(name, getattr(group, "compare", None)) for name, (_, group) in group_rewards.items()]
    clients = [(name, getattr(function, "__self__", None)) for name, function in bound]
    return [(name, client) for name, client in clients if isinstance(client, RewardClient)]
