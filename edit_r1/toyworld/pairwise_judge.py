"""Teach the toy judge the pairwise question, for Pref-GRPO's reward (``pairwise_mllm``).

The reward server scores a pairwise item [source, edit 1, edit 2, text] as
``p(edit 1 better) = softmax(logit "1", logit "2")[0]`` at the first generated position of the
pairwise prompt (``reward_server/scoring.py``). Starting from the trained pointwise judge, those two
logits are trained towards the Bradley-Terry preference of the two edits' rule scores::

    p* = sigmoid((s_1 - s_2) / temperature),   loss = -(p* log p_1 + (1 - p*) log p_2)

on pairs of edits of the same item: two synthetic edits of random quality, two samples of the
base editor by the same sampler and weights (as two rollouts of one RL group), or a good edit
against a hard negative (:func:`hard_pairs`: a flat field of the requested colour, the wrong shape
recoloured, the source unchanged, a kept shape erased, moved or bled over; or, as name pairs, the
named shape recoloured against another), each pair shown in both orders. Every step also takes a batch of the pointwise question with its own loss
(:func:`edit_r1.toyworld.judge.judge_loss`), so the judge keeps answering both questions as the real
one does. Both tasks state the auxiliary facts of their edits (``judge.auxiliary_targets``) and
which shape covers each token of the source image (``judge.shape_token_loss``) through heads that
are not saved.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch

from edit_r1.data.toy import SHAPES
from edit_r1.toyworld.images import scene_pairs
from edit_r1.toyworld.judge import (
    EncodedItems,
    JudgeInputs,
    JudgeTraining,
    answer_logits_and_facts,
    as_received,
    auxiliary_targets,
    concat_items,
    degraded_edit,
    editor_triples,
    encode_in_chunks,
    encoded_scores,
    hard_negatives,
    held_out_spearmans,
    judge_data,
    judge_loss,
    judge_records,
    rule_labels,
    sampling_weights,
    shape_token_targets,
    spearman,
    synthetic_triples,
)

# :func:`hard_pairs`: the good edit of each pair, and the hard negative it must beat
GOOD_KINDS = ("perfect", "blend", "partial")
HARD_NEGATIVE_KINDS = ("flat", "wrong", "source", "erase", "move", "bleed")


@dataclass(frozen=True)
class PairwiseTraining:
    """``steps`` sets the one-cycle learning-rate schedule; training stops after ``stop_after``."""

    steps: int = 3000
    stop_after: int = 3000
    batch_size: int = 16
    learning_rate: float = 2e-3  # 1e-3 measured: pair accuracy 0.870 / Spearman 0.776 at 3000 steps
    num_synthetic: int = 1024  # items with two synthetic edits each
    num_editor: int = 2048  # items with two base-editor samples each
    num_hard: int = 1024  # items with a good edit and a hard negative (:func:`hard_pairs`)
    hard_pair_share: float = 0.3  # share of each pair batch drawn from them (the rest in proportion)
    num_name_pairs: int = 768  # recolours: the named shape against another (:func:`hard_pairs`)
    name_pair_share: float = 0.2  # share of each pair batch drawn from them
    shape_token_weight: float = 1.0  # weight of ``judge.shape_token_loss`` (0: none)
    num_eval: int = 256
    eval_every: int = 250
    temperature: float = 0.05
    pointwise_weight: float = 1.0
    auxiliary_weight: float = 1.0
    jpeg_share: float = 0.5
    seed: int = 0


class PairInputs(JudgeInputs):
    """The reward server's transformers-backend prompt of a pairwise item (source, edit 1, edit 2);
    ``answer_ids``: the token ids of the answers "1" and "2"."""

    def __init__(self, processor, template: str) -> None:
        from reward_server.scoring import PAIRWISE_ANSWER_INDEX

        super().__init__(processor, template)
        self.answer_ids = [self.digit_ids[index] for index in PAIRWISE_ANSWER_INDEX]

    def __call__(self, sources, firsts, seconds, records) -> dict[str, torch.Tensor]:
        from reward_server.prompt_template import render_pairwise_prompt

        texts = [render_pairwise_prompt(r["prompt"], r["requirement"], self.template) for r in records]
        return self.processor_inputs(texts, list(zip(sources, firsts, seconds, strict=True)))


def synthetic_pairs(num: int, size: int, seed: int, tasks: tuple[str, ...]):
    """(sources, first edits, second edits, records): two synthetic edits of random quality per item."""
    sources, firsts, records = synthetic_triples(num, size, seed, tasks)
    examples, _, _ = scene_pairs(num, size, seed, tasks)
    rng = np.random.default_rng(seed + 1)
    seconds = [degraded_edit(scene, task, rng) for scene, task in examples]
    return sources, firsts, seconds, records


def hard_pairs(
    num: int,
    size: int,
    seed: int,
    tasks: tuple[str, ...],
    good_kinds: tuple[str, ...] = GOOD_KINDS,
    negative_kinds: tuple[str, ...] = HARD_NEGATIVE_KINDS,
):
    """(sources, good edits, hard negatives, records): per item an edit of a kind of ``good_kinds``
    and one of ``negative_kinds`` (``judge.degraded_edit``). The blind pairwise judge preferred the
    flat field to the perfect edit for every held-out item (docs/toyworld.md); pairs of one
    editor's samples or of random synthetic edits rarely hold one.

    With ``tasks=("recolor",)``, ``good_kinds=("perfect",)`` and ``negative_kinds=("wrong",)`` these
    are the pairwise name pairs: the named shape recoloured against another shape recoloured the
    same way, which only reading the named shape tells apart."""
    examples, sources, _ = scene_pairs(num, size, seed, tasks)
    rng = np.random.default_rng(seed)
    goods = [degraded_edit(scene, task, rng, good_kinds) for scene, task in examples]
    negatives = [degraded_edit(scene, task, rng, negative_kinds) for scene, task in examples]
    return sources, goods, negatives, judge_records(examples)


def editor_pairs(pipeline_dir, num: int, size: int, seed: int, tasks: tuple[str, ...]):
    """(sources, first edits, second edits, records): two base-editor samples per item, drawn by the
    same sampler and weights with different noise (:func:`edit_r1.toyworld.judge.editor_triples`)."""
    sources, firsts, records = editor_triples(pipeline_dir, num, size, seed, tasks)
    _, seconds, _ = editor_triples(pipeline_dir, num, size, seed, tasks, sample_seed=seed + 100_000)
    return sources, firsts, seconds, records


def encode_pairs(
    encode: PairInputs, sources, firsts, seconds, records, jpeg_share: float = 0.0, seed: int = 0
) -> EncodedItems:
    """Every pair in both orders: rows ``[0, n)`` show (first, second), rows ``[n, 2n)`` (second,
    first). ``labels`` (2n, 2) are the rule scores of the edit shown first and second; ``auxiliary``
    the facts of both (``judge.auxiliary_targets``); ``shape_tokens`` those of the source image
    (``judge.shape_token_targets``); the images are JPEG-coded for a ``jpeg_share``
    of the items, all three together, as the client sends them."""
    firsts, seconds = [*firsts, *seconds], [*seconds, *firsts]
    sources, records = list(sources) * 2, list(records) * 2
    labels = torch.stack([rule_labels(firsts, records), rule_labels(seconds, records)], 1)
    auxiliary = torch.cat(
        [auxiliary_targets(sources, firsts, records), auxiliary_targets(sources, seconds, records)], 1
    )
    received, firsts, seconds = as_received([sources, firsts, seconds], jpeg_share, seed)
    items = encode_in_chunks(
        lambda part: encode(received[part], firsts[part], seconds[part], records[part]),
        len(records),
        encode.processor.tokenizer.pad_token_id,
        labels,
        auxiliary,
    )
    _, height, _ = items.image_grid_thw[0, 0].tolist()  # patches, merged 2 x 2 into tokens
    items.shape_tokens = shape_token_targets(records, height // 2)
    return items


def pairwise_loss(answer_logits: torch.Tensor, scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of softmax(logit "1", logit "2") against (p*, 1 - p*),
    p* = sigmoid((s_1 - s_2) / temperature); batch mean."""
    target = torch.sigmoid((scores[:, 0] - scores[:, 1]) / temperature)
    log_p = torch.log_softmax(answer_logits, dim=-1)
    return -(target * log_p[:, 0] + (1 - target) * log_p[:, 1]).mean()


@torch.no_grad()
def preferences(judge, items: EncodedItems, answer_ids: list[int], batch: int = 128) -> np.ndarray:
    """p(the edit shown first is better) of every encoded pairwise item."""
    out = []
    for start in range(0, len(items), batch):
        rows = range(start, min(start + batch, len(items)))
        logits = judge(**items.batch(rows), logits_to_keep=1).logits[:, -1, answer_ids].float()
        out.append(torch.softmax(logits, dim=-1)[:, 0])
    return torch.cat(out).numpy()


def pair_agreement(
    judge, items: EncodedItems, answer_ids: list[int], margin: float = 0.02
) -> dict[str, float]:
    """How the judge's preferences on pairs encoded in both orders (:func:`encode_pairs`) agree with
    the rule: both orders averaged as the reward client does, ``p = (p(a, b) + 1 - p(b, a)) / 2``;
    ``accuracy``: share of the pairs whose rule scores differ by more than ``margin`` that the judge
    orders as the rule does; ``spearman``: rank correlation of p with s_a - s_b; ``position_bias``:
    mean of ``p(a, b) + p(b, a) - 1`` (0 for a judge that ignores the order)."""
    half = len(items) // 2
    forward, backward = np.split(preferences(judge, items, answer_ids), [half])
    p = (forward + 1 - backward) / 2
    difference = (items.labels[:half, 0] - items.labels[:half, 1]).numpy()
    decided = np.abs(difference) > margin
    agree = np.sign(p[decided] - 0.5) == np.sign(difference[decided])
    return {
        "accuracy": float(agree.mean()),
        "spearman": spearman(p, difference),
        "position_bias": float((forward + backward - 1).mean()),
        "decided_pairs": int(decided.sum()),
    }


def pair_sampling_weights(settings: PairwiseTraining) -> torch.Tensor:
    """Per-row sampling weights of :func:`pairwise_data`'s pairs (synthetic, base-editor, hard
    pairs and name pairs, each in both orders): a row is a hard pair with probability
    ``hard_pair_share``, a name pair with ``name_pair_share``, else synthetic or base-editor in
    proportion to their numbers."""
    hard, names = 2 * settings.num_hard, 2 * settings.num_name_pairs
    shares = (settings.hard_pair_share if hard else 0.0, settings.name_pair_share if names else 0.0)
    rest = 2 * (settings.num_synthetic + settings.num_editor)
    parts = [torch.full((rest,), (1 - sum(shares)) / rest)]
    parts += [torch.full((n,), share / n) for n, share in zip((hard, names), shares, strict=True) if n]
    return torch.cat(parts).double()


@dataclass
class _Heads:
    """The heads that are not saved: the auxiliary facts of pairs and of pointwise items, and the
    shape under each source-image token (None when ``shape_token_weight`` is 0)."""

    pairs: torch.nn.Module
    pointwise: torch.nn.Module
    tokens: torch.nn.Module | None

    def parameters(self) -> list[torch.nn.Parameter]:
        heads = [self.pairs, self.pointwise, *([self.tokens] if self.tokens is not None else [])]
        return [p for head in heads for p in head.parameters()]


def _pointwise_and_pairwise_loss(
    judge, heads: _Heads, sets: dict[str, EncodedItems], weights: dict[str, torch.Tensor],
    generator, settings: PairwiseTraining, answer_ids: list[int], digit_ids: list[int],
) -> torch.Tensor:  # fmt: skip
    token_weight = settings.shape_token_weight
    pairs, pointwise = sets["pairs"], sets["pointwise"]
    rows = torch.multinomial(weights["pairs"], settings.batch_size, replacement=True, generator=generator)
    answers, facts = answer_logits_and_facts(
        judge, heads.pairs, pairs, rows, answer_ids, heads.tokens, token_weight
    )
    loss = (
        pairwise_loss(answers, pairs.labels[rows], settings.temperature) + settings.auxiliary_weight * facts
    )
    rows = torch.multinomial(weights["pointwise"], settings.batch_size, replacement=True, generator=generator)
    digits, facts = answer_logits_and_facts(
        judge, heads.pointwise, pointwise, rows, digit_ids, heads.tokens, token_weight
    )
    point = judge_loss(digits, pointwise.labels[rows], JudgeTraining().mse_weight)
    return loss + settings.pointwise_weight * (point + settings.auxiliary_weight * facts)


def _evaluate(judge, sets, answer_ids, digit_ids) -> tuple[dict[str, float], float]:
    judge.eval()
    pairs = pair_agreement(judge, sets["held_out_pairs"], answer_ids)
    held = sets["held_out_base_editor"]
    return pairs, spearman(encoded_scores(judge, held, digit_ids), held.labels.numpy())


def train_pairwise(
    judge,
    sets: dict[str, EncodedItems],
    answer_ids: list[int],
    digit_ids: list[int],
    settings: PairwiseTraining,
) -> list[tuple[int, float, float, float]]:
    """Train ``judge`` in place on both questions (module docstring); returns the held-out history
    ``[(step, pair accuracy, pair Spearman, pointwise Spearman)]``."""
    torch.manual_seed(settings.seed)
    hidden = judge.config.text_config.hidden_size
    heads = _Heads(
        *(torch.nn.Linear(hidden, sets[name].auxiliary.shape[1]) for name in ("pairs", "pointwise")),
        torch.nn.Linear(hidden, len(SHAPES)) if settings.shape_token_weight > 0 else None,
    )
    weights = {
        "pairs": pair_sampling_weights(settings),
        "pointwise": sampling_weights(JudgeTraining(seed=settings.seed)),
    }
    parameters = [*judge.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    generator = torch.Generator().manual_seed(settings.seed)
    history, start = [], time.perf_counter()
    for step in range(1, min(settings.steps, settings.stop_after) + 1):
        judge.train()
        loss = _pointwise_and_pairwise_loss(
            judge, heads, sets, weights, generator, settings, answer_ids, digit_ids
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.eval_every == 0:
            pairs, rho = _evaluate(judge, sets, answer_ids, digit_ids)
            history.append((step, round(pairs["accuracy"], 4), round(pairs["spearman"], 4), round(rho, 4)))
            print(
                f"pairwise judge step {step}: loss {loss.item():.4f} held-out pair accuracy "
                f"{pairs['accuracy']:.3f} Spearman {pairs['spearman']:.3f}, pointwise Spearman {rho:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    judge.eval()
    return history


def pairwise_data(pipeline_dir, point: JudgeInputs, pair: PairInputs, settings: PairwiseTraining):
    """The pointwise judge's training and held-out sets, plus training pairs (synthetic,
    base-editor on the items the pointwise judge was trained on, :func:`hard_pairs` and name
    pairs) and held-out base-editor pairs."""
    from edit_r1.toyworld import world

    seed, size, tasks = settings.seed, world.SIZE, world.TASKS
    sets = judge_data(pipeline_dir, point, JudgeTraining(seed=seed))
    synthetic = synthetic_pairs(settings.num_synthetic, size, 4000 + seed, tasks)
    edited = editor_pairs(pipeline_dir, settings.num_editor, size, 6000 + seed, tasks)
    pairs = [
        encode_pairs(pair, *synthetic, jpeg_share=settings.jpeg_share, seed=seed),
        encode_pairs(pair, *edited, jpeg_share=settings.jpeg_share, seed=seed + 1),
    ]
    if settings.num_hard:
        hard = hard_pairs(settings.num_hard, size, 9600 + seed, tasks)
        pairs.append(encode_pairs(pair, *hard, jpeg_share=settings.jpeg_share, seed=seed + 2))
    if settings.num_name_pairs:
        names = hard_pairs(settings.num_name_pairs, size, 9700 + seed, ("recolor",), ("perfect",), ("wrong",))
        pairs.append(encode_pairs(pair, *names, jpeg_share=settings.jpeg_share, seed=seed + 3))
    held_out = editor_pairs(pipeline_dir, settings.num_eval, size, 7000 + seed, tasks)
    return {
        "pointwise": sets["train"],
        "held_out_base_editor": sets["held_out_base_editor"],
        "held_out_synthetic": sets["held_out_synthetic"],
        "pairs": concat_items(pairs, pair.processor.tokenizer.pad_token_id),
        "held_out_pairs": encode_pairs(pair, *held_out),
    }


def pairwise_hard_negatives(judge, pair: PairInputs, num: int = 128, seed: int = 434343) -> dict[str, float]:
    """``perfect_preferred_to_<kind>``: on ``judge.hard_negatives`` of held-out scenes (JPEG-coded as
    the client sends them), the share of items whose perfect edit the judge prefers to their
    ``kind`` edit, both orders averaged as the ``pairwise_mllm`` reward does."""
    from edit_r1.toyworld import world

    sources, records, edits = hard_negatives(num, world.SIZE, seed, world.TASKS)
    result = {}
    for kind, negatives in edits.items():
        if kind == "perfect":
            continue
        items = encode_pairs(pair, sources, edits["perfect"], negatives, records, jpeg_share=1.0, seed=seed)
        forward, backward = np.split(preferences(judge, items, pair.answer_ids), 2)
        preferred = (forward + 1 - backward) / 2 > 0.5
        result[f"perfect_preferred_to_{kind}"] = round(float(preferred.mean()), 4)
    return result


def train_world_pairwise_judge(pipeline_dir, judge_dir, out, settings: PairwiseTraining) -> dict:
    """Copy the pointwise judge in ``judge_dir`` to ``out``, train it on both questions, save it;
    return its held-out numbers (pair accuracy and correlation, pointwise rank correlations)."""
    from transformers import AutoModelForImageTextToText

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    start = time.perf_counter()
    shutil.copytree(judge_dir, out, dirs_exist_ok=True)
    judge = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    processor = load_qwen_vl_processor(out)
    point, pair = JudgeInputs(processor, world.JUDGE_TEMPLATE), PairInputs(processor, world.JUDGE_TEMPLATE)
    sets = pairwise_data(pipeline_dir, point, pair, settings)
    data_seconds = time.perf_counter() - start
    print(f"pairwise judge: {len(sets['pairs'])} training pairs encoded in {data_seconds:.0f} s", flush=True)
    before = pair_agreement(judge.eval(), sets["held_out_pairs"], pair.answer_ids)
    history = train_pairwise(judge, sets, pair.answer_ids, point.digit_ids, settings)
    judge.save_pretrained(out, safe_serialization=True)
    after = pair_agreement(judge, sets["held_out_pairs"], pair.answer_ids)
    result = {
        "history_step_pair_accuracy_pair_spearman_pointwise_spearman": [list(h) for h in history],
        "held_out_pairs_before": {k: round(v, 4) for k, v in before.items()},
        "held_out_pairs": {k: round(v, 4) for k, v in after.items()},
        "steps": settings.stop_after,
        "num_train_pairs": len(sets["pairs"]) // 2,
        "data_seconds": round(data_seconds),
    }
    result.update(held_out_spearmans(judge, sets, point.digit_ids))
    result["hard_negatives"] = pairwise_hard_negatives(judge, pair)
    print(f"pairwise judge: {result}", flush=True)
    return result
