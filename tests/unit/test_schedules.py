"""Sigma schedules (docs/algorithm.md#2-sigma-schedule) against the published tables and diffusers'
scheduler."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edit_r1.sampling import compute_mu, sigma_schedule

QWEN = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "shift_terminal": 0.02,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
}
KONTEXT = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
TOKENS_512 = (512 // 16) ** 2  # 8x VAE, 2x2 packing


def test_qwen_table_512_six_steps():
    expected = torch.tensor([1, 0.8625, 0.7028, 0.5151, 0.2913, 0.02, 0])
    torch.testing.assert_close(sigma_schedule(6, TOKENS_512, QWEN), expected, atol=1e-4, rtol=0)


def test_kontext_table_512_six_steps():
    expected = torch.tensor([1, 0.9037, 0.7897, 0.6525, 0.4842, 0.2730, 0])
    torch.testing.assert_close(sigma_schedule(6, TOKENS_512, KONTEXT), expected, atol=1e-4, rtol=0)


def test_mu_is_linear_in_sequence_length():
    slope = (0.9 - 0.5) / (8192 - 256)
    assert compute_mu(256, QWEN) == pytest.approx(0.5)
    assert compute_mu(8192, QWEN) == pytest.approx(0.9)
    assert compute_mu(1024, QWEN) == pytest.approx(0.5 + slope * (1024 - 256))


@settings(max_examples=40, deadline=None)
@given(num_steps=st.integers(1, 60), seq_len=st.integers(16, 16384), qwen=st.booleans())
def test_schedule_shape_and_order(num_steps, seq_len, qwen):
    sigmas = sigma_schedule(num_steps, seq_len, QWEN if qwen else KONTEXT)
    assert sigmas.dtype == torch.float32
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert torch.isfinite(sigmas).all()
    if qwen and num_steps > 1:
        assert sigmas[-2].item() == pytest.approx(0.02, abs=1e-6)


def test_exponential_shift_formula():
    mu = compute_mu(4096, KONTEXT)
    base = np.linspace(1.0, 1 / 10, 10)
    expected = math.exp(mu) / (math.exp(mu) + 1 / base - 1)
    torch.testing.assert_close(
        sigma_schedule(10, 4096, KONTEXT)[:-1].double(), torch.tensor(expected), atol=1e-6, rtol=0
    )


def test_static_shift_without_dynamic_shifting():
    config = dict(KONTEXT, use_dynamic_shifting=False, shift=3.0)
    base = torch.linspace(1.0, 1 / 4, 4, dtype=torch.float64)
    expected = 3.0 * base / (1 + 2.0 * base)
    torch.testing.assert_close(sigma_schedule(4, 999, config)[:-1].double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("config", [QWEN, KONTEXT], ids=["qwen", "kontext"])
@pytest.mark.parametrize("num_steps", [2, 6, 15, 28])
def test_bit_identical_to_diffusers_scheduler(config, num_steps):
    scheduling = pytest.importorskip("diffusers.schedulers.scheduling_flow_match_euler_discrete")
    scheduler = scheduling.FlowMatchEulerDiscreteScheduler(**config)
    seq_len = 4096
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=compute_mu(seq_len, config))
    assert torch.equal(sigma_schedule(num_steps, seq_len, config), scheduler.sigmas)


def test_one_step_with_terminal_is_finite():
    assert sigma_schedule(1, 1024, QWEN).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"image_seq_len": 0}, "image_seq_len"),
        ({"config": dict(QWEN, use_karras_sigmas=True)}, "use_karras_sigmas"),
        ({"config": dict(QWEN, time_shift_type="cubic")}, "time_shift_type"),
    ],
)
def test_bad_input_is_rejected(kwargs, message):
    args = {"num_steps": 6, "image_seq_len": 1024, "config": QWEN} | kwargs
    with pytest.raises(ValueError, match=message):
        sigma_schedule(args["num_steps"], args["image_seq_len"], args["config"])
