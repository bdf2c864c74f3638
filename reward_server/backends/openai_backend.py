"""The OpenAI-compatible backend: score with a remote ``/v1/chat/completions`` server (``vllm serve``).

Each item is one chat request for one generated token; the upstream server batches concurrent
requests and scales the judge itself (``--data-parallel-size``, ``--tensor-parallel-size``). Written
against vLLM's chat API, read in the source of 0.10.2 and 0.33.0 (``docs/reward-server.md``):

- ``logprob_token_ids`` = the six digit token ids, so the server returns exactly their logprobs
  whatever their rank and whatever its ``--logprobs-mode``. The ids come from the server's own
  ``/tokenize`` endpoint, or from ``--tokenizer`` (a local copy of the judge's tokenizer).
- ``top_logprobs=20`` as well: a server without ``logprob_token_ids`` (vLLM 0.10.2 ignores unknown
  fields with a warning) answers with its top 20 instead, which holds all six digits when it runs
  with ``--logprobs-mode processed_logprobs`` (``allowed_token_ids`` masks the rest). Otherwise some
  digit may be missing, and the item is refused with an error naming the cause: a missing digit is
  never counted as probability 0.
- ``return_tokens_as_token_ids`` so answers are keyed by token id (``"token_id:N"``), not by text.
- every sampling field explicitly: ``vllm serve`` fills unset ones from the model's
  ``generation_config`` (Qwen-VL checkpoints set a repetition penalty, which changes processed
  logprobs), and ``max_completion_tokens`` (``max_tokens`` is deprecated).

The score is the softmax over the six digit logprobs (:func:`reward_server.scoring.answer_probabilities`).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from reward_server.backends.base import NEUTRAL_SAMPLING, BackendOptions, ItemResult
from reward_server.images import JudgeItem, data_uri, judge_images
from reward_server.prompt_template import AUTO, chat_messages, render_item_prompt
from reward_server.scoring import DIGITS, MissingAnswerError, digit_token_ids, item_score_from_token_map

TOP_LOGPROBS = 20  # vLLM's default --max-logprobs and the OpenAI API's maximum
TOKEN_ID_PREFIX = "token_id:"


def chat_request(
    model: str, item: JudgeItem, template: str, digit_ids: Sequence[int], pairwise_template: str | None = AUTO
) -> dict:
    """The ``/v1/chat/completions`` body for one item: one digit token, its six logprobs requested
    (a pairwise item, asked with ``pairwise_template``, reads two of them, "1" and "2")."""
    parts = [{"type": "image_url", "image_url": {"url": data_uri(data)}} for data in judge_images(item)[1]]
    return {
        "model": model,
        "messages": chat_messages(render_item_prompt(item, template, pairwise_template), *parts),
        "max_completion_tokens": 1,
        "n": 1,
        **NEUTRAL_SAMPLING,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
        "logprob_token_ids": list(digit_ids),
        "allowed_token_ids": list(digit_ids),
        "return_tokens_as_token_ids": True,
    }


def _token_key(token: str, text_to_id: Mapping[str, int]) -> int | None:
    if token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX) :])
        except ValueError:
            return None
    return text_to_id.get(token)  # a server that ignored return_tokens_as_token_ids


def score_from_chat_response(response: Mapping, digit_ids: Sequence[int], pairwise: bool = False) -> float:
    """Score from ``choices[0].logprobs.content[0].top_logprobs``: the expected rating (all six digits
    needed) or, for a pairwise item, the preference for edit 1 ("1" and "2" needed)."""
    try:
        candidates = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        text_to_id = dict(zip(DIGITS, digit_ids, strict=True))
        logprob_by_id: dict[int, float] = {}
        for candidate in candidates:
            key = _token_key(str(candidate["token"]), text_to_id)
            if key is not None and key not in logprob_by_id:
                logprob_by_id[key] = float(candidate["logprob"])
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ValueError(
            f"the upstream response has no top_logprobs for the first token ({error!r})"
        ) from None
    try:
        return item_score_from_token_map(logprob_by_id, list(digit_ids), pairwise)
    except MissingAnswerError as error:
        raise MissingAnswerError(
            f"{error}: the upstream ignored logprob_token_ids (a vLLM without it, e.g. 0.10.2) and its "
            f"top {TOP_LOGPROBS} did not hold every digit; start `vllm serve` with --logprobs-mode "
            "processed_logprobs, or use a vLLM that has logprob_token_ids (0.33.0 does)"
        ) from None


class OpenAIBackend:
    """Scores through an OpenAI-compatible server at ``options.base_url`` (e.g. http://host:8000/v1)."""

    name = "openai"

    def __init__(self, options: BackendOptions) -> None:
        if not options.base_url:
            raise ValueError("the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1")
        self.model, self.template = options.model, options.template
        self.pairwise_template = options.pairwise_template
        base = options.base_url.rstrip("/")
        self.url = base + "/chat/completions"
        # vLLM serves /tokenize at the root, beside /v1.
        self.tokenize_url = (base[: -len("/v1")] if base.endswith("/v1") else base) + "/tokenize"
        self.tokenizer_path = options.tokenizer
        self.timeout_s = options.request_timeout_s
        self.headers = {"Content-Type": "application/json"}
        if options.upstream_api_key:
            self.headers["Authorization"] = f"Bearer {options.upstream_api_key}"
        self._digit_ids: list[int] | None = None
        # The upstream chooses its own dtype and version (`vllm serve --dtype ...`); the server
        # reports where it sends the items.
        self.engine_info = {"engine": "openai", "base_url": base}
        self._ids_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, options.max_batch_size), thread_name_prefix="openai"
        )

    def post(self, url: str, body: dict) -> dict:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:500].decode(errors="replace")
            raise RuntimeError(f"upstream {url} answered HTTP {error.code}: {detail}") from None

    def digit_ids(self) -> list[int]:
        """The judge's token ids of "0".."5": ``--tokenizer`` if given, else the upstream's /tokenize.

        Looked up on first use (the upstream may still be loading when this server starts) and kept.
        """
        with self._ids_lock:
            if self._digit_ids is None:
                self._digit_ids = digit_token_ids(self._tokenizer())
            return self._digit_ids

    def _tokenizer(self):
        if self.tokenizer_path:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.tokenizer_path)
        return _RemoteTokenizer(self)

    def score_one(self, item: JudgeItem) -> ItemResult:
        try:
            digit_ids = self.digit_ids()
            body = chat_request(self.model, item, self.template, digit_ids, self.pairwise_template)
            response = self.post(self.url, body)
            return score_from_chat_response(response, digit_ids, item.pairwise)
        except Exception as error:  # noqa: BLE001 - reported as this item's error
            return error

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        """Concurrent requests, one per item; the upstream server does the batching."""
        return list(self._pool.map(self.score_one, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class _RemoteTokenizer:
    """``encode`` through vLLM's ``POST /tokenize`` ({"prompt", "add_special_tokens"} -> {"tokens"})."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {"model": self.backend.model, "prompt": text, "add_special_tokens": add_special_tokens}
        try:
            tokens = self.backend.post(self.backend.tokenize_url, body)["tokens"]
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as error:
            raise RuntimeError(
                f"cannot look up the judge's digit token ids at {self.backend.tokenize_url} ({error}); "
                "pass --tokenizer with a local copy of the judge's tokenizer"
            ) from None
        return [int(token) for token in tokens]
