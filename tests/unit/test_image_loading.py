"""Images reach the model as the original's loaders gave them: LANCZOS resize, EXIF orientation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edit_r1.data.dataset import center_crop_resize
from edit_r1.eval_sets import imgedit_items

ORIENTATION = 0x0112  # EXIF tag
ROTATE_90_CW = 6  # the stored pixels must be rotated 90 degrees clockwise to display upright


def test_training_images_are_resized_with_lanczos() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    out = center_crop_resize(image, 32)
    square = image.crop((16, 0, 64, 48))
    expected = square.resize((32, 32), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert not np.array_equal(np.asarray(out), np.asarray(square.resize((32, 32), Image.Resampling.BICUBIC)))


def test_imgedit_images_are_exif_transposed(tmp_path: Path) -> None:
    """The original's ImgEdit scripts load with diffusers' load_image, which applies EXIF orientation."""
    stored = Image.new("RGB", (40, 20), (200, 0, 0))
    stored.paste((0, 0, 200), (0, 0, 10, 20))  # a blue stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_90_CW
    stored.save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    (tmp_path / "imgedit.json").write_text(json.dumps({"k0": {"id": "photo.jpg", "prompt": "make it green"}}))
    [item] = imgedit_items(tmp_path / "imgedit.json", tmp_path)
    image = item.load_image()
    assert image.size == (20, 40)  # upright: rotated to portrait
    top_row = np.asarray(image)[2]
    assert top_row[:, 2].mean() > 150 and top_row[:, 0].mean() < 100  # the stripe is now on top
