"""Edit-to-source similarity (SSIM, PSNR, changed share) and the source_consistency reward, on hand-made images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from edit_r1.data.toy import COLORS, apply_task, generate_examples
from edit_r1.rewards import RewardSample, build_combined_reward, build_reward_fn
from edit_r1.rewards.similarity import SSIM_C1, changed_share, psnr, source_similarity, ssim


def _scene(size: int = 32) -> np.ndarray:
    """A grey background with a red square and a blue disc: structure for SSIM to see."""
    image = np.full((size, size, 3), 128, np.uint8)
    image[4:14, 4:14] = (220, 40, 40)
    yy, xx = np.mgrid[:size, :size]
    image[(yy - 22) ** 2 + (xx - 22) ** 2 < 36] = (40, 80, 220)
    return image


def test_identical_images_are_perfectly_similar():
    scene = _scene()
    assert source_similarity(scene, scene) == {
        "ssim": pytest.approx(1.0),
        "psnr": 100.0,
        "changed_share": 0.0,
    }


def _textured(size: int = 32) -> np.ndarray:
    """A photo-like source: fine texture everywhere (seeded noise)."""
    return np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)


def test_a_flat_field_of_one_colour_loses_the_structure():
    source = _textured()
    flat = np.zeros_like(source)
    flat[:] = (40, 170, 60)  # the whole image repainted green: the "erase the scene" edit
    found = source_similarity(flat, source)
    assert found["ssim"] < 0.05
    assert found["changed_share"] > 0.95  # nearly every pixel moved by more than 0.1 in some channel
    assert found["psnr"] < 10


def test_on_flat_shapes_ssim_keeps_the_luminance_term_of_flat_windows():
    """The toy world's scenes are flat regions: a window with no variance in either image scores
    its luminance term, so a flat field keeps a part of the SSIM (the trade-off in docs/training.md)."""
    scene = _scene()
    flat = np.zeros_like(scene)
    flat[:] = (40, 170, 60)
    local = scene.copy()
    local[4:14, 4:14] = (40, 170, 60)  # the red square recoloured green: a perfect local edit
    assert 0.2 < ssim(flat, scene) < 0.5 < ssim(local, scene)
    assert changed_share(flat, scene) == 1.0


def test_ssim_of_two_flat_images_is_its_luminance_term():
    """Constant images have no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) exactly."""
    a, b = 0.2, 0.8
    first = np.full((16, 16, 3), a)
    second = np.full((16, 16, 3), b)
    assert ssim(first, second) == pytest.approx((2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1))


def test_psnr_and_changed_share_of_a_known_difference():
    source = np.zeros((10, 10, 3))
    edit = source.copy()
    edit[:5] = 0.5  # half the pixels moved by 0.5 in every channel: MSE = 0.125
    assert psnr(edit, source) == pytest.approx(10 * math.log10(1 / 0.125))
    assert changed_share(edit, source, threshold=0.1) == 0.5
    assert changed_share(edit, source, threshold=0.6) == 0.0  # below the threshold is unchanged


def test_a_local_edit_changes_only_its_area_and_keeps_ssim_high():
    scene = _scene(64)
    edit = scene.copy()
    edit[8:28, 8:28] = (40, 170, 60)  # one region recoloured (the square and some background)
    found = source_similarity(edit, scene)
    assert found["changed_share"] == pytest.approx(400 / 64**2)
    assert 0.6 < found["ssim"] < 1.0


def test_sources_of_another_size_are_resized_to_the_edit():
    scene = _scene(32)
    big = Image.fromarray(scene).resize((64, 64), Image.NEAREST)
    assert ssim(scene, big) > 0.9  # the same picture at twice the size


def test_bad_images_and_thresholds_are_refused():
    with pytest.raises(ValueError, match="image"):
        ssim(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="threshold"):
        changed_share(_scene(), _scene(), threshold=1.5)


def test_source_consistency_reward_is_registered_and_combines_with_weights():
    scene = _textured()
    flat = np.full_like(scene, 200)
    inverted = 255 - scene  # anti-correlated: SSIM < 0, the reward clips it to 0
    assert ssim(inverted, scene) < 0
    samples = [RewardSample(e, scene, "x") for e in (scene, flat, inverted)]
    scores = build_reward_fn("source_consistency")(samples)
    assert scores[0] == pytest.approx(1.0) and 0.0 < scores[1] < 0.05 and scores[2] == 0.0
    combined = build_combined_reward({"source_consistency": 0.3, "toy_color": 0.0})
    assert "source_consistency" in combined.functions
    broken = build_reward_fn("source_consistency")([RewardSample(np.zeros((4, 4, 2)), scene, "x")])
    assert np.isnan(broken[0])  # unreadable: masked, never 0


@pytest.mark.parametrize(("task", "perfect_above_flat"), [("recolor", 1.0), ("background", 0.85)])
def test_toy_edits_trade_off_as_documented(task, perfect_above_flat):
    """docs/training.md's table: a perfect local edit keeps far more SSIM than erasing the scene,
    a perfect background edit only a little more (64 items, seed 0)."""
    perfect, flat = [], []
    for scene, edit in generate_examples(64, 32, np.random.default_rng(0), (task,)):
        source = scene.render()
        field = np.zeros((32, 32, 3), np.uint8)
        field[:] = COLORS[edit.color]
        perfect.append(ssim(apply_task(scene, edit).render(), source))
        flat.append(ssim(field, source))
    perfect, flat = np.array(perfect), np.array(flat)
    assert np.mean(perfect > flat) >= perfect_above_flat
    assert flat.mean() == pytest.approx(0.316 if task == "recolor" else 0.315, abs=0.005)
    assert perfect.mean() == pytest.approx(0.861 if task == "recolor" else 0.433, abs=0.005)
