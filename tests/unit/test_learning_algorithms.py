"""``scripts/benchmark.py learning --algorithm nft,grpo``: each algorithm's toy-world command is a valid
config, and the comparison reads the samples to the target from every seed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from edit_r1.config import validate_config
from edit_r1.toyworld.learning import ALGORITHMS, RECIPE_NOTES, training_command

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchmark_learning import build_parser, evaluation_overrides, format_comparison, median_reach  # noqa: E402


@pytest.mark.parametrize("reward", ["judge", "rule", "pairwise"])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_runs_the_toy_config_validly(algorithm: str, reward: str, tmp_path: Path) -> None:
    command = training_command("qwen_image_edit", algorithm, tmp_path / "run", tmp_path, 0, 2, 1, reward)
    argv = ["train", *[arg for arg in command if arg.startswith("--config")]]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=values, sys_argv=argv)
    values(argv)
    config = values.config
    assert config.algorithm == algorithm
    assert (
        dict(config.reward_fn)
        == (
            {
                "rule": {"toy_edit": 1.0},
                "judge": {"mllm_score_continue": 1.0},
                "pairwise": {"pairwise_mllm": 1.0},
            }[reward]
        )
    )
    assert validate_config(config, world_size=1, check_files=False) == []
    if algorithm == "grpo":
        assert (config.sample.solver, config.sample.deterministic, config.train.clip_range) == (
            "flow",
            False,
            1e-4,
        )


def test_comparison_takes_the_median_over_the_seeds_that_reached_the_target() -> None:
    def result(*hits):
        runs = {seed: {"reach_target": hit} for seed, hit in enumerate(hits)}
        return {"target": 0.6, "runs": runs}

    nft = result(
        {"samples": 128, "forwards": 900, "seconds": 10.0},
        {"samples": 64, "forwards": 1200, "seconds": 5.0},
        {"samples": 256, "forwards": 300, "seconds": 20.0},
    )
    grpo = result(None, {"samples": 512, "forwards": 4500, "seconds": 40.0}, None)
    # each measure's own median: the seed of the median samples is not the one of the median forwards
    assert median_reach(nft) == {"samples": 128, "forwards": 900, "seconds": 10.0, "reached": 3}
    text = format_comparison({"nft": nft, "grpo": grpo, "none": result(None)})
    assert "nft: median 128 samples, 900 forwards, 10.0 s (3/3 seeds)" in text
    assert "grpo: median 512 samples, 4500 forwards, 40.0 s (1/3 seeds)" in text
    assert "none: not reached (0/1 seeds)" in text
    assert "grpo / nft: 5.00x the forwards, 4.00x the seconds" in text and "none / nft" not in text
    old_runs = result({"samples": 64, "seconds": 5.0})  # logged before the counters: no forwards
    assert median_reach(old_runs)["forwards"] is None
    assert "old: median 64 samples, 5.0 s (1/1 seeds)" in format_comparison({"old": old_runs, "nft": nft})
    at_start = result({"samples": 0, "forwards": 0, "seconds": 0.0})  # the base editor already there
    assert " / " not in format_comparison({"start": at_start, "grpo": grpo})
    assert " / " not in format_comparison({"nft": nft, "start": at_start})  # not "0.00x the forwards"


def test_jobs_run_the_algorithms_at_the_same_time_on_one_dataset(tmp_path: Path, monkeypatch) -> None:
    """``--jobs 2``: both algorithms' runs are in flight together and share the dataset written once
    before them (two runs writing it at once could hand a trainer a half-written file)."""
    import argparse
    import threading

    import benchmark_learning

    both_started = threading.Barrier(2, timeout=10)  # raises BrokenBarrierError if run one at a time
    seen = {}

    def fake_run(args, root, dataset):
        seen[args.algorithm] = dataset
        both_started.wait()
        return {"algorithm": args.algorithm, "runs": {}}

    monkeypatch.setattr(benchmark_learning, "run", fake_run)
    monkeypatch.setattr(benchmark_learning, "format_table", lambda result: result["algorithm"])
    args = argparse.Namespace(jobs=2)
    results = benchmark_learning.run_algorithms(args, ["nft", "grpo"], tmp_path)
    assert list(results) == ["nft", "grpo"] and results["grpo"]["algorithm"] == "grpo"
    assert seen["nft"] == seen["grpo"] == tmp_path / "toyworld_data"
    assert (tmp_path / "toyworld_data" / "train_metadata.jsonl").is_file()


def test_set_overrides_come_after_the_rewards_own_flags(tmp_path: Path) -> None:
    """``--set`` reaches every run's config and wins over the ``--reward`` flags (docs/toyworld.md)."""
    args = build_parser().parse_args(
        [
            "--reward",
            "judge_blind",
            "--set",
            "reward_fn={'mllm_score_continue': 1.0, 'source_consistency': 0.3}",
        ]
    )
    command = training_command(
        "qwen_image_edit", "nft", tmp_path / "run", tmp_path, 0, 2, 1, args.reward, evaluation_overrides(args)
    )
    argv = ["train", *[arg for arg in command if arg.startswith("--config")]]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=values, sys_argv=argv)
    values(argv)
    assert dict(values.config.reward_fn) == {"mllm_score_continue": 1.0, "source_consistency": 0.3}
    assert values.config.eval_freq == 2


def test_eval_judge_names_a_committed_judge_for_a_second_server(monkeypatch, tmp_path: Path) -> None:
    """``--eval-judge`` hands ``train_in_toy_world`` a judge folder that exists (served on
    ``EVAL_REWARD_SERVER`` for the evaluation only)."""
    import benchmark_learning

    seen = {}

    def fake_train(run_dir, **options):
        seen.update(options)
        return []

    monkeypatch.setattr(benchmark_learning, "train_in_toy_world", fake_train)
    monkeypatch.setattr(benchmark_learning, "judge_calls_per_epoch", lambda run_dir: 0.0)
    args = build_parser().parse_args(["--reward", "judge_blind", "--eval-judge", "judge", "--seeds", "0"])
    benchmark_learning.run(args, tmp_path, dataset=tmp_path)
    assert seen["eval_judge"] == benchmark_learning.EVAL_JUDGES["judge"]
    assert all((folder / "config.json").is_file() for folder in benchmark_learning.EVAL_JUDGES.values())


def parsed_config(command: list[str]):
    argv = ["train", *[arg for arg in command if arg.startswith("--config")]]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


ROLLOUT_KEYS = (
    "sample.solver", "sample.deterministic", "sample.noise_level", "sample.num_steps", "sample.true_cfg_scale",
    "sample.guidance_scale", "train.cfg", "train.timestep_fraction",
)  # fmt: skip
EVAL_KEYS = ("sample.eval_num_steps", "sample.eval_solver", "sample.eval_deterministic", "eval_freq")


def values_of(config, keys: tuple[str, ...]) -> dict:
    return {key: config[key.split(".")[0]][key.split(".")[1]] if "." in key else config[key] for key in keys}


@pytest.mark.parametrize("family", ["qwen_image_edit", "kontext"])
def test_own_recipe_rolls_each_algorithm_out_as_published_and_evaluates_alike(
    family: str, tmp_path: Path
) -> None:
    """``--recipe own``: Flow-GRPO's 10 SDE steps (9 trained) and, for Qwen, true CFG 4.5 in the rollouts
    and the re-scoring forwards; DiffusionNFT's CFG-free dpm2 :toy settings; evaluation as shared."""
    args = (tmp_path / "run", tmp_path, 0, 2, 1, "rule")
    configs = {
        (algorithm, recipe): parsed_config(training_command(family, algorithm, *args, recipe=recipe))
        for algorithm in ("nft", "grpo")
        for recipe in ("shared", "own")
    }
    for config in configs.values():
        assert validate_config(config, world_size=1, check_files=False) == []
    nft, grpo = configs["nft", "own"], configs["grpo", "own"]
    assert values_of(nft, ROLLOUT_KEYS) == values_of(configs["nft", "shared"], ROLLOUT_KEYS)
    assert values_of(nft, ROLLOUT_KEYS)["sample.solver"] == "dpm2" and nft.sample.num_steps == 4
    cfg = family == "qwen_image_edit"
    assert values_of(grpo, ROLLOUT_KEYS) == {
        "sample.solver": "flow", "sample.deterministic": False, "sample.noise_level": 0.7,
        "sample.num_steps": 10, "sample.true_cfg_scale": 4.5 if cfg else 1.0,
        "sample.guidance_scale": 1.0 if cfg else 2.5, "train.cfg": cfg, "train.timestep_fraction": 0.99,
    }  # fmt: skip
    assert configs["grpo", "shared"].sample.num_steps == 4 and not configs["grpo", "shared"].train.cfg
    # the same held-out evaluation for every run: 4 Euler steps without CFG
    evaluations = {name: values_of(config, EVAL_KEYS) for name, config in configs.items()}
    assert len({tuple(v.items()) for v in evaluations.values()}) == 1
    assert evaluations["grpo", "own"]["sample.eval_num_steps"] == 4
    # CFG rollouts keep CFG out of the evaluation (without CFG rollouts the switch has nothing to do)
    assert grpo.sample.eval_true_cfg == (not cfg)
    assert (("kontext", "grpo") in RECIPE_NOTES) and ((family, "nft") not in RECIPE_NOTES)


def test_unknown_recipe_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"recipe must be one of \['shared', 'own'\], got 'mine'"):
        training_command("qwen_image_edit", "nft", tmp_path / "r", tmp_path, 0, 2, 1, "rule", recipe="mine")
    assert build_parser().parse_args(["--recipe", "own"]).recipe == "own"
    assert build_parser().parse_args([]).recipe == "shared"


def test_json_holds_each_algorithms_medians_with_forwards(tmp_path: Path, monkeypatch) -> None:
    import json

    import benchmark_learning

    def fake_runs(args, algorithms, root):
        hits = {"nft": {"samples": 128, "forwards": 1664, "seconds": 8.0}, "grpo": None}
        return {
            name: {"algorithm": name, "target": 0.3, "runs": {0: {"reach_target": hits[name], "curve": []}}}
            for name in algorithms
        }

    monkeypatch.setattr(benchmark_learning, "run_algorithms", fake_runs)
    out = tmp_path / "out.json"
    assert benchmark_learning.main(["--algorithm", "nft,grpo", "--json", str(out), "--recipe", "own"]) == 0
    payload = json.loads(out.read_text())["algorithms"]
    assert payload["nft"]["median_reach_target"] == {
        "samples": 128,
        "forwards": 1664,
        "seconds": 8.0,
        "reached": 1,
    }
    assert payload["grpo"]["median_reach_target"] is None


def test_gain_sets_each_seeds_target_from_its_own_epoch_zero(tmp_path: Path, monkeypatch) -> None:
    """``--gain 0.1``: a seed whose base editor already scores above an absolute target still has to
    improve by 0.1 over its own epoch 0, and the report names the target so."""
    import benchmark_learning

    curves = {  # seed -> held-out rule score at epochs 0, 2, 4
        0: [0.30, 0.36, 0.45],
        1: [0.46, 0.50, 0.57],
    }

    def fake_train(run_dir, seed, **_):
        return [
            {"epoch": 2 * i, "rule": value, "judge": None, "forwards": 1000 * i, "seconds": 5.0 * i}
            for i, value in enumerate(curves[seed])
        ]

    monkeypatch.setattr(benchmark_learning, "train_in_toy_world", fake_train)
    monkeypatch.setattr(benchmark_learning, "judge_calls_per_epoch", lambda run_dir: 0.0)
    args = build_parser().parse_args(
        ["--seeds", "0,1", "--reward", "rule", "--metric", "rule", "--gain", "0.1"]
    )
    result = benchmark_learning.run(args, tmp_path, dataset=tmp_path)
    assert [round(r["target"], 3) for r in result["runs"].values()] == [0.4, 0.56]
    assert [r["reach_target"]["samples"] for r in result["runs"].values()] == [4 * 128, 4 * 128]
    assert "held-out rule >= epoch 0 + 0.1: 512 samples" in benchmark_learning.format_table(result)
    assert "rule >= epoch 0 + 0.1 (recipe shared)" in format_comparison({"nft": result})
    absolute = build_parser().parse_args(["--seeds", "0,1", "--reward", "rule", "--metric", "rule"])
    at_start = benchmark_learning.run(absolute, tmp_path, dataset=tmp_path)["runs"][1]["reach_target"]
    assert at_start["samples"] == 0  # 0.46 >= the default 0.40 before any training


def test_a_gain_that_is_not_positive_is_refused(capsys) -> None:
    import benchmark_learning

    assert benchmark_learning.main(["--gain", "0"]) == 2
    assert "--gain must be > 0 (a gain over epoch 0), got 0.0" in capsys.readouterr().err
