"""The reward protocol, the score formula (docs/reward-server.md), the prompt template and the image guard."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from reward_server.images import decode_image
from reward_server.prompt_template import DEFAULT_TEMPLATE, NO_REQUIREMENT, render_prompt
from reward_server.protocol import (
    Limits,
    ProtocolError,
    build_score_request,
    parse_score_request,
    parse_score_response,
)
from reward_server.scoring import digit_token_ids, expected_score_from_logprobs, expected_score_from_token_map


def _png(size=(8, 8), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _body(items) -> bytes:
    return json.dumps({"items": items}).encode()


def _item(**override) -> dict:
    item = {
        "image": base64.b64encode(_png()).decode(),
        "source_image": base64.b64encode(_jpeg()).decode(),
        "instruction": "make it red",
        "requirement": "keep the background",
    }
    item.update(override)
    return {k: v for k, v in item.items() if v is not ...}


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims a huge canvas (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_round_trip_keeps_order_bytes_and_texts():
    items = [
        {"image": _png(), "source_image": _jpeg(), "instruction": f"edit {i}", "requirement": "r" * i}
        for i in range(3)
    ]
    parsed = parse_score_request(json.dumps(build_score_request(items)).encode(), Limits())
    assert [p.instruction for p in parsed] == ["edit 0", "edit 1", "edit 2"]
    assert [p.requirement for p in parsed] == ["", "r", "rr"]
    assert all(p.image == _png() and p.source_image == _jpeg() for p in parsed)


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"{}", 400, "items: missing"),
        (json.dumps({"items": {}}).encode(), 400, "items: expected a list"),
        (_body([]), 400, "items: empty"),
        (_body(["x"]), 400, "items[0]: expected an object"),
        (_body([_item(image=...)]), 400, "items[0].image: missing"),
        (_body([_item(), _item(instruction=7)]), 400, "items[1].instruction: expected a string"),
        (_body([_item(requirement=["a"])]), 400, "items[0].requirement"),
        (_body([_item(source_image="@@@")]), 400, "items[0].source_image: not valid base64"),
        (
            _body([_item(image=base64.b64encode(b"BM6\x00\x00\x00....").decode())]),
            400,
            "items[0].image: not a PNG, JPEG, WebP or GIF",
        ),
        (_body([_item(extra=1)]), 400, "unknown field"),
        (_body([_item(kind="pairwise")]), 400, "items[0].image_b: missing"),
        (_body([_item(image_b=base64.b64encode(_png()).decode())]), 400, "items[0].image_b: only pairwise"),
        (_body([_item(kind="triple")]), 400, "items[0].kind: 'triple' is not one of"),
        (_body([_item(kind="pairwise", image_b="@@@")]), 400, "items[0].image_b: not valid base64"),
        (json.dumps({"items": [_item()], "protocol": 3}).encode(), 400, "speaks versions 1..2"),
        (json.dumps({"items": [_item()], "version": 2}).encode(), 400, "unknown field(s) ['version']"),
        (_body([_item(instruction="   ")]), 400, "items[0].instruction: empty"),
        (_body([_item(instruction="x" * 101)]), 400, "items[0].instruction: 101 characters"),
        (_body([_item()] * 5), 413, "at most 4 per request"),
        (
            _body([_item(image=base64.b64encode(_png((64, 64))).decode() * 40)]),
            413,
            "items[0].image: image larger",
        ),
    ],
)
def test_malformed_requests_name_the_field(body, status, names):
    limits = Limits(max_items=4, max_text_chars=100, max_image_bytes=2000)
    with pytest.raises(ProtocolError) as raised:
        parse_score_request(body, limits)
    assert raised.value.status == status
    assert names in raised.value.message


def test_oversize_body_is_413():
    with pytest.raises(ProtocolError) as raised:
        parse_score_request(b" " * 101, Limits(max_body_bytes=100))
    assert raised.value.status == 413


def test_response_validation_rejects_misaligned_or_out_of_range_scores():
    assert parse_score_response({"scores": [0.5, None], "errors": [None, "x"]}, 2) == (
        [0.5, None],
        [None, "x"],
    )
    for bad in ({"scores": [0.5], "errors": [None]}, {"scores": [1.5, 0.1], "errors": [None, None]}, []):
        with pytest.raises(ValueError):
            parse_score_response(bad, 2)


def test_expected_score_is_the_spec_formula():
    logits = np.array([0.3, -1.0, 2.0, 0.5, 1.5, -0.2])
    probabilities = np.exp(logits) / np.exp(logits).sum()
    expected = float((probabilities * np.arange(6)).sum() / 5)
    assert expected_score_from_logprobs(list(logits)) == pytest.approx(expected, abs=1e-12)
    # An additive constant (full-vocabulary log-softmax vs. raw logits) does not change the score.
    assert expected_score_from_logprobs(list(logits - 7.0)) == pytest.approx(expected, abs=1e-12)
    assert expected_score_from_logprobs([-math.inf] * 5 + [0.0]) == 1.0
    digits = ["0", "1", "2", "3", "4", "5"]
    # A digit absent from the map has an unknown logit: refused, never counted as probability 0.
    with pytest.raises(ValueError, match=r"lack the digit token\(s\) \['1', '2', '3', '4', '5'\]"):
        expected_score_from_token_map({"0": 0.0, "junk": 5.0}, digits)
    # vLLM's -9999 clamp is a present digit with probability 0.
    clamped = dict.fromkeys(digits[:5], -9999.0) | {"5": -3.0, "junk": 5.0}
    assert expected_score_from_token_map(clamped, digits) == 1.0
    with pytest.raises(ValueError, match="no probability"):
        expected_score_from_token_map(dict.fromkeys(digits, -math.inf), digits)


class _Tokenizer:
    def __init__(self, pieces):
        self.pieces = pieces

    def encode(self, text, add_special_tokens=False):
        return self.pieces[text]


def test_digit_ids_come_from_the_tokenizer_and_must_be_single_tokens():
    good = _Tokenizer({str(d): [100 + d] for d in range(6)})
    assert digit_token_ids(good) == [100, 101, 102, 103, 104, 105]
    split = _Tokenizer({**good.pieces, "3": [7, 8]})
    with pytest.raises(ValueError, match="'3'"):
        digit_token_ids(split)


def test_prompt_states_instruction_requirement_and_scale():
    text = render_prompt("turn the cat blue", "keep the sofa", DEFAULT_TEMPLATE)
    assert "turn the cat blue" in text and "keep the sofa" in text and "0 to 5" in text
    assert NO_REQUIREMENT in render_prompt("x", "")
    with pytest.raises(KeyError, match="unknown prompt template"):
        render_prompt("x", "", "nope")


def test_decode_image_rejects_bombs_and_garbage():
    assert decode_image(_png((5, 7)), "items[0].image", 100).size == (5, 7)
    with pytest.raises(ProtocolError) as raised:
        decode_image(_png_declaring(100_000, 100_000), "items[3].image", 4096 * 4096)
    assert raised.value.status == 413 and "items[3].image" in raised.value.message
    with pytest.raises(ProtocolError) as raised:
        decode_image(_png()[:30], "items[0].source_image", 4096)
    assert raised.value.status == 400 and "items[0].source_image" in raised.value.message


def test_pairwise_items_round_trip_beside_pointwise_ones():
    pair = {"kind": "pairwise", "image": _png(color=(1, 1, 1)), "image_b": _png(color=(9, 9, 9))}
    pair.update(source_image=_jpeg(), instruction="make it red")
    point = {"image": _png(), "source_image": _jpeg(), "instruction": "make it blue"}
    request = build_score_request([point, pair])
    assert request["protocol"] == 2 and "protocol" not in build_score_request([point])
    first, second = parse_score_request(json.dumps(request).encode(), Limits())
    assert (first.kind, first.image_b) == ("pointwise", None)
    assert (second.kind, second.image, second.image_b) == ("pairwise", pair["image"], pair["image_b"])
    assert parse_score_request(json.dumps({"items": [_item()], "protocol": 1}).encode(), Limits())


def test_more_source_images_are_optional_and_checked():
    from reward_server.prompt_template import chat_messages

    single = build_score_request([{"image": _png(), "source_image": _jpeg(), "instruction": "x"}])
    assert "more_source_images" not in single["items"][0]  # unchanged wire format for one source
    assert parse_score_request(json.dumps(single).encode(), Limits())[0].more_source_images == ()
    several = build_score_request(
        [{"image": _png(), "source_image": _jpeg(), "instruction": "x", "more_source_images": [_png((4, 4))]}]
    )
    assert parse_score_request(json.dumps(several).encode(), Limits())[0].more_source_images == (
        _png((4, 4)),
    )
    with pytest.raises(ProtocolError, match=r"items\[0\]\.more_source_images: expected a list") as raised:
        parse_score_request(_body([_item(more_source_images="abc")]), Limits())
    assert raised.value.status == 400
    with pytest.raises(ProtocolError, match=r"more_source_images\[1\]: not valid base64"):
        parse_score_request(_body([_item(more_source_images=[_item()["image"], "!!"])]), Limits())
    with pytest.raises(ProtocolError, match="at most 1") as raised:
        parse_score_request(
            _body([_item(more_source_images=[_item()["image"]] * 2)]), Limits(max_more_source_images=1)
        )
    assert raised.value.status == 413
    assert "The first image is the original image" in render_prompt("x", "")
    assert "The first 3 images are the original images (Picture 1 to Picture 3)" in render_prompt(
        "x", "", num_sources=3
    )
    pair = _item(kind="pairwise", image_b=_item()["image"], more_source_images=[_item()["image"]])
    with pytest.raises(ProtocolError, match="pairwise items take one source image"):
        parse_score_request(_body([pair]), Limits())
    content = chat_messages("t", {"type": "image"}, {"type": "image"}, {"type": "image", "edit": 1})[0][
        "content"
    ]
    assert [part.get("edit") for part in content] == [None, None, 1, None] and content[-1]["text"] == "t"
