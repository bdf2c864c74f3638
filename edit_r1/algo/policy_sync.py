"""Old-policy decay and the EMA of the trained weights (docs/algorithm.md#7-ema-and-old-policy-update)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

# decay_type -> (flat steps, rate per step, ceiling)
_OLD_POLICY_SCHEDULES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}
DECAY_TYPES: tuple[int, ...] = tuple(_OLD_POLICY_SCHEDULES)


def old_policy_decay(step: int, decay_type: int) -> float:
    """Decay ``d`` of ``old <- d old + (1 - d) theta`` after an epoch ending at optimizer step ``k``.

    type 0: ``0`` (old = theta); type 1: ``min(0.001 k, 0.5)`` (shipped); type 2: ``0`` while
    ``k < 75``, then ``min(0.0075 (k - 75), 0.999)``.
    """
    if decay_type not in _OLD_POLICY_SCHEDULES:
        raise ValueError(f"unknown decay_type {decay_type!r}; valid types: {sorted(_OLD_POLICY_SCHEDULES)}")
    flat, rate, ceiling = _OLD_POLICY_SCHEDULES[decay_type]
    if step < flat:
        return 0.0
    return min((step - flat) * rate, ceiling)


def ema_decay(step: int, max_decay: float = 0.9) -> float:
    """EMA decay at optimizer step ``k``: ``min((1 + k) / (10 + k), max_decay)``."""
    return min((1 + step) / (10 + step), max_decay)


@torch.no_grad()
def update_old_policy(
    old_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float
) -> None:
    """In place ``old <- d old + (1 - d) theta`` for matching parameter lists (``d = 0``: exact copy)."""
    for old, new in zip(list(old_params), list(params), strict=True):
        source = new.detach().to(device=old.device, dtype=old.dtype)
        if decay == 0.0:
            old.copy_(source)
        else:
            old.copy_(old * decay + source * (1.0 - decay))


class EMA:
    """Exponential moving average of parameters, ``ema <- d ema + (1 - d) theta`` with ``d = ema_decay(k)``.

    :meth:`store` keeps a true copy of the live parameters (``copy=True``: a CPU tensor moved to the
    CPU is otherwise the same storage, which made upstream's restore a no-op on CPU); :meth:`applied`
    swaps the EMA weights in for evaluation or saving and restores the live ones afterwards.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        max_decay: float = 0.9,
        device: torch.device | str | None = None,
    ):
        self.max_decay = max_decay
        self.shadow = [p.detach().to(device=device or p.device, copy=True) for p in params]
        self._stored: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, params: Iterable[torch.Tensor], step: int) -> float:
        """Update the average at optimizer step ``step``; returns the decay used."""
        decay = ema_decay(step, self.max_decay)
        for average, param in zip(self.shadow, list(params), strict=True):
            average.add_((param.detach().to(average.device, average.dtype) - average) * (1.0 - decay))
        return decay

    @torch.no_grad()
    def store(self, params: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> None:
        """Keep a copy of the live parameters (on ``device``) for :meth:`restore`."""
        self._stored = [p.detach().to(device=device, copy=True) for p in params]

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.Tensor]) -> None:
        """Overwrite ``params`` with the averages."""
        for param, average in zip(list(params), self.shadow, strict=True):
            param.copy_(average.to(param.device))

    @torch.no_grad()
    def restore(self, params: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by :meth:`store`."""
        if self._stored is None:
            raise RuntimeError("EMA.restore called without a preceding store")
        for param, saved in zip(list(params), self._stored, strict=True):
            param.copy_(saved.to(param.device))
        self._stored = None

    @contextmanager
    def applied(self, params: Iterable[torch.Tensor]) -> Iterator[None]:
        """``with ema.applied(params):`` the EMA weights are live inside, the trained ones after."""
        params = list(params)
        self.store(params)
        self.copy_to(params)
        try:
            yield
        finally:
            self.restore(params)

    def state_dict(self) -> dict:
        return {"max_decay": self.max_decay, "shadow": [t.clone() for t in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(f"EMA state has {len(shadow)} tensors, expected {len(self.shadow)}")
        self.max_decay = float(state["max_decay"])
        for average, saved in zip(self.shadow, shadow, strict=True):
            if saved.shape != average.shape:
                raise ValueError(f"EMA state tensor shape {tuple(saved.shape)} != {tuple(average.shape)}")
            average.copy_(saved)
