"""The toy judge on the edits of RL-trained policies: how it rates what a policy learned against it,
and fine-tuning it on such edits labelled by the ground truth (the standard remedy for a reward
model the policy has learned to over-please).

A *source* is a policy: the committed base editor (``transformer_dir=None``) or the exported
transformer of a training checkpoint (``<run>/checkpoints/checkpoint-N/transformer``, a diffusers
folder written by ``Checkpointer``). Its edits are drawn with the trainer's samplers
(:data:`ROLLOUT_SAMPLERS`: the ``:toy`` configs' rollout sampler and their evaluation sampler)
and labelled with the ground truth ``toy_edit_scores`` against the world VAE's references, as
:func:`edit_r1.toyworld.judge.judge_records` builds them.

On the held-out policies' edits the report gives the judge's Spearman with the ground truth and,
per item whose policy edit is *hacked* (ground-truth preservation < ``HACKED_PRESERVATION``), whether
the judge scores it above the base editor's edit of the same item with the same sampler and noise
(:func:`hacked_preference`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edit_r1.data.toy import generate_examples, toy_edit_scores
from edit_r1.toyworld.judge import (
    EncodedItems,
    JudgeInputs,
    JudgeTraining,
    concat_items,
    encode_items,
    encoded_scores,
    judge_records,
    sample_edits,
    spearman,
    synthetic_triples,
    train_judge,
)

# (solver, steps): the ``:toy`` configs' rollout sampler (deterministic dpm2, 4 steps) and their
# evaluation sampler (deterministic Euler, 4 steps); both are what a trained policy is judged on.
ROLLOUT_SAMPLERS: tuple[tuple[str, int], ...] = (("dpm2", 4), ("flow", 4))
HACKED_PRESERVATION = 0.5  # an edit keeping less than half of the rest of the scene counts as hacked


@dataclass(frozen=True)
class PolicyEdits:
    """Edits of one source on ``len(records)`` items, one block per sampler (in that order)."""

    sources: list
    edits: list
    records: list[dict]
    preservation: np.ndarray  # ground-truth preservation of each edit
    samplers: list[str]  # the sampler of each edit


def rl_examples(split: str, num: int | None = None) -> list:
    """The (scene, task) items of the ``:toy`` RL dataset's ``split`` (``write_rl_dataset``: seed 0,
    train 256, test 32 items), first ``num`` of them."""
    from edit_r1.toyworld import world

    index = {"train": 0, "test": 1}[split]
    count = {"train": 256, "test": 32}[split] if num is None else num
    return generate_examples(count, world.SIZE, np.random.default_rng([0, index]), world.RL_TASKS)


def held_out_examples(num: int) -> list:
    """The RL test items, then scenes of seed 7000 (the judge build's held-out editor scenes) up to
    ``num`` items: scenes no judge training set and no RL run has seen."""
    from edit_r1.toyworld import world

    examples = rl_examples("test")
    extra = generate_examples(
        max(0, num - len(examples)), world.SIZE, np.random.default_rng(7000), world.RL_TASKS
    )
    return (examples + extra)[:num]


def load_source(pipeline_dir, transformer_dir=None):
    """The committed editor as the trainer loads it, with the transformer weights of
    ``transformer_dir`` (a checkpoint's exported diffusers folder) when given."""
    from edit_r1.toyworld import world

    policy = world.load_policy(pipeline_dir, use_lora=False)
    if transformer_dir is not None:
        trained = type(policy.transformer).from_pretrained(transformer_dir)
        policy.transformer.load_state_dict(trained.state_dict())
    policy.transformer.eval()
    return policy


def policy_edits(pipeline_dir, transformer_dir, examples, seed: int) -> PolicyEdits:
    """The source's edits of ``examples`` with each of :data:`ROLLOUT_SAMPLERS` (initial noise of
    ``seed``, the same for every source, so two sources' edits of an item are paired)."""
    return policy_edit_draws(pipeline_dir, transformer_dir, examples, [seed])[0]


def policy_edit_draws(pipeline_dir, transformer_dir, examples, seeds: list[int]) -> list[PolicyEdits]:
    """:func:`policy_edits` for each of ``seeds``, loading the source and encoding the items once."""
    from edit_r1.toyworld.editor import encode_pairs

    policy = load_source(pipeline_dir, transformer_dir)
    sources = [scene.render() for scene, _ in examples]
    cond, _ = encode_pairs(policy, examples, sources, sources)
    records = judge_records(examples)
    return [_draw(policy, cond, sources, records, seed) for seed in seeds]


def _draw(policy, cond, sources: list, records: list[dict], seed: int) -> PolicyEdits:
    """One :class:`PolicyEdits` of the encoded items ``cond`` with the initial noise of ``seed``."""
    from edit_r1.toyworld.images import to_images

    edits, samplers = [], []
    for solver, steps in ROLLOUT_SAMPLERS:
        for start in range(0, len(records), 64):
            rows = list(range(start, min(len(records), start + 64)))
            latents = sample_edits(policy, cond.index_select(rows), solver, steps, None, seed + start)
            edits += to_images(latents)
        samplers += [f"{solver}{steps}"] * len(records)
    repeat = len(ROLLOUT_SAMPLERS)
    preservation = np.array(
        [toy_edit_scores(e, r).preservation for e, r in zip(edits, records * repeat, strict=True)]
    )
    return PolicyEdits(sources * repeat, edits, records * repeat, preservation, samplers)


def hacked_preference(
    judge_policy: np.ndarray,
    judge_base: np.ndarray,
    truth_policy: np.ndarray,
    truth_base: np.ndarray,
    preservation: np.ndarray,
) -> dict[str, float]:
    """Over the items whose policy edit is hacked (``preservation < HACKED_PRESERVATION``), paired
    with the base editor's edit of the same item: the share the judge scores above the base edit
    (``judge_prefers_hacked``), the share the ground truth does (``truth_prefers_hacked``), and the
    share where the judge prefers the hacked edit while the ground truth prefers the base edit
    (``judge_wrongly_prefers_hacked``), the share where the two agree (``pair_agreement``) and the
    judge's mean over-rating of the hacked edits, ``mean(judge - truth)`` (``overrating_hacked``);
    ``num_hacked`` items."""
    hacked = preservation < HACKED_PRESERVATION
    count = int(hacked.sum())
    if count == 0:
        return {"num_hacked": 0}
    judge_up = judge_policy[hacked] > judge_base[hacked]
    truth_up = truth_policy[hacked] > truth_base[hacked]
    return {
        "num_hacked": count,
        "judge_prefers_hacked": round(float(judge_up.mean()), 4),
        "truth_prefers_hacked": round(float(truth_up.mean()), 4),
        "judge_wrongly_prefers_hacked": round(float((judge_up & ~truth_up).mean()), 4),
        "pair_agreement": round(float((judge_up == truth_up).mean()), 4),
        "overrating_hacked": round(float((judge_policy[hacked] - truth_policy[hacked]).mean()), 4),
    }


def encode_edits(encode: JudgeInputs, edits: PolicyEdits, jpeg_share: float, seed: int) -> EncodedItems:
    """The server's processor inputs of the edits (labels: their ground truth)."""
    return encode_items(encode, edits.sources, edits.edits, edits.records, jpeg_share=jpeg_share, seed=seed)


def _scored(judge, items: EncodedItems, digit_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return encoded_scores(judge, items, digit_ids), items.labels.numpy()


def policy_report(
    judge, digit_ids: list[int], tests: dict[str, tuple[EncodedItems, np.ndarray]], base: EncodedItems
) -> dict:
    """Per test source (its encoded edits and their ground-truth preservation) and in all: the
    judge's Spearman with the ground truth, the mean judge score, truth and preservation, and
    :func:`hacked_preference` against ``base`` (the base editor's edits of the same items, samplers
    and noise)."""
    base_judge, base_truth = _scored(judge, base, digit_ids)
    report, pooled = {}, []
    for name, (items, preservation) in tests.items():
        scores, truth = _scored(judge, items, digit_ids)
        pooled.append((scores, truth, preservation))
        report[name] = {
            "spearman": round(spearman(scores, truth), 4),
            "mean_judge": round(float(scores.mean()), 4),
            "mean_truth": round(float(truth.mean()), 4),
            "mean_preservation": round(float(preservation.mean()), 4),
            **hacked_preference(scores, base_judge, truth, base_truth, preservation),
        }
    scores, truth, preservation = (np.concatenate(x) for x in zip(*pooled, strict=True))
    tiled = len(tests)
    report["all"] = {
        "spearman": round(spearman(scores, truth), 4),
        **hacked_preference(
            scores, np.tile(base_judge, tiled), truth, np.tile(base_truth, tiled), preservation
        ),
    }
    report["base_editor"] = {
        "spearman": round(spearman(base_judge, base_truth), 4),
        "mean_judge": round(float(base_judge.mean()), 4),
        "mean_truth": round(float(base_truth.mean()), 4),
    }
    return report


@dataclass(frozen=True)
class PolicyFineTuning:
    """Fine-tuning of a trained judge: ``training`` sets the optimiser, steps and losses; each batch
    draws policy edits with probability ``policy_share`` and otherwise, half and half, the build's
    synthetic edits (``num_synthetic``, scenes of seed 4000) and base-editor edits (``num_editor``,
    scenes of seed 6000: the build's first sets, smaller)."""

    training: JudgeTraining = JudgeTraining(
        steps=1500, stop_after=1500, learning_rate=5e-4, eval_every=500, editor_rounds=1
    )
    policy_share: float = 0.4
    num_synthetic: int = 1024
    num_editor: int = 1024


def mixture_weights(sizes: list[int], shares: list[float]) -> torch.Tensor:
    """Per-item sampling weights: part i (``sizes[i]`` items, in order) is drawn with probability
    ``shares[i]`` (normalised), uniformly within the part."""
    total = sum(shares)
    return torch.cat([torch.full((n,), s / total / n) for n, s in zip(sizes, shares, strict=True)]).double()


def fine_tune_data(pipeline_dir, encode: JudgeInputs, train: list[PolicyEdits], tune: PolicyFineTuning):
    """(encoded training items, sampling weights): synthetic, base-editor, then policy edits."""
    from edit_r1.toyworld import world
    from edit_r1.toyworld.judge import editor_triples

    settings = tune.training
    synthetic = synthetic_triples(tune.num_synthetic, world.SIZE, 4000 + settings.seed, world.TASKS)
    editor = editor_triples(pipeline_dir, tune.num_editor, world.SIZE, 6000 + settings.seed, world.TASKS)
    parts = [
        encode_items(encode, *synthetic, jpeg_share=settings.jpeg_share, seed=settings.seed),
        encode_items(encode, *editor, jpeg_share=settings.jpeg_share, seed=settings.seed + 1),
        *[encode_edits(encode, e, settings.jpeg_share, settings.seed + 2 + i) for i, e in enumerate(train)],
    ]
    num_policy = sum(len(p) for p in parts[2:])
    rest = (1 - tune.policy_share) / 2
    weights = mixture_weights([len(parts[0]), len(parts[1]), num_policy], [rest, rest, tune.policy_share])
    return concat_items(parts, encode.processor.tokenizer.pad_token_id), weights


def fine_tune_judge(
    judge_dir, pipeline_dir, out, train: list[PolicyEdits], held_out: EncodedItems, tune: PolicyFineTuning
):
    """Fine-tune the judge folder ``judge_dir`` on :func:`fine_tune_data`; write it to ``out`` (a
    copy of ``judge_dir`` with the new weights); returns (judge, training history)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    encode = JudgeInputs(load_qwen_vl_processor(judge_dir), world.JUDGE_TEMPLATE)
    items, weights = fine_tune_data(pipeline_dir, encode, train, tune)
    judge = Qwen2_5_VLForConditionalGeneration.from_pretrained(judge_dir)
    history = train_judge(judge, encode.digit_ids, items, held_out, tune.training, weights=weights)
    shutil.copytree(judge_dir, out, dirs_exist_ok=True)
    judge.save_pretrained(out, safe_serialization=True)
    return judge.eval(), history


def _timed(label: str, times: dict, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    times[label] = round(time.perf_counter() - start)
    print(f"policy-judge: {label} in {times[label]} s", flush=True)
    return result


def run_policy_judge(
    judge_dir,
    pipeline_dir,
    train_policies: list[Path],
    test_policies: list[Path],
    out: Path | None,
    tune: PolicyFineTuning = PolicyFineTuning(),
    num_test: int = 256,
) -> dict:
    """Measure ``judge_dir`` on the held-out policies' edits (:func:`policy_report`; the RL test
    items and scenes of seed 7000, JPEG as the reward client sends them); with ``out``, fine-tune
    it on the train policies' edits of the RL train items (:func:`fine_tune_judge`) and measure the
    result the same way."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    times: dict[str, int] = {}
    encode = JudgeInputs(load_qwen_vl_processor(judge_dir), world.JUDGE_TEMPLATE)
    examples = held_out_examples(num_test)
    base = _timed("base editor edits", times, policy_edits, pipeline_dir, None, examples, 0)
    base_items = encode_edits(encode, base, 1.0, 1)
    tests = {}
    for path in test_policies:
        edits = _timed(f"edits of {path}", times, policy_edits, pipeline_dir, path, examples, 0)
        tests[str(path)] = (encode_edits(encode, edits, 1.0, 1), edits.preservation)
    judge = Qwen2_5_VLForConditionalGeneration.from_pretrained(judge_dir).eval()
    report = _timed("report before", times, policy_report, judge, encode.digit_ids, tests, base_items)
    result = {"before": report}
    print(f"policy-judge: before {json.dumps(report)}", flush=True)
    if out is not None:
        train = [
            _timed(f"edits of {p}", times, policy_edits, pipeline_dir, p, rl_examples("train"), 100 + i)
            for i, p in enumerate(train_policies)
        ]
        held = concat_items([items for items, _ in tests.values()], encode.processor.tokenizer.pad_token_id)
        tuned, history = _timed(
            "fine-tuning", times, fine_tune_judge, judge_dir, pipeline_dir, out, train, held, tune
        )
        result["history"] = [[s, round(r, 4)] for s, r in history]
        result["after"] = _timed(
            "report after", times, policy_report, tuned, encode.digit_ids, tests, base_items
        )
        result["settings"] = {k: v for k, v in asdict(tune).items() if k != "training"} | asdict(
            tune.training
        )
        result["train_policies"] = {
            str(p): round(float(e.preservation.mean()), 4) for p, e in zip(train_policies, train, strict=True)
        }
    return dict(result, seconds=times)


def fine_tuning_settings(steps: int, policy_share: float, num_original: int = 1024) -> PolicyFineTuning:
    """:class:`PolicyFineTuning` with ``steps`` optimiser steps (evaluated 3 times), ``policy_share``
    and ``num_original`` synthetic and as many base-editor edits of the build's data."""
    training = replace(
        PolicyFineTuning().training, steps=steps, stop_after=steps, eval_every=max(1, steps // 3)
    )
    return PolicyFineTuning(
        training=training, policy_share=policy_share, num_synthetic=num_original, num_editor=num_original
    )
