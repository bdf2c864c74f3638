"""The trainer's client against real HTTP servers: chunking over servers, retries, deadline, NaN."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from flask import Flask, jsonify, request
from reward_helpers import (
    InstructionScoreBackend,
    free_port,
    random_image,
    reward_app_server,
    serve_in_thread,
)

from edit_r1.rewards import CombinedReward, RewardSample
from edit_r1.rewards.client import RetryPolicy, RewardClient, RewardRequestRejected, RewardServerUnavailable
from edit_r1.rewards.pairwise import PairwiseJudgeReward
from edit_r1.rewards.registry import judge_templates
from reward_server.prompt_template import (
    judge_prompt_info,
    pairwise_template_id_for_file,
    template_id_for_file,
)

FAST_RETRY = RetryPolicy(deadline_s=1.5, initial_backoff_s=0.05, max_backoff_s=0.2, request_timeout_s=0.5)


def _samples(scores):
    image = np.asarray(random_image(0, 16))
    return [
        RewardSample(image, image, "fail" if s is None else f"score={s}", requirement="keep it")
        for s in scores
    ]


def test_chunks_spread_over_servers_come_back_in_order():
    wanted = [round(0.05 * k, 2) for k in range(11)]
    wanted[4] = None  # the judge fails on this one: NaN, not 0
    backends = [InstructionScoreBackend(), InstructionScoreBackend()]
    with reward_app_server([backends[0]]) as first, reward_app_server([backends[1]]) as second:
        client = RewardClient(f"{first},{second}", chunk_size=3, retry=FAST_RETRY)
        scores = client.score(_samples(wanted))
    expected = np.array([np.nan if w is None else w for w in wanted])
    np.testing.assert_array_equal(scores, expected)
    assert sum(backends[0].batches) + sum(backends[1].batches) == 11
    assert backends[0].batches and backends[1].batches  # both servers took chunks


def test_a_down_server_stops_the_trainer_with_its_name():
    down = f"127.0.0.1:{free_port()}"
    client = RewardClient(down, retry=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(RewardServerUnavailable, match=f"http://{down}") as raised:
        client.score(_samples([0.5]))
    elapsed = time.monotonic() - started
    assert FAST_RETRY.deadline_s <= elapsed < FAST_RETRY.deadline_s + 1.5
    assert "attempts" in str(raised.value)


def test_failover_to_a_live_server():
    down = f"127.0.0.1:{free_port()}"
    with reward_app_server([InstructionScoreBackend()]) as live:
        client = RewardClient(f"{down},{live}", chunk_size=1, retry=FAST_RETRY)
        np.testing.assert_array_equal(client.score(_samples([0.1, 0.2, 0.3])), [0.1, 0.2, 0.3])


def _scripted_app(statuses, delay_s=0.0):
    """A server answering the scripted statuses in turn, then valid scores; counts its calls."""
    app = Flask("scripted")
    calls = []
    lock = threading.Lock()

    @app.post("/score")
    def score():
        with lock:
            calls.append(time.monotonic())
            index = len(calls) - 1
        time.sleep(delay_s)
        if index < len(statuses):
            return jsonify({"error": "scripted"}), statuses[index]
        n = len(request.get_json()["items"])
        return jsonify({"scores": [0.75] * n, "errors": [None] * n})

    return app, calls


def test_503_is_retried_with_growing_backoff():
    app, calls = _scripted_app([503, 503])
    with serve_in_thread(app) as url:
        scores = RewardClient(url, retry=FAST_RETRY).score(_samples([0.1, 0.2]))
    np.testing.assert_array_equal(scores, [0.75, 0.75])
    gaps = np.diff(calls)
    assert len(calls) == 3 and gaps[1] > gaps[0] * 1.5  # 0.05 s then 0.1 s backoff


@pytest.mark.parametrize("status", [400, 401, 413, 500])
def test_client_errors_are_not_retried(status):
    app, calls = _scripted_app([status] * 10)
    with serve_in_thread(app) as url, pytest.raises(RewardRequestRejected, match=f"HTTP {status}"):
        RewardClient(url, retry=FAST_RETRY).score(_samples([0.1]))
    assert len(calls) == 1


def test_a_slow_server_times_out_and_hits_the_deadline():
    app, calls = _scripted_app([], delay_s=1.0)
    with serve_in_thread(app) as url, pytest.raises(RewardServerUnavailable, match="ReadTimeout"):
        RewardClient(url, retry=FAST_RETRY).score(_samples([0.1]))
    assert len(calls) >= 2  # timed out, backed off, retried


def test_a_restarting_server_is_waited_for_and_scores_stay_aligned():
    """Fault: the only judge server goes away mid-run and comes back on the same port; the client
    waits (within its deadline) and every score still belongs to its own sample."""
    port = free_port()
    client = RewardClient(
        f"127.0.0.1:{port}",
        chunk_size=2,
        retry=RetryPolicy(deadline_s=30, initial_backoff_s=0.1, max_backoff_s=0.4, server_cooldown_s=0.5),
    )
    first, second = [0.1, 0.2, 0.3], [0.45, None, 0.65, 0.7, 0.05]
    with reward_app_server([InstructionScoreBackend()], port=port):
        np.testing.assert_array_equal(client.score(_samples(first)), first)
    result = {}
    waiting = threading.Thread(target=lambda: result.update(scores=client.score(_samples(second))))
    started = time.monotonic()
    waiting.start()
    time.sleep(1.0)
    assert waiting.is_alive()  # still retrying: the server is down
    with reward_app_server([InstructionScoreBackend()], port=port):
        waiting.join(timeout=20)
        elapsed = time.monotonic() - started
    assert not waiting.is_alive()
    np.testing.assert_array_equal(result["scores"], [0.45, np.nan, 0.65, 0.7, 0.05])
    assert 1.0 <= elapsed < 20


def test_a_dead_server_among_several_is_skipped_without_waiting():
    backends = [InstructionScoreBackend(), InstructionScoreBackend()]
    slow_retry = RetryPolicy(deadline_s=60, initial_backoff_s=5.0, max_backoff_s=5.0, server_cooldown_s=60)
    with reward_app_server([backends[0]]) as live:
        with reward_app_server([backends[1]]) as dying:
            client = RewardClient(f"{dying},{live}", chunk_size=1, retry=slow_retry)
            np.testing.assert_array_equal(client.score(_samples([0.1, 0.2])), [0.1, 0.2])
            assert backends[1].batches  # both servers were used while both were up
        taken_before = sum(backends[0].batches)
        started = time.monotonic()
        wanted = [round(0.1 * k, 1) for k in range(8)]
        for _ in range(3):
            np.testing.assert_array_equal(client.score(_samples(wanted)), wanted)
        elapsed = time.monotonic() - started
    assert elapsed < slow_retry.initial_backoff_s  # no backoff pause: chunks went to the live one
    assert sum(backends[0].batches) - taken_before == 3 * len(wanted)


def test_the_trainer_logs_the_judge_templates_the_server_names(tmp_path) -> None:
    """Both questions (pointwise and pairwise) of the judge behind a per-batch reward and behind
    the pairwise group reward go into the run's config."""
    template_file = tmp_path / "my_judge_prompt.txt"
    template_file.write_text("Task: {prompt}\nMust hold: {requirement}\nOne digit.", encoding="utf-8")
    pairwise_file = tmp_path / "my_pairwise_question.txt"
    pairwise_file.write_text("Task: {prompt}\nWhich edit, 1 or 2?", encoding="utf-8")
    backend = InstructionScoreBackend()
    backend.template = template_id_for_file(template_file)
    backend.pairwise_template = pairwise_template_id_for_file(pairwise_file)
    expected = judge_prompt_info(backend.template, backend.pairwise_template)
    assert expected["pairwise_template"] == "file:my_pairwise_question.txt"
    with reward_app_server([backend]) as url:
        client = RewardClient(url)
        reward = CombinedReward({"judge": 1.0}, {"judge": client.score})
        assert judge_templates(reward) == {"judge_templates": {"judge": expected}}
        group = {"pairwise_mllm": (1.0, PairwiseJudgeReward(client.compare))}
        assert judge_templates(CombinedReward({}, {}), group_rewards=group) == {
            "judge_templates": {"pairwise_mllm": expected}
        }
        assert judge_templates(CombinedReward({"rule": 1.0}, {"rule": lambda s: [0.0] * len(s)})) == {}
        client.close()


class _HangsOnceBackend(InstructionScoreBackend):
    """A judge replica that is "killed at the batch deadline" the first ``times`` times it is handed
    a batch (it raises ReplicaHung, as a ReplicaProcess does), then scores normally."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def score_batch(self, items):
        from reward_server.batcher import ReplicaHung

        with self._lock:
            hang, self.times = self.times > 0, self.times - 1
        if hang:
            raise ReplicaHung(
                f"replica did not answer this batch of {len(items)} within the 1 s batch deadline"
            )
        return super().score_batch(items)


def test_items_of_a_hung_batch_are_sent_again_and_scored():
    """The server answers the hung batch's items with a retryable error; the client posts only those
    again and every score arrives, aligned, none NaN (a final error stays NaN, not retried)."""
    backend = _HangsOnceBackend(times=1)
    retry = RetryPolicy(deadline_s=20, initial_backoff_s=0.05, max_backoff_s=0.2)
    with reward_app_server([backend], max_batch_size=8) as url:
        wanted = [0.1, 0.2, None, 0.4]
        scores = RewardClient(url, chunk_size=4, retry=retry).score(_samples(wanted))
    np.testing.assert_array_equal(scores, [0.1, 0.2, np.nan, 0.4])
    # The hung batch (all 4, the "fail" item too, so all retryable) raised before it was counted;
    # the second request held the 4 again and was scored: one counted batch, no further round.
    assert backend.batches == [4]


def test_a_replica_that_hangs_on_every_try_leaves_nan_at_the_deadline():
    backend = _HangsOnceBackend(times=10_000)
    retry = RetryPolicy(deadline_s=1.0, initial_backoff_s=0.05, max_backoff_s=0.1, request_timeout_s=0.5)
    with reward_app_server([backend]) as url:
        started = time.monotonic()
        scores = RewardClient(url, chunk_size=2, retry=retry).score(_samples([0.3, 0.6]))
        elapsed = time.monotonic() - started
    assert np.isnan(scores).all()
    assert 1.0 <= elapsed < 5.0


class _SlowBackend(InstructionScoreBackend):
    """A judge that takes ``delay_s`` per engine batch (slower than training)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def score_batch(self, items):
        time.sleep(self.delay_s)
        return super().score_batch(items)


def _scorer_for(url: str):
    from edit_r1.rewards import AsyncRewardScorer

    client = RewardClient(url, chunk_size=4, retry=RetryPolicy(deadline_s=120, request_timeout_s=60))
    return AsyncRewardScorer(
        CombinedReward({"mllm_score_continue": 1.0}, {"mllm_score_continue": client.score})
    ), client


def test_the_trainers_wait_rides_out_a_short_stall():
    """A judge 0.5 s per batch, three batches queued behind each other (1.5 s in all), a 20 s total
    wait: every reward arrives, in order."""
    with reward_app_server([_SlowBackend(0.5)], max_batch_size=4) as url:
        scorer, client = _scorer_for(url)
        futures = [scorer.submit(_samples([0.1 * k, 0.2])) for k in range(1, 4)]
        started = time.monotonic()
        outputs = scorer.wait(futures, deadline_s=20)
        took = time.monotonic() - started
        scorer.close()
        client.close()
    got = [value for output in outputs for value in output.total.tolist()]
    assert got == pytest.approx([value for k in range(1, 4) for value in (0.1 * k, 0.2)])
    assert 1.0 <= took < 20


def test_a_judge_slower_than_training_for_too_long_stops_the_wait_naming_the_server():
    """A judge 30 s per batch against a 2 s total wait: the wait ends at 2 s with an error naming
    the server, the reward and how much was still unscored."""
    from edit_r1.rewards.combine import RewardWaitTimeout

    with reward_app_server([_SlowBackend(30.0)], max_batch_size=4) as url:
        scorer, client = _scorer_for(url)
        futures = [scorer.submit(_samples([0.3, 0.4, 0.5])) for _ in range(2)]
        started = time.monotonic()
        with pytest.raises(RewardWaitTimeout) as raised:
            scorer.wait(futures, deadline_s=2.0)
        took = time.monotonic() - started
        scorer.close(wait=False)
        client.close()
    message = str(raised.value)
    assert message.startswith(
        f"waited 2 s (reward_client.wait_deadline_s) for this epoch's rewards from the reward server(s) {url}"
    )
    assert "(reward mllm_score_continue): 0 of 2 batches scored, 2 (6 edits) not yet" in message
    assert 2.0 <= took < 4.0
