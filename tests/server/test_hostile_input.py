"""Hostile and unusual input against a real server on 127.0.0.1: every client mistake is a 4xx with a
message, legitimate but unusual input is scored, and the server answers ``/health`` afterwards.

Malformed HTTP goes over raw sockets (a well-behaved client library cannot send it). The judge is
the instruction-reading fake here; ``test_reward_server_http.py`` sends the unusual images to the
tiny Qwen2.5-VL judge.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading

import numpy as np
import pytest
import requests
from PIL import Image
from reward_helpers import (
    InstructionScoreBackend,
    encode_file,
    png_bytes,
    random_image,
    reward_app_server,
    unusual_images,
)

from reward_server.images import decode_image_file
from reward_server.protocol import ProtocolError

MAX_PIXELS = 4096 * 4096


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _item(score: float = 0.25, **override) -> dict:
    item = {
        "image": _b64(png_bytes(random_image(1, 8))),
        "source_image": _b64(png_bytes(random_image(2, 8))),
        "instruction": f"score={score}",
    }
    return {**item, **override}


def _json(items) -> bytes:
    return json.dumps({"items": items}).encode()


@pytest.fixture(scope="module")
def server():
    with reward_app_server([InstructionScoreBackend()]) as url:
        yield url


def _exchange(url: str, data: bytes, half_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes (from a thread, so an early answer is read while sending) and read the answer
    until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)

    def send() -> None:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed first (e.g. 431): what it said is read below

    sender = threading.Thread(target=send)
    sender.start()
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass  # reset after an early answer, or a stalled request the server still waits on
    finally:
        sender.join()
        sock.close()
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def _post_raw(url: str, body: bytes, headers: dict[str, str] | None = None, **kwargs) -> bytes:
    lines = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body))}
    lines.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in lines.items() if v is not None)
    return _exchange(
        url, f"POST /score HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode() + body, **kwargs
    )


def _alive(url: str) -> None:
    response = requests.get(f"{url}/health", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"


DEPTH = 200_000
BODY_CASES = [
    ("deep arrays", b'{"items": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", 400, "nested too deeply"),
    ("deep objects", b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH, 400, "nested too deeply"),
    ("invalid utf-8", b'{"items": [{"instruction": "\xff\xfe\xc3"}]}', 400, "not valid JSON"),
    ("NaN literal", b'{"items": NaN}', 400, "NaN is not a JSON number"),
    ("Infinity in an item", _json([_item()]).replace(b'"score=', b'-Infinity, "x": "'), 400, "Infinity"),
    ("duplicate keys", b'{"items": [], "items": ' + _json([_item()])[10:], 400, "duplicate key 'items'"),
    ("number for a string", _json([_item(instruction=7)]), 400, "items[0].instruction: expected a string"),
    ("number for an image", _json([_item(image=12345)]), 400, "items[0].image: expected a base64 string"),
    ("string for the list", b'{"items": "3"}', 400, "items: expected a list"),
    ("integer of 10,000 digits", b'{"items": ' + b"7" * 10_000 + b"}", 400, "not valid JSON"),
    ("object for an item", _json([_item(), 5]), 400, "items[1]: expected an object"),
    ("lone surrogate", _json([_item(requirement="\ud800")]), 400, "items[0].requirement: not valid Unicode"),
    ("gzip without saying so", gzip.compress(_json([_item()])), 400, "not valid JSON"),
    (
        "mixed base64 alphabets",
        _json([_item(image=_b64(png_bytes(random_image(3, 8)))[:-8] + "-_+/AAAA")]),
        400,
        "alphabets mixed",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_malformed_bodies_are_4xx_with_a_message(server, case, body, status, message):
    response = requests.post(
        f"{server}/score", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _alive(server)


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not supported"),
        ({"Content-Type": "text/plain"}, 415, "Content-Type must be application/json, got 'text/plain'"),
        ({"Content-Type": None}, 415, "got 'none'"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type must be"),
        ({"Content-Type": "application/json; charset=utf-8"}, 200, ""),
    ],
    ids=["gzip", "text/plain", "no content type", "form", "json with charset"],
)
def test_content_headers(server, headers, status, message):
    body = gzip.compress(_json([_item()])) if headers.get("Content-Encoding") else _json([_item()])
    answer = _post_raw(server, body, headers)
    assert _status(answer) == status, answer[:300]
    assert message.encode() in answer
    _alive(server)


def test_long_header_lines(server):
    accepted = _exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n")
    assert _status(accepted) == 200
    refused = _exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 400_000 + b"\r\n\r\n")
    assert _status(refused) == 431  # waitress's header limit (256 KiB), before the app is reached
    _alive(server)


def test_body_shorter_or_longer_than_its_content_length(server):
    body = _json([_item(0.5)])
    # Shorter, then the client stops sending: the request never completes, nothing is scored.
    assert _post_raw(server, body[:-20], {"Content-Length": str(len(body))}) == b""
    # The same, but the client keeps the connection open: other clients are served meanwhile.
    stalled = threading.Thread(
        target=_post_raw,
        args=(server, body[:-20], {"Content-Length": str(len(body))}),
        kwargs={"half_close": False, "timeout": 1.0},
    )
    stalled.start()
    assert requests.post(f"{server}/score", json=json.loads(body), timeout=10).json()["scores"] == [0.5]
    stalled.join()
    # Longer: the request ends at Content-Length (truncated JSON: 400); the rest is not a request.
    answer = _post_raw(server, body + b"GARBAGE\r\n\r\n", {"Content-Length": str(len(body) - 3)})
    assert _status(answer) == 400 and b"not valid JSON" in answer
    exact = _post_raw(server, body + b" trailing", {"Content-Length": str(len(body))})
    assert _status(exact) == 200 and b'"scores":[0.5]' in exact
    _alive(server)


def test_chunked_transfer_encoding_is_scored(server):
    body = _json([_item(0.75)])
    chunked = b"".join(
        f"{len(body[i : i + 100]):x}\r\n".encode() + body[i : i + 100] + b"\r\n"
        for i in range(0, len(body), 100)
    )
    answer = _post_raw(
        server, chunked + b"0\r\n\r\n", {"Content-Length": None, "Transfer-Encoding": "chunked"}
    )
    assert _status(answer) == 200 and b'"scores":[0.75]' in answer


def test_base64_with_line_breaks_or_url_safe_alphabet_is_scored(server):
    data = png_bytes(random_image(5, 24))
    standard = _b64(data)
    wrapped = "\n".join(standard[i : i + 76] for i in range(0, len(standard), 76)) + "\n"
    url_safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "-" in url_safe or "_" in url_safe  # the case really uses the URL-safe alphabet
    items = [_item(0.1, image=wrapped), _item(0.2, source_image=url_safe)]
    response = requests.post(f"{server}/score", json={"items": items}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == [0.1, 0.2]


# ----------------------------------------------------------------------------- unusual images


def _decode(data: bytes) -> tuple[np.ndarray, bytes]:
    rgb, file_bytes = decode_image_file(data, "items[0].image", MAX_PIXELS)
    assert rgb.mode == "RGB"
    return np.asarray(rgb).astype(int), file_bytes


UNUSUAL = unusual_images()
LOSSY_TOLERANCE = {"cmyk jpeg": 24, "progressive jpeg": 40, "exif-rotated jpeg": 24}


@pytest.mark.parametrize("case", list(UNUSUAL))
def test_unusual_images_decode_as_a_viewer_shows_them(case):
    data, expected = UNUSUAL[case]
    pixels, file_bytes = _decode(data)
    assert pixels.shape == expected.shape
    tolerance = LOSSY_TOLERANCE.get(case, 1)
    assert (
        np.abs(pixels - expected).mean() < tolerance / 4 and np.median(np.abs(pixels - expected)) <= tolerance
    )
    # The bytes handed to byte-forwarding backends show the same pixels.
    again, _ = _decode(file_bytes)
    if file_bytes != data:
        assert np.array_equal(again, pixels)


def test_plain_png_and_jpeg_are_forwarded_unchanged_and_odd_ones_reencoded():
    plain = png_bytes(random_image(1, 8))
    assert _decode(plain)[1] == plain
    jpeg = encode_file(random_image(1, 8), "JPEG")
    assert _decode(jpeg)[1] == jpeg
    for case in ("animated gif (first frame)", "exif-rotated jpeg", "16-bit grey png", "lossless webp"):
        assert _decode(UNUSUAL[case][0])[1].startswith(b"\x89PNG"), case


@pytest.mark.parametrize(
    ("case", "image"),
    [
        ("png", Image.new("1", (12_000, 10_000))),
        ("gif", Image.new("P", (11_000, 10_000))),
    ],
)
def test_a_small_file_declaring_100_megapixels_is_413(case, image):
    data = encode_file(image, case.upper())
    assert len(data) < 2_000_000
    with pytest.raises(ProtocolError) as raised:
        decode_image_file(data, "items[2].source_image", MAX_PIXELS)
    assert raised.value.status == 413 and "items[2].source_image" in raised.value.message


def test_a_declared_giant_over_http_is_413_and_the_server_lives_on(server):
    giant = _b64(encode_file(Image.new("1", (12_000, 10_000)), "PNG"))
    response = requests.post(f"{server}/score", json={"items": [_item(), _item(image=giant)]}, timeout=30)
    assert response.status_code == 413 and "items[1].image" in response.json()["error"]
    _alive(server)
