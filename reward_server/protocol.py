"""The reward server's wire protocol: JSON over HTTP, shared by the server and the trainer's client.

Standard library only, so the client can import it without pulling in the server's dependencies.
The full description (with a ``curl`` example) is in ``docs/reward-protocol.md``:

- ``GET /health`` -> ``{"status": "ok"|"degraded"|"down", "backend", "model", "template",
  "template_sha256", "pairwise_template", "pairwise_template_sha256", "replicas_alive", "replicas"}``
  once the judge is loaded (open without the API key, then only status/backend/templates).
- ``POST /score`` with ``{"items": [{"image", "source_image", "instruction", "requirement"?,
  "more_source_images"?}, ...]}``
  (images are base64-encoded PNG, JPEG, WebP or GIF files) -> ``{"scores": [float | null], "errors": [str | null],
  "template", "template_sha256"}`` (the judge prompt's name and the SHA-256 of its text)
  in request order. A score is the judge's expected rating divided by 5, in [0, 1]; an item the
  judge could not score has ``null`` and an error message, never a made-up number.
- Version 2 adds pairwise items, ``{"kind": "pairwise", "image", "image_b", "source_image",
  "instruction", "requirement"?}``, mixed freely with pointwise ones: the score is the judge's
  probability that ``image`` (shown first) is the better edit of the two. A request may state the
  version it needs (``"protocol": 2``); a server older than that refuses it with a 400, and so does
  a server without a pairwise question (``pairwise_template`` null in ``/health``).

Nothing here ever unpickles or evaluates data: the request is parsed with ``json`` and every field's
type and size is checked against :class:`Limits` before anything else touches it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PROTOCOL_VERSION = 2
POINTWISE, PAIRWISE = "pointwise", "pairwise"
# The judge's questions in /health and in every /score response: the names and SHA-256 of the
# pointwise template and of the pairwise question (both pairwise fields null when it has none).
PROMPT_FIELDS = ("template", "template_sha256", "pairwise_template", "pairwise_template_sha256")
ITEM_KINDS = (POINTWISE, PAIRWISE)
ITEM_FIELDS = ("kind", "image", "image_b", "source_image", "instruction", "requirement")
# Optional list: the further source images of an edit with several references ("Picture 2", ...).
# A client sends it only when there are some, so single-image requests are unchanged.
MORE_SOURCES_FIELD = "more_source_images"
ITEM_FIELDS = (*ITEM_FIELDS, MORE_SOURCES_FIELD)
REQUIRED_ITEM_FIELDS = ("image", "source_image", "instruction")
IMAGE_FIELDS = ("image", "source_image")
TEXT_FIELDS = ("instruction", "requirement")
# File signatures of the accepted image formats; anything else is rejected before decoding.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
GIF_MAGICS = (b"GIF87a", b"GIF89a")
ACCEPTED_FORMATS = "PNG, JPEG, WebP or GIF"
_BASE64_WHITESPACE = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True)
class Limits:
    """Upper bounds a request must respect; every one is enforced before any decoding work.

    ``max_image_pixels`` is the decompression-bomb guard: a tiny compressed file can declare a
    gigantic canvas, so the declared width x height is checked before the pixels are decoded.
    """

    max_items: int = 256
    max_body_bytes: int = 256 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 8192
    max_more_source_images: int = 7


def max_images_per_item(limits: Limits) -> int:
    """The most images one item can show the judge: a pointwise item's sources (1 +
    ``max_more_source_images``) and its edit, or a pairwise item's source and two edits (3).

    The vLLM engine's ``limit_mm_per_prompt`` must be at least this, else such items are refused.
    """
    return max(3, 1 + limits.max_more_source_images + 1)


class ProtocolError(ValueError):
    """A client error: carries the HTTP status (4xx) and a message naming the offending field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RawItem:
    """One validated request item; the images are still encoded files (PNG, JPEG, WebP or GIF)."""

    image: bytes
    source_image: bytes
    instruction: str
    requirement: str = ""
    kind: str = POINTWISE  # "pairwise": compare ``image`` (shown first) with ``image_b``
    image_b: bytes | None = None
    more_source_images: tuple[bytes, ...] = ()


def image_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"``, ``"webp"`` or ``"gif"`` from the file signature, else None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(GIF_MAGICS):
        return "gif"
    return None


def encode_image_bytes(data: bytes) -> str:
    """Base64-encode an image file (PNG, JPEG, WebP or GIF bytes) for the ``image``/``source_image`` fields."""
    return base64.b64encode(data).decode("ascii")


def _decode_base64_image(value: object, where: str, limits: Limits) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(400, f"{where}: expected a base64 string, got {type(value).__name__}")
    # Base64 inflates by 4/3; reject before decoding so a huge string costs no memory twice.
    if len(value) > (limits.max_image_bytes * 4) // 3 + 4:
        raise ProtocolError(413, f"{where}: image larger than {limits.max_image_bytes} bytes")
    data = decode_base64(value, where)
    if image_format(data) is None:
        raise ProtocolError(400, f"{where}: not a {ACCEPTED_FORMATS} file")
    return data


def decode_base64(value: str, where: str) -> bytes:
    """Standard or URL-safe base64, with or without line breaks and padding (all are in use).

    Any other character is an error; mixing the two alphabets is refused (it is a corrupted string).
    """
    try:
        compact = _BASE64_WHITESPACE.sub(b"", value.encode("ascii"))
    except UnicodeEncodeError:
        raise ProtocolError(400, f"{where}: not valid base64 (non-ASCII characters)") from None
    url_safe = b"-" in compact or b"_" in compact
    if url_safe and (b"+" in compact or b"/" in compact):
        raise ProtocolError(400, f"{where}: not valid base64 (standard and URL-safe alphabets mixed)")
    if url_safe:
        compact = compact.translate(bytes.maketrans(b"-_", b"+/"))
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ProtocolError(400, f"{where}: not valid base64 ({error})") from None


def _check_text(value: object, where: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ProtocolError(400, f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > limits.max_text_chars:
        raise ProtocolError(400, f"{where}: {len(value)} characters, at most {limits.max_text_chars} allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\\ud800") is valid JSON but no tokenizer can take it.
        raise ProtocolError(400, f"{where}: not valid Unicode text (lone surrogate escape)") from None
    return value


def parse_item(raw: object, index: int, limits: Limits) -> RawItem:
    """Validate one entry of ``items``; errors name ``items[index].field``."""
    where = f"items[{index}]"
    if not isinstance(raw, dict):
        raise ProtocolError(400, f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ITEM_FIELDS))
    if unknown:
        raise ProtocolError(400, f"{where}: unknown field(s) {unknown}; allowed: {list(ITEM_FIELDS)}")
    kind = _item_kind(raw, where)
    for field in REQUIRED_ITEM_FIELDS + (("image_b",) if kind == PAIRWISE else ()):
        if field not in raw:
            raise ProtocolError(400, f"{where}.{field}: missing")
    images = {field: _decode_base64_image(raw[field], f"{where}.{field}", limits) for field in IMAGE_FIELDS}
    image_b = _decode_base64_image(raw["image_b"], f"{where}.image_b", limits) if kind == PAIRWISE else None
    instruction = _check_text(raw["instruction"], f"{where}.instruction", limits)
    requirement = _check_text(raw.get("requirement", ""), f"{where}.requirement", limits)
    if not instruction.strip():
        raise ProtocolError(400, f"{where}.instruction: empty")
    more = _more_sources(raw.get(MORE_SOURCES_FIELD, []), f"{where}.{MORE_SOURCES_FIELD}", limits)
    if more and kind == PAIRWISE:
        raise ProtocolError(400, f"{where}.{MORE_SOURCES_FIELD}: pairwise items take one source image")
    return RawItem(images["image"], images["source_image"], instruction, requirement, kind, image_b, more)


def _item_kind(raw: dict, where: str) -> str:
    """``kind`` (default ``pointwise``); ``image_b`` belongs to pairwise items only."""
    kind = raw.get("kind", POINTWISE)
    if not isinstance(kind, str) or kind not in ITEM_KINDS:
        raise ProtocolError(400, f"{where}.kind: {kind!r} is not one of {list(ITEM_KINDS)}")
    if kind == POINTWISE and "image_b" in raw:
        raise ProtocolError(400, f"{where}.image_b: only pairwise items have a second edit (set kind)")
    return kind


def _more_sources(value: object, where: str, limits: Limits) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise ProtocolError(400, f"{where}: expected a list of base64 images, got {type(value).__name__}")
    if len(value) > limits.max_more_source_images:
        raise ProtocolError(413, f"{where}: {len(value)} images, at most {limits.max_more_source_images}")
    return tuple(_decode_base64_image(v, f"{where}[{i}]", limits) for i, v in enumerate(value))


def _refuse_constant(name: str) -> None:
    raise ProtocolError(400, f"request body is not valid JSON: {name} is not a JSON number")


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """Duplicate keys are ambiguous (parsers disagree on which wins), so they are refused."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ProtocolError(400, f"request body: duplicate key {duplicate!r} in one object")
    return result


def parse_json(body: bytes) -> object:
    """Strict JSON: UTF-8 (or the UTF-16/32 that RFC 8259 parsers detect), no ``NaN``/``Infinity``,
    no duplicate keys; nesting too deep for the parser is a 400 like any other malformed body."""
    try:
        return json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=_object_without_duplicates)
    except ProtocolError:
        raise
    except ValueError as error:  # decoding, syntax, and integers beyond Python's digit limit
        raise ProtocolError(400, f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError(400, "request body is not valid JSON: nested too deeply") from None


def parse_score_request(body: bytes, limits: Limits) -> list[RawItem]:
    """Parse and validate a ``POST /score`` body; raises :class:`ProtocolError` with a 4xx status."""
    if len(body) > limits.max_body_bytes:
        raise ProtocolError(413, f"request body of {len(body)} bytes exceeds {limits.max_body_bytes}")
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ProtocolError(400, f"request body: expected a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"items", "protocol"})
    if unknown:
        raise ProtocolError(400, f"request body: unknown field(s) {unknown}; allowed: ['items', 'protocol']")
    wanted = payload.get("protocol", 1)
    if not isinstance(wanted, int) or isinstance(wanted, bool) or not 1 <= wanted <= PROTOCOL_VERSION:
        raise ProtocolError(
            400, f"protocol: this server speaks versions 1..{PROTOCOL_VERSION}, the request needs {wanted!r}"
        )
    if "items" not in payload:
        raise ProtocolError(400, "items: missing")
    items = payload["items"]
    if not isinstance(items, list):
        raise ProtocolError(400, f"items: expected a list, got {type(items).__name__}")
    if not items:
        raise ProtocolError(400, "items: empty list")
    if len(items) > limits.max_items:
        raise ProtocolError(413, f"items: {len(items)} items, at most {limits.max_items} per request")
    return [parse_item(raw, index, limits) for index, raw in enumerate(items)]


def build_score_request(items: Sequence[Mapping[str, object]]) -> dict:
    """The request object for ``POST /score`` from items holding image bytes and texts.

    An item with ``kind="pairwise"`` also carries ``image_b``; a request holding one states
    ``"protocol": 2`` so that a version-1 server refuses it clearly.
    """
    encoded = []
    for item in items:
        entry = {
            "image": encode_image_bytes(item["image"]),
            "source_image": encode_image_bytes(item["source_image"]),
            "instruction": item["instruction"],
        }
        if item.get("requirement"):
            entry["requirement"] = item["requirement"]
        if item.get("kind", POINTWISE) == PAIRWISE:
            entry["kind"] = PAIRWISE
            entry["image_b"] = encode_image_bytes(item["image_b"])
        if item.get(MORE_SOURCES_FIELD):
            entry[MORE_SOURCES_FIELD] = [encode_image_bytes(data) for data in item[MORE_SOURCES_FIELD]]
        encoded.append(entry)
    request: dict = {"items": encoded}
    if any(entry.get("kind") == PAIRWISE for entry in encoded):
        request["protocol"] = PROTOCOL_VERSION
    return request


def build_score_response(
    scores: Sequence[float | None], errors: Sequence[str | None], retryable: Sequence[bool] | None = None
) -> dict:
    """The response object for ``POST /score``; scores, errors and (when given) ``retryable`` are
    aligned with the request. ``retryable[i]`` is true when item i failed only because its judge
    replica died or hung while holding it (sending it again may score it)."""
    body: dict = {"scores": list(scores), "errors": list(errors)}
    if retryable is not None:
        body["retryable"] = [bool(flag) for flag in retryable]
    return body


def parse_retryable(payload: Mapping, expected: int) -> list[bool]:
    """The ``retryable`` flags of a checked ``/score`` response (all false when the server sends
    none: servers older than this field never mark an error retryable)."""
    flags = payload.get("retryable")
    if flags is None:
        return [False] * expected
    if not isinstance(flags, list) or len(flags) != expected or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"response: 'retryable' must be a list of {expected} booleans")
    return flags


def parse_score_response(payload: object, expected: int) -> tuple[list[float | None], list[str | None]]:
    """Check a ``/score`` response: two lists of ``expected`` entries, finite scores in [0, 1] or null."""
    if not isinstance(payload, dict):
        raise ValueError(f"response: expected a JSON object, got {type(payload).__name__}")
    scores, errors = payload.get("scores"), payload.get("errors")
    if not isinstance(scores, list) or not isinstance(errors, list):
        raise ValueError("response: 'scores' and 'errors' must both be lists")
    if len(scores) != expected or len(errors) != expected:
        raise ValueError(f"response: {len(scores)} scores / {len(errors)} errors for {expected} items")
    for index, score in enumerate(scores):
        if score is None:
            continue
        if not isinstance(score, (int, float)) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValueError(f"response: scores[{index}] = {score!r} is not a number in [0, 1]")
    return [None if s is None else float(s) for s in scores], [None if e is None else str(e) for e in errors]
