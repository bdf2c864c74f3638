"""Train the toy world's base editor: a small Qwen-Image transformer by flow matching.

For a training pair (source, instruction) -> target with packed normalised target latents ``x0``
(the policy's own reference-latent encoder applied to the target image), noise ``eps`` and
``sigma ~ U(0, 1)``::

    x_sigma = (1 - sigma) x0 + sigma eps,    loss = || v_theta(x_sigma, sigma | source, instruction) - (eps - x0) ||^2

which is the velocity the framework's samplers integrate (``edit_r1.sampling``). The condition is
computed with ``QwenImageEditPolicy.encode_condition`` exactly as in RL training, so the trained
transformer sees at build time what it sees in the trainer. A share of the pairs (``keep_share``)
asks for the unchanged source: the editor learns to keep the scene from every pair and to edit
only sometimes, which leaves headroom for RL (``docs/toyworld.md``, "The base editor").

With ``partial_edits`` every target is a partial edit instead: the source with the edited region
moved a share ``a = sqrt(u)``, ``u ~ U(0, 1)``, of the way to the perfect edit,
``target = source + a (perfect - source)`` per pixel (zero outside the region, where the two are
equal). The editor then learns one mode, an edit that keeps the scene and is as strong as its
noise draws, instead of two (keep, or edit and smear), so that inside an RL group the stronger
edits are no longer the ones that keep less of the scene.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from edit_r1.data.toy import apply_task, metadata_record, toy_edit_scores
from edit_r1.sampling.sampler import sample
from edit_r1.sampling.schedules import sigma_schedule
from edit_r1.toyworld.images import scene_pairs, to_images
from edit_r1.toyworld.world import vae_reproduction


@dataclass(frozen=True)
class EditorTraining:
    """Training stops after ``stop_after`` steps at a constant learning rate, or one decayed to 0
    (``cosine``) over them (``docs/toyworld.md``)."""

    stop_after: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    num_train: int = 1024
    num_eval: int = 48
    eval_every: int = 50
    eval_steps: int = 4
    # share of the training pairs whose target is the unchanged source: the editor learns to keep
    # the scene from every pair, and to make the edit only sometimes (room for RL, docs/toyworld.md)
    keep_share: float = 0.0
    cosine: bool = False  # learning rate decayed to 0 over ``stop_after`` steps (cosine), else constant
    # targets are partial edits of strength sqrt(U(0, 1)) (:func:`training_targets`)
    partial_edits: bool = False
    seed: int = 0


def qwen_transformer(seed: int, text_dim: int) -> torch.nn.Module:
    """The toy Qwen-Image transformer: 4 blocks, 2 heads x 32 (width 64), patch 2, 4 latent channels.

    Rotary dims (8, 12, 12) over (frame, height, width): with diffusers' fixed base 1e4, an axis of
    d dims rotates at 1e4^(-2i/d) rad per token, so the earlier 4 dims per axis (4 heads x 16) had
    one usable frequency (1 rad; 0.01 is flat over 8 tokens), under which a token 6 rows away
    looks like the same row (cos 6 = 0.96): the editor could not find the source token to copy and
    smeared the scene. 12 dims add 0.22 and 0.05 rad; measured at step 500: held-out preservation
    0.71 instead of 0.38 (docs/toyworld.md)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=4,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )


def flux_transformer(seed: int, text_dim: int) -> torch.nn.Module:
    """The toy FLUX transformer: 2 double + 2 single blocks, 2 heads x 32 (width 64), patch 1 on
    2x2-packed latents of 4 channels (in 16), guidance embedding as FLUX.1-Kontext-dev.

    Rotary dims (8, 12, 12) over (image index, height, width), for the reason
    :func:`qwen_transformer` gives: FLUX's rotary base is 1e4 too, and the earlier 4 heads x 16
    with dims (4, 6, 6) left each image axis the frequencies 1 and 0.046 rad per token (0.002 is
    flat), so over the 8 x 8 token grid rows 6 apart looked alike; 12 dims add 0.22 and 0.01 rad
    (docs/toyworld.md, "The FLUX.1-Kontext editor"). The first axis tells the target (0) from the
    reference image (1) that Kontext appends."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )


@torch.no_grad()
def encode_pairs(policy, examples, sources, targets, batch: int = 64):
    """(conditions, target latents) of the pairs, encoded with the policy in chunks of ``batch``."""

    conds, latents = [], []
    for start in range(0, len(sources), batch):
        chunk = slice(start, start + batch)
        prompts = [task.prompt for _, task in examples[chunk]]
        conds.append(policy.encode_condition(prompts, sources[chunk]))
        latents.append(policy._encode_reference(targets[chunk], policy.height, policy.width))
    return type(conds[0]).cat(conds) if len(conds) > 1 else conds[0], torch.cat(latents)


@torch.no_grad()
def generate(policy, cond, num_steps: int, seed: int, adapter: str = "default") -> torch.Tensor:
    """Deterministic Euler (``flow``) edits of ``cond``: images (B, 3, H, W) in [0, 1]."""
    sigmas = sigma_schedule(num_steps, policy.image_seq_len, policy.scheduler_config)
    noise = policy.initial_noise(len(cond), generator=torch.Generator().manual_seed(seed))
    result = sample(
        lambda z, s: policy.velocity(z, s, cond, adapter=adapter),
        noise,
        sigmas,
        solver="flow",
        deterministic=True,
        noise_level=0.0,
    )
    return policy.decode(result.latents)


def edit_scores(images: torch.Tensor | list, examples, references=None) -> np.ndarray:
    """(N, 3) ``toy_edit_scores`` (success, preservation, score) of each edit against its (scene,
    task); ``references``: the VAE's reproductions of the sources then the perfect edits (2N
    images, :func:`edit_r1.toyworld.world.vae_reproduction`), computed here when None."""
    if references is None:
        references = reference_images(examples, vae_reproduction())
    edits = to_images(images) if isinstance(images, torch.Tensor) else images
    records = [metadata_record(scene, task, "") for scene, task in examples]
    n = len(records)
    rows = []
    for i, (img, rec) in enumerate(zip(edits, records, strict=True)):
        e = toy_edit_scores(np.asarray(img), rec, references=(references[i], references[n + i]))
        rows.append((e.success, e.preservation, e.score))
    return np.asarray(rows)


def reference_images(examples, reproduce) -> list:
    """The VAE's reproductions of the examples' sources, then of their perfect edits."""
    sources = [scene.render() for scene, _ in examples]
    targets = [apply_task(scene, task).render() for scene, task in examples]
    return reproduce(sources + targets)


def rule_scores(images: torch.Tensor, examples, references=None) -> np.ndarray:
    """The ground truth ``toy_edit_scores(...).score`` of each edit against its (scene, task)."""
    return edit_scores(images, examples, references)[:, 2]


def partial_edit(source: Image.Image, perfect: Image.Image, strength: float) -> Image.Image:
    """``source + strength (perfect - source)`` per pixel, rounded to 8 bits: the perfect edit
    at ``strength`` 1, the source at 0, the region between the two colours in between."""
    a, b = np.asarray(source, np.float32), np.asarray(perfect, np.float32)
    return Image.fromarray(np.round(a + strength * (b - a)).astype(np.uint8))


def training_targets(sources: list, perfect: list, settings: EditorTraining) -> list:
    """The target of each training pair: the source (a share ``keep_share``, seeded), a partial
    edit of strength ``sqrt(u)`` (``partial_edits``; mean strength 2/3), else the perfect edit."""
    if settings.partial_edits:
        if settings.keep_share:
            raise ValueError(
                "EditorTraining: partial_edits and keep_share > 0 are two target kinds; choose one"
            )
        strengths = np.sqrt(np.random.default_rng([settings.seed, 1]).random(len(perfect)))
        return [partial_edit(s, t, float(a)) for s, t, a in zip(sources, perfect, strengths, strict=True)]
    keep = np.random.default_rng(settings.seed).random(len(perfect)) < settings.keep_share
    return [source if k else target for source, target, k in zip(sources, perfect, keep, strict=True)]


def train_editor(
    policy,
    size: int,
    tasks: tuple[str, ...],
    settings: EditorTraining,
    on_eval: Callable[[int, float], None] | None = None,
) -> list[tuple[int, float]]:
    """Flow-matching training of ``policy.transformer`` (full weights); returns (step, held-out score)."""
    examples, sources, perfect = scene_pairs(settings.num_train, size, 2000 + settings.seed, tasks)
    targets = training_targets(sources, perfect, settings)
    eval_examples, eval_sources, _ = scene_pairs(settings.num_eval, size, 3000 + settings.seed, tasks)
    references = reference_images(eval_examples, vae_reproduction())
    start = time.perf_counter()
    cond, x0 = encode_pairs(policy, examples, sources, targets)
    eval_cond, _ = encode_pairs(policy, eval_examples, eval_sources, eval_sources)
    print(f"editor: encoded {len(x0)} pairs in {time.perf_counter() - start:.0f} s", flush=True)
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=1e-4)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.stop_after)
        if settings.cosine
        else None
    )
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    for step in range(1, settings.stop_after + 1):
        rows = torch.randint(0, len(x0), (settings.batch_size,), generator=generator)
        target = x0[rows]
        eps = torch.randn(target.shape, generator=generator)
        sigma = torch.rand(len(rows), generator=generator)
        z = (1 - sigma[:, None, None]) * target + sigma[:, None, None] * eps
        velocity = policy.velocity(z, sigma, cond.index_select(rows))
        loss = ((velocity - (eps - target)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if step % settings.eval_every == 0 or step == settings.stop_after:
            policy.transformer.eval()
            edits = generate(policy, eval_cond, settings.eval_steps, seed=0)
            success, preservation, score = edit_scores(edits, eval_examples, references).mean(0)
            policy.transformer.train()
            history.append((step, float(score)))
            print(
                f"editor step {step}: loss {loss.item():.4f} held-out success {success:.3f} "
                f"preservation {preservation:.3f} score {score:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if on_eval is not None:
                on_eval(step, score)
    policy.transformer.eval()
    return history
