"""Smoke tests of scripts/benchmark.py: each scenario's JSON shape with tiny settings (no timings asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import BenchmarkError, Settings, run_scenario
from benchmarks.common import percentile
from benchmarks.epoch import epoch_summary
from benchmarks.policies import build_policy, random_transformer, real_vae_on_meta
from benchmarks.train_step import TrainStepInputs, default_loss_settings, framework_step, original_step

REPO = Path(__file__).resolve().parents[2]


def tiny_settings(kit: Path, **overrides) -> Settings:
    return Settings(kit=kit, repeats=1, warmup=0, **overrides)


def assert_positive_ratios(result: dict, names: list[str]) -> None:
    for name in names:
        value = result["ratios"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)


@pytest.mark.parametrize("family", ["qwen_image_edit", pytest.param("kontext", marks=pytest.mark.slow)])
def test_train_step_reports_the_three_ways(tiny_kit, family):
    result = run_scenario("train-step", tiny_settings(tiny_kit, family=family, batch_size=2))
    assert result["scenario"] == "train-step"
    padded = {"framework_padded"} if family == "qwen_image_edit" else set()
    assert set(result["median_s"]) == {"framework", "original", "bare"} | padded
    assert_positive_ratios(result, ["framework_vs_original", "framework_vs_bare"])
    assert result["model_tflop_per_step"] > 0
    json.dumps(result)


def test_rollout_encodes_once_per_group(tiny_kit):
    result = run_scenario("rollout", tiny_settings(tiny_kit, group_size=2))
    # Counted encoder forwards, not times: per sample = one call per edit, per group = one call.
    assert result["encoder_calls"] == {"per_group": 1, "per_sample": 2}
    assert result["ratios"]["encoder_calls_ratio"] == 2.0
    assert set(result["samples_per_s"]) == {"per_group", "per_sample"}


def test_fused_and_three_pass_steps_give_the_same_gradients(tiny_kit):
    """The framework's fused timestep and the original three-pass one are the same computation."""
    settings = tiny_settings(tiny_kit)
    policy, cond = build_policy(settings)
    loss = default_loss_settings()
    inputs = TrainStepInputs(policy, cond, torch.Generator().manual_seed(3))
    with torch.no_grad():  # make old differ from default so v_old != v
        for old in policy.old_parameters():
            old.add_(0.01)
    grads = []
    for step in (framework_step, original_step):
        torch.manual_seed(5)  # the same eps in both
        step(policy, loss, inputs)
        grads.append([p.grad.clone() if p.grad is not None else None for p in policy.trainable_parameters()])
        for p in policy.trainable_parameters():
            p.grad = None
    for fused, separate in zip(*grads, strict=True):
        if fused is None:
            assert separate is None
        else:
            torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-6)


def test_epoch_summary_splits_phases(tmp_path):
    rows = [
        {"epoch": 0, "time/evaluation": 3.0, "time/sampling": 9.0, "time/scoring_wait": 1.0, "time/training": 5.0,
         "time/sync": 0.1},
        {"epoch": 1, "time/sampling": 4.0, "time/scoring_wait": 0.0, "time/training": 5.0, "time/sync": 1.0},
    ]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    summary = epoch_summary(path)
    assert summary["median_split_s"] == {"sampling": 4.0, "scoring_wait": 0.0, "training": 5.0, "sync": 1.0}
    assert summary["ratios"]["training_fraction"] == pytest.approx(0.5)
    assert len(summary["per_epoch_s"]) == 2


def test_epoch_summary_rejects_a_file_without_timings(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 0, "reward_mean": 0.5}) + "\n")
    with pytest.raises(BenchmarkError, match="no epoch with time"):
        epoch_summary(path)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([2.0], 99) == 2.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda_fails_clearly(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "train-step", "--device", "cuda",
         "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "torch.cuda.is_available() is False" in done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_reward_scenario_against_real_servers(tiny_kit):
    result = run_scenario(
        "reward",
        tiny_settings(
            tiny_kit, concurrency=(1, 2), requests_per_client=1, images_per_request=2, server_batch_size=4
        ),
    )
    assert set(result["results"]) == {"batched", "single"}
    assert set(result["results"]["batched"]) == {"1", "2"}
    assert result["results"]["single"]["2"]["failed_items"] == 0.0
    assert_positive_ratios(
        result,
        [
            "batched_vs_single_throughput",
            "engine_batch_gain",
            "share_of_engine_batch_gain",
            "batched_vs_single_cpu",
            "engine_batch_gain_cpu",
            "share_of_engine_batch_gain_cpu",
        ],
    )
    # The server process burns CPU for every image it scores (read from /proc on Linux).
    assert all(
        row["server_cpu_ms_per_image"] > 0 for rows in result["results"].values() for row in rows.values()
    )
    ratios = result["ratios"]
    assert ratios["share_of_engine_batch_gain"] == pytest.approx(
        ratios["batched_vs_single_throughput"] / ratios["engine_batch_gain"]
    )
    assert ratios["share_of_engine_batch_gain_cpu"] == pytest.approx(
        ratios["batched_vs_single_cpu"] / ratios["engine_batch_gain_cpu"]
    )
    assert set(result["engine"]) == {
        "batched_s_per_item", "single_s_per_item", "batched_cpu_s_per_item", "single_cpu_s_per_item"
    }  # fmt: skip


@pytest.mark.slow
def test_loading_probe_in_bf16(tiny_kit):
    """One launch of the ``loading`` scenario's probe (2 ranks, bf16: the trained transformer is
    cast to float32 block by block while it is sharded): both builds give the same weights and
    dtypes, and the deferred one never holds old/ref whole."""
    from benchmarks.loading import launch, peaks

    result = launch("qwen_image_edit", tiny_kit / "qwen_image_edit_plus", 2, "bfloat16")
    assert result["same_weights"] and result["world_size"] == 2
    assert all(rank["deferred"]["after_construction"]["old_ref"] == 0 for rank in result["ranks"])
    copies, deferred = peaks(result, "copies"), peaks(result, "deferred")
    # Whole copies: float32 trained + float32 old + bf16 ref = 5 bf16 transformers before sharding.
    assert copies["all"] == pytest.approx(5.0) and copies["old_ref"] == pytest.approx(3.0)
    # Deferred: at most the bf16 transformer before sharding, then (4 + 4 + 2) / 2 ranks shards.
    assert deferred["old_ref"] == pytest.approx(1.5, rel=0.01)
    assert deferred["all"] == pytest.approx(2.5, rel=0.01)


@pytest.mark.slow
def test_epoch_scenario_with_torchrun(tiny_kit):
    result = run_scenario("epoch", tiny_settings(tiny_kit, epochs=1))
    assert set(result["median_split_s"]) == {"sampling", "scoring_wait", "training", "sync"}
    assert_positive_ratios(result, ["sampling_fraction", "training_fraction"])


@pytest.mark.parametrize(("family", "billions"), [("qwen_image_edit", 20.43), ("kontext", 11.90)])
def test_full_size_architectures_are_the_real_ones(family, billions):
    """`--size full` builds the real architectures (checked on the meta device: no memory)."""
    transformer = random_transformer(family, "full", torch.device("meta"), torch.bfloat16)
    count = sum(p.numel() for p in transformer.parameters())
    assert round(count / 1e9, 2) == billions
    assert next(transformer.parameters()).dtype == torch.bfloat16
    vae = real_vae_on_meta(family)
    assert {p.device.type for p in vae.parameters()} == {"meta"}
    assert vae.config.get("latent_channels", vae.config.get("z_dim")) == 16


def test_reward_backend_flags_reach_the_settings(tmp_path):
    """``--backend transformers,vllm --server-python PY`` measures both backends in one run with the
    given interpreter; an unknown backend is a one-line error naming the flag."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchmark import build_parser, settings_from_args
    finally:
        sys.path.remove(str(REPO / "scripts"))
    args = build_parser().parse_args(
        ["reward", "--backend", "transformers, vllm", "--server-python", "/venv/bin/python"]
    )
    settings = settings_from_args(args)
    assert (settings.backends, settings.server_python) == (("transformers", "vllm"), "/venv/bin/python")
    assert settings_from_args(build_parser().parse_args(["reward"])).backends == ("transformers",)
    with pytest.raises(SystemExit, match="--backend takes transformers and/or vllm, got 'sglang'"):
        settings_from_args(build_parser().parse_args(["reward", "--backend", "sglang"]))
