"""Fine-tune the toy judge (a small Qwen2.5-VL) so that its expected digit score tracks the rule score.

The reward server scores an edit as ``sum_k k p_k / 5`` with ``p = softmax(logits of "0".."5")`` at
the first generated position of the judge prompt (``reward_server/scoring.py``). Here the same
prompt is built exactly as the server builds it (``reward_server.prompt_template`` + the judge's
chat template, left padding) and the six digit logits are trained towards the two-hot
distribution of the rule score ``s = toy_target_color_score(edit)``::

    y = 5 s,  q_floor(y) = 1 - (y - floor(y)),  q_floor(y)+1 = y - floor(y)   (so E_q[k] / 5 = s)
    loss = cross_entropy(softmax(digit logits), q) + (sum_k k p_k / 5 - s)^2 * mse_weight

(the squared error of the expected score itself speeds up learning the ranking).

The training edits span the whole quality range: perfect and partial edits, blends of source and
target, the right colour on the wrong shape, wrong colours, noise and blur, the unchanged source,
and (optionally) outputs of the base editor at several training stages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from edit_r1.data.toy import COLORS, Scene, Task, apply_task, metadata_record, toy_target_color_score
from edit_r1.toyworld.images import scene_pairs


@dataclass(frozen=True)
class JudgeTraining:
    """``steps`` sets the one-cycle learning-rate schedule; training stops after ``stop_after``."""

    steps: int = 1500
    stop_after: int = 1500
    batch_size: int = 16
    learning_rate: float = 2e-3
    num_train: int = 2048
    num_eval: int = 128
    eval_every: int = 100
    mse_weight: float = 4.0
    seed: int = 0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # ties share their average rank
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


def _wrong_shape_edit(scene: Scene, task: Task, rng: np.random.Generator) -> Image.Image:
    """The requested colour applied to another shape (or the target shape in a wrong colour)."""
    others = [s.kind for s in scene.shapes if s.kind != task.shape]
    if task.kind == "recolor" and others:
        return apply_task(scene, Task("recolor", str(rng.choice(others)), task.color)).render()
    used = {scene.background, task.color} | {s.color for s in scene.shapes}
    wrong = str(rng.choice([c for c in COLORS if c not in used]))
    return apply_task(scene, Task(task.kind, task.shape, wrong)).render()


def degraded_edit(scene: Scene, task: Task, rng: np.random.Generator) -> Image.Image:
    """One edit of random quality: a blend, a partial, wrong or unchanged edit, then noise / blur."""
    source = np.asarray(scene.render(), dtype=np.float32)
    target = np.asarray(apply_task(scene, task).render(), dtype=np.float32)
    kind = rng.choice(["perfect", "blend", "partial", "wrong", "source"], p=[0.25, 0.2, 0.3, 0.15, 0.1])
    if kind == "perfect":
        edit = target
    elif kind == "blend":
        edit = source + rng.uniform(0.6, 1) * (target - source)  # the rule's colour tolerance is tight
    elif kind == "partial":
        mask = np.zeros(source.shape[:2], dtype=np.float32)
        h, w = mask.shape
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y0 : y0 + int(rng.integers(4, h)), x0 : x0 + int(rng.integers(4, w))] = 1
        edit = source + mask[..., None] * (target - source)
    elif kind == "wrong":
        edit = np.asarray(_wrong_shape_edit(scene, task, rng), dtype=np.float32)
    else:
        edit = source
    edit = edit + rng.normal(0, rng.choice([0, 4, 8, 16]), edit.shape)
    image = Image.fromarray(np.clip(edit, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return image


def synthetic_triples(num: int, size: int, seed: int, tasks: tuple[str, ...]):
    """(sources, edits, records) of ``num`` toy edits of random quality."""
    examples, sources, _ = scene_pairs(num, size, seed, tasks)
    rng = np.random.default_rng(seed)
    edits = [degraded_edit(scene, task, rng) for scene, task in examples]
    records = [metadata_record(scene, task, "") for scene, task in examples]
    return sources, edits, records


def two_hot(scores: torch.Tensor, max_rating: int = 5) -> torch.Tensor:
    """(B,) scores in [0, 1] -> (B, max_rating + 1) two-hot distributions with mean rating 5 s."""
    y = scores.clamp(0, 1) * max_rating
    low = y.floor().long().clamp(max=max_rating - 1)
    frac = y - low
    q = torch.zeros(len(y), max_rating + 1)
    q.scatter_(1, low[:, None], (1 - frac)[:, None])
    q.scatter_add_(1, (low + 1)[:, None], frac[:, None])
    return q


class JudgeInputs:
    """The reward server's transformers-backend prompt for (source, edit, instruction, requirement)."""

    def __init__(self, processor, template: str) -> None:
        from reward_server.scoring import digit_token_ids

        self.processor, self.template = processor, template
        processor.tokenizer.padding_side = "left"
        self.digit_ids = digit_token_ids(processor.tokenizer)

    def __call__(self, sources, edits, records) -> dict[str, torch.Tensor]:
        from reward_server.prompt_template import chat_messages, render_prompt

        placeholder = {"type": "image"}
        prompts = [
            self.processor.apply_chat_template(
                chat_messages(
                    render_prompt(r["prompt"], r["requirement"], self.template), placeholder, placeholder
                ),
                tokenize=False,
                add_generation_prompt=True,
            )
            for r in records
        ]
        images = [image for pair in zip(sources, edits, strict=True) for image in pair]
        return dict(self.processor(text=prompts, images=images, padding=True, return_tensors="pt"))


def digit_logits(judge, inputs: dict[str, torch.Tensor], digit_ids: list[int]) -> torch.Tensor:
    """(B, 6) logits of "0".."5" at the last (first generated) position, as the server reads them."""
    return judge(**inputs, logits_to_keep=1).logits[:, -1, digit_ids].float()


def expected_scores(logits: torch.Tensor) -> torch.Tensor:
    """sum_k k softmax(logits)_k / 5."""
    return (torch.softmax(logits, dim=-1) * torch.arange(logits.shape[-1])).sum(-1) / (logits.shape[-1] - 1)


def rule_labels(edits, records) -> torch.Tensor:
    return torch.tensor(
        [toy_target_color_score(e, r) for e, r in zip(edits, records, strict=True)], dtype=torch.float32
    )


@torch.no_grad()
def judge_scores(judge, encode: JudgeInputs, sources, edits, records, batch: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(edits), batch):
        chunk = slice(start, start + batch)
        inputs = encode(sources[chunk], edits[chunk], records[chunk])
        out.append(expected_scores(digit_logits(judge, inputs, encode.digit_ids)))
    return torch.cat(out).numpy()


def train_judge(
    judge, encode: JudgeInputs, train, held_out, settings: JudgeTraining, on_eval=None
) -> list[tuple[int, float]]:
    """Train ``judge`` in place on ``train`` = (sources, edits, records); returns (step, Spearman)."""
    sources, edits, records = train
    labels = rule_labels(edits, records)
    held_labels = rule_labels(held_out[1], held_out[2]).numpy()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    generator = torch.Generator().manual_seed(settings.seed)
    history, start = [], time.perf_counter()
    judge.train()
    for step in range(1, min(settings.steps, settings.stop_after) + 1):
        rows = torch.randint(0, len(edits), (settings.batch_size,), generator=generator).tolist()
        inputs = encode([sources[i] for i in rows], [edits[i] for i in rows], [records[i] for i in rows])
        logits = digit_logits(judge, inputs, encode.digit_ids)
        target = labels[rows]
        cross_entropy = -(two_hot(target) * torch.log_softmax(logits, -1)).sum(-1).mean()
        loss = cross_entropy + settings.mse_weight * ((expected_scores(logits) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(judge.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.eval_every == 0:
            judge.eval()
            rho = spearman(judge_scores(judge, encode, *held_out), held_labels)
            judge.train()
            history.append((step, rho))
            if on_eval is not None:
                on_eval(step, rho)
            print(
                f"judge step {step}: loss {loss.item():.4f} held-out Spearman {rho:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    judge.eval()
    return history


def editor_triples(pipeline_dir, num: int, size: int, seed: int, tasks: tuple[str, ...]):
    """(sources, edits, records) of base-editor edits at 1-8 Euler steps (varied quality)."""
    from edit_r1.toyworld import world
    from edit_r1.toyworld.editor import encode_pairs, generate
    from edit_r1.toyworld.images import to_images

    policy = world.load_policy(pipeline_dir, use_lora=False)
    examples, sources, _ = scene_pairs(num, size, seed, tasks)
    cond, _ = encode_pairs(policy, examples, sources, sources)
    edits = []
    for start in range(0, num, 32):
        rows = list(range(start, min(num, start + 32)))
        steps = 1 + (start // 32) % 8
        edits += to_images(generate(policy, cond.index_select(rows), steps, seed=seed + start))
    return sources, edits, [metadata_record(scene, task, "") for scene, task in examples]


def build_judge_model(out, seed: int):
    """A fresh toy judge (Qwen2.5-VL: text 2 layers x 64, 4 heads; vision 1 block x 32) saved to ``out``."""
    from pathlib import Path

    from edit_r1.models import tiny
    from edit_r1.toyworld.world import world_tokenizer

    tokenizer = world_tokenizer(named_vision_tokens=False)
    judge = tiny._qwen2_5_vl(tokenizer, hidden=64, layers=2, seed=21 + seed, vision_hidden=32, heads=4)
    judge.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tiny._write_real_style_processor_files(Path(out))
    return judge


def train_world_judge(pipeline_dir, out, settings: JudgeTraining) -> dict:
    """Train the toy judge on synthetic edits; save it; return its held-out rank correlations
    (on synthetic edits and on edits of the base editor in ``pipeline_dir``)."""
    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    judge = build_judge_model(out, settings.seed)
    encode = JudgeInputs(load_qwen_vl_processor(out), world.JUDGE_TEMPLATE)
    train = synthetic_triples(settings.num_train, world.SIZE, 4000 + settings.seed, world.TASKS)
    held_synthetic = synthetic_triples(settings.num_eval, world.SIZE, 5000 + settings.seed, world.TASKS)
    history = train_judge(judge, encode, train, held_synthetic, settings)
    judge.save_pretrained(out, safe_serialization=True)
    held_edited = editor_triples(
        pipeline_dir, settings.num_eval, world.SIZE, 7000 + settings.seed, world.TASKS
    )
    result = {"spearman_history": [[s, round(r, 4)] for s, r in history], "steps": settings.stop_after}
    for name, triples in (("synthetic", held_synthetic), ("base_editor", held_edited)):
        scores = judge_scores(judge, encode, *triples)
        result[f"held_out_spearman_{name}"] = round(spearman(scores, rule_labels(*triples[1:]).numpy()), 4)
    print(f"judge: {result}", flush=True)
    return result
