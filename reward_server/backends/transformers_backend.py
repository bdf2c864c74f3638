"""The transformers backend: any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint on one device.

One forward pass per batch with left padding (so the last position of every row is its first
generated position), logits at that position restricted to the digit tokens, softmax, expected
rating / 5 (docs/reward-server.md). bf16 on GPU, float32 on CPU unless ``--dtype`` says otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from reward_server.backends.base import BackendOptions, ItemResult
from reward_server.images import JudgeItem, judge_images
from reward_server.prompt_template import chat_messages, render_item_prompt
from reward_server.scoring import MAX_RATING, PAIRWISE_ANSWER_INDEX, digit_token_ids

_IMAGE_PLACEHOLDER = {"type": "image"}
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """ "auto" picks CUDA when available; bf16 on GPU and float32 on CPU unless named explicitly."""
    resolved = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    if dtype == "auto":
        return resolved, torch.bfloat16 if resolved.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; choose auto or one of {sorted(_DTYPES)}")
    return resolved, _DTYPES[dtype]


def load_processor(model: str):
    """The checkpoint's processor; without torchvision, the image-only Qwen-VL processor."""
    if importlib.util.find_spec("torchvision") is None:
        from reward_server.qwen_vl_processor import load_qwen_vl_processor

        return load_qwen_vl_processor(model)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


class TransformersBackend:
    """Judge = ``AutoModelForImageTextToText`` + its processor, scored from next-token logits."""

    name = "transformers"

    def __init__(self, options: BackendOptions) -> None:
        from transformers import AutoModelForImageTextToText

        self.model, self.template = options.model, options.template
        self.pairwise_template = options.pairwise_template
        self.device, self.dtype = resolve_device_and_dtype(options.device, options.dtype)
        self.processor = load_processor(options.model)
        # Left padding puts every row's last prompt token at position -1, the position we read.
        self.processor.tokenizer.padding_side = "left"
        self.digit_ids = digit_token_ids(self.processor.tokenizer)
        self.judge = AutoModelForImageTextToText.from_pretrained(options.model, dtype=self.dtype)
        self.judge.to(self.device).eval()
        self._ratings = torch.arange(len(self.digit_ids), dtype=torch.float32)
        self.engine_info = {
            "engine": "transformers",
            "version": _transformers_version(),
            "dtype": str(self.judge.dtype).removeprefix("torch."),
            "device": str(self.device),
        }

    def _prompt(self, item: JudgeItem) -> str:
        text = render_item_prompt(item, self.template, self.pairwise_template)
        placeholders = [_IMAGE_PLACEHOLDER] * len(judge_images(item)[0])
        messages = chat_messages(text, *placeholders)
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare_batch(self, items: Sequence[JudgeItem]) -> dict[str, torch.Tensor]:
        """The processor's inputs for the batch (CPU work the batcher overlaps with the engine)."""
        images = [image for item in items for image in judge_images(item)[0]]
        prompts = [self._prompt(item) for item in items]
        return dict(self.processor(text=prompts, images=images, padding=True, return_tensors="pt"))

    @torch.inference_mode()
    def digit_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of "0".."5" at the first generated position, shape (batch, 6), float32."""
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        logits = self.judge(**inputs, logits_to_keep=1).logits[:, -1, :]
        return logits[:, self.digit_ids].float().cpu()

    def score_batch(self, items: Sequence[JudgeItem]) -> list[ItemResult]:
        return self.score_prepared(items, self.prepare_batch(items))

    def score_prepared(self, items: Sequence[JudgeItem], inputs: dict[str, torch.Tensor]) -> list[ItemResult]:
        """sum_k k softmax(logits_digits)_k / 5 for a pointwise item; for a pairwise one the
        softmax over the logits of the answers "1" and "2", its first entry (edit 1 better)."""
        logits = self.digit_logits(inputs)
        scores = (torch.softmax(logits, dim=-1) * self._ratings).sum(dim=-1) / MAX_RATING
        preference = torch.softmax(logits[:, list(PAIRWISE_ANSWER_INDEX)], dim=-1)[:, 0]
        return [float(preference[row] if item.pairwise else scores[row]) for row, item in enumerate(items)]

    def close(self) -> None:
        self.judge = None
