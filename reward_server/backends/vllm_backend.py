"""The vLLM backend (production): one batched ``LLM.chat`` call per batch.

Written against vLLM's current offline API (V1 engine; no version pin):

- ``LLM(model, tensor_parallel_size=TP, limit_mm_per_prompt={"image": 2},
  logprobs_mode="processed_logprobs")`` — processed logprobs are taken *after* the
  ``allowed_token_ids`` mask, so the returned distribution is already over the six digits;
- ``SamplingParams(max_tokens=1, temperature=0, logprobs=6, allowed_token_ids=<digit ids>)``;
- ``outputs[i].outputs[0].logprobs[0]`` maps token id -> ``Logprob(logprob=...)``.

The score is renormalised over the digit tokens (as the original release did), so it is the same
number whether the engine returns processed or raw logprobs. Data parallelism is
``--data-parallel-size`` worker processes (``reward_server/worker.py``), each owning one engine on
its own ``TP`` GPUs. vLLM is not installable on the project's CI machines: this module is covered
by contract tests against a fake engine with vLLM's call signature and output structure
(``tests/server/test_vllm_backend_contract.py``), and by a real test marked ``vllm``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reward_server.backends.base import BackendOptions, ItemResult
from reward_server.images import JudgeItem, data_uri
from reward_server.prompt_template import chat_messages, render_prompt
from reward_server.scoring import DIGITS, digit_token_ids, expected_score_from_token_map


def make_vllm_engine(options: BackendOptions):
    """A vLLM ``LLM`` for the judge, with processed logprobs so the digit mask is applied first."""
    from vllm import LLM

    kwargs = {
        "model": options.model,
        "tensor_parallel_size": options.tensor_parallel_size,
        "limit_mm_per_prompt": {"image": 2},
        "logprobs_mode": "processed_logprobs",
        "gpu_memory_utilization": options.gpu_memory_utilization,
    }
    if options.max_model_len:
        kwargs["max_model_len"] = options.max_model_len
    return LLM(**kwargs)


def vllm_sampling_params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def conversation(item: JudgeItem, template: str) -> list[dict]:
    """The judge's user turn with both images as data URIs (the request's own file bytes)."""
    text = render_prompt(item.instruction, item.requirement, template)
    source = {"type": "image_url", "image_url": {"url": data_uri(item.raw.source_image)}}
    edited = {"type": "image_url", "image_url": {"url": data_uri(item.raw.image)}}
    return chat_messages(text, source, edited)


def score_from_request_output(output, digit_ids: Sequence[int]) -> float:
    """Expected score from one ``RequestOutput``: first generated position's logprobs over the digits."""
    completions = getattr(output, "outputs", None)
    if not completions or not completions[0].logprobs:
        raise ValueError("vLLM returned no logprobs for the first generated token")
    first_position = completions[0].logprobs[0]
    logprob_by_id = {int(token_id): float(entry.logprob) for token_id, entry in first_position.items()}
    return expected_score_from_token_map(logprob_by_id, list(digit_ids))


class VLLMBackend:
    """Judge on an in-process vLLM engine; ``engine_factory``/``sampling_params`` are injectable for tests."""

    name = "vllm"

    def __init__(
        self,
        options: BackendOptions,
        engine_factory: Callable[[BackendOptions], object] = make_vllm_engine,
        sampling_params: Callable[..., object] = vllm_sampling_params,
    ) -> None:
        self.model, self.template = options.model, options.template
        self.engine = engine_factory(options)
        self.digit_ids = digit_token_ids(self.engine.get_tokenizer())
        self.sampling_params = sampling_params(
            max_tokens=1, temperature=0.0, logprobs=len(DIGITS), allowed_token_ids=list(self.digit_ids)
        )

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        """One ``LLM.chat`` call for the whole batch; per-item parsing failures stay per item."""
        conversations = [conversation(item, self.template) for item in items]
        outputs = self.engine.chat(conversations, sampling_params=self.sampling_params, use_tqdm=False)
        if len(outputs) != len(items):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(items)} conversations")
        results: list[ItemResult] = []
        for output in outputs:
            try:
                results.append(score_from_request_output(output, self.digit_ids))
            except ValueError as error:
                results.append(error)
        return results

    def close(self) -> None:
        self.engine = None
