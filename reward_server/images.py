"""Decoding request images safely: format check, decompression-bomb guard, then RGB pixels.

PIL's global ``Image.MAX_IMAGE_PIXELS`` only warns below twice its value and is process-wide state;
here every image's declared size is checked explicitly against the server's limit *before* its
pixels are decoded, and any decoder failure becomes a :class:`ProtocolError` naming the field.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from reward_server.protocol import Limits, ProtocolError, RawItem, encode_image_bytes, image_format

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


@dataclass(frozen=True)
class JudgeItem:
    """A request item ready for a backend: decoded RGB images plus the original file bytes."""

    raw: RawItem
    image: Image.Image
    source_image: Image.Image

    @property
    def instruction(self) -> str:
        return self.raw.instruction

    @property
    def requirement(self) -> str:
        return self.raw.requirement


def data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for an image file, as OpenAI-style chat messages expect."""
    return f"data:image/{image_format(data)};base64,{encode_image_bytes(data)}"


def decode_image(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """Decode PNG/JPEG bytes to an RGB image, refusing more than ``max_pixels`` declared pixels."""
    expected = image_format(data)
    if expected is None:
        raise ProtocolError(400, f"{where}: not a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[expected]])
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ProtocolError(
                    413, f"{where}: {width}x{height} image exceeds the limit of {max_pixels} pixels"
                )
            image.load()
            return image.convert("RGB")
    except ProtocolError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ProtocolError(413, f"{where}: rejected as a decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ProtocolError(400, f"{where}: cannot decode the image ({error})") from None


def decode_item(raw: RawItem, index: int, limits: Limits) -> JudgeItem:
    """Decode both images of ``items[index]``."""
    return JudgeItem(
        raw=raw,
        image=decode_image(raw.image, f"items[{index}].image", limits.max_image_pixels),
        source_image=decode_image(raw.source_image, f"items[{index}].source_image", limits.max_image_pixels),
    )
