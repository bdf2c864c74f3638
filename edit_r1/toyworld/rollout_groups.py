"""Within-group statistics of a policy's rollouts: the order that group-relative RL acts on.

Group-relative advantages ``A = (r - mean_G) / D`` see only how the edits of one item rank among
themselves. For each of the first ``num_items`` RL train items this draws ``group_size`` edits
with different initial noise (per sampler of :data:`~edit_r1.toyworld.policy_judge.ROLLOUT_SAMPLERS`),
scores each with the ground truth (``toy_edit_scores``) and with a judge (in process, the server's
prompt, every edit JPEG-coded as the reward client sends it), and reports per sampler the mean
over groups of the within-group Spearman correlation of: success and preservation, the judge and
the ground truth, the judge and each part, the ground truth and preservation; with the mean
within-group standard deviation of each score, and how the edits fall into bands of success
(:func:`success_bands`, overall and per task).

How to read it: a negative success-preservation correlation means the edits of one item that
show more of the requested colour keep less of the scene. Any reward that follows success then
ranks the less-kept edit higher inside its group, and RL drifts off the scene even when the reward
is the ground truth itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edit_r1.data.toy import toy_edit_scores
from edit_r1.toyworld.judge import JudgeInputs, encode_items, encoded_scores, spearman
from edit_r1.toyworld.policy_judge import ROLLOUT_SAMPLERS, policy_edit_draws, rl_examples

# The pairs of scores whose within-group order is reported, as ``(name, first, second)``.
PAIRS = (
    ("success_vs_preservation", "success", "preservation"),
    ("judge_vs_truth", "judge", "truth"),
    ("judge_vs_success", "judge", "success"),
    ("judge_vs_preservation", "judge", "preservation"),
    ("truth_vs_preservation", "truth", "preservation"),
)


def within_group_spearman(first: np.ndarray, second: np.ndarray) -> tuple[float, int]:
    """``(mean_g spearman(first[:, g], second[:, g]), number of groups used)`` for ``(K, G)`` arrays
    (``K`` edits of each of ``G`` groups); a group where either score does not vary has no order
    and is left out (``nan`` when none is left)."""
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"within_group_spearman: shapes {first.shape} and {second.shape}; want equal (K, G)")
    used = [g for g in range(first.shape[1]) if np.ptp(first[:, g]) > 1e-9 and np.ptp(second[:, g]) > 1e-9]
    if not used:
        return float("nan"), 0
    return float(np.mean([spearman(first[:, g], second[:, g]) for g in used])), len(used)


# Success bands of one edit: no visible edit (the source kept), a partial edit, a clear edit.
SUCCESS_BANDS = (("kept", 0.0, 0.05), ("partial", 0.05, 0.3), ("edited", 0.3, float("inf")))


def success_bands(success: np.ndarray, preservation: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Per band of :data:`SUCCESS_BANDS` (``low <= success < high``): the share of the edits in it
    and their mean preservation (``None`` for an empty band). A bimodal editor puts most edits in
    ``kept`` and ``edited``, and the gap between those two bands' preservation is what trading
    one mode for the other costs."""
    success, preservation = success.ravel(), preservation.ravel()
    bands: dict[str, dict[str, float | None]] = {}
    for name, low, high in SUCCESS_BANDS:
        inside = (success >= low) & (success < high)
        mean = round(float(preservation[inside].mean()), 3) if inside.any() else None
        bands[name] = {"share": round(float(inside.mean()), 3), "preservation": mean}
    return bands


def group_summary(scores: dict[str, np.ndarray]) -> dict[str, float | int]:
    """The within-group correlations of :data:`PAIRS` and the mean within-group std of each score
    (``scores``: name -> ``(K, G)`` array, with the names ``PAIRS`` uses)."""
    summary: dict[str, float | int] = {}
    for name, first, second in PAIRS:
        value, used = within_group_spearman(scores[first], scores[second])
        summary[f"spearman_{name}"] = round(value, 3)
        summary[f"groups_{name}"] = used
    for name, values in scores.items():
        summary[f"mean_{name}"] = round(float(values.mean()), 3)
        summary[f"within_std_{name}"] = round(float(values.std(axis=0).mean()), 3)
    return summary


def rollout_group_stats(
    pipeline_dir: Path, judge_dir: Path, transformer_dir: Path | None = None, *, num_items: int = 48,
    group_size: int = 8,
) -> dict[str, dict]:  # fmt: skip
    """Per sampler, :func:`group_summary` of ``group_size`` edits of each of ``num_items`` RL train
    items by the editor in ``pipeline_dir`` (with ``transformer_dir``'s weights when given)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    examples = rl_examples("train", num_items)
    draws = policy_edit_draws(pipeline_dir, transformer_dir, examples, [1000 * k for k in range(group_size)])
    encode = JudgeInputs(load_qwen_vl_processor(judge_dir), world.JUDGE_TEMPLATE)
    judge = Qwen2_5_VLForConditionalGeneration.from_pretrained(judge_dir).eval()
    report = {}
    for index, (solver, steps) in enumerate(ROLLOUT_SAMPLERS):
        rows = slice(index * num_items, (index + 1) * num_items)
        scores = {
            name: np.zeros((group_size, num_items)) for name in ("judge", "truth", "success", "preservation")
        }
        for k, draw in enumerate(draws):
            for g, (edit, record) in enumerate(zip(draw.edits[rows], draw.records[rows], strict=True)):
                truth = toy_edit_scores(edit, record)
                scores["truth"][k, g], scores["success"][k, g] = truth.score, truth.success
                scores["preservation"][k, g] = truth.preservation
            items = encode_items(
                encode, draw.sources[rows], draw.edits[rows], draw.records[rows], jpeg_share=1.0, seed=1
            )
            scores["judge"][k] = encoded_scores(judge, items, encode.digit_ids)
        tasks = np.array([record["task"] for record in draws[0].records[rows]])
        by_task = {
            str(task): success_bands(
                scores["success"][:, tasks == task], scores["preservation"][:, tasks == task]
            )
            for task in np.unique(tasks)
        }
        report[f"{solver}{steps}"] = group_summary(scores) | {
            "success_bands": success_bands(scores["success"], scores["preservation"]),
            "success_bands_by_task": by_task,
        }
    return report
