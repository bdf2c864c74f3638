"""The memory plan: real architectures on the meta device, per-rank arithmetic, the activation
formula against torch's MemTracker on a CPU model, and the CLI's errors."""

from __future__ import annotations

import json

import pytest

from edit_r1 import memory_plan


@pytest.fixture(scope="module")
def saved_per_token() -> dict[str, dict[str, float]]:
    return {family: memory_plan.measure_saved_per_token(family) for family in memory_plan.FAMILIES}


def test_real_architectures_and_sharding_arithmetic(saved_per_token):
    k = saved_per_token["qwen_image_edit"]
    eight = memory_plan.plan(memory_plan.PlanSettings("qwen_image_edit", 8, "full"), k)
    four = memory_plan.plan(memory_plan.PlanSettings("qwen_image_edit", 4, "full"), k)
    # Qwen-Image's DiT is the published 20.4B; Qwen2.5-VL-7B has 8.3B parameters.
    assert 20.3e9 < eight["transformer_params"] < 20.6e9
    assert 8.2e9 < eight["text_encoder_params"]["Qwen2.5-VL-7B"] < 8.4e9
    for row in ("params_fp32", "grads_fp32", "adamw", "ema", "old_fp32", "ref_bf16", "text_encoders_bf16"):
        assert four["per_rank_gib"][row] == pytest.approx(2 * eight["per_rank_gib"][row]), row
    assert eight["per_rank_gib"]["adamw"] == pytest.approx(2 * eight["per_rank_gib"]["params_fp32"])
    offloaded = memory_plan.plan(
        memory_plan.PlanSettings("qwen_image_edit", 8, "full", offload_frozen=True), k
    )
    assert offloaded["per_rank_gib"]["old_fp32"] == 0 and offloaded["total_gib"] < eight["total_gib"]
    hi = memory_plan.plan(memory_plan.PlanSettings("qwen_image_edit", 8, "full", resolution=1024), k)
    assert hi["per_rank_gib"]["activations"] > 3 * eight["per_rank_gib"]["activations"]
    # Loading with shard_device: the transformer waits in host memory (bf16), the device peak stays
    # below the training total and far below a build with whole float32 trained/old + bf16 ref.
    load, p_gib = eight["loading_gib"], eight["transformer_params"] / memory_plan.GIB
    encoders_gib = sum(eight["text_encoder_params"].values()) / memory_plan.GIB
    assert load["host_per_rank"] == pytest.approx(2 * p_gib + 2 * encoders_gib)
    assert load["unsharded_build"] == pytest.approx(10 * p_gib) and load["unsharded_build"] > 2 * 80
    assert load["device_peak"] < eight["total_gib"] < 80


def test_lora_plan_for_kontext(saved_per_token):
    result = memory_plan.plan(
        memory_plan.PlanSettings("kontext", 8, "lora", resolution=1024), saved_per_token["kontext"]
    )
    assert 11.8e9 < result["transformer_params"] < 12.0e9  # FLUX.1 [dev]: 11.9B
    assert 0 < result["lora_params"] < 0.02 * result["transformer_params"]
    assert set(result["text_encoder_params"]) == {"T5-XXL", "CLIP-L"}
    assert result["fits"] == (max(result["total_gib"], result["loading_gib"]["device_peak"]) <= 80)
    # Loading holds shards only (text encoders included): below training, with no activations.
    assert result["loading_gib"]["device_peak"] < result["total_gib"]


@pytest.mark.parametrize("family", memory_plan.FAMILIES)
def test_activation_formula_matches_the_cpu_measurement(family):
    calibration = memory_plan.calibrate(family)
    assert 0.8 < calibration["ratio"] < 1.25, calibration


def test_cli_prints_json_and_rejects_bad_input(capsys, saved_per_token, monkeypatch):
    monkeypatch.setattr(memory_plan, "measure_saved_per_token", lambda family: saved_per_token[family])
    assert memory_plan.main(["--family", "kontext", "--gpus", "8", "--mode", "lora", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["gpus"] == 8 and out["total_gib"] > 0
    with pytest.raises(SystemExit) as exit_info:
        memory_plan.main(["--family", "kontext", "--gpus", "0", "--mode", "lora"])
    assert exit_info.value.code == 2
    assert "--gpus and --per-gpu-batch must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        memory_plan.main(["--family", "kontext", "--gpus", "2", "--mode", "full", "--no-fsdp-transformer"])
    assert "needs fsdp_transformer" in capsys.readouterr().err
