"""Flow-GRPO's loss against its formulas on hand-made tensors, and both algorithms behind the interface."""

from __future__ import annotations

import math

import pytest
import torch

from edit_r1.algo import GRPO, NFT, TrainBatch, clipped_policy_loss, nft_loss, transition_kl
from edit_r1.sampling import sample
from edit_r1.sampling.solvers import flow_transition


def test_clipped_objective_matches_the_formula_and_its_gradient() -> None:
    ratios = torch.tensor([1.0, 1.5, 0.5, 1.0, 1.0])
    log_prob = torch.log(ratios).requires_grad_()
    old = torch.zeros(5)
    advantages = torch.tensor([1.0, 1.0, -1.0, 10.0, 3.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    loss, info = clipped_policy_loss(log_prob, old, advantages, mask, clip_range=0.1, adv_clip_max=5.0)
    # row 0: max(-1, -1) = -1; row 1: max(-1.5, -1.1) = -1.1 (clipped); row 2: max(0.5, 0.9) = 0.9
    # (clipped); row 3: A clipped to 5 -> -5; row 4 masked.
    assert loss.item() == pytest.approx((-1.0 - 1.1 + 0.9 - 5.0) / 4)
    loss.backward()
    # d/dlogp of -A ratio is -A ratio / 4 where the unclipped term is the max, 0 where clipping wins.
    assert log_prob.grad.tolist() == pytest.approx([-0.25, 0.0, 0.0, -5.0 / 4, 0.0])
    assert info["clipfrac"].item() == pytest.approx(0.5)
    assert info["clipfrac_gt_one"].item() == pytest.approx(0.25)
    assert info["clipfrac_lt_one"].item() == pytest.approx(0.25)
    assert info["ratio_deviation_max"].item() == pytest.approx(0.5)
    expected_kl = (0.5 * math.log(1.5) ** 2 + 0.5 * math.log(0.5) ** 2) / 4
    assert info["approx_kl"].item() == pytest.approx(expected_kl)


def test_nothing_kept_gives_zero_loss_with_zero_gradients() -> None:
    log_prob = torch.zeros(3, requires_grad=True)
    loss, _ = clipped_policy_loss(
        log_prob, torch.zeros(3), torch.ones(3), torch.zeros(3), clip_range=0.2, adv_clip_max=5.0
    )
    loss.backward()
    assert loss.item() == 0.0 and log_prob.grad.abs().sum().item() == 0.0


def test_transition_kl_is_the_mean_squared_mean_gap_over_twice_the_variance() -> None:
    mean = torch.zeros(2, 3, 4, requires_grad=True)
    ref = torch.full((2, 3, 4), 0.2)
    ref[1] = 0.4
    kl = transition_kl(mean, ref, diffusion_variance=0.25, mask=torch.tensor([1.0, 1.0]))
    assert kl.item() == pytest.approx((0.04 / 0.5 + 0.16 / 0.5) / 2)
    masked = transition_kl(mean, ref, diffusion_variance=0.25, mask=torch.tensor([1.0, 0.0]))
    assert masked.item() == pytest.approx(0.08)
    kl.backward()
    assert torch.allclose(mean.grad[0], torch.full((3, 4), -0.2 / 0.25 / 12 / 2))


class LinearPolicy:
    """``v = a * z`` for the trained policy and ``v = a_ref * z`` for the reference (a PolicyForward)."""

    def __init__(self, a: float, a_ref: float) -> None:
        self.a = torch.tensor(a, requires_grad=True)
        self.a_ref = a_ref
        self.calls: list[str] = []

    def velocity(self, z, sigma, adapter):
        self.calls.append(adapter)
        return (self.a if adapter == "default" else torch.tensor(self.a_ref)) * z

    def velocity_old_and_ref(self, z, sigma):
        self.calls.append("old+ref")
        return 0.9 * z, torch.tensor(self.a_ref) * z


def _rollout(policy: LinearPolicy, sigmas: torch.Tensor, algorithm: GRPO):
    with torch.no_grad():
        z = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
        result = sample(
            lambda x, s: policy.velocity(x, s, "default"), z, sigmas, solver="flow",
            deterministic=False, noise_level=0.7, generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
    return result, algorithm.rollout_fields(result)


def test_grpo_recomputes_the_stored_log_prob_and_its_kl() -> None:
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    algorithm = GRPO(
        timestep_fraction=0.99, solver="flow", noise_level=0.7, clip_range=1e-4, kl_beta=0.5, adv_clip_max=5.0
    )
    policy = LinearPolicy(a=0.3, a_ref=0.1)
    result, fields = _rollout(policy, sigmas, algorithm)
    assert fields["latents"].shape == (3, 5, 4, 2) and fields["log_probs"].shape == (3, 4)
    assert algorithm.train_steps(4) == 3
    assert algorithm.step_plan(3, 4).tolist() == [[0, 1, 2, 3]] * 3
    advantages = torch.tensor([1.0, -1.0, 0.5])
    batch = TrainBatch(
        x0=result.latents, advantages=advantages, mask=torch.ones(3), sigmas=sigmas, fields=fields
    )
    for step in range(3):
        loss, info = algorithm.loss(policy, batch, torch.full((3,), step))
        assert info["ratio_deviation_max"].item() < 1e-6  # unchanged weights: ratio 1
        z = fields["latents"][:, step]
        mean = flow_transition(0.3 * z, z, sigmas, step, 0.7).mean
        ref_mean = flow_transition(0.1 * z, z, sigmas, step, 0.7).mean
        std_t2 = 0.7**2 * float(sigmas[step]) / (1 - (0.75 if step == 0 else float(sigmas[step])))
        kl = ((mean - ref_mean) ** 2).mean(dim=(1, 2)) / (2 * std_t2)
        assert info["kl_loss"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
        assert loss.item() == pytest.approx(-advantages.mean().item() + 0.5 * kl.mean().item(), rel=1e-5)
    assert policy.calls.count("ref") == 3 and "old+ref" not in policy.calls


def test_grpo_gradient_raises_the_likelihood_of_advantaged_steps() -> None:
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])
    algorithm = GRPO(
        timestep_fraction=1.0, solver="flow", noise_level=0.7, clip_range=0.2, kl_beta=0.0, adv_clip_max=5.0
    )
    policy = LinearPolicy(a=0.3, a_ref=0.3)
    result, fields = _rollout(policy, sigmas, algorithm)
    batch = TrainBatch(
        x0=result.latents,
        advantages=torch.tensor([2.0, 0.0, 0.0]),
        mask=torch.ones(3),
        sigmas=sigmas,
        fields=fields,
    )
    loss, _ = algorithm.loss(policy, batch, torch.full((3,), 1))
    loss.backward()
    with torch.no_grad():
        policy.a -= 0.01 * policy.a.grad.sign()
    _, info = algorithm.loss(policy, batch, torch.full((3,), 1))
    assert info["ratio_mean"].item() != 1.0
    # After a small step against the loss gradient, sample 0 (the only one with an advantage) is likelier.
    z = fields["latents"][:1, 1]
    before = flow_transition(0.3 * z, z, sigmas, 1, 0.7)
    after = flow_transition(policy.a.detach() * z, z, sigmas, 1, 0.7)
    target = fields["latents"][:1, 2]
    assert ((target - after.mean) ** 2).sum() < ((target - before.mean) ** 2).sum()


def test_grpo_rejects_deterministic_rollouts_and_mixed_steps() -> None:
    algorithm = GRPO(
        timestep_fraction=1.0, solver="flow", noise_level=0.7, clip_range=0.2, kl_beta=0.0, adv_clip_max=5.0
    )
    policy = LinearPolicy(a=0.3, a_ref=0.3)
    deterministic = sample(
        lambda x, s: 0.3 * x, torch.ones(2, 3), torch.tensor([1.0, 0.0]), solver="flow",
        deterministic=True, noise_level=0.7,
    )  # fmt: skip
    with pytest.raises(ValueError, match="deterministic=False"):
        algorithm.rollout_fields(deterministic)
    with pytest.raises(ValueError, match="stochastic solver"):
        GRPO(timestep_fraction=1.0, solver="dpm2", noise_level=0.7, clip_range=0.2, kl_beta=0, adv_clip_max=5)
    _, fields = _rollout(policy, torch.tensor([1.0, 0.5, 0.0]), algorithm)
    batch = TrainBatch(
        x0=torch.zeros(3, 4, 2), advantages=torch.ones(3), mask=torch.ones(3),
        sigmas=torch.tensor([1.0, 0.5, 0.0]), fields=fields,
    )  # fmt: skip
    with pytest.raises(ValueError, match="one grid step per micro-batch"):
        algorithm.loss(policy, batch, torch.tensor([0, 1, 0]))


def test_nft_behind_the_interface_is_nft_loss_at_the_planned_times() -> None:
    algorithm = NFT(timestep_fraction=0.99, nft_beta=1.0, kl_beta=1e-4, adv_clip_max=5.0, adv_mode="all")
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    torch.manual_seed(3)
    plan = algorithm.step_plan(2, 4)
    assert sorted(plan[0].tolist()) == [0, 1, 2, 3] and algorithm.train_steps(4) == 3
    x0 = torch.randn(2, 5, 3)
    batch = TrainBatch(x0=x0, advantages=torch.tensor([1.0, -2.0]), mask=torch.ones(2), sigmas=sigmas)
    policy = LinearPolicy(a=0.3, a_ref=0.2)
    torch.manual_seed(7)
    loss, info = algorithm.loss(policy, batch, plan[:, 0])
    torch.manual_seed(7)
    t = sigmas[plan[:, 0]]
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * torch.randn_like(x0)
    expected, _ = nft_loss(
        0.3 * x_t, 0.9 * x_t, 0.2 * x_t, x_t, x0, t, batch.advantages, batch.mask,
        nft_beta=1.0, kl_beta=1e-4, adv_clip_max=5.0, adv_mode="all",
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert policy.calls == ["old+ref", "default"] and "total_loss" in info
