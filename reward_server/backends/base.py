"""The backend interface: score a batch of decoded items with the judge.

A backend returns one entry per item, in order: the score in [0, 1] (docs/reward-server.md), or an
exception describing why that one item could not be scored. Raising instead means the whole batch
failed; the batcher then retries the items one by one so that a single bad item cannot take its
batch-mates down with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reward_server.images import JudgeItem
from reward_server.prompt_template import AUTO, DEFAULT_TEMPLATE, resolve_pairwise_template
from reward_server.protocol import Limits, max_images_per_item

# Sampling fields that change the logits the logprobs are read from (vLLM offline and `vllm serve`
# alike); every one is sent at its neutral value so that nothing (a model's generation_config, a
# server default) can move the score.
NEUTRAL_SAMPLING = {
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}

ItemResult = float | BaseException


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend may need, from the command line.

    ``model`` is a local path or a hub id (vLLM/transformers) or the served model name (openai);
    ``base_url``/``api_key`` address an OpenAI-compatible server and ``tokenizer`` is a local copy of
    its judge's tokenizer (only needed when the server has no ``/tokenize``); ``device`` applies to
    transformers and ``dtype`` to transformers and vllm ("auto": bf16 on GPU, float32 on CPU);
    ``logprobs_mode``, ``enforce_eager`` (no torch.compile / graph capture: a faster start, slower
    steps) and ``max_images_per_item`` (the engine's image limit per prompt, from the request limits)
    to vllm.
    ``template`` is the pointwise prompt (a built-in name or a ``file:`` id) and ``pairwise_template``
    the pairwise question (a name, a ``file:`` id, or None for none); ``"auto"`` becomes the built-in
    pairwise question of ``template`` (None for a file) when the options are made.
    """

    model: str
    template: str = DEFAULT_TEMPLATE
    pairwise_template: str | None = AUTO
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"
    base_url: str = ""
    upstream_api_key: str = ""
    request_timeout_s: float = 120.0
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    logprobs_mode: str = "processed_logprobs"
    tokenizer: str = ""
    enforce_eager: bool = False
    max_images_per_item: int = max_images_per_item(Limits())

    def __post_init__(self) -> None:
        # Resolved once here, so that a worker process (which gets these fields as JSON) and every
        # backend see the same concrete value.
        resolved = resolve_pairwise_template(self.pairwise_template, self.template)
        object.__setattr__(self, "pairwise_template", resolved)


class Backend(Protocol):
    """What the server needs from a judge backend.

    A backend may split its work in two by also defining ``prepare_batch(items) -> prepared``
    (CPU preprocessing: for the transformers backend, the processor) and
    ``score_prepared(items, prepared) -> list[ItemResult]`` (the engine call). The batcher then
    prepares the next batch while the engine scores the current one.
    """

    name: str
    model: str
    template: str
    pairwise_template: str | None
    # What /health reports as "engine": which engine and version, the dtype it runs in, its settings.
    engine_info: dict

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        """One score in [0, 1] or one exception per item, in order."""
        ...

    def close(self) -> None:
        """Release engines, processes and connections."""
        ...
