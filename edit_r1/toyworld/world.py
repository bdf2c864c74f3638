"""The toy world's fixed choices and the untrained editor pipelines (Qwen-Image-Edit, FLUX.1-Kontext)
around its trained parts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SIZE = 32  # image side in pixels: shapes stay recognisable, a rollout costs milliseconds
TASKS = ("recolor", "background")  # colour edits: the rule score and the judge read the same colour
# The RL experiments (the `:toy` configs, `make demo`, the learning benchmark and test) edit shapes
# and backgrounds alike: recolouring one shape is the local edit where keeping the rest matters most.
RL_TASKS = ("recolor", "background")
JUDGE_TEMPLATE = "toy_v1"  # the reward-server prompt template the toy judge is trained with and served by
KONTEXT_TEXT_LENGTH = 32  # T5 tokens of the Kontext editor: every toy instruction fits (FLUX has no mask)
TEXT_DIM = 32  # hidden size of the (frozen, random) Qwen2.5-VL text encoder of the editor
# The system prompt of QwenImageEditPlusPipeline.prompt_template_encode (diffusers 0.42), part of the
# tokenizer's training corpus so that its 64-token prefix tokenizes like the real tokenizer's.
EDIT_SYSTEM_PROMPT = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate."
)


# The VAE whose reproduction of the scenes the ground truth accepts as preserved (edit_r1.data.toy.
# toy_edit_scores): the Qwen-Image-Edit editor's, committed under checkpoints/.
REFERENCE_VAE = ("qwen_image_edit_plus", "vae")


def vae_reproduction(vae_dir: Path | None = None):
    """``images -> images`` as the toy world's VAE reproduces them (posterior mode, decoded), the
    preservation reference of the ground truth; ``vae_dir`` defaults to the committed Qwen VAE."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage

    from edit_r1.toyworld import CHECKPOINTS
    from edit_r1.toyworld.images import to_images, to_tensor

    vae_dir = Path(vae_dir) if vae_dir is not None else CHECKPOINTS.joinpath(*REFERENCE_VAE)
    video = "QwenImage" in json.loads((vae_dir / "config.json").read_text())["_class_name"]
    vae = (AutoencoderKLQwenImage if video else AutoencoderKL).from_pretrained(vae_dir).eval()

    @torch.no_grad()
    def reproduce(images: list) -> list:
        out = []
        for start in range(0, len(images), 64):
            x = to_tensor(images[start : start + 64])
            x = x.unsqueeze(2) if video else x
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            out += to_images(((y[:, :, 0] if video else y) + 1) / 2)
        return out

    return reproduce


def write_rl_dataset(
    out: Path, num_train: int = 256, num_test: int = 32, tasks: tuple[str, ...] | None = None
) -> Path:
    """The RL dataset of the ``:toy`` configs (``make demo``, the learning benchmark and test): 32 px
    scenes of :data:`RL_TASKS`, each record carrying the VAE's reproduction of its source and of its
    perfect edit (the ground truth's preservation references)."""
    from edit_r1.data.toy import write_toy_dataset

    return write_toy_dataset(
        Path(out),
        num_train,
        num_test,
        size=SIZE,
        seed=0,
        tasks=tasks or RL_TASKS,
        reference=vae_reproduction(),
    )


def world_corpus() -> list[str]:
    """Every text the world's models read: the tiny corpus, the Qwen-Image-Edit system prompt,
    every toy instruction and every judge prompt of the toy tasks (deterministic order)."""
    from edit_r1.data.toy import COLORS, SHAPES, Scene, Task
    from edit_r1.models.tiny import tiny_corpus
    from reward_server.prompt_template import render_prompt

    tasks = [Task("recolor", s, c) for s in SHAPES for c in COLORS] + [
        Task("background", None, c) for c in COLORS
    ]
    tasks += [Task("remove", s, None) for s in SHAPES]
    scenes = [Scene(size=SIZE, background=c, shapes=()) for c in COLORS]
    # The corpus the committed editor's tokenizer was trained on: the "edit_r1_v1" judge prompts.
    judge = [render_prompt(t.prompt, t.requirement(sc), "edit_r1_v1") for t in tasks for sc in scenes]
    chat = f"<|im_start|>system\n{EDIT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    return tiny_corpus() + [chat] + [t.prompt for t in tasks] + sorted(set(judge))


def world_tokenizer(named_vision_tokens: bool):
    """Byte-level BPE trained on :func:`world_corpus` (word-level merges, ~650 tokens).

    With it the Qwen-Image-Edit template prefix is exactly 64 tokens, as with the real Qwen
    tokenizer (the pipeline drops 64), and the judge prompt is ~150 tokens instead of ~350 with
    the tiny kit's 400-token vocabulary: the editor and the judge run 2-3x faster.
    """
    from edit_r1.models import tiny

    return tiny._qwen_tokenizer(named_vision_tokens, world_corpus(), vocab_size=1000)


def untrained_policy(vae_dir: Path, seed: int):
    """A full-weight ``QwenImageEditPolicy`` on the trained VAE with a fresh transformer.

    Text encoder (seeded, random, frozen), tokenizer and processor come from the tiny kit's
    builders (``edit_r1.models.tiny``), so that the folder loads like a real checkpoint.
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler

    from edit_r1.models import tiny
    from edit_r1.models.qwen_image_edit import QwenImageEditPolicy
    from edit_r1.toyworld.editor import qwen_transformer

    tokenizer = world_tokenizer(named_vision_tokens=True)
    text_encoder = tiny._qwen2_5_vl(tokenizer, hidden=TEXT_DIM, layers=1, seed=100 + seed)
    return QwenImageEditPolicy(
        transformer=qwen_transformer(200 + seed, TEXT_DIM),
        vae=AutoencoderKLQwenImage.from_pretrained(vae_dir),
        text_encoder=text_encoder,
        processor=tiny._pipeline_processor(tokenizer),
        scheduler=FlowMatchEulerDiscreteScheduler(**tiny.QWEN_IMAGE_SCHEDULER),
        variant="plus",
        resolution=SIZE,
        condition_area=SIZE * SIZE,
        use_lora=False,
    )


def save_pipeline(policy, out: Path) -> Path:
    """Save the policy's components as a ``QwenImageEditPlusPipeline`` folder."""
    from diffusers import QwenImageEditPlusPipeline

    policy.transformer.requires_grad_(False)
    pipe = QwenImageEditPlusPipeline(
        scheduler=policy.scheduler,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.processor.tokenizer,
        processor=policy.processor,
        transformer=policy.transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def load_policy(pipeline_dir: Path, **options):
    """The toy editor as the trainer loads it (``load_policy("qwen_image_edit", ...)``)."""
    from edit_r1.models.registry import load_policy as load

    options = {"resolution": SIZE, "condition_area": SIZE * SIZE, "dtype": torch.float32, **options}
    return load("qwen_image_edit", pipeline_dir, **options)


def untrained_kontext_policy(vae_dir: Path, seed: int):
    """A full-weight ``KontextPolicy`` on the trained ``AutoencoderKL`` with a fresh transformer.

    CLIP and T5 (seeded, random, frozen) and their tokenizers come from the tiny kit's builders,
    the tokenizers trained on :func:`world_corpus` so that the toy instructions are whole words.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from edit_r1.models import tiny
    from edit_r1.models.kontext import KontextPolicy
    from edit_r1.toyworld.editor import flux_transformer

    clip_tokenizer = tiny._clip_tokenizer(world_corpus())
    t5_tokenizer = tiny._t5_tokenizer(tiny._train_sentencepiece(world_corpus()))
    clip, t5 = tiny.tiny_flux_text_encoders(clip_tokenizer, t5_tokenizer, seed=100 + seed)
    return KontextPolicy(
        transformer=flux_transformer(200 + seed, TEXT_DIM),
        vae=AutoencoderKL.from_pretrained(vae_dir),
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(**tiny.FLUX_SCHEDULER),
        resolution=SIZE,
        max_text_length=KONTEXT_TEXT_LENGTH,
        use_lora=False,
    )


def save_kontext_pipeline(policy, out: Path) -> Path:
    """Save the policy's components as a ``FluxKontextPipeline`` folder."""
    policy.transformer.requires_grad_(False)
    policy.stock_pipeline().save_pretrained(out, safe_serialization=True)
    return out


def load_kontext_policy(pipeline_dir: Path, **options):
    """The toy Kontext editor as the trainer loads it (``load_policy("kontext", ...)``)."""
    from edit_r1.models.registry import load_policy as load

    options = {"resolution": SIZE, "max_text_length": KONTEXT_TEXT_LENGTH, "dtype": torch.float32, **options}
    return load("kontext", pipeline_dir, **options)
