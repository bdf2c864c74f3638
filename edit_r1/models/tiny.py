"""Tiny local model kit: random-weight checkpoints that load exactly like the real ones.

Nothing can be downloaded from a model hub here, yet the adapters, the trainer and the reward
server must be tested against the real loading code. This module builds, from fixed seeds and
without any network, four checkpoint folders that the *standard* classmethods load:

``qwen_image_edit_plus/`` -- ``diffusers.QwenImageEditPlusPipeline.from_pretrained``
    transformer  ``QwenImageTransformer2DModel`` patch 2, in 16 / out 4 channels, 2 layers, 3 heads x 16,
                 joint_attention_dim 16, rope axes (8, 4, 4)
    vae          ``AutoencoderKLQwenImage`` base_dim 24, z_dim 4, dim_mult [1, 2, 4], 1 res block,
                 temporal downsample [False, True] -> spatial factor 4 (real: 8); latents_mean /
                 latents_std set to non-trivial values so a missing (de)normalisation shows up
    text_encoder ``Qwen2_5_VLForConditionalGeneration``: text 2 layers, hidden 16, 2 heads (head_dim 8,
                 mrope_section [1, 1, 2]); vision 1 block, hidden 16, 2 heads, patch 14, spatial merge 2,
                 temporal patch 2 (as real), window 112, out_hidden 16
    tokenizer    ``Qwen2Tokenizer``: byte-level BPE trained here (400 + 13 Qwen special tokens = 413),
                 Qwen2-VL chat template. NB the pipeline drops the first 64 tokens of its system-prompt
                 template (exactly the template prefix with the real tokenizer); with this small vocab the
                 prefix is 177 tokens, so 113 template tokens stay in the tiny kit's prompt embeddings.
    processor    ``PaddleOCRVLProcessor`` holding a ``Qwen2VLImageProcessor`` (PIL backend, the real
                 Qwen2.5-VL constants: patch 14, merge 2, CLIP mean/std, min/max pixels) and the tokenizer.
                 Why that class: real checkpoints name ``Qwen2VLProcessor``, which transformers 5 cannot
                 build without torchvision (its video processor), and diffusers only loads components from
                 transformers/diffusers or already-imported modules. ``PaddleOCRVLProcessor`` is the
                 transformers class with exactly the generic image + text behaviour of ``Qwen2VLProcessor``
                 (``<|image_pad|>`` expanded to ``prod(image_grid_thw) / merge**2`` tokens, same outputs)
                 and no video processor, so the folder loads with plain ``from_pretrained`` in a fresh
                 interpreter (diffusers logs an "Expected types for processor" warning, harmless).
                 ``load_qwen_vl_processor(DIR, subfolder="processor")`` loads the same folder too.
    scheduler    ``FlowMatchEulerDiscreteScheduler`` with the Qwen-Image constants: seq 256 / 8192, shift
                 0.5 / 0.9, shift_terminal 0.02, exponential dynamic shifting

``qwen_image_edit_2511/`` -- the same pipeline, components and weights as ``qwen_image_edit_plus/``
    with the transformer configured as Qwen-Image-Edit-2511 (``zero_cond_t=True``: reference-image
    tokens are modulated with timestep 0). Same weights, so any difference in output is the flag's.

``flux_kontext/`` -- ``diffusers.FluxKontextPipeline.from_pretrained``
    transformer  ``FluxTransformer2DModel`` patch 1, in 16 channels, 1 + 1 layers, 2 heads x 16,
                 joint_attention_dim 32, pooled 32, guidance_embeds, rope axes [4, 4, 8]
    vae          ``AutoencoderKL`` blocks (8, 16, 16), 4 latent channels -> spatial factor 4 (real: 8),
                 the real FLUX scaling 0.3611 / shift 0.1159
    text_encoder ``CLIPTextModel`` 2 layers, hidden 32; tokenizer ``CLIPTokenizer`` (lower-cased BPE with
                 ``</w>`` suffix trained here, vocab 400, 77 positions)
    text_encoder_2 ``T5EncoderModel`` (gated-gelu, 2 layers, d_model 32); tokenizer_2 ``T5Tokenizer``
                 from a sentencepiece unigram model trained here (128 pieces + 100 sentinels; the
                 ``spiece.model`` is saved next to ``tokenizer.json`` as in real checkpoints)
    scheduler    FLUX constants: seq 256 / 4096, shift 0.5 / 1.15, dynamic shifting

``judge_qwen2_5_vl/`` -- ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` +
:func:`~edit_r1.models.qwen_vl_processor.load_qwen_vl_processor`
    a Qwen2.5-VL (text 2 layers, hidden 64, 2 heads of head_dim 32, mrope_section [4, 6, 6] =
    the real 16:24:24 split scaled down) laid out like a real Qwen2.5-VL-Instruct folder
    (``preprocessor_config.json`` naming ``Qwen2VLImageProcessor`` / ``Qwen2_5_VLProcessor``,
    ``video_preprocessor_config.json``, ``chat_template.json``); "0".."5" are single tokens.
    Head size 32 because vLLM's CPU attention refuses smaller heads (it supports 32, 64, 80, 96,
    112, 128, ...; 16 fails with "Unsupported CPU attention configuration"), and the same folder
    must load in vLLM (``make test-vllm``) and in transformers.

Image sizes: with the real processor constants a 64x64 image becomes 56x56 -> 4x4 patches -> 4 vision
tokens. The stock Qwen edit pipeline still resizes condition images to ~384^2 for the vision tower
(196 tokens, cheap with this tower) and to ~1024^2 for the VAE (slow on CPU): callers that need speed
take these sizes from their config (tests patch the pipeline module's ``CONDITION_IMAGE_SIZE`` /
``VAE_IMAGE_SIZE``).

Determinism: every model is initialised right after ``torch.manual_seed`` with its own fixed seed (inside
``torch.random.fork_rng``, so the caller's RNG is untouched) and saved as safetensors; the tokenizers are
trained on the built-in :func:`tiny_corpus`, BPE ids are put in a canonical order and the sentencepiece
model is stored without the temporary paths it was trained from. Building twice gives bit-identical
files (tested). Building all four takes about 5 s (measured 3.8-8 s on a shared 2-core machine,
excluding the ~3 s of importing torch/diffusers/transformers).

CLI: ``python -m edit_r1.models.tiny build --out DIR [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

KIT_NAMES = ("qwen_image_edit_plus", "qwen_image_edit_2511", "flux_kontext", "judge_qwen2_5_vl")

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

QWEN_NAMED_VISION_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}

# Qwen2-VL chat format: optional default system turn, "<|vision_start|><|image_pad|><|vision_end|>"
# for each image, "<|im_start|>assistant\n" when a generation prompt is asked for.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Real Qwen2.5-VL image-processor constants (patch 14, merge 2, temporal 2, CLIP normalisation).
QWEN_VL_IMAGE_PROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "merge_size": 2,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "min_pixels": 3136,
    "max_pixels": 12845056,
}

# Qwen-Image scheduler (Qwen/Qwen-Image* scheduler_config.json).
QWEN_IMAGE_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# FLUX.1 scheduler (black-forest-labs FLUX.1-* scheduler_config.json).
FLUX_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

_SUBJECTS = ("cat", "dog", "car", "house", "tree", "person", "cup", "bird", "flower", "sky", "bike", "boat")
_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
_ACTIONS = (
    "make the {s} {c}",
    "change the colour of the {s} to {c}",
    "add a {c} hat to the {s}",
    "remove the {s} from the picture",
    "replace the {s} with a {c} one",
    "turn the background {c} behind the {s}",
)
_EXTRA_TEXT = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image.",
    "Generate a new image that meets the user's requirements while maintaining consistency with the "
    "original input where appropriate.",
    "Picture 1: Picture 2: You are a helpful assistant.",
    "Rate the edit from 0 to 5. Answer with the number only: 0 1 2 3 4 5.",
    "The first image is the source image and the second image is the edited image.",
    "Requirement: the edited object must be correct and the image must be of high visual quality.",
)


def tiny_corpus() -> list[str]:
    """The fixed English corpus the tiny tokenizers are trained on (editing instructions + prompts)."""
    lines = [a.format(s=s, c=c) for a in _ACTIONS for s in _SUBJECTS for c in _COLOURS]
    return lines + list(_EXTRA_TEXT)


# --------------------------------------------------------------------------------------------- tokenizers


def _trained_bpe(bpe, special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a trained ``tokenizers`` BPE, with ids in a canonical order.

    The trainer inserts suffixed characters (``"t</w>"``) in hash-set order, so ids differ between
    runs although the merges do not. Canonical ids: special tokens, then the single symbols sorted,
    then each merge result in merge order.
    """
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    merged = [left + right for left, right in merges]
    symbols = sorted(set(model["vocab"]) - set(merged) - set(special_tokens))
    order = list(special_tokens) + symbols + [t for t in dict.fromkeys(merged) if t not in special_tokens]
    if sorted(order) != sorted(model["vocab"]):
        raise RuntimeError("trained BPE vocab is not special tokens + symbols + merge results")
    return {token: i for i, token in enumerate(order)}, merges


def _qwen_tokenizer(named_vision_tokens: bool, corpus: list[str] | None = None, vocab_size: int = 400):
    """Qwen2 byte-level BPE trained on ``corpus`` (default :func:`tiny_corpus`), with the Qwen special tokens.

    ``named_vision_tokens`` also records ``image_token`` / ``video_token`` / ``vision_bos_token`` /
    ``vision_eos_token`` in the tokenizer config (generic processors such as ``PaddleOCRVLProcessor``
    read ``tokenizer.image_token``); real Qwen2.5-VL tokenizer configs do not have them.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(tiny_corpus() if corpus is None else corpus, trainer)
    vocab, merges = _trained_bpe(bpe, ["<|endoftext|>"])
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        **(QWEN_NAMED_VISION_TOKENS if named_vision_tokens else {}),
    )
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def _clip_tokenizer(corpus: list[str] | None = None):
    """CLIP BPE (lower-cased, ``</w>`` word suffix) trained on ``corpus`` (:func:`tiny_corpus`), 77 tokens."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), "removed", True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(corpus or tiny_corpus(), trainer)
    vocab, merges = _trained_bpe(bpe, ["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _train_sentencepiece(corpus: list[str] | None = None) -> bytes:
    """Train a T5-style sentencepiece unigram model (pad 0, eos 1, unk 2) on ``corpus`` (:func:`tiny_corpus`).

    Returns the serialized model with the temporary input / output paths of the trainer spec replaced
    by fixed names, so that the bytes do not depend on where it was trained.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as work:
        corpus_file = Path(work) / "t5_corpus.txt"
        corpus_file.write_text("\n".join(corpus or tiny_corpus()) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus_file),
            model_prefix=str(Path(work) / "spiece"),
            vocab_size=128,
            hard_vocab_limit=False,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((Path(work) / "spiece.model").read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("t5_corpus.txt")
    proto.trainer_spec.model_prefix = "spiece"
    return proto.SerializeToString(deterministic=True)


def _t5_tokenizer(spiece_model: bytes):
    """``T5Tokenizer`` (tokenizers backend) with the pieces, scores and normaliser of ``spiece_model``.

    transformers 5 ignores ``vocab_file`` here, so the unigram vocabulary is read from the model proto.
    """
    from sentencepiece import sentencepiece_model_pb2
    from transformers import T5Tokenizer

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece_model)
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    if [p for p, _ in vocab[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(
            f"T5 needs <pad>, </s>, <unk> as ids 0, 1, 2; the sentencepiece model has {vocab[:3]}"
        )
    return T5Tokenizer(
        vocab=vocab,
        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        extra_ids=100,
        model_max_length=512,
    )


# --------------------------------------------------------------------------------------------- models


def _seeded(seed: int, make: Callable):
    """Construct ``make()`` right after seeding torch, so initial weights depend only on ``seed``."""
    import torch

    # fork_rng: building the kit must not move the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval()


def _mrope_section(head_dim: int, section: list[int] | None) -> list[int]:
    """The (temporal, height, width) rotary split; it must add up to head_dim / 2 (default ~1:1:2)."""
    quarter = head_dim // 4
    section = section or [quarter, quarter, head_dim // 2 - 2 * quarter]
    if sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {section} must add up to head_dim / 2 = {head_dim // 2}")
    return section


def _qwen2_5_vl(
    tokenizer,
    hidden: int,
    layers: int,
    seed: int,
    vision_hidden: int = 16,
    heads: int = 2,
    vision: dict | None = None,
    mrope_section: list[int] | None = None,
    rope_theta: float = 1000000.0,
):
    """Tiny ``Qwen2_5_VLForConditionalGeneration`` whose special-token ids come from ``tokenizer``.

    ``vision`` overrides entries of the vision config (e.g. ``patch_size``, ``depth``);
    ``mrope_section`` the (temporal, height, width) rotary split of the text heads and ``rope_theta``
    their base (the real 1e6 leaves the last sections, height and width, nearly unrotated)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    mrope_section = _mrope_section(hidden // heads, mrope_section)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": rope_theta,
                "mrope_section": mrope_section,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [0],
            **(vision or {}),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))


def _pipeline_processor(tokenizer):
    """The ``processor`` component of the tiny Qwen edit pipeline (see the module docstring)."""
    from transformers import PaddleOCRVLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(**QWEN_VL_IMAGE_PROCESSOR)
    return PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_VL_CHAT_TEMPLATE
    )


# --------------------------------------------------------------------------------------------- builders


def build_qwen_image_edit_plus(out_dir: str | os.PathLike, zero_cond_t: bool = False) -> Path:
    """Write a tiny Qwen-Image-Edit-2509 pipeline to ``out_dir`` (loads with QwenImageEditPlusPipeline);
    with ``zero_cond_t`` the transformer is configured as 2511."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )

    tokenizer = _qwen_tokenizer(named_vision_tokens=True)
    text_encoder = _qwen2_5_vl(tokenizer, hidden=16, layers=2, seed=1)
    transformer = _seeded(
        2,
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
            zero_cond_t=zero_cond_t,
        ),
    )
    vae = _seeded(
        3,
        lambda: AutoencoderKLQwenImage(
            base_dim=24,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.1, -0.2, 0.05, 0.0],
            latents_std=[1.5, 0.8, 1.2, 1.0],
        ),
    )
    pipe = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=_pipeline_processor(tokenizer),
        transformer=transformer,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_qwen_image_edit_2511(out_dir: str | os.PathLike) -> Path:
    """Write a tiny Qwen-Image-Edit-2511 pipeline: the 2509 kit with ``zero_cond_t=True``."""
    return build_qwen_image_edit_plus(out_dir, zero_cond_t=True)


def _tiny_flux_transformer():
    from diffusers import FluxTransformer2DModel

    return _seeded(
        12,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=[4, 4, 8],
        ),
    )


def _tiny_flux_vae():
    from diffusers import AutoencoderKL

    return _seeded(
        13,
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            block_out_channels=[8, 16, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
    )


def tiny_flux_text_encoders(clip_tokenizer, t5_tokenizer, seed: int):
    """(CLIP text model, T5 encoder), both width 32 and 2 layers, seeded ``seed`` and ``seed + 1``."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    t5_config = T5Config(
        vocab_size=len(t5_tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id,
    )
    return _seeded(seed, lambda: CLIPTextModel(clip_config)), _seeded(
        seed + 1, lambda: T5EncoderModel(t5_config)
    )


def build_flux_kontext(out_dir: str | os.PathLike) -> Path:
    """Write a tiny FLUX.1-Kontext pipeline to ``out_dir`` (loads with FluxKontextPipeline)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
    )

    out = Path(out_dir)
    clip_tokenizer = _clip_tokenizer()
    spiece_model = _train_sentencepiece()
    t5_tokenizer = _t5_tokenizer(spiece_model)
    clip, t5 = tiny_flux_text_encoders(clip_tokenizer, t5_tokenizer, seed=10)
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=_tiny_flux_vae(),
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=_tiny_flux_transformer(),
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # Real FLUX checkpoints ship the sentencepiece model next to tokenizer.json; so does the kit.
    (out / "tokenizer_2" / "spiece.model").write_bytes(spiece_model)
    return out


JUDGE_HIDDEN, JUDGE_HEADS = 64, 2  # the tiny judge's text tower: head_dim 32


def build_judge(out_dir: str | os.PathLike) -> Path:
    """Write a tiny Qwen2.5-VL-Instruct judge to ``out_dir``, laid out like a real checkpoint folder.

    Load it with ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and
    :func:`edit_r1.models.qwen_vl_processor.load_qwen_vl_processor`.
    """
    tokenizer = _qwen_tokenizer(named_vision_tokens=False)
    for digit in "012345":
        if len(tokenizer.tokenize(digit)) != 1:
            raise RuntimeError(f"tiny judge tokenizer splits the score digit {digit!r}")
    # head_dim = hidden / heads = 32: the smallest head size vLLM's CPU attention accepts.
    model = _qwen2_5_vl(
        tokenizer, hidden=JUDGE_HIDDEN, layers=2, seed=21, heads=JUDGE_HEADS, mrope_section=[4, 6, 6]
    )
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_real_style_processor_files(out)
    return out


def _write_real_style_processor_files(out: Path, image_processor: dict | None = None) -> None:
    """The processor files a real Qwen2.5-VL-Instruct folder carries (video config included);
    ``image_processor`` overrides entries of :data:`QWEN_VL_IMAGE_PROCESSOR` in both."""
    settings = dict(QWEN_VL_IMAGE_PROCESSOR, **(image_processor or {}))
    image_config = dict(
        settings,
        image_processor_type="Qwen2VLImageProcessor",
        processor_class="Qwen2_5_VLProcessor",
    )
    video_config = dict(
        settings,
        video_processor_type="Qwen2VLVideoProcessor",
        processor_class="Qwen2_5_VLProcessor",
    )
    _write_json(out / "preprocessor_config.json", image_config)
    _write_json(out / "video_preprocessor_config.json", video_config)
    _write_json(out / "chat_template.json", {"chat_template": QWEN_VL_CHAT_TEMPLATE})


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


BUILDERS: dict[str, Callable[[str | os.PathLike], Path]] = {
    "qwen_image_edit_plus": build_qwen_image_edit_plus,
    "qwen_image_edit_2511": build_qwen_image_edit_2511,
    "flux_kontext": build_flux_kontext,
    "judge_qwen2_5_vl": build_judge,
}


def build_all(out_dir: str | os.PathLike, only: list[str] | tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build the kit (or the ``only`` subset of :data:`KIT_NAMES`) into ``out_dir/<name>/``."""
    names = list(only) if only else list(KIT_NAMES)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown tiny kit model(s) {unknown}; choose from {list(KIT_NAMES)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    return {name: BUILDERS[name](root / name) for name in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edit_r1.models.tiny", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the tiny checkpoint folders")
    build.add_argument("--out", required=True, help="directory to write <name>/ folders into")
    build.add_argument(
        "--only", action="append", choices=KIT_NAMES, help="build only this model (repeatable)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one "Writing model shards" bar per model otherwise
    start = time.perf_counter()
    paths = build_all(args.out, only=args.only)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"built {len(paths)} model(s) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
