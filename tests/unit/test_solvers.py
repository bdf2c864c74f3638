"""Solvers (docs/algorithm.md#3-rollout) on analytic velocity fields, their log-probs and reproducibility."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edit_r1.sampling import SOLVERS, compute_mu, sample, sde_step, sigma_schedule

QWEN = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "shift_terminal": 0.02,
}
SIGMAS6 = sigma_schedule(6, 1024, QWEN)
DETERMINISTIC = [(name, True) for name in SOLVERS]


def constant_field(c):
    return lambda z, sigma: c.expand_as(z)


def point_mass_field(c):
    """Exact velocity for data concentrated at ``c``: ``v = (z - c) / sigma``; ``x0_hat = c`` everywhere."""
    return lambda z, sigma: (z - c) / sigma.view(-1, *([1] * (z.ndim - 1)))


def gaussian_field(mu, s):
    """Exact probability-flow velocity for data ``x0 ~ N(mu, s^2)`` per coordinate.

    ``z_sigma ~ N((1 - sigma) mu, V)``, ``V = (1 - sigma)^2 s^2 + sigma^2``,
    ``v = -mu + (sigma - (1 - sigma) s^2) / V (z - (1 - sigma) mu)``; the flow maps ``z_1`` to
    ``mu + s z_1``.
    """

    def velocity(z, sigma):
        sig = sigma.double().view(-1, *([1] * (z.ndim - 1)))
        var = (1 - sig) ** 2 * s**2 + sig**2
        return -mu + (sig - (1 - sig) * s**2) / var * (z.double() - (1 - sig) * mu)

    return velocity


def rollout(solver, field, z1, sigmas=SIGMAS6, **kwargs):
    kwargs.setdefault("deterministic", True)
    return sample(field, z1, sigmas, solver=solver, noise_level=kwargs.pop("noise_level", 0.7), **kwargs)


@pytest.mark.parametrize("solver", SOLVERS)
def test_constant_field_is_integrated_exactly(solver):
    torch.manual_seed(0)
    z1 = torch.randn(3, 5, 4)
    c = torch.randn(1, 5, 4)
    result = rollout(solver, constant_field(c), z1)
    torch.testing.assert_close(result.latents, z1 - c.expand_as(z1), atol=1e-5, rtol=0)
    for sigma, state in zip(SIGMAS6.tolist(), result.trajectory, strict=True):
        torch.testing.assert_close(state, z1 - (1 - sigma) * c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_point_mass_field_lands_on_the_point(solver):
    torch.manual_seed(1)
    z1 = torch.randn(2, 16, 8)
    c = torch.randn(1, 16, 8)
    result = rollout(solver, point_mass_field(c), z1)
    torch.testing.assert_close(result.latents, c.expand_as(z1), atol=1e-5, rtol=0)


def gaussian_error(solver, num_steps):
    torch.manual_seed(2)
    z1 = torch.randn(64, 32)
    mu, s = 0.7, 0.3
    sigmas = sigma_schedule(num_steps, 1024, QWEN)
    result = rollout(solver, gaussian_field(mu, s), z1, sigmas=sigmas)
    return (result.latents - (mu + s * z1)).abs().max().item()


@pytest.mark.parametrize("num_steps", [2, 4, 6, 10, 15, 24])
def test_dpm2_at_least_as_accurate_as_dpm1_on_smooth_field(num_steps):
    dpm1, dpm2 = gaussian_error("dpm1", num_steps), gaussian_error("dpm2", num_steps)
    assert dpm2 <= dpm1
    if num_steps >= 4:  # with 2 or 3 steps every step is an Euler step or first order
        assert dpm2 < dpm1


@pytest.mark.parametrize("solver", SOLVERS)
def test_deterministic_solvers_converge_on_smooth_field(solver):
    assert gaussian_error(solver, 100) < gaussian_error(solver, 6) / 5


def test_dpm1_equals_euler_in_exact_arithmetic():
    torch.manual_seed(3)
    z1 = torch.randn(4, 8, dtype=torch.float64)
    field = gaussian_field(0.2, 0.5)
    dpm1 = rollout("dpm1", field, z1).latents
    euler = rollout("flow", field, z1).latents
    torch.testing.assert_close(dpm1, euler, atol=1e-6, rtol=0)


def test_dpm_last_step_returns_x0_prediction():
    torch.manual_seed(4)
    z1 = torch.randn(2, 6)
    field = gaussian_field(0.1, 0.9)
    result = rollout("dpm2", field, z1)
    before_last = result.trajectory[-2]
    sigma = SIGMAS6[-2].reshape(1).repeat(2)
    x0_hat = (before_last.double() - SIGMAS6[-2].double() * field(before_last, sigma)).float()
    torch.testing.assert_close(result.latents, x0_hat, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_steps", [2, 6, 15])
def test_deterministic_flow_matches_diffusers_euler_scheduler_bit_for_bit(num_steps):
    scheduling = pytest.importorskip("diffusers.schedulers.scheduling_flow_match_euler_discrete")
    scheduler = scheduling.FlowMatchEulerDiscreteScheduler(**QWEN)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=compute_mu(256, QWEN))

    def field(z, sigma):
        return torch.tanh(3 * z) * sigma.view(-1, 1, 1) - 0.25 * z

    torch.manual_seed(5)
    z = z1 = torch.randn(2, 9, 4)
    for t in scheduler.timesteps:
        z = scheduler.step(field(z, (t / 1000).repeat(2)), t, z, return_dict=False)[0]
    ours = rollout("flow", field, z1, sigmas=scheduler.sigmas).latents
    assert torch.equal(ours, z)


def test_velocity_fn_receives_model_dtype_and_float32_batch_sigma():
    seen = []

    def field(z, sigma):
        seen.append((z.dtype, sigma.dtype, tuple(sigma.shape), sigma[0].item()))
        return torch.ones_like(z)

    z1 = torch.randn(3, 4, 2, dtype=torch.bfloat16)
    result = rollout("flow", field, z1)
    assert [s[:3] for s in seen] == [(torch.bfloat16, torch.float32, (3,))] * 6
    assert [s[3] for s in seen] == SIGMAS6[:-1].tolist()
    assert result.latents.dtype == torch.bfloat16
    assert all(state.dtype == torch.bfloat16 for state in result.trajectory)


@pytest.mark.parametrize("solver", ["flow", "ddim", "dance"])
def test_stochastic_rollout_shapes_and_finite_log_probs(solver):
    z1 = torch.randn(5, 3, 4)
    gen = torch.Generator().manual_seed(0)
    result = rollout(solver, gaussian_field(0.0, 0.5), z1, deterministic=False, generator=gen)
    assert len(result.trajectory) == 7
    assert result.log_probs.shape == (6, 5)
    assert result.log_probs.dtype == torch.float32
    assert torch.isfinite(result.log_probs).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_deterministic_rollouts_are_bit_reproducible(solver):
    z1 = torch.randn(2, 8, 3)
    field = gaussian_field(0.3, 0.4)
    first, second = rollout(solver, field, z1), rollout(solver, field, z1.clone())
    assert first.log_probs is None
    for a, b in zip(first.trajectory, second.trajectory, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("solver", ["flow", "ddim", "dance"])
def test_stochastic_rollouts_follow_the_generator(solver):
    z1 = torch.randn(2, 8, 3)
    field = gaussian_field(0.3, 0.4)

    def run(seed):
        return rollout(solver, field, z1, deterministic=False, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.latents, c.latents)


def test_per_sample_generators_make_rows_independent_of_batch_composition():
    z1 = torch.randn(2, 8, 3)
    field = gaussian_field(0.3, 0.4)
    both = rollout(
        "flow", field, z1, deterministic=False, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]
    )
    alone = rollout("flow", field, z1[1:], deterministic=False, generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(both.latents[1:], alone.latents)


def spec_mean_std(solver, z, v, s, t, eta, sigma1):
    """Independent float64 transcription of the three stochastic steps of docs/algorithm.md#3-rollout."""
    z, v = z.double(), v.double()
    x0 = z - s * v
    if solver == "flow":
        dt = t - s
        std_t = eta * math.sqrt(s / (1 - (sigma1 if s == 1 else s)))
        mean = z * (1 + std_t**2 * dt / (2 * s)) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        return mean, std_t * math.sqrt(-dt)
    if solver == "ddim":
        rho = eta * t * math.sqrt(1 - t**2 * (1 - s) ** 2 / (s**2 * (1 - t) ** 2))
        eps_hat = (z - (1 - s) * x0) / s
        return (1 - t) * x0 + math.sqrt(t**2 - rho**2) * eps_hat, rho
    score = -(z - (1 - s) * x0) / s**2
    return z + (t - s) * v - eta**2 / 2 * score * (t - s), eta * math.sqrt(s - t)


@settings(max_examples=30, deadline=None)
@given(
    solver=st.sampled_from(["flow", "ddim", "dance"]),
    index=st.integers(0, 4),
    eta=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_sde_step_log_prob_is_the_gaussian_density_of_its_sample(solver, index, eta, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 6, 5, generator=gen)
    v = torch.randn(3, 6, 5, generator=gen)
    prev, x0, log_prob = sde_step(solver, v, z, SIGMAS6, index, noise_level=eta, generator=gen)
    s, t = SIGMAS6[index].item(), SIGMAS6[index + 1].item()
    mean, std = spec_mean_std(solver, z, v, s, t, eta, SIGMAS6[1].item())
    density = torch.distributions.Normal(mean, std).log_prob(prev.double()).mean(dim=(1, 2))
    torch.testing.assert_close(log_prob.double(), density, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(x0, z - s * v)
    _, _, rescored = sde_step(solver, v, z, SIGMAS6, index, noise_level=eta, prev_sample=prev)
    assert torch.equal(rescored, log_prob)


@pytest.mark.parametrize("solver", ["flow", "ddim", "dance"])
def test_sde_step_samples_have_the_stated_moments(solver):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4).expand(20000, 4).contiguous()
    v = torch.randn(1, 4).expand(20000, 4).contiguous()
    index = 2
    prev, _, _ = sde_step(solver, v, z, SIGMAS6, index, noise_level=0.7, generator=gen)
    mean, std = spec_mean_std(solver, z[:1], v[:1], SIGMAS6[index].item(), SIGMAS6[index + 1].item(), 0.7, 0)
    torch.testing.assert_close(prev.double().mean(0), mean[0], atol=4 * std / math.sqrt(20000), rtol=0)
    assert prev.double().std(0).sub(std).abs().max() < 0.03 * std


@pytest.mark.parametrize("solver", ["flow", "ddim", "dance"])
def test_log_prob_is_differentiable_in_the_velocity(solver):
    z = torch.randn(2, 3, 4)
    v = torch.randn(2, 3, 4, requires_grad=True)
    prev, _, _ = sde_step(solver, v.detach(), z, SIGMAS6, 1, noise_level=0.7, generator=torch.Generator())
    _, _, log_prob = sde_step(solver, v, z, SIGMAS6, 1, noise_level=0.7, prev_sample=prev)
    log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_ddim_last_step_to_zero_is_deterministic_with_zero_log_prob():
    z, v = torch.randn(2, 5), torch.randn(2, 5)
    prev, x0, log_prob = sde_step("ddim", v, z, SIGMAS6, 5, noise_level=0.7, generator=torch.Generator())
    torch.testing.assert_close(prev, x0)
    assert torch.equal(log_prob, torch.zeros(2))


def test_dance_log_prob_keeps_the_log_std_term():
    """The original dropped ``-log std``; here the density of the mean itself is ``-log std - log sqrt(2 pi)``."""
    z, v = torch.randn(2, 5), torch.randn(2, 5)
    mean, std = spec_mean_std("dance", z, v, SIGMAS6[0].item(), SIGMAS6[1].item(), 0.7, 0)
    _, _, log_prob = sde_step("dance", v, z, SIGMAS6, 0, noise_level=0.7, prev_sample=mean.float())
    expected = -math.log(std) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, torch.full((2,), expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("solver", ["dpm1", "dpm2"])
def test_dpm_solvers_refuse_stochastic_rollouts(solver):
    with pytest.raises(ValueError, match="deterministic only"):
        rollout(solver, constant_field(torch.zeros(1)), torch.randn(1, 2), deterministic=False)
    with pytest.raises(ValueError, match="deterministic only"):
        sde_step(solver, torch.zeros(1, 2), torch.zeros(1, 2), SIGMAS6, 0, noise_level=0.7)


def test_unknown_solver_names_the_valid_ones():
    with pytest.raises(ValueError, match="flow, ddim, dance, dpm1, dpm2"):
        rollout("euler", constant_field(torch.zeros(1)), torch.randn(1, 2))


@pytest.mark.parametrize(
    "sigmas", [torch.tensor([1.0]), torch.tensor([0.5, 0.7, 0.0]), torch.tensor([1.5, 0.0])]
)
def test_bad_sigmas_are_rejected(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        rollout("flow", constant_field(torch.zeros(1)), torch.randn(1, 2), sigmas=sigmas)


def test_ddim_rejects_noise_level_above_one():
    with pytest.raises(ValueError, match="noise_level"):
        sde_step("ddim", torch.zeros(1, 2), torch.zeros(1, 2), SIGMAS6, 1, noise_level=1.5)
