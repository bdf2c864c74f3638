"""Contract tests of the vLLM and OpenAI-compatible backends against a fake vLLM (``fake_vllm.py``).

The fake behaves like vLLM 0.10.2 and 0.33.0 in each ``logprobs_mode``; the offline fake is put into
``sys.modules["vllm"]`` so the backend's own ``LLM(...)``/``SamplingParams(...)`` calls are the ones
checked, and the OpenAI fake is a real HTTP server on 127.0.0.1. Each backend must score exactly the
softmax over the six digit logits, or refuse the item with an error, whatever the version and mode.
The real engine runs in ``tests/server/test_real_vllm.py`` (``make test-vllm``).
"""

from __future__ import annotations

import base64

import pytest
from fake_vllm import MODES, VERSIONS, FakeJudge, FakeVLLM, FakeVLLMServer, is_exact
from PIL import Image
from reward_helpers import png_bytes, random_image, serve_in_thread

from reward_server.backends import BackendOptions
from reward_server.backends.openai_backend import OpenAIBackend
from reward_server.backends.vllm_backend import VLLMBackend
from reward_server.batcher import score_isolating_failures
from reward_server.images import decode_item
from reward_server.protocol import Limits, RawItem
from reward_server.scoring import MissingAnswerError

NEUTRAL = {
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def _thin_image() -> Image.Image:
    """402 x 2 pixels: an aspect ratio Qwen-VL's smart_resize refuses (the real engine does too)."""
    return Image.new("RGB", (402, 2), (200, 30, 30))


def _items(n: int, thin: set[int] = frozenset()):
    raws = [
        RawItem(
            png_bytes(_thin_image() if i in thin else random_image(i, size=32)),
            png_bytes(random_image(50)),
            f"edit number {i}",
            "r" * (i % 2),
        )
        for i in range(n)
    ]
    return [decode_item(raw, i, Limits()) for i, raw in enumerate(raws)]


def _conversations(fake: FakeVLLM) -> list:
    return [conversation for messages, _ in fake.chat_calls for conversation in messages]


# ---- the offline vLLM backend ------------------------------------------------------------------
@pytest.fixture
def fake_vllm(monkeypatch, request):
    fake = FakeVLLM(version=getattr(request, "param", "0.33.0"))
    monkeypatch.setitem(__import__("sys").modules, "vllm", fake.module())
    return fake


def _vllm_backend(mode: str = "processed_logprobs") -> VLLMBackend:
    return VLLMBackend(BackendOptions(model="judge", tensor_parallel_size=2, logprobs_mode=mode))


@pytest.mark.parametrize("fake_vllm", VERSIONS, indirect=True)
def test_vllm_backend_builds_the_engine_and_requests_the_digits(fake_vllm):
    backend = _vllm_backend()
    (kwargs,) = fake_vllm.constructed
    assert kwargs == {
        "model": "judge",
        "tensor_parallel_size": 2,
        "dtype": "float32",  # "auto" on a machine without CUDA: chosen here, never vLLM's default
        # the most images an item may carry: 1 + 7 more sources + the edit (a pair: 3)
        "limit_mm_per_prompt": {"image": 9, "video": 0},
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": 20,
        "gpu_memory_utilization": 0.9,
        "enforce_eager": False,
    }
    assert backend.engine_info["dtype"] == "float32" and backend.engine_info["engine"] == "vllm"
    items = _items(3)
    backend.score_batch(items)
    ((conversations, params),) = fake_vllm.chat_calls
    digit_ids = list(fake_vllm.judge.digit_ids)
    expected = {**NEUTRAL, "max_tokens": 1, "allowed_token_ids": digit_ids}
    if fake_vllm.version == "0.10.2":  # no logprob_token_ids: the top 6 of the masked distribution
        assert not backend.explicit_digit_logprobs
        expected["logprobs"] = 6
    else:
        assert backend.explicit_digit_logprobs
        expected["logprob_token_ids"] = digit_ids
    assert {k: v for k, v in params.as_dict().items() if k in expected} == expected
    for item, conversation in zip(items, conversations, strict=True):
        (turn,) = conversation
        source, edited, text = turn["content"]
        assert turn["role"] == "user" and item.instruction in text["text"]
        assert base64.b64decode(source["image_url"]["url"].split(",", 1)[1]) == item.raw.source_image
        assert base64.b64decode(edited["image_url"]["url"].split(",", 1)[1]) == item.raw.image


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fake_vllm", VERSIONS, indirect=True)
def test_vllm_backend_scores_the_digit_softmax_or_refuses(fake_vllm, mode):
    """Exact in every mode where the engine can return all six digits; an error, never a number, elsewhere."""
    results = _vllm_backend(mode).score_batch(_items(4))
    truths = [fake_vllm.judge.exact_digit_softmax(c) for c in _conversations(fake_vllm)]
    if fake_vllm.version == "0.10.2" and mode.startswith("raw"):
        # The raw top 6 of the vocabulary: no digit is among them; the backend must not make a score up.
        assert all(isinstance(r, MissingAnswerError) for r in results), results
        assert "processed_logprobs" in str(results[0]) and "logprob_token_ids" in str(results[0])
    else:
        assert all(is_exact(r, t) for r, t in zip(results, truths, strict=True)), (results, truths)


def test_vllm_backend_a_render_error_fails_the_batch_and_the_items_are_rescored_alone(fake_vllm):
    """``LLM.chat`` renders every conversation first: one image vLLM refuses fails the whole call."""
    backend = _vllm_backend()
    items = _items(4, thin={2})
    with pytest.raises(ValueError, match="Failed to apply Qwen2_5_VLProcessor"):
        backend.score_batch(items)
    fake_vllm.chat_calls.clear()
    results = score_isolating_failures(backend, items)
    assert len(fake_vllm.chat_calls) == 1 + len(items)  # the batch, then each item alone
    assert results[2][0] is None and "size=402x2" in results[2][1]
    for index in (0, 1, 3):
        conversation = fake_vllm.chat_calls[1 + index][0][0]
        assert is_exact(results[index][0], fake_vllm.judge.exact_digit_softmax(conversation))


def test_vllm_fake_enforces_the_engine_limits(fake_vllm):
    """The fake refuses what vLLM refuses, so a backend that asked for more would fail these tests."""
    vllm = __import__("sys").modules["vllm"]
    llm = vllm.LLM(model="judge", limit_mm_per_prompt={"image": 1})
    conversation = _vllm_conversation(_items(1)[0])
    with pytest.raises(ValueError, match="At most 1 image"):
        llm.chat([conversation], sampling_params=vllm.SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="max allowed: 20"):
        llm.chat([conversation], sampling_params=vllm.SamplingParams(max_tokens=1, logprobs=21))


def _vllm_conversation(item):
    from reward_server.backends.vllm_backend import conversation

    return conversation(item, "edit_r1_v1")


def test_vllm_backend_missing_logprobs_fail_only_that_item(fake_vllm):
    fake_vllm.drop_logprobs_for = {1}
    results = _vllm_backend().score_batch(_items(3))
    assert isinstance(results[1], ValueError) and "no logprobs" in str(results[1])
    assert all(isinstance(r, float) for r in (results[0], results[2]))


def test_vllm_backend_refuses_a_tokenizer_that_splits_digits(fake_vllm):
    fake_vllm.judge.encode = lambda text, add_special_tokens=False: [1, 2] if text == "4" else [15]
    with pytest.raises(ValueError, match="'4'"):
        _vllm_backend()


# ---- the OpenAI-compatible backend against a fake ``vllm serve`` --------------------------------
def _openai_scores(server: FakeVLLMServer, items, **options) -> list:
    with serve_in_thread(server.app()) as url:
        backend = OpenAIBackend(BackendOptions(model="judge", base_url=f"{url}/v1", **options))
        try:
            return backend.score_batch(items)
        finally:
            backend.close()


def _truths(server: FakeVLLMServer, items) -> list:
    """The exact digit softmax of each item's request (requests arrive concurrently, in any order)."""
    by_text = {body["messages"][0]["content"][2]["text"]: body["messages"] for body in server.bodies}
    return [
        server.judge.exact_digit_softmax(next(m for text, m in by_text.items() if item.instruction in text))
        for item in items
    ]


@pytest.mark.parametrize("mode", MODES)
def test_openai_backend_requests_the_digit_ids_and_scores_exactly(mode):
    """vLLM 0.33 returns exactly the requested ids; the server's generation_config must not leak in."""
    server = FakeVLLMServer(version="0.33.0", mode=mode)
    items = _items(3)
    results = _openai_scores(server, items, upstream_api_key="up")
    assert all(is_exact(r, t) for r, t in zip(results, _truths(server, items), strict=True)), results
    body = server.bodies[0]
    assert body["logprob_token_ids"] == list(server.judge.digit_ids)  # looked up through /tokenize
    assert body["allowed_token_ids"] == list(server.judge.digit_ids)
    assert {k: body[k] for k in NEUTRAL} == NEUTRAL
    assert body["max_completion_tokens"] == 1 and "max_tokens" not in body
    assert body["logprobs"] is True and body["return_tokens_as_token_ids"] is True
    assert [part["type"] for part in body["messages"][0]["content"]] == ["image_url", "image_url", "text"]
    assert server.headers[0]["Authorization"] == "Bearer up"


def test_openai_backend_on_a_server_without_logprob_token_ids():
    """vLLM 0.10.2 ignores the field: exact with processed logprobs, refused when the top 20 lacks digits."""
    processed = FakeVLLMServer(version="0.10.2", mode="processed_logprobs")
    items = _items(3)
    results = _openai_scores(processed, items)
    assert all(is_exact(r, t) for r, t in zip(results, _truths(processed, items), strict=True)), results

    raw = FakeVLLMServer(version="0.10.2", mode="raw_logprobs")
    results = _openai_scores(raw, _items(3))
    for result in results:
        assert isinstance(result, MissingAnswerError), result
        assert "--logprobs-mode processed_logprobs" in str(result)
    # Each response did carry some digits, not all six: a partial top-k is never scored.
    for response in raw.responses:
        listed = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        digits = {entry["token"] for entry in listed} & {f"token_id:{t}" for t in raw.judge.digit_ids}
        assert 0 < len(digits) < 6, listed


def test_openai_backend_reads_token_ids_from_a_local_tokenizer_without_tokenize(tiny_judge):
    from transformers import AutoTokenizer

    from reward_server.scoring import digit_token_ids

    ids = tuple(digit_token_ids(AutoTokenizer.from_pretrained(tiny_judge)))
    judge = FakeJudge(digit_ids=ids, vocab_size=max(ids) + 40)
    without = FakeVLLMServer(version="0.33.0", judge=judge, tokenize_endpoint=False)
    refused = _openai_scores(without, _items(1))
    assert isinstance(refused[0], RuntimeError) and "--tokenizer" in str(refused[0])
    items = _items(2)
    results = _openai_scores(without, items, tokenizer=str(tiny_judge))
    assert without.bodies[0]["logprob_token_ids"] == list(ids)
    assert all(is_exact(r, t) for r, t in zip(results, _truths(without, items), strict=True)), results


def test_openai_backend_reports_upstream_failures_per_item():
    server = FakeVLLMServer(version="0.33.0", max_logprobs=20)
    results = _openai_scores(server, _items(3, thin={1}))
    assert isinstance(results[1], RuntimeError) and "HTTP 400" in str(results[1])
    assert isinstance(results[0], float) and isinstance(results[2], float)


def test_the_command_line_reaches_the_backend_options():
    from reward_server.cli import build_parser, options_from_args

    args = build_parser().parse_args(
        ["--model", "judge", "--vllm-logprobs-mode", "raw_logprobs", "--tokenizer", "/judge/tok"]
    )
    options = options_from_args(args)
    assert (options.logprobs_mode, options.tokenizer) == ("raw_logprobs", "/judge/tok")
    assert (
        options_from_args(build_parser().parse_args(["--model", "j"])).logprobs_mode == "processed_logprobs"
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "j", "--vllm-logprobs-mode", "sampled"])


# ---- pairwise items (protocol 2) ---------------------------------------------------------------
def _pair_items(n: int):
    raws = [
        RawItem(
            png_bytes(random_image(i, size=32)),
            png_bytes(random_image(50)),
            f"compare number {i}",
            "",
            "pairwise",
            png_bytes(random_image(200 + i, size=32)),
        )
        for i in range(n)
    ]
    return [decode_item(raw, i, Limits()) for i, raw in enumerate(raws)]


def _check_pairwise(results, items, conversations, judge) -> None:
    """Pointwise items: the digit softmax; pairwise: p1 / (p1 + p2) of the same digit softmax, three images."""
    for item, result, conversation in zip(items, results, conversations, strict=True):
        probabilities = judge.exact_digit_softmax(conversation)
        if not item.pairwise:
            assert is_exact(result, probabilities), (result, probabilities)
            continue
        parts = conversation[0]["content"]
        images = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts[:-1]]
        assert images == [item.raw.source_image, item.raw.image, item.raw.image_b]
        assert "Answer 1 for edit 1 or 2 for edit 2" in parts[-1]["text"]
        expected = probabilities[1] / (probabilities[1] + probabilities[2])
        assert isinstance(result, float) and abs(result - expected) < 1e-6, (result, expected)


@pytest.mark.parametrize("fake_vllm", VERSIONS, indirect=True)
def test_vllm_backend_scores_pairwise_items_from_the_two_answer_tokens(fake_vllm):
    items = [*_items(2), *_pair_items(2)]
    results = _vllm_backend().score_batch(items)
    _check_pairwise(results, items, _conversations(fake_vllm), fake_vllm.judge)


@pytest.mark.parametrize("mode", ("raw_logprobs", "processed_logprobs"))
def test_openai_backend_scores_pairwise_items_from_the_two_answer_tokens(mode):
    server = FakeVLLMServer(version="0.33.0", mode=mode)
    items = [*_items(1), *_pair_items(2)]
    results = _openai_scores(server, items)
    by_text = {body["messages"][0]["content"][-1]["text"]: body["messages"] for body in server.bodies}
    conversations = [next(m for text, m in by_text.items() if item.instruction in text) for item in items]
    _check_pairwise(results, items, conversations, server.judge)


def test_vllm_and_openai_messages_carry_every_source_image():
    from reward_server.backends.openai_backend import chat_request

    raw = RawItem(png_bytes(random_image(1)), png_bytes(random_image(2)), "put both on a table", "",
                  more_source_images=(png_bytes(random_image(3)),))  # fmt: skip
    item = decode_item(raw, 0, Limits())
    for messages in (
        _vllm_conversation(item),
        chat_request("judge", item, "edit_r1_v1", range(6))["messages"],
    ):
        content = messages[0]["content"]
        assert [part["type"] for part in content] == ["image_url"] * 3 + ["text"]
        urls = [part["image_url"]["url"] for part in content[:3]]
        assert len(set(urls)) == 3 and urls[2].endswith(base64.b64encode(raw.image).decode())
        assert "Picture 1 to Picture 2" in content[3]["text"]


def test_vllm_and_openai_backends_ask_the_pairwise_question_of_the_options(fake_vllm, tmp_path):
    """``BackendOptions.pairwise_template`` (``--pairwise-template-file``) is the text both remote-style
    backends send for a pairwise item; pointwise items keep the pointwise template."""
    from reward_server.prompt_template import pairwise_template_id_for_file, render_prompt

    question = tmp_path / "pair.txt"
    question.write_text("Pick one for {prompt} [{requirement}]: 1 or 2?", encoding="utf-8")
    pairwise = pairwise_template_id_for_file(question)
    items = [*_items(1), *_pair_items(1)]
    expected = [render_prompt("edit number 0", ""), "Pick one for compare number 0 []: 1 or 2?"]
    vllm = VLLMBackend(BackendOptions(model="judge", pairwise_template=pairwise))
    assert all(isinstance(result, float) for result in vllm.score_batch(items))
    assert [c[0]["content"][-1]["text"] for c in _conversations(fake_vllm)] == expected
    server = FakeVLLMServer(version="0.33.0", mode="processed_logprobs")
    assert all(
        isinstance(result, float) for result in _openai_scores(server, items, pairwise_template=pairwise)
    )
    assert sorted(body["messages"][0]["content"][-1]["text"] for body in server.bodies) == sorted(expected)
