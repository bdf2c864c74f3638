"""The real reward server on 127.0.0.1 with the tiny Qwen2.5-VL judge (transformers backend, CPU)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path

import pytest
import requests
import transformers
from PIL import Image
from reward_helpers import free_port, png_bytes, random_image, reward_app_server, unusual_images

from reward_server.backends import BackendOptions, build_backend
from reward_server.images import decode_item
from reward_server.load_test import run_load
from reward_server.prompt_template import (
    PAIRWISE_TEMPLATES,
    judge_prompt_info,
    pairwise_template_id_for_file,
    pairwise_template_info,
)
from reward_server.protocol import Limits, RawItem, build_score_request

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(
    max_items=8, max_body_bytes=400_000, max_image_bytes=100_000, max_image_pixels=96 * 96, max_text_chars=300
)
INSTRUCTIONS = ["make the sky red", "remove the ball", "add a hat", "turn it upside down"]


@pytest.fixture(scope="module")
def judge(tiny_judge):
    backend = build_backend("transformers", BackendOptions(model=str(tiny_judge)))
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


def test_health_reports_the_judge(server, tiny_judge):
    health = requests.get(f"{server}/health", timeout=10).json()
    assert health == {
        "status": "ok",
        "protocol": 2,
        "backend": "transformers",
        "model": str(tiny_judge),
        **judge_prompt_info("edit_r1_v1", "edit_r1_v1"),
        "replicas_alive": 1,
        "replicas": 1,
        "engine": {
            "engine": "transformers",
            "version": transformers.__version__,
            "dtype": "float32",
            "device": "cpu",
        },
    }


def test_unusual_but_legitimate_images_are_scored_by_the_judge(server):
    """16-bit, CMYK, progressive, palette+transparency, animated GIF, WebP, EXIF-rotated, 1x1."""
    source = base64.b64encode(png_bytes(random_image(3, 32))).decode()
    cases = unusual_images()
    items = [
        {"image": base64.b64encode(data).decode(), "source_image": source, "instruction": case}
        for case, (data, _pixels) in cases.items()
    ]
    response = requests.post(f"{server}/score", json={"items": items}, timeout=120)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["errors"] == [None] * len(cases)
    assert all(0.0 <= score <= 1.0 for score in payload["scores"])


def test_http_batched_scores_equal_in_process_one_by_one(server, items, reference_scores):
    response = _post(server, items)
    assert response.status_code == 200
    payload = response.json()
    assert payload["errors"] == [None] * len(items)
    assert payload["scores"] == pytest.approx(reference_scores, abs=1e-6)
    assert all(0.0 <= s <= 1.0 for s in payload["scores"])
    # The items are told apart: distinct inputs give distinct scores (so a mix-up would show).
    assert len({round(s, 7) for s in reference_scores}) == len(reference_scores)


def _answer_preference(judge, raw: RawItem) -> float:
    """softmax over the judge's logits of "1" and "2" for the pairwise prompt, computed here directly."""
    import torch

    from reward_server.prompt_template import render_pairwise_prompt

    item = decode_item(raw, 0, LIMITS)
    text = render_pairwise_prompt(raw.instruction, raw.requirement)
    content = [{"type": "image"}] * 3 + [{"type": "text", "text": text}]
    prompt = judge.processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    inputs = judge.processor(
        text=[prompt], images=[item.source_image, item.image, item.image_b], return_tensors="pt"
    )
    with torch.inference_mode():
        logits = judge.judge(**inputs).logits[0, -1].float()
    tokenizer = judge.processor.tokenizer
    ids = [tokenizer.encode(answer, add_special_tokens=False)[0] for answer in ("1", "2")]
    return float(torch.softmax(logits[ids], dim=0)[0])


def test_pairwise_items_are_scored_beside_pointwise_ones(server, judge, items, reference_scores):
    """Protocol 2: a pairwise item's score is p(first edit better) from the two answer tokens."""
    from edit_r1.rewards.base import PairSample
    from edit_r1.rewards.client import RewardClient

    pair = RawItem(items[0].image, items[0].source_image, "make the sky red", "", "pairwise", items[1].image)
    swapped = RawItem(
        items[1].image, items[0].source_image, "make the sky red", "", "pairwise", items[0].image
    )
    response = _post(server, [items[2], pair, swapped, items[3]])
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert scores[0] == pytest.approx(reference_scores[2], abs=1e-6)
    assert scores[3] == pytest.approx(reference_scores[3], abs=1e-6)
    expected = [_answer_preference(judge, pair), _answer_preference(judge, swapped)]
    assert scores[1:3] == pytest.approx(expected, abs=1e-5)
    assert scores[1] != pytest.approx(scores[2], abs=1e-6)  # the order of the edits is read
    images = [
        Image.open(io.BytesIO(data)) for data in (items[0].image, items[1].image, items[0].source_image)
    ]
    client = RewardClient(server.split("://", 1)[1], image_format="png")  # lossless: the same pixels
    try:
        compared = client.compare([PairSample(images[0], images[1], images[2], "make the sky red")])
    finally:
        client.close()
    assert compared[0] == pytest.approx(expected[0], abs=1e-5)


def _as_file_question(builtin: str) -> str:
    """A built-in pairwise question written as a file: the original's placeholder names."""
    return builtin.replace("{instruction}", "{prompt}")


def test_a_pairwise_file_equal_to_the_built_in_question_scores_the_same(judge, items, tmp_path):
    """``--pairwise-template-file`` holding the toy template's pairwise question gives the built-in
    question's scores (to the bit), and ``/health`` names the file; another wording scores otherwise."""
    pair = RawItem(items[0].image, items[0].source_image, "make the sky red", "", "pairwise", items[1].image)
    same, other = tmp_path / "toy_pairwise.txt", tmp_path / "other_question.txt"
    same.write_text(_as_file_question(PAIRWISE_TEMPLATES["toy_v1"]), encoding="utf-8")
    other.write_text("Which edit follows: {prompt}\nBetter, 1 or 2:", encoding="utf-8")
    questions = ["toy_v1", pairwise_template_id_for_file(same), pairwise_template_id_for_file(other)]
    scores, saved = [], judge.pairwise_template
    try:
        for question in questions:
            judge.pairwise_template = question
            with reward_app_server([judge], limits=LIMITS) as url:
                health = requests.get(f"{url}/health", timeout=10).json()
                assert {
                    key: health[key] for key in pairwise_template_info(question)
                } == pairwise_template_info(question)
                response = _post(url, [pair, items[2]])
                assert response.status_code == 200, response.text
                scores.append(response.json()["scores"])
    finally:
        judge.pairwise_template = saved
    assert health["pairwise_template"] == "file:other_question.txt"
    assert scores[1] == scores[0]  # same text, same tokens: the same score
    assert scores[2][0] != pytest.approx(scores[0][0], abs=1e-6)  # the file's text is what the judge reads
    assert scores[2][1] == scores[0][1]  # pointwise items are untouched


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


def test_load_of_64_clients_with_valid_and_malformed_requests(server):
    """The short load test (the long one: ``scripts/load_test_reward_server.py``): under 64 concurrent
    clients every valid request gets the scores its items get alone, every malformed one a 4xx."""
    report = run_load(server, 64, duration_s=1.0, item_count=6, pid=os.getpid(), max_items_per_request=1)
    print(report.summary())
    assert not report.problems(), report.problems()[:5]
    assert len(report.valid_latencies_s) >= 20 and sum(report.malformed_statuses.values()) >= 5
    assert report.rss_after_kb - report.rss_before_kb < 256 * 1024  # bounded (in-process: KiB)


def test_api_key_is_required_when_configured(judge, items):
    with reward_app_server([judge], api_key="s3cret", limits=LIMITS) as url:
        # The health probe stays open but shows only status, backend and template.
        probe = requests.get(f"{url}/health", timeout=10)
        assert probe.status_code == 200
        assert probe.json() == {
            "status": "ok",
            "protocol": 2,
            "backend": "transformers",
            **judge_prompt_info("edit_r1_v1", "edit_r1_v1"),
        }
        full = requests.get(f"{url}/health", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert full.json()["model"] == judge.model and full.json()["replicas"] == 1
        assert requests.post(f"{url}/health", timeout=10).status_code == 401
        assert requests.get(f"{url}/nope", timeout=10).status_code == 401
        assert _post(url, items[:1]).status_code == 401
        assert _post(url, items[:1], headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = _post(url, items[:1], headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["errors"] == [None]


@pytest.fixture(scope="module")
def cli_pairwise_file(tmp_path_factory) -> Path:
    """The built-in ``edit_r1_v1`` pairwise question, written as a ``--pairwise-template-file``."""
    path = tmp_path_factory.mktemp("questions") / "edit_pairwise.txt"
    path.write_text(_as_file_question(PAIRWISE_TEMPLATES["edit_r1_v1"]), encoding="utf-8")
    return path


@contextlib.contextmanager
def _cli_server_process(tiny_judge, extra: list[str]):
    """``python reward_server/reward_server.py`` (transformers, a key) with ``extra`` arguments;
    yields its URL, the environment and the lines it has logged so far (read by a thread)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REWARD_SERVER_API_KEY": "k3y", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "reward_server" / "reward_server.py"), "--backend", "transformers"]
    command += ["--model", str(tiny_judge), "--port", "0", *extra]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log: list[str] = []
    listening = threading.Event()
    reader = threading.Thread(target=_collect_lines, args=(process.stdout, log, listening), daemon=True)
    reader.start()
    try:
        listening.wait(timeout=180)
        urls = [
            m.group(1) for line in log if (m := re.search(r"listening on (http://127\.0\.0\.1:\d+)", line))
        ]
        assert urls, "server did not start:\n" + "".join(log[-30:])
        yield urls[0], env, log
    finally:
        process.terminate()
        process.wait(timeout=60)
        reader.join(timeout=10)
    assert process.returncode == 0, "".join(log[-20:])  # SIGTERM is a clean shutdown
    assert not [pid for pid in _replica_pids(log) if _running(pid)], "replica processes outlived the server"


@pytest.fixture(scope="module")
def cli_server(tiny_judge, cli_pairwise_file):
    """The CLI server with two replica worker processes (DP 2), a key and a pairwise question from
    a file (the default batch deadline)."""
    extra = ["--data-parallel-size", "2", "--pairwise-template-file", str(cli_pairwise_file)]
    with _cli_server_process(tiny_judge, extra) as running:
        yield running


def _collect_lines(stream, log: list[str], listening: threading.Event) -> None:
    for line in stream:
        log.append(line)
        if "listening on" in line:
            listening.set()
    listening.set()


def _replica_pids(log: list[str]) -> list[int]:
    return [int(m.group(1)) for line in log if (m := re.search(r"judge replica \d ready \(pid (\d+)", line))]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_script(url: str, env: dict, wait_s: float) -> subprocess.CompletedProcess:
    script = str(REPO / "reward_server" / "test_reward_server.py")
    return subprocess.run(
        [sys.executable, script, "--url", url, "--wait", str(wait_s)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_with_two_replica_processes_passes_the_health_check(cli_server, items, reference_scores):
    """The health-check script against the CLI server; without the key it fails with one clear line."""
    url, env, log = cli_server
    check = _check_script(url, env, 60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout and "latency" in check.stdout
    response = _post(url, items, headers={"Authorization": "Bearer k3y"})
    assert response.json()["scores"] == pytest.approx(reference_scores, abs=1e-5)
    denied = _check_script(url, {**env, "REWARD_SERVER_API_KEY": ""}, 1)
    assert denied.returncode != 0
    assert denied.stderr.strip().splitlines()[-1].startswith("FAILED: HTTP Error 401")
    assert re.search(r"batch replica=\d items=\d+ requests=\d+ failed=0 latency_ms=", "".join(log))


def test_cli_replicas_score_pairwise_items_with_the_pairwise_file(
    cli_server, cli_pairwise_file, judge, items
):
    """``--pairwise-template-file`` reaches the worker processes: the file's question (the built-in
    one's text, with the original's placeholder names) scores a pair as the built-in one does in
    process, and ``/health`` and the response name the file."""
    url, _env, _log = cli_server
    auth = {"Authorization": "Bearer k3y"}
    named = {
        "pairwise_template": "file:edit_pairwise.txt",
        "pairwise_template_sha256": hashlib.sha256(cli_pairwise_file.read_bytes()).hexdigest(),
    }
    health = requests.get(f"{url}/health", headers=auth, timeout=10).json()
    assert {key: health[key] for key in named} == named
    pair = RawItem(
        items[0].image, items[0].source_image, "add a hat", "keep the sky", "pairwise", items[1].image
    )
    response = _post(url, [pair], headers=auth)
    assert response.status_code == 200, response.text
    assert {key: response.json()[key] for key in named} == named
    assert response.json()["scores"] == pytest.approx([_answer_preference(judge, pair)], abs=1e-5)


def test_the_check_script_says_what_it_waits_for(tmp_path):
    result = _check_script(f"http://127.0.0.1:{free_port()}", dict(os.environ), 2.5)
    assert result.returncode == 1
    assert re.search(
        r"waiting for http://127\.0\.0\.1:\d+/health \(Connection refused\); \d+s left", result.stdout
    )
    last = result.stderr.strip().splitlines()
    assert (
        len(last) == 1
        and last[0].startswith("FAILED: no reward server answered at")
        and "within 2s" in last[0]
    )


def test_a_killed_replica_fails_only_its_batch_and_is_restarted(cli_server, items, reference_scores):
    """Fault: one of two judge replica processes dies while it holds a batch.

    It is frozen (SIGSTOP) until a request is stuck on it, then killed: exactly that batch fails with
    a clear error, the other replica keeps serving, ``/health`` says degraded until the replica is
    restarted, and the server's log accounts for every item exactly once.
    """
    url, _env, log = cli_server
    auth = {"Authorization": "Bearer k3y"}
    batches_before = _logged_batches(log)
    victim = _replica_pids(log)[-1]
    os.kill(victim, signal.SIGSTOP)
    pool = ThreadPoolExecutor(8)
    sent, stuck = [], None
    try:
        for attempt in range(24):
            pick = attempt % len(items)
            future = pool.submit(_post, url, [items[pick]], headers=auth)
            sent.append((pick, future))
            try:
                future.result(timeout=0.5)
            except FuturesTimeout:
                stuck = pick
                break
        assert stuck is not None, "no request reached the frozen replica"
        served_meanwhile = _post(url, items[:3], headers=auth).json()
        assert served_meanwhile["scores"] == pytest.approx(reference_scores[:3], abs=1e-5)
    finally:
        os.kill(victim, signal.SIGKILL)
    assert _wait_for_health(url, "degraded", auth)["replicas_alive"] == 1
    answers = [(pick, future.result(timeout=60).json()) for pick, future in sent]
    failed = [(pick, a) for pick, a in answers if a["scores"] == [None]]
    assert [pick for pick, _ in failed] == [stuck]
    assert "died with exit code -9 while scoring this batch" in failed[0][1]["errors"][0]
    for pick, answer in answers:
        if pick != stuck:
            assert answer["scores"] == pytest.approx([reference_scores[pick]], abs=1e-5)
    assert _wait_for_health(url, "ok", auth, timeout_s=120)["replicas_alive"] == 2
    again = _post(url, items, headers=auth).json()
    assert again["scores"] == pytest.approx(reference_scores, abs=1e-5)
    pool.shutdown()
    # Every item was in exactly one engine batch: nothing lost, nothing scored twice. (A batch is
    # logged just after its answers are handed back: give the log reader a moment for the last.)
    expected_items = len(sent) + 3 + len(items)
    deadline = time.monotonic() + 10
    while sum(n for n, _ in _logged_batches(log)[len(batches_before) :]) < expected_items:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    new_batches = _logged_batches(log)[len(batches_before) :]
    assert sum(n for n, _ in new_batches) == expected_items
    assert sum(f for _, f in new_batches) == 1
    assert any("restarted (pid" in line for line in log)


def _logged_batches(log: list[str]) -> list[tuple[int, int]]:
    pattern = r"batch replica=\d items=(\d+) requests=\d+ failed=(\d+)"
    return [(int(m.group(1)), int(m.group(2))) for line in list(log) if (m := re.search(pattern, line))]


def _wait_for_health(url: str, status: str, headers: dict, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        health = requests.get(f"{url}/health", headers=headers, timeout=10).json()
        if health["status"] == status or time.monotonic() > deadline:
            assert health["status"] == status, health
            return health
        time.sleep(0.05)


def test_several_source_images_reach_the_judge(server, judge, items, reference_scores):
    """`more_source_images`: the judge's turn holds every source image, then the edit; the score
    over HTTP equals the in-process one and differs from the score with the first source only."""
    import dataclasses

    extra = png_bytes(random_image(300, 40))
    raw = dataclasses.replace(items[0], more_source_images=(extra,))
    decoded = decode_item(raw, 0, LIMITS)
    assert len(decoded.sources) == 2
    batch = judge.prepare_batch([decoded])
    assert len(batch["image_grid_thw"]) == 3  # two sources and the edit
    prompt = judge._prompt(decoded)
    assert "Picture 1 to Picture 2" in prompt and prompt.count("<|vision_start|>") == 3
    response = _post(server, [raw, items[0]])
    assert response.status_code == 200, response.text
    two_sources, one_source = response.json()["scores"]
    assert two_sources == pytest.approx(judge.score_batch([decoded])[0], abs=1e-5)
    assert one_source == pytest.approx(reference_scores[0], abs=1e-5)
    assert abs(two_sources - one_source) > 1e-6


BATCH_DEADLINE_S = 3.0


@pytest.fixture(scope="module")
def deadline_server(tiny_judge):
    """The CLI server with two replica processes and a 3 s batch deadline."""
    extra = [
        "--data-parallel-size",
        "2",
        "--batch-deadline-s",
        str(BATCH_DEADLINE_S),
        "--max-batch-size",
        "4",
    ]
    with _cli_server_process(tiny_judge, extra) as running:
        yield running


def _stuck_request(url: str, items, pool, auth: dict):
    """Posts one-item requests until one does not come back within 0.5 s (it sits on the frozen
    replica); returns (its item index, its future, when it was sent, the others sent)."""
    sent = []
    for attempt in range(24):
        pick = attempt % len(items)
        started = time.monotonic()
        future = pool.submit(_post, url, [items[pick]], headers=auth)
        try:
            future.result(timeout=0.5)
        except FuturesTimeout:
            return pick, future, started, sent
        sent.append((pick, future))
    raise AssertionError("no request reached the frozen replica")


def test_a_hung_replica_is_killed_at_the_batch_deadline_and_restarted(
    deadline_server, items, reference_scores
):
    """Fault: a judge replica hangs without dying (SIGSTOP: alive, never answers).

    At the batch deadline the server kills it: that batch's item gets a retryable error naming the
    deadline, the other replica serves other clients meanwhile, ``/health`` says degraded until the
    replica is restarted, then ok; the request is answered within the deadline plus a margin.
    """
    url, _env, log = deadline_server
    auth = {"Authorization": "Bearer k3y"}
    victim = _replica_pids(log)[-1]
    os.kill(victim, signal.SIGSTOP)
    pool = ThreadPoolExecutor(8)
    try:
        stuck, future, sent_at, others = _stuck_request(url, items, pool, auth)
        served_meanwhile = _post(url, items[:3], headers=auth).json()
        assert served_meanwhile["scores"] == pytest.approx(reference_scores[:3], abs=1e-5)
        answer = future.result(timeout=60).json()
        answered_after = time.monotonic() - sent_at
    finally:
        if _running(victim):
            os.kill(victim, signal.SIGKILL)
    assert answer["scores"] == [None] and answer["retryable"] == [True], answer
    assert "within the 3 s batch deadline (--batch-deadline-s); it was killed" in answer["errors"][0]
    assert BATCH_DEADLINE_S <= answered_after < BATCH_DEADLINE_S + 10, answered_after
    print(f"hung replica: the stuck request was answered {answered_after:.2f} s after it was sent")
    assert served_meanwhile["retryable"] == [False] * 3
    assert _wait_for_health(url, "degraded", auth)["replicas_alive"] == 1
    degraded_at = time.monotonic()
    assert _wait_for_health(url, "ok", auth, timeout_s=120)["replicas_alive"] == 2
    print(f"hung replica: /health was ok again {time.monotonic() - degraded_at:.1f} s after 'degraded'")
    assert not _running(victim), "the hung replica was not killed"
    for pick, done in others:
        assert done.result(timeout=60).json()["scores"] == pytest.approx([reference_scores[pick]], abs=1e-5)
    assert any("past the 3 s batch deadline; killed it, restarting" in line for line in log)
    again = _post(url, items, headers=auth).json()
    assert again["scores"] == pytest.approx(reference_scores, abs=1e-5)
    pool.shutdown()


def test_the_client_sends_items_of_a_hung_replica_again_and_loses_none(
    deadline_server, items, reference_scores
):
    """The trainer's client against the same fault: every item ends with its judge score (the one
    that sat on the hung replica is sent again after the kill), none is NaN."""
    from edit_r1.rewards.base import RewardSample
    from edit_r1.rewards.client import RetryPolicy, RewardClient

    url, _env, log = deadline_server
    auth = {"Authorization": "Bearer k3y"}
    _wait_for_health(url, "ok", auth, timeout_s=120)
    victim = _replica_pids(log)[-1]
    os.kill(victim, signal.SIGSTOP)
    samples = [
        RewardSample(
            Image.open(io.BytesIO(raw.image)),
            Image.open(io.BytesIO(raw.source_image)),
            raw.instruction,
            raw.requirement,
        )  # fmt: skip
        for raw in items
    ]
    retry = RetryPolicy(deadline_s=90, initial_backoff_s=0.2, max_backoff_s=1.0, request_timeout_s=60)
    client = RewardClient(
        url.split("://", 1)[1], chunk_size=1, retry=retry, api_key="k3y", image_format="png"
    )
    hung_before = sum("batch deadline; killed it" in line for line in log)
    try:
        started = time.monotonic()
        scores = client.score(samples)
        took = time.monotonic() - started
    finally:
        client.close()
        if _running(victim):
            os.kill(victim, signal.SIGKILL)
    assert sum("batch deadline; killed it" in line for line in log) == hung_before + 1, "no batch hung"
    assert scores.tolist() == pytest.approx(reference_scores, abs=1e-5)
    assert took < BATCH_DEADLINE_S + 60, took
    print(f"hung replica: the client had all {len(scores)} scores after {took:.1f} s")
