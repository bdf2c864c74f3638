"""What the judge sees: JPEG at PIL's default quality 75 by default (the original's client), PNG on request."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from edit_r1.rewards.base import RewardSample
from edit_r1.rewards.client import RewardClient, RewardClientSettings, encode_image
from reward_server.protocol import build_score_request


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))


def test_jpeg_is_the_originals_encoding_and_png_is_lossless() -> None:
    image = _image()
    jpeg = encode_image(image)
    reference = io.BytesIO()
    image.save(reference, format="JPEG", quality=75)
    assert jpeg == reference.getvalue()  # PIL's default quality is the original's 75
    png = encode_image(np.asarray(image), "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))
    with pytest.raises(ValueError, match="bmp"):
        encode_image(image, "bmp")


def test_client_sends_jpeg_by_default_and_png_when_configured() -> None:
    sample = RewardSample(_image(), _image(), "make it red")
    for options, magic in (({}, b"\xff\xd8\xff"), ({"image_format": "png"}, b"\x89PNG")):
        settings = RewardClientSettings.from_mapping(options)
        client = RewardClient("127.0.0.1:1", image_format=settings.image_format)
        item = build_score_request([client._item(sample)])["items"][0]  # as posted
        client.close()
        assert base64.b64decode(item["image"]).startswith(magic)
        assert base64.b64decode(item["source_image"]).startswith(magic)
    assert RewardClientSettings().as_mapping()["image_format"] == "jpeg"
    with pytest.raises(ValueError, match="image_format='gif'"):
        RewardClientSettings.from_mapping({"image_format": "gif"})
