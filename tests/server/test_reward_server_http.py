"""The real reward server on 127.0.0.1 with the tiny Qwen2.5-VL judge (transformers backend, CPU)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image
from reward_helpers import png_bytes, random_image, reward_app_server

from reward_server.backends import BackendOptions, build_backend
from reward_server.images import decode_item
from reward_server.protocol import Limits, RawItem, build_score_request

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(
    max_items=8, max_body_bytes=400_000, max_image_bytes=100_000, max_image_pixels=96 * 96, max_text_chars=300
)
INSTRUCTIONS = ["make the sky red", "remove the ball", "add a hat", "turn it upside down"]


@pytest.fixture(scope="module")
def judge(tiny_kit):
    backend = build_backend("transformers", BackendOptions(model=str(tiny_kit / "judge_qwen2_5_vl")))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(judge):
    with reward_app_server([judge], max_batch_size=8, limits=LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def items():
    """Eight distinct (edited, source, instruction) items and their in-process one-by-one scores."""
    raws = [
        RawItem(
            png_bytes(random_image(seed, 32 + 8 * (seed % 3))),
            png_bytes(random_image(100 + seed % 2, 48)),
            INSTRUCTIONS[seed % 4],
            "keep the background" if seed % 2 else "",
        )
        for seed in range(8)
    ]
    return raws


@pytest.fixture(scope="module")
def reference_scores(judge, items):
    return [judge.score_batch([decode_item(raw, 0, LIMITS)])[0] for raw in items]


def _post(url, raws, **kwargs):
    body = build_score_request([raw.__dict__ for raw in raws])
    return requests.post(f"{url}/score", json=body, timeout=120, **kwargs)


def test_health_reports_the_judge(server, tiny_kit):
    health = requests.get(f"{server}/health", timeout=10).json()
    assert health == {
        "status": "ok",
        "backend": "transformers",
        "model": str(tiny_kit / "judge_qwen2_5_vl"),
        "template": "edit_r1_v1",
    }


def test_http_batched_scores_equal_in_process_one_by_one(server, items, reference_scores):
    response = _post(server, items)
    assert response.status_code == 200
    payload = response.json()
    assert payload["errors"] == [None] * len(items)
    assert payload["scores"] == pytest.approx(reference_scores, abs=1e-6)
    assert all(0.0 <= s <= 1.0 for s in payload["scores"])
    # The items are told apart: distinct inputs give distinct scores (so a mix-up would show).
    assert len({round(s, 7) for s in reference_scores}) == len(reference_scores)


def test_concurrent_clients_get_their_own_scores(server, items, reference_scores):
    def client(index):
        answers = []
        for request_number in range(3):
            picks = [(index + request_number + k) % len(items) for k in range(1 + index % 3)]
            response = _post(server, [items[p] for p in picks])
            answers.append((picks, response.status_code, response.json()["scores"]))
        return answers

    with ThreadPoolExecutor(16) as pool:
        results = [answer for answers in pool.map(client, range(16)) for answer in answers]
    assert len(results) == 48
    for picks, status, scores in results:
        assert status == 200
        assert scores == pytest.approx([reference_scores[p] for p in picks], abs=1e-6)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _valid(**override):
    item = {
        "image": _b64(png_bytes(random_image(1))),
        "source_image": _b64(png_bytes(random_image(2))),
        "instruction": "x",
    }
    return {**item, **override}


MALFORMED = [
    ("bad json", b"{items: ", 400, "not valid JSON"),
    ("not an object", b'"items"', 400, "JSON object"),
    ("items missing", b"{}", 400, "items: missing"),
    ("items not a list", json.dumps({"items": "abc"}).encode(), 400, "items: expected a list"),
    ("empty items", json.dumps({"items": []}).encode(), 400, "items: empty"),
    ("too many items", json.dumps({"items": [_valid()] * 9}).encode(), 413, "at most 8"),
    (
        "field missing",
        json.dumps({"items": [_valid(), {"image": _valid()["image"]}]}).encode(),
        400,
        "items[1].source_image",
    ),
    ("wrong type", json.dumps({"items": [_valid(instruction=["x"])]}).encode(), 400, "items[0].instruction"),
    (
        "string too long",
        json.dumps({"items": [_valid(requirement="r" * 301)]}).encode(),
        400,
        "items[0].requirement",
    ),
    ("not base64", json.dumps({"items": [_valid(image="%%%")]}).encode(), 400, "items[0].image"),
    (
        "undecodable",
        json.dumps({"items": [_valid(image=_b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 50))]}).encode(),
        400,
        "items[0].image",
    ),
    (
        "bomb",
        json.dumps(
            {"items": [_valid(source_image=_b64(png_bytes(Image.new("RGB", (4000, 3000)))))]}
        ).encode(),
        413,
        "items[0].source_image",
    ),
    ("oversize body", b'{"items": [' + b" " * 500_000 + b"]}", 413, ""),
]


@pytest.mark.parametrize(("case", "body", "status", "names"), MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_input_gets_4xx_and_the_server_lives_on(server, case, body, status, names):
    response = requests.post(
        f"{server}/score", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    assert names in response.json()["error"]
    assert requests.get(f"{server}/health", timeout=10).status_code == 200


def test_api_key_is_required_when_configured(judge, items):
    with reward_app_server([judge], api_key="s3cret", limits=LIMITS) as url:
        assert requests.get(f"{url}/health", timeout=10).status_code == 401
        assert _post(url, items[:1]).status_code == 401
        assert _post(url, items[:1], headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = _post(url, items[:1], headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["errors"] == [None]


def test_cli_with_two_replica_processes_passes_the_health_check(tiny_kit, items, reference_scores):
    """``python reward_server/reward_server.py`` (DP 2 worker processes), then the health-check script."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REWARD_SERVER_API_KEY": "k3y", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "reward_server" / "reward_server.py"), "--backend", "transformers"]
    command += ["--model", str(tiny_kit / "judge_qwen2_5_vl"), "--port", "0", "--data-parallel-size", "2"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url, log = None, []
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            log.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "server did not start:\n" + "".join(log[-30:])
        check = subprocess.run(
            [
                sys.executable,
                str(REPO / "reward_server" / "test_reward_server.py"),
                "--url",
                url,
                "--wait",
                "60",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "OK" in check.stdout and "latency" in check.stdout
        response = _post(url, items, headers={"Authorization": "Bearer k3y"})
        assert response.json()["scores"] == pytest.approx(reference_scores, abs=1e-5)
        denied = subprocess.run(
            [
                sys.executable,
                str(REPO / "reward_server" / "test_reward_server.py"),
                "--url",
                url,
                "--wait",
                "1",
            ],
            cwd=REPO,
            env={**env, "REWARD_SERVER_API_KEY": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert denied.returncode != 0
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert re.search(r"batch replica=\d items=\d+ requests=\d+ failed=0 latency_ms=", "".join(log) + output)
