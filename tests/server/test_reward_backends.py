"""vLLM backend contract tests (fake engine with vLLM's signature and outputs), the OpenAI backend
against recorded response shapes, and the real vLLM test (marked ``vllm``, skipped without vLLM/GPU)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass, field

import pytest
from flask import Flask, jsonify, request
from reward_helpers import png_bytes, random_image, serve_in_thread

from reward_server.backends import BackendOptions
from reward_server.backends.openai_backend import OpenAIBackend
from reward_server.backends.vllm_backend import VLLMBackend
from reward_server.images import decode_item
from reward_server.protocol import Limits, RawItem

DIGIT_IDS = [15, 16, 17, 18, 19, 20]
VOCAB = 64


# ---- a fake vLLM engine: same call signature and output structure as vllm.LLM.chat -------------
@dataclass
class Logprob:  # vllm.sequence.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = "length"


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: None
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class SamplingParams:  # the vllm.SamplingParams fields the backend sets
    max_tokens: int = 16
    temperature: float = 1.0
    logprobs: int | None = None
    allowed_token_ids: list[int] | None = None


class FakeTokenizer:
    def __init__(self, split_digit: str | None = None):
        self.split_digit = split_digit

    def encode(self, text, add_special_tokens=False):
        if text == self.split_digit:
            return [1, 2]
        return [DIGIT_IDS[int(text)]]


def fake_logits(conversation) -> list[float]:
    """Deterministic per-conversation logits over a small vocabulary (a stand-in for the model)."""
    seed = hashlib.sha256(repr(conversation).encode()).digest()
    return [(seed[i % 32] + 7 * i) % 23 / 4.0 for i in range(VOCAB)]


@dataclass
class FakeLLM:
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    calls: list = field(default_factory=list)
    drop_logprobs_for: set = field(default_factory=set)

    def get_tokenizer(self):
        return self.tokenizer

    def chat(self, messages, sampling_params=None, use_tqdm=True, lora_request=None, chat_template=None,
             chat_template_content_format="auto", add_generation_prompt=True, continue_final_message=False,
             tools=None, chat_template_kwargs=None, mm_processor_kwargs=None):  # fmt: skip
        self.calls.append((messages, sampling_params, use_tqdm))
        outputs = []
        for index, conversation in enumerate(messages):
            logits = fake_logits(conversation)
            allowed = sampling_params.allowed_token_ids or range(VOCAB)
            # processed_logprobs: log-softmax after the allowed-token mask, top-k returned.
            top = max(logits[t] for t in allowed)
            log_z = top + math.log(sum(math.exp(logits[t] - top) for t in allowed))
            ranked = sorted(allowed, key=lambda t: -logits[t])[: sampling_params.logprobs]
            entry = {t: Logprob(logits[t] - log_z, rank + 1) for rank, t in enumerate(ranked)}
            logprobs = None if index in self.drop_logprobs_for else [entry]
            completion = CompletionOutput(0, str(ranked[0]), [ranked[0]], None, logprobs)
            outputs.append(RequestOutput(str(index), None, [1, 2, 3], None, [completion]))
        return outputs


def _items(n):
    raws = [
        RawItem(png_bytes(random_image(i)), png_bytes(random_image(50)), f"edit number {i}", "r" * (i % 2))
        for i in range(n)
    ]
    return [decode_item(raw, i, Limits()) for i, raw in enumerate(raws)]


def _vllm_backend(engine):
    return VLLMBackend(
        BackendOptions(model="judge", tensor_parallel_size=2), lambda options: engine, SamplingParams
    )


def test_vllm_backend_one_chat_call_per_batch_with_digit_restricted_logprobs():
    engine = FakeLLM()
    items = _items(5)
    scores = _vllm_backend(engine).score_batch(items)
    assert len(engine.calls) == 1
    conversations, params, use_tqdm = engine.calls[0]
    assert params == SamplingParams(max_tokens=1, temperature=0.0, logprobs=6, allowed_token_ids=DIGIT_IDS)
    assert use_tqdm is False and len(conversations) == 5
    for item, conversation in zip(items, conversations, strict=True):
        (turn,) = conversation
        source, edited, text = turn["content"]
        assert turn["role"] == "user" and text["type"] == "text" and item.instruction in text["text"]
        assert base64.b64decode(source["image_url"]["url"].split(",", 1)[1]) == item.raw.source_image
        assert base64.b64decode(edited["image_url"]["url"].split(",", 1)[1]) == item.raw.image
        assert edited["image_url"]["url"].startswith("data:image/png;base64,")
    for score, conversation in zip(scores, conversations, strict=True):
        logits = fake_logits(conversation)
        weights = [math.exp(logits[t]) for t in DIGIT_IDS]
        assert score == pytest.approx(sum(k * w for k, w in enumerate(weights)) / sum(weights) / 5, abs=1e-12)


def test_vllm_backend_missing_logprobs_fail_only_that_item():
    results = _vllm_backend(FakeLLM(drop_logprobs_for={1})).score_batch(_items(3))
    assert isinstance(results[1], ValueError) and "no logprobs" in str(results[1])
    assert all(isinstance(r, float) for r in (results[0], results[2]))


def test_vllm_backend_refuses_a_tokenizer_that_splits_digits():
    with pytest.raises(ValueError, match="'4'"):
        _vllm_backend(FakeLLM(tokenizer=FakeTokenizer(split_digit="4")))


# ---- OpenAI-compatible backend against a recorded response shape -------------------------------
def recorded_chat_completion(top):
    """The shape vLLM's ``/v1/chat/completions`` returns with ``logprobs=true, top_logprobs=k``."""
    return {
        "id": "chatcmpl-0f6c",
        "object": "chat.completion",
        "created": 1760000000,
        "model": "Qwen/Qwen2.5-VL-32B-Instruct",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": top[0][0], "tool_calls": []},
                "logprobs": {
                    "content": [
                        {
                            "token": top[0][0],
                            "logprob": top[0][1],
                            "bytes": list(top[0][0].encode()),
                            "top_logprobs": [
                                {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top
                            ],
                        }
                    ]
                },
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 812, "total_tokens": 813, "completion_tokens": 1},
    }


TOP = [("4", -0.3), ("3", -1.6), ("5", -2.4), ("The", -4.0), ("2", -5.1), (" 4", -6.0)]


def _upstream(responses):
    app = Flask("fake_upstream")
    seen = []

    @app.post("/v1/chat/completions")
    def chat():
        body = request.get_json()
        seen.append((body, request.headers.get("Authorization")))
        instruction = body["messages"][0]["content"][2]["text"]
        for key, (status, payload) in responses.items():
            if key in instruction:
                return jsonify(payload), status
        raise AssertionError("unexpected request")

    return app, seen


def test_openai_backend_scores_from_top_logprobs():
    responses = {
        "number 0": (200, recorded_chat_completion(TOP)),
        "number 1": (200, recorded_chat_completion([("The", -0.1), ("A", -2.0)])),
        "number 2": (500, {"error": "engine died"}),
    }
    app, seen = _upstream(responses)
    with serve_in_thread(app) as url:
        options = BackendOptions(
            model="Qwen/Qwen2.5-VL-32B-Instruct", base_url=f"{url}/v1", upstream_api_key="up"
        )
        results = OpenAIBackend(options).score_batch(_items(3))
    digits = {t: lp for t, lp in TOP if t in "012345" and len(t) == 1}
    expected = (
        sum(int(t) * math.exp(lp) for t, lp in digits.items())
        / sum(math.exp(lp) for lp in digits.values())
        / 5
    )
    assert results[0] == pytest.approx(expected, abs=1e-12)
    assert isinstance(results[1], ValueError) and "no probability" in str(results[1])
    assert isinstance(results[2], RuntimeError) and "HTTP 500" in str(results[2])
    body, auth = seen[0]
    assert auth == "Bearer up"
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["model"] == "Qwen/Qwen2.5-VL-32B-Instruct"
    assert [part["type"] for part in body["messages"][0]["content"]] == ["image_url", "image_url", "text"]


# ---- the real engine, where it exists ----------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_real_vllm_matches_transformers(tiny_kit):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from reward_server.backends.transformers_backend import TransformersBackend

    model = os.environ.get("EDIT_R1_VLLM_JUDGE", str(tiny_kit / "judge_qwen2_5_vl"))
    items = _items(4)
    engine = VLLMBackend(BackendOptions(model=model, gpu_memory_utilization=0.3, max_model_len=4096))
    reference = TransformersBackend(BackendOptions(model=model, dtype="float32")).score_batch(items)
    assert engine.score_batch(items) == pytest.approx(reference, abs=2e-2)
