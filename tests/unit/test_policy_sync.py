"""Old-policy decay and EMA (docs/algorithm.md#7-ema-and-old-policy-update)."""

import pytest
import torch

from edit_r1.algo import EMA, ema_decay, old_policy_decay, update_old_policy


@pytest.mark.parametrize(
    ("decay_type", "step", "expected"),
    [
        (0, 0, 0.0),
        (0, 1000, 0.0),
        (1, 0, 0.0),
        (1, 1, 0.001),
        (1, 250, 0.25),
        (1, 499, 0.499),
        (1, 500, 0.5),
        (1, 5000, 0.5),
        (2, 0, 0.0),
        (2, 74, 0.0),
        (2, 75, 0.0),
        (2, 76, 0.0075),
        (2, 175, 0.75),
        (2, 208, 0.9975),
        (2, 209, 0.999),
        (2, 10_000, 0.999),
    ],
)
def test_old_policy_decay_breakpoints(decay_type, step, expected):
    assert old_policy_decay(step, decay_type) == pytest.approx(expected, abs=1e-12)


def test_unknown_decay_type_is_rejected():
    with pytest.raises(ValueError, match="decay_type"):
        old_policy_decay(10, 3)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.1), (1, 2 / 11), (10, 11 / 20), (80, 0.9), (81, 0.9), (10_000, 0.9)]
)
def test_ema_decay_schedule(step, expected):
    assert ema_decay(step) == pytest.approx(expected)


def test_ema_decay_ceiling_is_configurable():
    assert ema_decay(10_000, max_decay=0.99) == pytest.approx(0.99)
    assert ema_decay(1, max_decay=0.1) == pytest.approx(0.1)


def test_update_old_policy_formula_and_exact_copy_at_zero_decay():
    theta = [torch.randn(3, 4), torch.randn(5)]
    old = [torch.randn(3, 4), torch.randn(5)]
    before = [o.clone() for o in old]
    update_old_policy(old, theta, 0.25)
    for o, b, t in zip(old, before, theta, strict=True):
        torch.testing.assert_close(o, 0.25 * b + 0.75 * t)
    update_old_policy(old, theta, 0.0)
    for o, t in zip(old, theta, strict=True):
        assert torch.equal(o, t) and o.data_ptr() != t.data_ptr()


def test_update_old_policy_requires_matching_lists():
    with pytest.raises(ValueError):
        update_old_policy([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], 0.5)


def test_ema_step_formula():
    params = [torch.nn.Parameter(torch.zeros(4))]
    ema = EMA(params)
    with torch.no_grad():
        params[0].fill_(1.0)
    decay = ema.step(params, step=1)
    assert decay == pytest.approx(2 / 11)
    torch.testing.assert_close(ema.shadow[0], torch.full((4,), 1 - 2 / 11))


def test_ema_store_restore_really_copies_on_cpu():
    """Upstream's temporary copy aliased CPU parameters, so restoring was a no-op there."""
    params = [torch.nn.Parameter(torch.arange(4.0))]
    trained = params[0].detach().clone()
    ema = EMA(params)
    ema.shadow[0].fill_(-1.0)
    with ema.applied(params):
        assert torch.equal(params[0].detach(), torch.full((4,), -1.0))
    assert torch.equal(params[0].detach(), trained)


def test_ema_restore_without_store_is_an_error():
    params = [torch.zeros(2)]
    with pytest.raises(RuntimeError, match="store"):
        EMA(params).restore(params)


def test_ema_state_round_trip():
    params = [torch.randn(3)]
    ema = EMA(params, max_decay=0.95)
    ema.step([torch.ones(3)], step=5)
    other = EMA([torch.zeros(3)])
    other.load_state_dict(ema.state_dict())
    assert other.max_decay == 0.95
    assert torch.equal(other.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="shape"):
        EMA([torch.zeros(4)]).load_state_dict(ema.state_dict())
