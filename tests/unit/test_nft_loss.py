"""NFT loss (docs/algorithm.md#6-the-nft-loss): formula, invariants, masking, adv modes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edit_r1.algo import ADV_MODES, nft_loss, positive_weight, transform_advantages

C = 5.0


def make_batch(batch=4, shape=(6, 3), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=dtype)

    x0 = randn(batch, *shape)
    t = torch.rand(batch, generator=gen) * 0.9 + 0.05
    eps = randn(batch, *shape)
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * eps
    v_old = eps - x0 + 0.3 * randn(batch, *shape)
    return {
        "v": (v_old + 0.1 * randn(batch, *shape)).requires_grad_(),
        "v_old": v_old,
        "v_ref": v_old + 0.05 * randn(batch, *shape),
        "x_t": x_t,
        "x0": x0,
        "t": t,
        "advantages": torch.randn(batch, generator=gen) * 3,
        "mask": torch.ones(batch, dtype=torch.bool),
    }


def loss_of(batch, **overrides):
    options = {"nft_beta": 1.0, "kl_beta": 1e-4, "adv_clip_max": C, "adv_mode": "all"} | overrides
    return nft_loss(**batch, **options)


def reference_loss(batch, nft_beta, kl_beta, adv_mode="all"):
    """Direct float64 transcription of docs/algorithm.md#6-the-nft-loss."""
    v, v_old, v_ref = batch["v"].double(), batch["v_old"].double(), batch["v_ref"].double()
    x_t, x0, t = batch["x_t"].double(), batch["x0"].double(), batch["t"].double().view(-1, 1, 1)
    m = batch["mask"].double()
    a = transform_advantages(batch["advantages"].double(), adv_clip_max=C, adv_mode=adv_mode)
    r = (a / (2 * C) + 0.5).clamp(0, 1)
    x_pos = x_t - t * (nft_beta * v + (1 - nft_beta) * v_old)
    x_neg = x_t - t * ((1 + nft_beta) * v_old - nft_beta * v)

    def adaptive(x):
        w = (x - x0).abs().mean(dim=(1, 2)).clamp(min=1e-5).detach()
        return ((x - x0) ** 2).mean(dim=(1, 2)) / w

    policy = C * (m * (r * adaptive(x_pos) + (1 - r) * adaptive(x_neg))).sum() / nft_beta / m.sum()
    kl = (m * ((v - v_ref) ** 2).mean(dim=(1, 2))).sum() / m.sum()
    return policy + kl_beta * kl


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    nft_beta=st.floats(0.1, 2.0),
    kl_beta=st.sampled_from([0.0, 1e-4, 0.5]),
    adv_mode=st.sampled_from(ADV_MODES),
    mask_bits=st.lists(st.booleans(), min_size=4, max_size=4).filter(any),
)
def test_loss_matches_the_spec_formula(seed, nft_beta, kl_beta, adv_mode, mask_bits):
    batch = make_batch(seed=seed)
    batch["mask"] = torch.tensor(mask_bits)
    loss, info = loss_of(batch, nft_beta=nft_beta, kl_beta=kl_beta, adv_mode=adv_mode)
    expected = reference_loss(batch, nft_beta, kl_beta, adv_mode)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(info["total_loss"], loss.detach())


def per_sample_grads(batch, advantages):
    batch = dict(batch, advantages=advantages, v=batch["v"].detach().clone().requires_grad_())
    loss, _ = loss_of(batch, kl_beta=0.0)
    loss.backward()
    return batch["v"].grad


def test_gradient_at_v_equal_v_old_is_proportional_to_2r_minus_1():
    batch = make_batch(batch=5)
    batch["v"] = batch["v_old"].clone().requires_grad_()
    # r = A / (2C) + 1/2 for A in [-C, C]: these give r = 0, 0.25, 0.5, 0.75, 1
    advantages = torch.tensor([-C, -C / 2, 0.0, C / 2, C])
    grads = per_sample_grads(batch, advantages)
    at_r1 = per_sample_grads(batch, torch.full((5,), C))
    r = advantages / (2 * C) + 0.5
    for i in range(5):
        torch.testing.assert_close(grads[i], (2 * r[i] - 1) * at_r1[i], atol=1e-6, rtol=1e-5)
    assert grads[2].abs().max() == 0
    torch.testing.assert_close(grads[0], -at_r1[0])  # r = 0 and r = 1 pull in opposite directions
    assert at_r1[4].abs().sum() > 0


def test_positive_sample_pulls_x0_prediction_towards_x0():
    batch = make_batch(batch=1, seed=3)
    batch["advantages"] = torch.tensor([C])
    loss, _ = loss_of(batch, kl_beta=0.0)
    loss.backward()
    step = batch["v"] - 1e-3 * batch["v"].grad
    t = batch["t"].view(-1, 1, 1)
    before = ((batch["x_t"] - t * batch["v"] - batch["x0"]) ** 2).mean()
    after = ((batch["x_t"] - t * step - batch["x0"]) ** 2).mean()
    assert after < before


def test_masked_samples_contribute_nothing():
    batch = make_batch(batch=4, seed=4)
    batch["mask"] = torch.tensor([True, False, True, False])
    loss, _ = loss_of(batch)
    loss.backward()
    grad = batch["v"].grad
    assert grad[1].abs().max() == 0 and grad[3].abs().max() == 0
    kept = {name: value[[0, 2]] for name, value in batch.items() if name != "v"}
    kept["v"] = batch["v"].detach()[[0, 2]].requires_grad_()
    kept_loss, _ = loss_of(kept)
    torch.testing.assert_close(loss, kept_loss)


def test_masked_samples_with_nan_advantage_do_not_poison_the_loss():
    batch = make_batch(batch=3, seed=5)
    batch["advantages"] = torch.tensor([1.0, float("nan"), -1.0])
    batch["mask"] = torch.tensor([1.0, 0.0, 1.0])
    loss, _ = loss_of(batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(batch["v"].grad).all()


def test_all_masked_gives_zero_with_zero_gradient():
    batch = make_batch(seed=6)
    batch["mask"] = torch.zeros(4, dtype=torch.bool)
    loss, info = loss_of(batch)
    loss.backward()
    assert loss.item() == 0.0
    assert batch["v"].grad is not None and batch["v"].grad.abs().max() == 0
    assert info["policy_loss"].item() == 0.0 and info["kept_fraction"].item() == 0.0


def test_float_mask_weights_samples():
    batch = make_batch(batch=2, seed=7)
    batch["mask"] = torch.tensor([1.0, 3.0])
    loss, _ = loss_of(batch, kl_beta=0.0)
    expected = reference_loss(batch, 1.0, 0.0)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_kl_term_needs_v_ref_only_when_weighted():
    batch = make_batch(seed=8)
    with pytest.raises(ValueError, match="v_ref"):
        loss_of(dict(batch, v_ref=None), kl_beta=1e-4)
    loss, info = loss_of(dict(batch, v_ref=None), kl_beta=0.0)
    assert "kl_div" not in info
    with_ref, info_ref = loss_of(batch, kl_beta=0.0)
    torch.testing.assert_close(loss, with_ref)
    assert info_ref["kl_div"] > 0


def test_kl_term_gradient_points_to_reference():
    batch = make_batch(seed=9)
    batch["advantages"] = torch.zeros(4)
    batch["v"] = batch["v_old"].clone().requires_grad_()  # policy gradient is 0 at r = 1/2
    loss, info = loss_of(batch, kl_beta=1.0)
    loss.backward()
    expected = 2 * (batch["v"] - batch["v_ref"]).detach() / (6 * 3) / 4
    torch.testing.assert_close(batch["v"].grad, expected)
    torch.testing.assert_close(info["kl_div_loss"], ((batch["v"] - batch["v_ref"]) ** 2).mean().detach())


def test_diagnostics_are_detached_scalars():
    _, info = loss_of(make_batch(seed=10))
    expected = {"policy_loss", "unweighted_policy_loss", "kl_div_loss", "kl_div", "old_kl_div", "x0_norm"}
    assert expected <= set(info)
    assert {"x0_norm_max", "old_deviate", "old_deviate_max", "total_loss"} <= set(info)
    for value in info.values():
        assert value.ndim == 0 and not value.requires_grad
    torch.testing.assert_close(info["policy_loss"], info["unweighted_policy_loss"] * C)


def test_bf16_inputs_are_computed_in_float32_or_better():
    batch = make_batch(seed=11, dtype=torch.bfloat16)
    loss, _ = loss_of(batch)
    loss.backward()
    assert loss.dtype in (torch.float32, torch.float64)
    assert batch["v"].grad.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("all", [-5.0, -2.0, 0.0, 3.0, 5.0]),
        ("positive_only", [0.0, 0.0, 0.0, 3.0, 5.0]),
        ("negative_only", [-5.0, -2.0, 0.0, 0.0, 0.0]),
        ("one_only", [0.0, 0.0, 0.0, 1.0, 1.0]),
        ("binary", [-1.0, -1.0, 0.0, 1.0, 1.0]),
    ],
)
def test_adv_modes(mode, expected):
    advantages = torch.tensor([-9.0, -2.0, 0.0, 3.0, 7.0])
    assert transform_advantages(advantages, adv_clip_max=C, adv_mode=mode).tolist() == expected
    r = positive_weight(advantages, adv_clip_max=C, adv_mode=mode)
    torch.testing.assert_close(r, (torch.tensor(expected) / (2 * C) + 0.5).clamp(0, 1))


def test_unknown_adv_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="positive_only"):
        loss_of(make_batch(), adv_mode="clip")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"nft_beta": 0.0}, "nft_beta"),
        ({"adv_clip_max": 0.0}, "adv_clip_max"),
        ({"kl_beta": -1.0}, "kl_beta"),
    ],
)
def test_bad_hyperparameters_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        loss_of(make_batch(), **override)


def test_shape_mismatch_is_rejected():
    batch = make_batch()
    with pytest.raises(ValueError, match="t must have shape"):
        loss_of(dict(batch, t=batch["t"][:2]))
