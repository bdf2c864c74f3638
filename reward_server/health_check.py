"""Check a running reward server: health, then two edits of one bundled source image.

Run as ``python reward_server/test_reward_server.py`` (the historical name, a thin wrapper) or
``python -m reward_server.health_check``.

    python reward_server/test_reward_server.py [--url http://127.0.0.1:12341] [--wait 600]

Waits (up to ``--wait`` seconds) for ``GET /health``, scores two edits of
``reward_server/assets/source.png`` (a mirrored copy for "mirror the image horizontally" and a
grey copy for "make the image black and white") in one request, prints the scores and the
latency, and exits non-zero on any problem: server unreachable, non-200 answer, a malformed
response, or an item the judge failed to score. Uses only the standard library and Pillow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image, ImageOps

from reward_server.protocol import build_score_request, parse_score_response

SOURCE_IMAGE = Path(__file__).resolve().parent / "assets" / "source.png"
API_KEY_ENV = "REWARD_SERVER_API_KEY"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def example_items() -> list[dict]:
    """Two edits of the bundled source image, each with the instruction it follows."""
    source = Image.open(SOURCE_IMAGE).convert("RGB")
    edits = [
        (ImageOps.mirror(source), "Mirror the image horizontally."),
        (ImageOps.grayscale(source).convert("RGB"), "Make the image black and white."),
    ]
    return [
        {
            "image": png_bytes(edited),
            "source_image": png_bytes(source),
            "instruction": instruction,
            "requirement": "",
        }
        for edited, instruction in edits
    ]


def _request(url: str, headers: dict, body: bytes | None = None, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", error)
    return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)


def wait_for_health(url: str, headers: dict, wait_s: float, report_every_s: float = 10.0) -> dict:
    """Poll ``/health`` every second until it answers ``ok`` or ``degraded`` or ``wait_s`` passes,
    printing what it waits for and how long is left every ``report_every_s`` seconds."""
    started = time.monotonic()
    next_report = started
    while True:
        try:
            health = _request(f"{url}/health", headers, timeout=5.0)
            if health.get("status") in ("ok", "degraded"):
                return health
            last = f"it answered {health}"
        except urllib.error.HTTPError as error:
            last = f"it answered HTTP {error.code}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            last = _reason(error)
        now = time.monotonic()
        if now - started >= wait_s:
            raise RuntimeError(
                f"no reward server answered at {url}/health within {wait_s:.0f}s (last: {last}); "
                "start one with `python reward_server/reward_server.py ...` or pass --url"
            )
        if now >= next_report:
            left = wait_s - (now - started)
            print(f"waiting for {url}/health ({last}); {left:.0f}s left", flush=True)
            next_report = now + report_every_s
        time.sleep(min(1.0, max(wait_s - (now - started), 0.0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:12341")
    parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for /health")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    try:
        health = wait_for_health(url, headers, args.wait)
        print(f"health: {health}")
        items = example_items()
        body = json.dumps(build_score_request(items)).encode()
        started = time.perf_counter()
        scores, errors = parse_score_response(_request(f"{url}/score", headers, body), len(items))
        latency_ms = (time.perf_counter() - started) * 1000
    except (RuntimeError, ValueError, urllib.error.URLError, OSError) as error:
        detail = error.read().decode(errors="replace") if isinstance(error, urllib.error.HTTPError) else ""
        print(f"FAILED: {error} {detail}".strip(), file=sys.stderr)
        return 1
    for item, score, error in zip(items, scores, errors, strict=True):
        print(f"{item['instruction']!r}: score={score} error={error}")
    print(f"latency: {latency_ms:.1f} ms for {len(items)} items")
    if any(score is None for score in scores):
        print("FAILED: the judge could not score every item", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
