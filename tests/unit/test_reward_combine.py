"""Reward specifications, the weighted combination, the async scorer and the registry."""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

from edit_r1.rewards import (
    AsyncRewardScorer,
    CombinedReward,
    RewardSample,
    build_combined_reward,
    build_reward_fn,
    parse_reward_spec,
)
from edit_r1.rewards.client import image_to_png, parse_server_list


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"mllm_score_continue": 1.0}, {"mllm_score_continue": 1.0}),
        ("a,b", {"a": 1.0, "b": 1.0}),
        ("a:0.5, b:1.0", {"a": 0.5, "b": 1.0}),
        ('{"a": 0.5, "b": 2}', {"a": 0.5, "b": 2.0}),
        ('["a", "b"]', {"a": 1.0, "b": 1.0}),
        (["a"], {"a": 1.0}),
    ],
)
def test_reward_specs(spec, expected):
    assert parse_reward_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "a:x", "{bad json", "[1]", {"a": "heavy"}, 3])
def test_bad_reward_specs_are_named(spec):
    with pytest.raises(ValueError, match="reward_fn"):
        parse_reward_spec(spec)


def _samples(n):
    return [
        RewardSample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), f"i{k}") for k in range(n)
    ]


def test_weighted_sum_and_nan_masking():
    functions = {
        "a": lambda samples: np.array([0.2, 0.4, np.nan]),
        "b": lambda samples: np.array([1.0, 0.0, 0.5]),
    }
    output = CombinedReward({"a": 0.5, "b": 2.0}, functions)(_samples(3))
    np.testing.assert_allclose(output.total[:2], [0.5 * 0.2 + 2.0, 0.5 * 0.4])
    assert np.isnan(output.total[2])  # a failed component masks the sample instead of scoring 0
    np.testing.assert_array_equal(output.components["b"], [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="no function"):
        CombinedReward({"c": 1.0}, functions)
    with pytest.raises(ValueError, match="shape"):
        CombinedReward({"a": 1.0}, functions)(_samples(2))


def test_async_scorer_overlaps_and_returns_in_order():
    release = threading.Event()

    def slow_reward(samples):
        release.wait(5)
        return CombinedReward({"n": 1.0}, {"n": lambda s: np.arange(len(s), dtype=float)})(samples)

    scorer = AsyncRewardScorer(slow_reward)
    first, second = scorer.submit(_samples(2)), scorer.submit(_samples(3))
    assert not first.done()  # the caller went on (sampling the next batch) while scoring waits
    release.set()
    np.testing.assert_array_equal(first.result(5).total, [0, 1])
    np.testing.assert_array_equal(second.result(5).total, [0, 1, 2])
    scorer.close()


def test_registry_builds_toy_color_lazily(monkeypatch):
    calls = []
    toy = types.ModuleType("edit_r1.data.toy")

    def toy_target_color_score(image, extra):
        calls.append(extra)
        return extra["value"]

    toy.toy_target_color_score = toy_target_color_score
    monkeypatch.setitem(sys.modules, "edit_r1.data.toy", toy)
    reward = build_combined_reward("toy_color:2")
    samples = [s._replace(extra={"value": v}) for s, v in zip(_samples(2), [0.25, 0.5], strict=True)]
    samples.append(_samples(1)[0])  # no "value": masked as NaN
    total = reward(samples).total
    np.testing.assert_allclose(total[:2], [0.5, 1.0])
    assert np.isnan(total[2]) and len(calls) == 3
    with pytest.raises(KeyError, match="unknown reward function"):
        build_reward_fn("nope")


def test_mllm_reward_reads_server_from_env(monkeypatch):
    monkeypatch.setenv("REWARD_SERVER", "judge-a:1,judge-b:2")
    score = build_reward_fn("mllm_score_continue", {"deadline_s": 1})
    assert score.__self__.servers == ["http://judge-a:1", "http://judge-b:2"]
    assert score.__self__.retry.deadline_s == 1.0


def test_server_list_and_image_encoding():
    assert parse_server_list("h:1, http://g:2/") == ["http://h:1", "http://g:2"]
    with pytest.raises(ValueError, match="REWARD_SERVER"):
        parse_server_list(" , ")
    assert image_to_png(np.zeros((3, 5, 3), np.uint8)).startswith(b"\x89PNG")
    with pytest.raises(TypeError, match="uint8"):
        image_to_png(np.zeros((3, 5, 3), np.float32))
