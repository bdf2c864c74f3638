"""The toy world's run summary and learning-benchmark bookkeeping (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edit_r1.toyworld.learning import training_command
from edit_r1.toyworld.report import eval_curve, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from benchmark_learning import reach  # noqa: E402


def _write_run(run: Path) -> None:
    run.mkdir(parents=True)
    rows = [
        {"step": 0, "epoch": 0, "eval_reward_mllm_score_continue": 0.40, "eval_reward_toy_edit": 0.30, "eval_reward_toy_edit_success": 0.35, "eval_reward_toy_edit_preservation": 0.9, "time/sampling": 5.0, "cost/transformer_forwards": 1000, "cost/eval_transformer_forwards": 64},
        {"step": 1, "epoch": 1, "time/sampling": 7.0, "time/training": 3.0, "cost/transformer_forwards": 2000, "cost/eval_transformer_forwards": 64},
        {"step": 2, "epoch": 2, "eval_reward_mllm_score_continue": 0.62, "eval_reward_toy_edit": 0.45, "eval_reward_toy_edit_success": 0.5, "eval_reward_toy_edit_preservation": 0.88, "eval_reward_toy_color": 0.7, "cost/transformer_forwards": 3000, "cost/eval_transformer_forwards": 128},
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_eval_curve_and_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run)
    curve = eval_curve(run)
    # forwards: training's (not evaluation's) before each evaluation, i.e. the epoch before's total
    assert [(p["epoch"], p["judge"], p["rule"], p["seconds"], p["forwards"]) for p in curve] == [
        (0, 0.40, 0.30, 0.0, 0),
        (2, 0.62, 0.45, 15.0, 2000),
    ]
    text = summary(run)
    assert "judge reward   0.400 -> 0.620: +0.220" in text
    assert "rule score     0.300 -> 0.450: +0.150" in text
    assert "  success      0.350 -> 0.500: +0.150" in text
    assert "  preservation 0.900 -> 0.880: -0.020" in text
    assert "blind rule" not in text  # logged at the last evaluation only: nothing to compare
    assert curve[1]["rule_blind"] == 0.7 and curve[0]["rule_blind"] is None


def test_reach_counts_samples_forwards_and_seconds_until_the_target(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run)
    curve = eval_curve(run)
    assert reach(curve, 0.6, per_epoch=64) == {"samples": 128, "forwards": 2000, "seconds": 15.0}
    assert reach(curve, 0.3, per_epoch=64, metric="rule") == {"samples": 0, "forwards": 0, "seconds": 0.0}
    assert reach(curve, 0.9, per_epoch=64) is None


def test_a_run_logged_without_the_counters_has_no_forwards(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stripped = [{k: v for k, v in row.items() if not k.startswith("cost/")} for row in rows]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert [p["forwards"] for p in eval_curve(run)] == [None, None]
    assert reach(eval_curve(run), 0.6, per_epoch=64)["forwards"] is None


def test_the_report_reads_the_trainers_counter() -> None:
    from edit_r1.toyworld.report import FORWARDS_KEY
    from edit_r1.training.forward_counter import TRAINING_KEY

    assert FORWARDS_KEY == TRAINING_KEY


def test_training_command_names_unknown_family_and_algorithm(tmp_path: Path) -> None:
    args = (tmp_path / "r", tmp_path / "d", 0, 2, 1, "rule")
    command = training_command("qwen_image_edit", "nft", *args)
    assert "--config=config/qwen_image_edit_nft.py:toy" in command
    assert "--config.reward_fn={'toy_edit': 1.0}" in command
    assert "--config.reward_fn={'toy_color': 1.0}" in training_command(
        "qwen_image_edit", "nft", *args[:-1], "rule_blind"
    )
    assert "--config=config/kontext_nft.py:toy" in training_command("kontext", "nft", *args)
    assert "scripts/train_nft_kontext.py" in training_command("kontext", "nft", *args)
    with pytest.raises(ValueError, match="no toy world for family 'sdxl'"):
        training_command("sdxl", "nft", *args)
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        training_command("qwen_image_edit", "ppo", *args)


def test_build_stages_per_family() -> None:
    """Every family has the VAE and editor stages; the shared judge and the partial-edit phase are
    built only with Qwen-Image-Edit."""
    from edit_r1.toyworld.build import resolve_stages

    assert resolve_stages("qwen_image_edit", None) == (
        "vae",
        "editor",
        "editor_partial",
        "judge",
        "judge_pairwise",
    )
    assert resolve_stages("kontext", None) == ("vae", "editor")
    assert resolve_stages("kontext", ("editor",)) == ("editor",)
    with pytest.raises(ValueError, match=r"stage\(s\) \['judge'\] not in the kontext toy world"):
        resolve_stages("kontext", ("judge",))
    with pytest.raises(ValueError, match=r"\['judge_pairwise'\] not in the kontext toy world"):
        resolve_stages("kontext", ("judge_pairwise",))
    with pytest.raises(ValueError, match=r"\['editor_partial'\] not in the kontext toy world"):
        resolve_stages("kontext", ("editor_partial",))
    with pytest.raises(ValueError, match="no toy world for family 'sdxl'"):
        resolve_stages("sdxl", None)


def test_judge_calls_per_epoch_sums_the_group_rewards_of_an_epoch(tmp_path: Path) -> None:
    from edit_r1.toyworld.report import judge_calls_per_epoch

    run = tmp_path / "run"
    _write_run(run)
    assert judge_calls_per_epoch(run) == 0.0  # a pointwise run has no group reward
    rows = [
        {"step": 1, "pairwise_mllm_judge_calls": 896.0, "pairwise_mllm_pairs": 448.0},
        {"step": 2, "pairwise_mllm_judge_calls": 448.0, "other_judge_calls": 100.0},
    ]
    with (run / "metrics.jsonl").open("a") as log:
        log.write("".join(json.dumps(r) + "\n" for r in rows))
    assert judge_calls_per_epoch(run) == (896 + 548) / 2


def test_the_table_shows_forwards_beside_samples_and_seconds(tmp_path: Path) -> None:
    from benchmark_learning import format_table

    run = tmp_path / "run"
    _write_run(run)
    curve = [dict(p, samples=p["epoch"] * 64) for p in eval_curve(run)]
    runs = {0: {"curve": curve, "reach_target": reach(curve, 0.6, per_epoch=64)}}
    text = format_table({"family": "qwen_image_edit", "algorithm": "nft", "target": 0.6, "runs": runs})
    assert "epoch  samples  forwards  seconds   judge    rule" in text
    assert "     2      128      2000       15   0.620   0.450" in text
    assert "seed 0: held-out judge >= 0.6: 128 samples, 2000 forwards, 15.0 s" in text
