"""Build the toy world: train the VAE, the base editor and the judge, and save them as checkpoints.

``python -m edit_r1.toyworld build --out DIR [--stage vae|editor|editor_partial|judge|judge_pairwise ...] [--seed 0] [--family F]``

``--family kontext`` builds the FLUX.1-Kontext editor instead (``DIR/flux_kontext/``, stages vae
and editor, numbers under the ``kontext_*`` keys of ``toyworld.json``); the judge is shared.

writes ``DIR/qwen_image_edit_plus/`` (a ``QwenImageEditPlusPipeline`` folder), ``DIR/judge_qwen2_5_vl/``
(a Qwen2.5-VL-Instruct-style folder for the reward server), ``DIR/judge_qwen2_5_vl_pairwise/`` (that
judge taught the pairwise question as well, for the ``pairwise_mllm`` reward) and ``DIR/toyworld.json`` (the
measured numbers: reconstruction PSNR, base-editor rule score per training step, judge rank
correlation). Stages run in order and each one reads the folders the previous ones wrote, so a
stage can be re-run alone. Everything is seeded; see ``docs/toyworld.md`` for the measured run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edit_r1.toyworld import world
from edit_r1.toyworld.editor import EditorTraining, train_editor
from edit_r1.toyworld.judge import JudgeTraining
from edit_r1.toyworld.pairwise_judge import PairwiseTraining
from edit_r1.toyworld.vae import VaeTraining, flux_vae, held_out_psnr, latent_statistics, qwen_vae, train_vae

STAGES = ("vae", "editor", "editor_partial", "judge", "judge_pairwise")
JUDGE_STAGES = ("judge", "judge_pairwise")  # shared by every family: stages of the Qwen build only
QWEN_DIR, JUDGE_DIR, REPORT = "qwen_image_edit_plus", "judge_qwen2_5_vl", "toyworld.json"
PAIRWISE_JUDGE_DIR = "judge_qwen2_5_vl_pairwise"
KONTEXT_DIR = "flux_kontext"


@dataclass(frozen=True)
class ToyFamily:
    """How one editor family's toy pipeline is made: folder, VAE, untrained policy, saver, report keys.

    ``video``: the VAE takes (B, C, T, H, W); ``vae_stats``: writes the latent statistics into the
    VAE config (per-channel lists for Qwen-Image, one shift and scale for FLUX).
    """

    folder: str
    make_vae: Callable[[int], torch.nn.Module]
    video: bool
    vae_stats: Callable[[torch.nn.Module, list, list], None]
    untrained_policy: Callable
    save: Callable
    report_prefix: str
    editor: EditorTraining
    decay: EditorTraining | None = None  # a second editor phase from the first one's weights
    load: Callable | None = None  # loads the saved pipeline folder as a full-weight policy
    partial: EditorTraining | None = None  # the editor_partial stage: from the saved editor's weights


def _qwen_stats(vae, mean: list, std: list) -> None:
    vae.register_to_config(latents_mean=mean, latents_std=std)


def _flux_stats(vae, mean: list, std: list) -> None:
    """One shift (mean of the channel means) and scale (1 / RMS of the channel stds), as FLUX's VAE."""
    shift = sum(mean) / len(mean)
    spread = (sum(s * s + (m - shift) ** 2 for m, s in zip(mean, std, strict=True)) / len(std)) ** 0.5
    vae.register_to_config(shift_factor=round(shift, 5), scaling_factor=round(1.0 / spread, 5))


# The base editors (docs/toyworld.md): 3000 steps at a constant learning rate, half of the pairs
# asking to keep the source unchanged (the editor learns to keep the scene from every pair and to
# edit only sometimes: room for RL), then a decay phase that settles the weights.
EDITOR = EditorTraining(stop_after=3000, keep_share=0.5)
EDITOR_DECAY = EditorTraining(stop_after=1000, keep_share=0.5, cosine=True)
# The editor_partial stage: 4000 steps on partial edits of strength sqrt(U(0, 1)) from the saved
# editor, the learning rate decayed from 1e-3 to 0: the editor keeps one mode, a partial edit that
# keeps the scene, and RL on a reward that keeps the scene can strengthen it (docs/toyworld.md).
EDITOR_PARTIAL = EditorTraining(stop_after=4000, cosine=True, partial_edits=True)
FAMILIES = {
    "qwen_image_edit": ToyFamily(
        QWEN_DIR, qwen_vae, True, _qwen_stats, world.untrained_policy, world.save_pipeline, "", EDITOR,
        EDITOR_DECAY, world.load_policy, EDITOR_PARTIAL,
    ),
    "kontext": ToyFamily(
        KONTEXT_DIR, flux_vae, False, _flux_stats, world.untrained_kontext_policy,
        world.save_kontext_pipeline, "kontext_", EDITOR, EDITOR_DECAY, world.load_kontext_policy,
    ),
}  # fmt: skip


def _update_report(out: Path, key: str, value: dict) -> None:
    path = out / REPORT
    report = json.loads(path.read_text()) if path.exists() else {}
    report[key] = value
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def build_vae(out: Path, seed: int, family: ToyFamily = FAMILIES["qwen_image_edit"]) -> None:
    """Train the family's VAE, fix its latent statistics, refine its decoder; save it.

    1. encoder and decoder together (one-cycle schedule over 1000 steps, stopped after 200);
    2. ``latents_mean`` / ``latents_std`` from the posterior means of 128 held-out images;
    3. the decoder alone (one-cycle over 800 steps, stopped after 100): the encoder, and so the
       latents the editor is trained on, stay fixed while the reconstruction improves.
    """
    from edit_r1.toyworld.vae import _image_pool

    start = time.perf_counter()
    vae, video = family.make_vae(seed), family.video
    train_vae(vae, world.SIZE, world.TASKS, VaeTraining(seed=seed), video=video)
    held_out = _image_pool(128, world.SIZE, seed=9000 + seed, tasks=world.TASKS)
    joint_psnr = held_out_psnr(vae, held_out, video=video)
    mean, std = latent_statistics(vae, held_out, video=video)
    family.vae_stats(vae, mean, std)
    decoder = VaeTraining(steps=800, stop_after=100, seed=seed)
    train_vae(vae, world.SIZE, world.TASKS, decoder, video=video, decoder_only=True)
    vae.requires_grad_(False)
    vae.save_pretrained(out / family.folder / "vae", safe_serialization=True)
    psnr = held_out_psnr(vae, held_out, video=video)
    print(f"vae: held-out PSNR {joint_psnr:.2f} dB -> {psnr:.2f} dB after decoder refinement", flush=True)
    report = {
        "held_out_psnr_db": round(psnr, 2),
        "held_out_psnr_db_before_decoder_refinement": round(joint_psnr, 2),
    }
    _update_report(
        out,
        family.report_prefix + "vae",
        dict(report, latents_mean=mean, latents_std=std, seconds=round(time.perf_counter() - start)),
    )


def build_editor(
    out: Path,
    seed: int,
    family: ToyFamily = FAMILIES["qwen_image_edit"],
    settings: EditorTraining | None = None,
) -> None:
    """Train the base editor on top of the saved VAE and save the whole pipeline folder."""
    settings = settings or dataclasses.replace(family.editor, seed=seed)
    policy = family.untrained_policy(out / family.folder / "vae", seed)
    start = time.perf_counter()
    history = train_editor(policy, world.SIZE, world.TASKS, settings)
    report = {"held_out_rule_score": [[s, round(v, 4)] for s, v in history], "steps": settings.stop_after}
    if family.decay is not None:  # the second phase: a fresh optimizer, the learning rate decayed to 0
        policy.transformer.requires_grad_(True)
        policy.transformer.train()
        decay = dataclasses.replace(family.decay, seed=seed)
        history = train_editor(policy, world.SIZE, world.TASKS, decay)
        report.update(
            held_out_rule_score_decay=[[s, round(v, 4)] for s, v in history], decay_steps=decay.stop_after
        )
    family.save(policy, out / family.folder)
    _update_report(
        out, family.report_prefix + "editor", dict(report, seconds=round(time.perf_counter() - start))
    )


def save_transformer(transformer: torch.nn.Module, folder: Path) -> None:
    """Overwrite the pipeline's ``transformer/`` folder with these weights. Only the transformer is
    written: the rest of the folder stays as the editor stage saved it (saving the loaded policy
    as a whole pipeline would write the trainer's processor wrapper in place of the stock one), and
    the config loses the ``_name_or_path`` of the folder it was loaded from."""
    transformer.requires_grad_(False)
    transformer.save_pretrained(folder, safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_partial_editor(
    out: Path,
    seed: int,
    family: ToyFamily = FAMILIES["qwen_image_edit"],
    settings: EditorTraining | None = None,
) -> None:
    """Train the saved base editor further on partial edits (``family.partial``) and save it back."""
    settings = settings or dataclasses.replace(family.partial, seed=seed)
    policy = family.load(out / family.folder, use_lora=False)
    policy.transformer.requires_grad_(True)
    policy.transformer.train()
    start = time.perf_counter()
    history = train_editor(policy, world.SIZE, world.TASKS, settings)
    save_transformer(policy.transformer, out / family.folder / "transformer")
    report = {"held_out_rule_score": [[s, round(v, 4)] for s, v in history], "steps": settings.stop_after}
    _update_report(
        out, family.report_prefix + "editor_partial", dict(report, seconds=round(time.perf_counter() - start))
    )


def build_judge(
    out: Path, seed: int, family: ToyFamily | None = None, settings: JudgeTraining | None = None
) -> None:
    """Fine-tune the judge on synthetic and base-editor edits; save the judge folder."""
    from edit_r1.toyworld.judge import train_world_judge

    settings = settings or JudgeTraining(seed=seed)
    start = time.perf_counter()
    result = train_world_judge(out / QWEN_DIR, out / JUDGE_DIR, settings)
    _update_report(out, "judge", dict(result, seconds=round(time.perf_counter() - start)))


def build_pairwise_judge(
    out: Path, seed: int, family: ToyFamily | None = None, settings: PairwiseTraining | None = None
) -> None:
    """Teach a copy of the saved judge the pairwise question too; save it as its own folder."""
    from edit_r1.toyworld.pairwise_judge import train_world_pairwise_judge

    settings = settings or PairwiseTraining(seed=seed)
    start = time.perf_counter()
    result = train_world_pairwise_judge(out / QWEN_DIR, out / JUDGE_DIR, out / PAIRWISE_JUDGE_DIR, settings)
    _update_report(out, "judge_pairwise", dict(result, seconds=round(time.perf_counter() - start)))


def resolve_stages(family: str, stages: tuple[str, ...] | None) -> tuple[str, ...]:
    """The stages to run (None = all of the family's); ValueError naming a bad family or stage.
    The judge is shared by every family: only the Qwen-Image-Edit build has that stage, and the
    partial-edit phase (``editor_partial``) too: on the Kontext editor it lowered held-out
    preservation to 0.775 (docs/toyworld.md)."""
    if family not in FAMILIES:
        raise ValueError(f"no toy world for family {family!r}; choose from {sorted(FAMILIES)}")
    available = STAGES if family == "qwen_image_edit" else tuple(s for s in STAGES if s not in JUDGE_STAGES)
    if FAMILIES[family].partial is None:  # no partial-edit phase for this family (docs/toyworld.md)
        available = tuple(s for s in available if s != "editor_partial")
    unknown = [s for s in stages or () if s not in available]
    if unknown:
        raise ValueError(f"stage(s) {unknown} not in the {family} toy world; choose from {list(available)}")
    return available if stages is None else tuple(stages)


def build(
    out: str | Path, stages: tuple[str, ...] | None = None, seed: int = 0, family: str = "qwen_image_edit"
) -> Path:
    """Run the ``stages`` (in the order of :data:`STAGES`; None = all of the family's) of
    ``family``'s toy world into ``out``."""
    stages = resolve_stages(family, stages)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    builders = {
        "vae": build_vae,
        "editor": build_editor,
        "editor_partial": build_partial_editor,
        "judge": build_judge,
        "judge_pairwise": build_pairwise_judge,
    }
    for stage in STAGES:
        if stage in stages:
            builders[stage](out, seed, FAMILIES[family])
    return out
