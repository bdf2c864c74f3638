"""Judge backends behind one small interface (:class:`reward_server.backends.base.Backend`).

- ``vllm``: in-process vLLM engine(s), one batched ``LLM.chat`` call per batch (production).
- ``transformers``: any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint via ``AutoModelForImageTextToText``.
- ``openai``: an OpenAI-compatible server (e.g. ``vllm serve``) scored from ``top_logprobs``.

Backends are imported lazily so that selecting one never imports another's heavy dependencies.
"""

from __future__ import annotations

from reward_server.backends.base import Backend, BackendOptions

BACKEND_NAMES = ("vllm", "transformers", "openai")


def build_backend(name: str, options: BackendOptions) -> Backend:
    """Construct the named backend (loads the judge; may take minutes for a large model)."""
    if name == "vllm":
        from reward_server.backends.vllm_backend import VLLMBackend

        return VLLMBackend(options)
    if name == "transformers":
        from reward_server.backends.transformers_backend import TransformersBackend

        return TransformersBackend(options)
    if name == "openai":
        from reward_server.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(options)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")


__all__ = ["BACKEND_NAMES", "Backend", "BackendOptions", "build_backend"]
