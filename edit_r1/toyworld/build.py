"""Build the toy world: train the VAE, the base editor and the judge, and save them as checkpoints.

``python -m edit_r1.toyworld build --out DIR [--stage vae|editor|judge ...] [--seed 0]``

writes ``DIR/qwen_image_edit_plus/`` (a ``QwenImageEditPlusPipeline`` folder), ``DIR/judge_qwen2_5_vl/``
(a Qwen2.5-VL-Instruct-style folder for the reward server) and ``DIR/toyworld.json`` (the
measured numbers: reconstruction PSNR, base-editor rule score per training step, judge rank
correlation). Stages run in order and each one reads the folders the previous ones wrote, so a
stage can be re-run alone. Everything is seeded; see ``docs/toyworld.md`` for the measured run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from edit_r1.toyworld import world
from edit_r1.toyworld.editor import EditorTraining, train_editor
from edit_r1.toyworld.judge import JudgeTraining
from edit_r1.toyworld.vae import VaeTraining, held_out_psnr, latent_statistics, qwen_vae, train_vae

STAGES = ("vae", "editor", "judge")
QWEN_DIR, JUDGE_DIR, REPORT = "qwen_image_edit_plus", "judge_qwen2_5_vl", "toyworld.json"


def _update_report(out: Path, key: str, value: dict) -> None:
    path = out / REPORT
    report = json.loads(path.read_text()) if path.exists() else {}
    report[key] = value
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def build_vae(out: Path, seed: int) -> None:
    """Train the Qwen-Image VAE, fix its latent statistics, refine its decoder; save it.

    1. encoder and decoder together (one-cycle schedule over 1000 steps, stopped after 200);
    2. ``latents_mean`` / ``latents_std`` from the posterior means of 128 held-out images;
    3. the decoder alone (one-cycle over 800 steps, stopped after 100): the encoder, and so the
       latents the editor is trained on, stay fixed while the reconstruction improves.
    """
    from edit_r1.toyworld.vae import _image_pool

    start = time.perf_counter()
    vae = qwen_vae(seed)
    train_vae(vae, world.SIZE, world.TASKS, VaeTraining(seed=seed), video=True)
    held_out = _image_pool(128, world.SIZE, seed=9000 + seed, tasks=world.TASKS)
    joint_psnr = held_out_psnr(vae, held_out, video=True)
    mean, std = latent_statistics(vae, held_out, video=True)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    decoder = VaeTraining(steps=800, stop_after=100, seed=seed)
    train_vae(vae, world.SIZE, world.TASKS, decoder, video=True, decoder_only=True)
    vae.requires_grad_(False)
    vae.save_pretrained(out / QWEN_DIR / "vae", safe_serialization=True)
    psnr = held_out_psnr(vae, held_out, video=True)
    print(f"vae: held-out PSNR {joint_psnr:.2f} dB -> {psnr:.2f} dB after decoder refinement", flush=True)
    report = {
        "held_out_psnr_db": round(psnr, 2),
        "held_out_psnr_db_before_decoder_refinement": round(joint_psnr, 2),
    }
    _update_report(
        out,
        "vae",
        dict(report, latents_mean=mean, latents_std=std, seconds=round(time.perf_counter() - start)),
    )


def build_editor(out: Path, seed: int, settings: EditorTraining | None = None) -> None:
    """Train the base editor on top of the saved VAE and save the whole pipeline folder."""
    settings = settings or EditorTraining(seed=seed)
    policy = world.untrained_policy(out / QWEN_DIR / "vae", seed)
    start = time.perf_counter()
    history = train_editor(policy, world.SIZE, world.TASKS, settings)
    world.save_pipeline(policy, out / QWEN_DIR)
    _update_report(
        out,
        "editor",
        {
            "held_out_rule_score": [[s, round(v, 4)] for s, v in history],
            "steps": settings.stop_after,
            "seconds": round(time.perf_counter() - start),
        },
    )


def build_judge(out: Path, seed: int, settings: JudgeTraining | None = None) -> None:
    """Fine-tune the judge on synthetic and base-editor edits; save the judge folder."""
    from edit_r1.toyworld.judge import train_world_judge

    settings = settings or JudgeTraining(seed=seed)
    start = time.perf_counter()
    result = train_world_judge(out / QWEN_DIR, out / JUDGE_DIR, settings)
    _update_report(out, "judge", dict(result, seconds=round(time.perf_counter() - start)))


def build(out: str | Path, stages: tuple[str, ...] = STAGES, seed: int = 0) -> Path:
    """Run the ``stages`` (in the order of :data:`STAGES`) into ``out``."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown toy-world stage(s) {unknown}; choose from {list(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    builders = {"vae": build_vae, "editor": build_editor, "judge": build_judge}
    for stage in STAGES:
        if stage in stages:
            builders[stage](out, seed)
    return out
