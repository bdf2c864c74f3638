"""The OpenAI-compatible backend: score with a remote ``/v1/chat/completions`` server.

Meant for ``vllm serve JUDGE --tensor-parallel-size 2 --data-parallel-size 4`` (vLLM scales the
judge across GPUs and nodes itself) or any server that returns ``top_logprobs``. Each item is one
chat request with ``max_tokens=1``, ``logprobs=true`` and ``top_logprobs`` (20 by default, vLLM's
usual cap); the upstream server batches concurrent requests. The score is the SPEC expectation
over the digits found among the top tokens, renormalised over those digits; an item whose top
tokens contain no digit gets an error, never a number.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from reward_server.backends.base import BackendOptions, ItemResult
from reward_server.images import JudgeItem, data_uri
from reward_server.prompt_template import chat_messages, render_prompt
from reward_server.scoring import DIGITS, expected_score_from_token_map

TOP_LOGPROBS = 20


def chat_request(model: str, item: JudgeItem, template: str) -> dict:
    """The ``/v1/chat/completions`` body for one item (images as data URIs, one generated token)."""
    text = render_prompt(item.instruction, item.requirement, template)
    source = {"type": "image_url", "image_url": {"url": data_uri(item.raw.source_image)}}
    edited = {"type": "image_url", "image_url": {"url": data_uri(item.raw.image)}}
    return {
        "model": model,
        "messages": chat_messages(text, source, edited),
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
    }


def score_from_chat_response(response: Mapping) -> float:
    """Expected score from ``choices[0].logprobs.content[0].top_logprobs`` of a chat completion."""
    try:
        first = response["choices"][0]["logprobs"]["content"][0]
        candidates = first["top_logprobs"]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(
            f"the upstream response has no top_logprobs for the first token ({error!r})"
        ) from None
    logprob_by_token: dict[str, float] = {}
    for candidate in candidates:
        token = candidate.get("token")
        # Keep the best entry per text: some servers list byte-level variants of one digit.
        if token in DIGITS and token not in logprob_by_token:
            logprob_by_token[token] = float(candidate["logprob"])
    return expected_score_from_token_map(logprob_by_token, DIGITS)


class OpenAIBackend:
    """Scores through an OpenAI-compatible server at ``options.base_url`` (e.g. http://host:8000/v1)."""

    name = "openai"

    def __init__(self, options: BackendOptions) -> None:
        if not options.base_url:
            raise ValueError("the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1")
        self.model, self.template = options.model, options.template
        self.url = options.base_url.rstrip("/") + "/chat/completions"
        self.timeout_s = options.request_timeout_s
        self.headers = {"Content-Type": "application/json"}
        if options.upstream_api_key:
            self.headers["Authorization"] = f"Bearer {options.upstream_api_key}"
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, options.max_batch_size), thread_name_prefix="openai"
        )

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:500].decode(errors="replace")
            raise RuntimeError(f"upstream {self.url} answered HTTP {error.code}: {detail}") from None

    def score_one(self, item: JudgeItem) -> ItemResult:
        try:
            return score_from_chat_response(self._post(chat_request(self.model, item, self.template)))
        except Exception as error:  # noqa: BLE001 - reported as this item's error
            return error

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        """Concurrent requests, one per item; the upstream server does the batching."""
        return list(self._pool.map(self.score_one, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
