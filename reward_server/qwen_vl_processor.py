"""An image + text Qwen-VL processor that works without torchvision.

It lives with the reward server (the judge is a Qwen-VL model and the server must not import the
training package); the trainer uses the same class through ``edit_r1.models.qwen_vl_processor``.

transformers 5 builds ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` with three sub-processors:
image processor, tokenizer and *video* processor. The video processor imports torchvision, and even
``video_processor=None`` fails the constructor's class check when torchvision is missing. Edit-R1
never feeds videos, so :class:`QwenVLImageTextProcessor` declares only ``image_processor`` and
``tokenizer`` (transformers derives the sub-processors from the ``__init__`` signature) and inherits
everything else from ``Qwen2VLProcessor``: the ``<|image_pad|>`` expansion to
``prod(image_grid_thw) / merge_size**2`` tokens per image, ``apply_chat_template`` and decoding.
The image processor is the PIL backend (``Qwen2VLImageProcessorPil``) whenever torchvision is absent.

:func:`load_qwen_vl_processor` loads

- real Qwen2-VL / Qwen2.5-VL checkpoint folders (``preprocessor_config.json``,
  ``video_preprocessor_config.json``, tokenizer files, ``chat_template.json``): the video files are
  simply not read;
- the ``processor/`` folder of a Qwen-Image-Edit pipeline checkpoint (``subfolder="processor"``);
- the tiny judge and pipeline folders of the project's tiny model kit.

For a real Qwen-Image-Edit checkpoint (whose ``model_index.json`` names ``Qwen2VLProcessor``) on a
machine without torchvision, pass ``processor=load_qwen_vl_processor(path, subfolder="processor")`` to
``QwenImageEditPlusPipeline.from_pretrained``. (The tiny kit's pipeline folder names a transformers class
instead, so that it loads with no argument.)
"""

from __future__ import annotations

import os

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

__all__ = ["QwenVLImageTextProcessor", "load_qwen_vl_processor"]


class QwenVLImageTextProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video sub-processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is None:
            raise ValueError("QwenVLImageTextProcessor needs a tokenizer")
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no image token {self.image_token!r}")
        # Skip Qwen2VLProcessor.__init__: it would hand a video processor to ProcessorMixin.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_qwen_vl_processor(path_or_id: str | os.PathLike, **kwargs) -> QwenVLImageTextProcessor:
    """Load an image + text Qwen-VL processor from a checkpoint folder (or hub id when online).

    ``kwargs`` go to ``from_pretrained`` (e.g. ``subfolder="processor"``, ``min_pixels``).
    Raises ``FileNotFoundError`` naming the path when a local folder does not exist.
    """
    path = os.fspath(path_or_id)
    looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.join(path, kwargs.get("subfolder", ""))):
        raise FileNotFoundError(
            f"Qwen-VL processor folder not found: {path!r} (subfolder={kwargs.get('subfolder')!r})"
        )
    return QwenVLImageTextProcessor.from_pretrained(path, **kwargs)
