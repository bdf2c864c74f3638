"""Load test of a reward server: many concurrent clients sending valid and malformed requests.

    python scripts/load_test_reward_server.py --model /path/to/judge [--clients 64] [--duration 60]
    python scripts/load_test_reward_server.py --url http://127.0.0.1:12341 --pid 12345

Each valid item is first scored alone (one request per item); then ``--clients`` threads send, for
``--duration`` seconds, a seeded mix of valid requests (1-4 of those items) and malformed ones (bad
JSON, deep nesting, NaN, duplicate keys, wrong types, bad base64, a declared 100-megapixel image,
a wrong Content-Type, gzip). It checks that every valid request succeeds with exactly the scores
the items got alone, that every malformed one gets a 4xx (never a 5xx, never a dropped
connection), and reports p50/p99 latency of the valid requests and the server's resident memory
(``VmRSS`` of ``--pid``, or of the server it started) before and after. Exit status 1 on any
violation. Standard library and Pillow only.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import io
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

SCORE_TOLERANCE = 1e-5
RSS_EVERY_S = 5.0


def _png(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def valid_items(count: int, size: int = 32) -> list[dict]:
    """``count`` distinct request items (different images and instructions)."""
    instructions = ["make the sky red", "remove the ball", "add a hat", "turn it upside down"]
    return [
        {
            "image": base64.b64encode(_png(k, size)).decode(),
            "source_image": base64.b64encode(_png(1000 + k % 3, size)).decode(),
            "instruction": f"{instructions[k % len(instructions)]} ({k})",
        }
        for k in range(count)
    ]


def malformed_requests(item: dict) -> list[tuple[str, bytes, dict[str, str]]]:
    """(name, body, extra headers) of requests every server must refuse with a 4xx."""
    json_type = {"Content-Type": "application/json"}
    giant = Image.new("1", (12_000, 10_000))
    buffer = io.BytesIO()
    giant.save(buffer, format="PNG")
    body = json.dumps({"items": [item]}).encode()
    return [
        ("bad json", b'{"items": [', json_type),
        ("deep nesting", b'{"items": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", json_type),
        ("NaN", b'{"items": NaN}', json_type),
        ("duplicate keys", b'{"items": [], "items": []}', json_type),
        ("number for a string", json.dumps({"items": [{**item, "instruction": 5}]}).encode(), json_type),
        ("bad base64", json.dumps({"items": [{**item, "image": "%%%"}]}).encode(), json_type),
        (
            "100 megapixels declared",
            json.dumps({"items": [{**item, "image": base64.b64encode(buffer.getvalue()).decode()}]}).encode(),
            json_type,
        ),
        ("text/plain", body, {"Content-Type": "text/plain"}),
        ("gzip", gzip.compress(body), {**json_type, "Content-Encoding": "gzip"}),
    ]


@dataclass
class LoadReport:
    """What a load run saw; :meth:`problems` lists every violation of the guarantees."""

    valid_latencies_s: list[float] = field(default_factory=list)
    wrong_scores: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    malformed_statuses: Counter = field(default_factory=Counter)
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    rss_samples_kb: list[int] = field(default_factory=list)  # every ~5 s during the run

    def percentile(self, q: float) -> float:
        ordered = sorted(self.valid_latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def problems(self) -> list[str]:
        bad = [f"malformed request answered {s}" for s in self.malformed_statuses if not 400 <= s < 500]
        return self.failures + self.wrong_scores + bad

    def summary(self) -> str:
        samples = ", ".join(f"{kb / 1024:.0f}" for kb in self.rss_samples_kb)
        rss = (
            f"server RSS {self.rss_before_kb / 1024:.0f} MiB before, {self.rss_after_kb / 1024:.0f} MiB after"
            f" (during: {samples} MiB)"
            if self.rss_before_kb and self.rss_after_kb
            else "server RSS not measured"
        )
        return (
            f"valid requests: {len(self.valid_latencies_s)} ok, p50 {self.percentile(0.5) * 1000:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms; malformed requests: "
            f"{sum(self.malformed_statuses.values())} ({dict(sorted(self.malformed_statuses.items()))}); "
            f"{rss}; problems: {len(self.problems())}"
        )


def post(url: str, body: bytes, headers: dict[str, str], api_key: str | None, timeout_s: float):
    """One POST /score on a fresh connection: (status, parsed JSON or None)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    if api_key:
        headers = {**headers, "Authorization": f"Bearer {api_key}"}
    try:
        connection.request("POST", "/score", body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(payload)
    except ValueError:
        return response.status, None


def score_alone(url: str, items: Sequence[dict], api_key: str | None = None) -> list[float]:
    """Each item's score from a request holding only that item."""
    scores = []
    for index, item in enumerate(items):
        body = json.dumps({"items": [item]}).encode()
        status, payload = post(url, body, {"Content-Type": "application/json"}, api_key, 300)
        if status != 200 or payload["scores"][0] is None:
            raise RuntimeError(f"item {index} alone: HTTP {status} {payload}")
        scores.append(payload["scores"][0])
    return scores


def _client(url, items, reference, malformed, deadline, seed, api_key, report, lock, per_request) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        if rng.random() < 0.3:
            name, body, headers = malformed[rng.randrange(len(malformed))]
            try:
                status, _ = post(url, body, headers, api_key, 300)
            except (OSError, http.client.HTTPException) as error:
                with lock:
                    report.failures.append(f"malformed {name!r}: {type(error).__name__}: {error}")
                continue
            with lock:
                report.malformed_statuses[status] += 1
            continue
        picks = rng.sample(range(len(items)), rng.randint(1, min(per_request, len(items))))
        body = json.dumps({"items": [items[p] for p in picks]}).encode()
        started = time.monotonic()
        try:
            status, payload = post(url, body, {"Content-Type": "application/json"}, api_key, 300)
        except (OSError, http.client.HTTPException) as error:
            with lock:
                report.failures.append(f"valid request {picks}: {type(error).__name__}: {error}")
            continue
        elapsed = time.monotonic() - started
        with lock:
            if status != 200:
                report.failures.append(f"valid request {picks}: HTTP {status} {payload}")
                continue
            report.valid_latencies_s.append(elapsed)
            for pick, score in zip(picks, payload["scores"], strict=True):
                if score is None or abs(score - reference[pick]) > SCORE_TOLERANCE:
                    report.wrong_scores.append(f"item {pick}: {score} under load, {reference[pick]} alone")


def run_load(
    url: str,
    clients: int = 64,
    duration_s: float = 60.0,
    item_count: int = 8,
    api_key: str | None = None,
    pid: int | None = None,
    seed: int = 0,
    max_items_per_request: int = 4,
) -> LoadReport:
    """Score the items alone, then run ``clients`` threads for ``duration_s``; see the module doc."""
    items = valid_items(item_count)
    reference = score_alone(url, items, api_key)
    malformed = malformed_requests(items[0])
    report = LoadReport(rss_before_kb=rss_kb(pid) if pid else None)
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    threads = [
        threading.Thread(
            target=_client,
            args=(
                url,
                items,
                reference,
                malformed,
                deadline,
                seed * 1000 + k,
                api_key,
                report,
                lock,
                max_items_per_request,
            ),
            daemon=True,
        )
        for k in range(clients)
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.1)
        if pid and time.monotonic() - started >= RSS_EVERY_S * (len(report.rss_samples_kb) + 1):
            report.rss_samples_kb.append(rss_kb(pid))
    report.rss_after_kb = rss_kb(pid) if pid else None
    return report


def rss_kb(pid: int) -> int:
    """Resident memory of a process (``VmRSS``, in KiB), Linux ``/proc``."""
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    if match is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(match.group(1))


def _start_server(model: str, extra: Sequence[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "reward_server", "--backend", "transformers", "--model", model]
    command += ["--port", "0", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        match = re.search(r"listening on (http://\S+?) ", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, match.group(1)
    raise RuntimeError(f"the server exited with code {process.wait()} before listening")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (else one is started with --model)")
    parser.add_argument("--pid", type=int, help="the running server's process id, for its memory")
    parser.add_argument("--model", help="judge checkpoint for a server started here (transformers backend)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra option for that server")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--items", type=int, default=8, help="distinct valid items")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    if not args.url and not args.model:
        parser.error("give --url of a running server or --model to start one")
    process = None
    url, pid = args.url, args.pid
    if not url:
        process, url = _start_server(args.model, args.server_arg)
        pid = process.pid
    try:
        report = run_load(url, args.clients, args.duration, args.items, args.api_key, pid)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    print(report.summary())
    for problem in report.problems()[:20]:
        print(f"  {problem}")
    print("FAILED" if report.problems() else "OK")
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
