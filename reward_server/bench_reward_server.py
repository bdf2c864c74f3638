"""Measure a running reward server's throughput: items per second from concurrent clients.

    python reward_server/bench_reward_server.py --url http://127.0.0.1:12341 \
        --items 256 --items-per-request 4 --clients 16 --size 512

Posts ``--items`` edits of the bundled source image (resized to ``--size``) in requests of
``--items-per-request`` from ``--clients`` threads (as many trainer ranks would), after one warm-up
request, and prints items/s and the median request latency. Compare servers started with
different ``--max-batch-size`` to see what dynamic batching buys.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageOps

if not __package__:  # run as a file: see reward_server/script_bootstrap.py
    import script_bootstrap  # noqa: F401

from reward_server.health_check import SOURCE_IMAGE, png_bytes  # noqa: E402
from reward_server.protocol import build_score_request, parse_score_response  # noqa: E402


def _body(count: int, size: int) -> bytes:
    source = Image.open(SOURCE_IMAGE).convert("RGB").resize((size, size))
    edited = ImageOps.mirror(source)
    items = [
        {
            "image": png_bytes(edited),
            "source_image": png_bytes(source),
            "instruction": f"Mirror the image ({k}).",
        }
        for k in range(count)
    ]
    return json.dumps(build_score_request(items)).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:12341")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--items-per-request", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--api-key", default=os.environ.get("REWARD_SERVER_API_KEY"))
    args = parser.parse_args(argv)
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    body = _body(args.items_per_request, args.size)

    def post(_: int) -> float:
        started = time.perf_counter()
        request = urllib.request.Request(
            f"{args.url.rstrip('/')}/score", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            scores, _errors = parse_score_response(json.loads(response.read()), args.items_per_request)
        if any(score is None for score in scores):
            raise RuntimeError("the server failed to score an item")
        return time.perf_counter() - started

    post(0)  # warm-up
    n_requests = max(1, args.items // args.items_per_request)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        latencies = list(pool.map(post, range(n_requests)))
    elapsed = time.perf_counter() - started
    items = n_requests * args.items_per_request
    print(
        f"{items} items in {elapsed:.2f}s: {items / elapsed:.1f} items/s "
        f"(clients={args.clients}, items/request={args.items_per_request}, size={args.size}, "
        f"median request latency {statistics.median(latencies) * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
