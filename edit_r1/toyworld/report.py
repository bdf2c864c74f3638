"""Summarise a toy-world training run: held-out judge reward and rule score before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edit_r1.tracking import read_metrics

JUDGE_KEY = "eval_reward_mllm_score_continue"
RULE_KEY = "eval_reward_toy_edit"  # the ground truth: sqrt(success * preservation)
# Training's transformer forwards so far, cumulative (edit_r1/training/forward_counter.py TRAINING_KEY).
FORWARDS_KEY = "cost/transformer_forwards"
# The ground truth's parts and the preservation-blind rule, logged with weight 0 (config/tiny_common.py)
PART_KEYS = {
    "success": "eval_reward_toy_edit_success",
    "preservation": "eval_reward_toy_edit_preservation",
    "rule_blind": "eval_reward_toy_color",
}


def eval_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """``[{"epoch", "judge", "rule", "success", "preservation", "rule_blind", "seconds", "forwards"},
    ...]`` of every evaluation in ``run_dir/metrics.jsonl`` (None where a value was not logged);
    ``rule``: the ground truth ``toy_edit``, ``rule_blind``: the preservation-blind ``toy_color``;
    ``seconds``: the run's time (sum of the trainer's ``time/*`` phases) before the evaluation;
    ``forwards``: the transformer forwards spent on training before it (rollouts and update, all
    ranks: ``cost/transformer_forwards`` of the epoch before; evaluations not included; None for a
    run logged without the counters)."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    counted = any(FORWARDS_KEY in row for row in rows)
    curve, elapsed, forwards = [], 0.0, 0 if counted else None
    for row in rows:
        if JUDGE_KEY in row or RULE_KEY in row or PART_KEYS["rule_blind"] in row:
            point = {
                "epoch": row.get("epoch", row["step"]),
                "judge": row.get(JUDGE_KEY),
                "rule": row.get(RULE_KEY),
            }
            point.update({name: row.get(key) for name, key in PART_KEYS.items()})
            curve.append(dict(point, seconds=elapsed, forwards=forwards))
        elapsed += sum(float(v) for k, v in row.items() if k.startswith("time/"))
        if counted:
            forwards = row.get(FORWARDS_KEY)
    return curve


def judge_calls_per_epoch(run_dir: str | Path) -> float:
    """Mean judge calls per training epoch of the run's group rewards (``<name>_judge_calls`` in
    ``metrics.jsonl``, summed over the group rewards of an epoch); 0 when it had none."""
    calls = [
        sum(float(v) for k, v in row.items() if k.endswith("_judge_calls"))
        for row in read_metrics(Path(run_dir) / "metrics.jsonl")
        if any(k.endswith("_judge_calls") for k in row)
    ]
    return sum(calls) / len(calls) if calls else 0.0


def write_before_after(run_dir: str | Path) -> Path | None:
    """``run_dir/before_after.png``: the first and the last evaluation grid side by side (the same
    held-out items; the same noise too when the run set ``sample.eval_same_noise``), or ``None``
    when the run has fewer than two grids."""
    from PIL import Image, ImageDraw

    run_dir = Path(run_dir)
    grids = sorted((run_dir / "samples").glob("eval_epoch*.png"))
    if len(grids) < 2:
        return None
    before, after = (Image.open(path).convert("RGB") for path in (grids[0], grids[-1]))
    header, gap = 24, 16
    canvas = Image.new(
        "RGB", (before.width + gap + after.width, header + max(before.height, after.height)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for x, image, path in ((0, before, grids[0]), (before.width + gap, after, grids[-1])):
        canvas.paste(image, (x, header))
        draw.text((x + 4, 6), f"{'before' if x == 0 else 'after'}: {path.stem}", fill="black")
    out = run_dir / "before_after.png"
    canvas.save(out)
    return out


def summary(run_dir: str | Path) -> str:
    """Text: first and last evaluation, the gain, and where the sample grids are."""
    run_dir = Path(run_dir)
    curve = eval_curve(run_dir)
    if len(curve) < 2:
        return f"{run_dir}: fewer than two evaluations in metrics.jsonl; nothing to compare"
    first, last = curve[0], curve[-1]
    grids = sorted((run_dir / "samples").glob("eval_epoch*.png"))
    lines = [f"== toy world, held-out edits ({run_dir}), epoch {first['epoch']} -> {last['epoch']}:"]
    names = (
        ("judge", "judge reward"),
        ("rule", "rule score"),
        ("success", "  success"),
        ("preservation", "  preservation"),
        ("rule_blind", "blind rule"),
    )
    for key, name in names:
        if first[key] is not None and last[key] is not None:
            change = last[key] - first[key]
            lines.append(f"   {name:<14} {first[key]:.3f} -> {last[key]:.3f}: {change:+.3f}")
            lines.append(f"   {'':<14} curve " + " ".join(f"{p[key]:.3f}" for p in curve))
    if grids:
        lines.append(f"   grids:        {grids[0]}  {grids[-1]}")
    side_by_side = write_before_after(run_dir)
    if side_by_side is not None:
        lines.append(f"   before/after: {side_by_side}")
    return "\n".join(lines)
