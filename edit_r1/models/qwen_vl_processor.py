"""The torchvision-free Qwen-VL processor, for the Qwen-Image-Edit text encoder.

The class is defined in :mod:`reward_server.qwen_vl_processor` (the judge needs it too, and the
reward server imports nothing from ``edit_r1``); this module is the trainer side's name for it.
"""

from reward_server.qwen_vl_processor import QwenVLImageTextProcessor, load_qwen_vl_processor

__all__ = ["QwenVLImageTextProcessor", "load_qwen_vl_processor"]
