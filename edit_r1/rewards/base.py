"""What a reward function receives and returns.

A reward function maps a batch of :class:`RewardSample` to a float64 numpy array of the same
length; ``NaN`` marks a sample that could not be scored (the algorithm masks it; it is never
turned into 0). Images are PIL images or uint8 arrays of shape (H, W, 3) / (H, W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np


class RewardSample(NamedTuple):
    """One edited image to score, with what the edit was asked to do.

    ``source_image`` is the (first) source image; ``more_source_images`` holds the further ones of
    an edit with several reference images ("Picture 2", ...), empty otherwise.
    """

    edited_image: Any
    source_image: Any
    instruction: str
    requirement: str = ""
    extra: Mapping[str, Any] = {}
    more_source_images: tuple[Any, ...] = ()


class PairSample(NamedTuple):
    """Two edits of the same task for the pairwise judge: is ``first_image`` (shown first) better?"""

    first_image: Any
    second_image: Any
    source_image: Any
    instruction: str
    requirement: str = ""


class RewardFn(Protocol):
    def __call__(self, samples: Sequence[RewardSample]) -> np.ndarray:
        """One float per sample, NaN where scoring failed."""
        ...
