"""The speed switches give the same results: a diffusers attention backend (``attention_backend``)
and torch.compile of the transformer blocks (``compile_transformer``), on both tiny families:
every policy's velocity, the fused old+ref forward (peft mixed-adapter batch), the LoRA gradients.

Compiled runs use dynamo with the ``aot_eager`` backend (tracing, peft hooks, AOT autograd, no
code generation: seconds on CPU); the one inductor run is marked slow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from test_lora_policies import FAMILIES, inputs, make_policy, perturb
from torch._dynamo.testing import CompileCounterWithBackend

from edit_r1.config import ConfigError, load_config, validate_config
from edit_r1.models.base import attention_backend_names

ATOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


def processors(policy):
    modules = [policy.transformer, policy.old_transformer, policy.ref_transformer]
    return [m.processor for t in modules if t is not None for m in t.modules() if hasattr(m, "processor")]


def all_velocities(policy, z, sigma, cond) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {
            adapter: policy.velocity(z, sigma, cond, adapter=adapter) for adapter in ("default", "old", "ref")
        }
        out["fused_old"], out["fused_ref"] = policy.velocity_old_and_ref(z, sigma, cond)
    return out


def lora_gradients(policy, z, sigma, cond) -> list[torch.Tensor]:
    """Gradients of one NFT-like loss (v against the fused old/ref outputs) w.r.t. the LoRA."""
    for p in policy.trainable_parameters():
        p.grad = None
    v = policy.velocity(z, sigma, cond)
    v_old, v_ref = policy.velocity_old_and_ref(z, sigma, cond)
    ((v - v_old) ** 2 + (v - v_ref) ** 2).mean().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in policy.trainable_parameters()]


def assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for key in expected:
        assert torch.allclose(actual[key], expected[key], atol=ATOL), (
            key,
            (actual[key] - expected[key]).abs().max(),
        )


# ------------------------------------------------------------------------------ attention backend
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("use_lora", [True, False])
def test_attention_backend_gives_the_default_velocities(tiny_kit, family, use_lora):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default_backend = _AttentionBackendRegistry._active_backend
    default = make_policy(tiny_kit, family, device="cpu", use_lora=use_lora)
    chosen = make_policy(tiny_kit, family, device="cpu", use_lora=use_lora, attention_backend="_native_math")
    # Every attention of every copy (full-weight mode: trained, old, ref) uses the backend, and the
    # process-wide default diffusers keeps for other models is left as it was.
    assert chosen.attention_backend == "_native_math"
    assert processors(chosen) and all(p._attention_backend == "_native_math" for p in processors(chosen))
    assert all(p._attention_backend is None for p in processors(default))
    assert _AttentionBackendRegistry._active_backend == default_backend
    perturb(default.trainable_parameters(), seed=0)
    perturb(default.old_parameters(), seed=1)
    chosen.load_policy_state_dict(default.policy_state_dict())
    if not use_lora:
        chosen.ref_transformer.load_state_dict(default.ref_transformer.state_dict())
    z, sigma, cond = inputs(default)
    expected = all_velocities(default, z, sigma, cond)
    assert (expected["default"] - expected["ref"]).abs().max() > 1e-3  # the three policies differ
    assert_close(all_velocities(chosen, z, sigma, cond), expected)


def test_unknown_attention_backend_names_the_key_and_the_choices(tiny_kit):
    with pytest.raises(
        ValueError, match=r"attention_backend='flash3' is not a diffusers attention backend"
    ) as e:
        make_policy(tiny_kit, "kontext", device="cpu", attention_backend="flash3")
    assert "'_flash_3'" in str(e.value) and "'_native_cudnn'" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuDNN kernel runs where CUDA is present")
@pytest.mark.parametrize(
    ("family", "backend", "message"),
    [
        # No cuDNN attention on a CPU tensor: torch finds no kernel; said at construction.
        (
            "kontext",
            "_native_cudnn",
            r"attention_backend='_native_cudnn' cannot run the kontext attention here \(cpu",
        ),
        # Qwen masks padded text keys; torch's flash kernel takes no mask (Kontext runs it on CPU).
        ("qwen_image_edit", "_native_flash", r"with a key mask\): ValueError: `attn_mask` is not supported"),
    ],
)
def test_attention_backend_that_cannot_run_here_fails_at_construction(tiny_kit, family, backend, message):
    with pytest.raises(RuntimeError, match=message):
        make_policy(tiny_kit, family, device="cpu", attention_backend=backend)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_attention_backend_without_its_package_fails_at_construction(tiny_kit):
    with pytest.raises(RuntimeError, match=r"attention_backend='flash' is not usable here .*flash-attn"):
        make_policy(tiny_kit, "kontext", device="cpu", attention_backend="flash")


# ------------------------------------------------------------------------------ compile
# Tracing the training graph with AOT autograd costs 6-9 s per family on 2 cores, so the LoRA
# gradients are checked on Qwen (the shipped recipe) and Kontext checks the forward graphs.
@pytest.mark.parametrize(("family", "check_gradients"), [("qwen_image_edit", True), ("kontext", False)])
def test_compiled_blocks_match_eager(tiny_kit, family, check_gradients):
    policy = make_policy(tiny_kit, family, device="cpu", gradient_checkpointing=True)
    policy.transformer.train()
    names = [name for name, _ in policy.transformer.named_parameters()]
    states = []
    for seed in (0, 2):
        perturb(policy.trainable_parameters(), seed=seed)  # B != 0: A gets a gradient too
        perturb(policy.old_parameters(), seed=seed + 1)
        states.append(policy.policy_state_dict())
    z, sigma, cond = inputs(policy)
    expected = []
    for state in states:
        policy.load_policy_state_dict(state)
        grads = lora_gradients(policy, z, sigma, cond) if check_gradients else None
        expected.append((all_velocities(policy, z, sigma, cond), grads))

    counter = CompileCounterWithBackend("aot_eager")
    policy.compile(backend=counter)
    # In place: the same parameter names (checkpoints, peft adapters, EMA all address these).
    assert [name for name, _ in policy.transformer.named_parameters()] == names
    frames = []
    for state, (velocities, grads) in zip(states, expected, strict=True):
        policy.load_policy_state_dict(state)  # in-place copies, as the EMA / old-policy updates
        if check_gradients:
            compiled_grads = lora_gradients(policy, z, sigma, cond)
            assert sum(bool(g.abs().sum() > 0) for g in compiled_grads) > len(compiled_grads) // 2
            for compiled, grad in zip(compiled_grads, grads, strict=True):
                assert torch.allclose(compiled, grad, atol=ATOL)
        # "default" runs first without hooks; "old" and "ref" must not replay its graph.
        assert_close(all_velocities(policy, z, sigma, cond), velocities)
        frames.append(counter.frame_count)
    # The blocks ran compiled (one graph per grad mode and row layout: at least default, old,
    # ref, old+ref), and swapping the weights in place recompiled nothing.
    assert frames[0] >= 4 and frames[1] == frames[0], frames
    assert policy.compiled


@pytest.mark.slow
def test_inductor_compiled_velocity_matches_eager(tiny_kit):
    """torch's default backend, generating C++ on CPU: 22 s on 2 cores with a cold cache."""
    policy = make_policy(tiny_kit, "kontext", device="cpu")
    perturb(policy.trainable_parameters(), seed=0)
    z, sigma, cond = inputs(policy)
    with torch.no_grad():
        expected = policy.velocity(z, sigma, cond)
        policy.compile()
        actual = policy.velocity(z, sigma, cond)
    assert torch.allclose(actual, expected, atol=ATOL)


# ------------------------------------------------------------------------------ config
def tiny_config():
    return load_config(str(REPO / "config/qwen_image_edit_nft.py:tiny"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("attention_backend", "flash_attention", "attention_backend='flash_attention' is not a diffusers"),
        ("attention_backend", None, "attention_backend=None must be a string"),
        ("compile_mode", "fast", "compile_mode='fast' is not a torch.compile mode"),
    ],
)
def test_config_rejects_bad_speed_switches(key, value, message):
    config = tiny_config()
    config[key] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config, world_size=1, check_files=False)
    assert message in str(error.value)


def test_config_accepts_every_diffusers_backend_name_and_warns_on_a_lone_compile_mode():
    config = tiny_config()
    for name in ["", *attention_backend_names()]:
        config.attention_backend = name
        assert validate_config(config, world_size=1, check_files=False) == []
    config.compile_mode = "max-autotune-no-cudagraphs"
    assert any("compile_mode" in w for w in validate_config(config, world_size=1, check_files=False))
    config.compile_transformer = True
    assert validate_config(config, world_size=1, check_files=False) == []
