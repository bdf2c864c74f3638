"""Model-free similarity of an edit to its source: SSIM, PSNR and the share of changed pixels.

Used by the ``source_consistency`` reward (:mod:`edit_r1.rewards.registry`) and by the trainer's
evaluation monitors (:mod:`edit_r1.monitors`). No ground truth and no model: only the two images
the judge is sent (the edit and its source, both at the run's ``resolution``). When their sizes
differ the source is resized to the edit's size (bilinear) first. Pixel values are ``x`` in [0, 1].

- **SSIM** (Wang et al. 2004), computed on each RGB channel and averaged over the channels::

      mu_a, mu_b, s_a^2, s_b^2, s_ab   Gaussian-weighted local means, variances, covariance
                                       (sigma 1.5 px, 11 taps; only windows inside the image)
      map = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))
      C1 = 0.01^2, C2 = 0.03^2                       (the standard constants, dynamic range 1)
      SSIM = mean(map)

  1 for identical images, near 0 (it can be negative) when the structure is gone. An image side
  shorter than 11 px uses the largest odd window that fits.
- **PSNR** ``= 10 log10(1 / MSE)`` dB over all pixels and channels, the MSE floored at 1e-10 so
  identical images give 100 dB rather than infinity (a mean over images stays finite).
- **changed share**: the fraction of pixels whose largest channel difference
  ``max_c |a_c - b_c|`` exceeds ``threshold`` (default 0.1, i.e. 25.5 of 255 levels): 0 for
  identical images, the edited area's share for an edit that changes only that area.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

SSIM_SIGMA = 1.5
SSIM_TAPS = 11
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
PSNR_MSE_FLOOR = 1e-10  # identical images: 100 dB
DEFAULT_CHANGE_THRESHOLD = 0.1


def rgb_array(image: Any) -> np.ndarray:
    """``(H, W, 3)`` float64 in [0, 1] from a PIL image, a uint8 ``(H, W[, 3])`` array or a float
    array already in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) or (H, W) image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def aligned(edit: Any, source: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float arrays of the edit's size (the source resized bilinearly if needed)."""
    a = rgb_array(edit)
    height, width = a.shape[:2]
    if isinstance(source, Image.Image) and source.size != (width, height):
        source = source.convert("RGB").resize((width, height), Image.BILINEAR)
    b = rgb_array(source)
    if b.shape != a.shape:
        resized = Image.fromarray(np.round(b * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
        b = rgb_array(resized)
    return a, b


def _gaussian_taps(side: int) -> np.ndarray:
    taps = min(SSIM_TAPS, side if side % 2 else side - 1)
    offsets = np.arange(taps) - (taps - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of ``(H, W, C)`` over H and W, keeping only full windows."""
    n = len(taps)
    rows = sum(w * x[k : x.shape[0] - n + 1 + k] for k, w in enumerate(taps))
    return sum(w * rows[:, k : rows.shape[1] - n + 1 + k] for k, w in enumerate(taps))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    taps = _gaussian_taps(min(a.shape[:2]))
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return float((numerator / denominator).mean())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10.0 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), PSNR_MSE_FLOOR)))


def _changed_share(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"changed-pixel threshold must be in [0, 1), got {threshold}")
    return float((np.abs(a - b).max(axis=-1) > threshold).mean())


def ssim(edit: Any, source: Any) -> float:
    """Mean SSIM of the two images over the RGB channels (module docstring)."""
    return _ssim(*aligned(edit, source))


def psnr(edit: Any, source: Any) -> float:
    """``10 log10(1 / max(MSE, 1e-10))`` dB."""
    return _psnr(*aligned(edit, source))


def changed_share(edit: Any, source: Any, threshold: float = DEFAULT_CHANGE_THRESHOLD) -> float:
    """Fraction of pixels with ``max_c |edit_c - source_c| > threshold``."""
    return _changed_share(*aligned(edit, source), threshold)


def source_similarity(
    edit: Any, source: Any, threshold: float = DEFAULT_CHANGE_THRESHOLD
) -> dict[str, float]:
    """``{"ssim", "psnr", "changed_share"}`` of one edit against its source (one alignment)."""
    a, b = aligned(edit, source)
    return {"ssim": _ssim(a, b), "psnr": _psnr(a, b), "changed_share": _changed_share(a, b, threshold)}
