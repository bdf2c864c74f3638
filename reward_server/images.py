"""Decoding request images safely: format check, decompression-bomb guard, then RGB pixels.

PIL's global ``Image.MAX_IMAGE_PIXELS`` only warns below twice its value and is process-wide state;
here every image's declared size is checked explicitly against the server's limit *before* its
pixels are decoded, and any decoder failure becomes a :class:`ProtocolError` naming the field.

Unusual but legitimate files are normalised the way an image viewer shows them, so every backend
judges the same pixels: EXIF orientation applied, the first frame of an animation, 16-bit samples
scaled to 8 bits, transparency composited on white (as vLLM's loader does), CMYK converted to RGB.
A file that needed any of this is re-encoded as PNG for the backends that forward file bytes.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from reward_server.protocol import (
    ACCEPTED_FORMATS,
    PAIRWISE,
    Limits,
    ProtocolError,
    RawItem,
    encode_image_bytes,
    image_format,
)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class JudgeItem:
    """A request item ready for a backend: decoded RGB images plus their (normalised) file bytes."""

    raw: RawItem
    image: Image.Image
    source_image: Image.Image
    image_b: Image.Image | None = None  # the second edit of a pairwise item
    more_source_images: tuple[Image.Image, ...] = ()

    @property
    def pairwise(self) -> bool:
        return self.raw.kind == PAIRWISE

    @property
    def sources(self) -> tuple[Image.Image, ...]:
        """Every source image, in order (one unless the edit has several references)."""
        return (self.source_image, *self.more_source_images)

    @property
    def source_files(self) -> tuple[bytes, ...]:
        """The file bytes of :attr:`sources`, in order."""
        return (self.raw.source_image, *self.raw.more_source_images)

    @property
    def instruction(self) -> str:
        return self.raw.instruction

    @property
    def requirement(self) -> str:
        return self.raw.requirement


def data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for an image file, as OpenAI-style chat messages expect."""
    return f"data:image/{image_format(data)};base64,{encode_image_bytes(data)}"


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels as a viewer shows them: 16-bit scaled down, alpha composited on white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(image, dtype=np.int64)
        # PNG stores 16-bit grey as 0..65535; 65535 / 257 = 255 maps the range exactly.
        image = Image.fromarray((np.clip(samples, 0, 65535) // 257).astype(np.uint8), mode="L")
    if image.mode == "P" or image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _needs_reencoding(image: Image.Image, file_format: str) -> bool:
    """True when the file's own bytes would not show the pixels this server judges."""
    if file_format not in ("png", "jpeg") or getattr(image, "n_frames", 1) > 1:
        return True
    if image.mode != "RGB" and image.mode != "L":
        return True
    return image.getexif().get(_EXIF_ORIENTATION, 1) != 1


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image_file(data: bytes, where: str, max_pixels: int) -> tuple[Image.Image, bytes]:
    """Decode an image file to RGB, refusing more than ``max_pixels`` declared pixels.

    Returns the RGB image and file bytes showing exactly it: ``data`` itself for a plain RGB/grey
    PNG or JPEG, else a PNG of the normalised pixels.
    """
    file_format = image_format(data)
    if file_format is None:
        raise ProtocolError(400, f"{where}: not a {ACCEPTED_FORMATS} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[file_format]])
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ProtocolError(
                    413, f"{where}: {width}x{height} image exceeds the limit of {max_pixels} pixels"
                )
            image.seek(0)  # the first frame of an animation
            image.load()
            reencode = _needs_reencoding(image, file_format)
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    except ProtocolError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ProtocolError(413, f"{where}: rejected as a decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError, KeyError) as error:
        raise ProtocolError(400, f"{where}: cannot decode the image ({error})") from None
    return rgb, _png_bytes(rgb) if reencode else data


def decode_image(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """The RGB pixels of an image file (see :func:`decode_image_file`)."""
    return decode_image_file(data, where, max_pixels)[0]


def decode_item(raw: RawItem, index: int, limits: Limits) -> JudgeItem:
    """Decode both images of ``items[index]``; the item's file bytes become the normalised ones."""
    image, image_file = decode_image_file(raw.image, f"items[{index}].image", limits.max_image_pixels)
    source, source_file = decode_image_file(
        raw.source_image, f"items[{index}].source_image", limits.max_image_pixels
    )
    image_b = image_b_file = None
    if raw.kind == PAIRWISE:
        image_b, image_b_file = decode_image_file(
            raw.image_b, f"items[{index}].image_b", limits.max_image_pixels
        )
    more = [
        decode_image_file(data, f"items[{index}].more_source_images[{i}]", limits.max_image_pixels)
        for i, data in enumerate(raw.more_source_images)
    ]
    return JudgeItem(
        raw=dataclasses.replace(
            raw,
            image=image_file,
            source_image=source_file,
            image_b=image_b_file,
            more_source_images=tuple(f for _, f in more),
        ),
        image=image,
        source_image=source,
        image_b=image_b,
        more_source_images=tuple(rgb for rgb, _ in more),
    )


def judge_images(item: JudgeItem) -> tuple[list[Image.Image], list[bytes]]:
    """The images the judge sees, in order, as pixels and as file bytes: the source image(s) (several
    for an edit with several references) then the edit, plus the second edit of a pairwise item."""
    if item.pairwise:
        return [item.source_image, item.image, item.image_b], [
            item.raw.source_image,
            item.raw.image,
            item.raw.image_b,
        ]
    return [*item.sources, item.image], [*item.source_files, item.raw.image]
