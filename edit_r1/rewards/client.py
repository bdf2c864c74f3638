"""The trainer's client for the reward server (protocol: ``docs/reward-protocol.md``).

``REWARD_SERVER`` names one server (``host:port``) or several (``host1:12341,host2:12341``).
A batch is split into chunks of ``chunk_size`` items that are spread round-robin over the servers
and posted concurrently; each chunk carries its own images and texts, and the scores are put back
in the caller's order (the original sent every prompt with every 64-image chunk and misaligned them).

Failures, by kind:
- connection errors, time-outs and ``503`` are retried with exponential backoff
  (``initial_backoff_s`` doubling up to ``max_backoff_s``), moving to the next server on each
  retry, until ``deadline_s`` has passed; then :class:`RewardServerUnavailable` stops the trainer
  with a message naming the servers and the last error. A server that failed this way is skipped
  for ``server_cooldown_s`` (its chunks go to the others at once, without a backoff pause) while
  any other server is not in cooldown; a restarted server is used again after its cooldown;
- any other HTTP error (4xx: a bug in what we sent; 500: a bug in the server) raises
  :class:`RewardRequestRejected` at once, never retried;
- an item the server marks ``retryable`` (its judge replica died or hung past the server's batch
  deadline while holding it) is sent again, alone with the chunk's other such items, after the
  same backoff, until it is scored or the chunk's ``deadline_s`` has passed; then it stays ``NaN``;
- an item the judge could not score comes back as ``NaN`` (masked by the algorithm, never 0).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import requests
from PIL import Image

from edit_r1.rewards.base import PairSample, RewardSample
from reward_server.protocol import build_score_request, parse_retryable, parse_score_response

SERVER_ENV = "REWARD_SERVER"
API_KEY_ENV = "REWARD_SERVER_API_KEY"
EVAL_SERVER_ENV = "EVAL_REWARD_SERVER"  # a held-out judge for evaluation (read by edit_r1.settings)
DEFAULT_SERVER = "127.0.0.1:12341"
DEFAULT_CHUNK_SIZE = 32  # images per request (the original sent 64 per request)
IMAGE_FORMATS = ("jpeg", "png")
DEFAULT_IMAGE_FORMAT = "jpeg"  # the original sent JPEG at PIL's default quality 75; "png" is lossless
RETRYABLE_STATUS = frozenset({503})
# Four chunk deadlines: a judge may be slow for a while (a restart, a burst) without ending the run.
DEFAULT_WAIT_DEADLINE_S = 3600.0


class RewardServerUnavailable(RuntimeError):
    """No reward server answered within the deadline."""


class RewardRequestRejected(RuntimeError):
    """A server refused a request (4xx) or failed on it (5xx other than 503); not retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: backoff ``min(initial * 2**attempt, max)``, all attempts within ``deadline_s``."""

    deadline_s: float = 900.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    request_timeout_s: float = 300.0
    server_cooldown_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        return min(self.initial_backoff_s * 2**attempt, self.max_backoff_s)


@dataclass(frozen=True)
class RewardClientSettings:
    """How the trainer reaches the judge: the config's ``reward_client`` section, typed.

    ``server``: ``host:port[,host:port...]``, "" = ``REWARD_SERVER`` (else the default server);
    ``chunk_size``: items per request; ``retry``: timeouts and backoff (:class:`RetryPolicy`);
    ``pairs_per_sample``: partners per edit of the pairwise reward (0 = every other edit of its group).
    ``image_format``: how source and edit travel, ``"jpeg"`` (the original's: PIL's default
    quality 75, so the judge sees what it saw) or ``"png"`` (lossless).
    ``wait_deadline_s``: the longest the trainer waits, after sampling an epoch, for all of that
    epoch's rewards (a judge slower than training for that long stops the run, naming the servers
    and what was still unscored; a shorter stall is ridden out).
    The config keeps the flat keys (``reward_client.deadline_s``, ...): :meth:`from_mapping`.
    """

    server: str = ""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pairs_per_sample: int = 0
    image_format: str = DEFAULT_IMAGE_FORMAT
    wait_deadline_s: float = DEFAULT_WAIT_DEADLINE_S
    api_key: str | None = field(default=None, repr=False)  # None: REWARD_SERVER_API_KEY when connecting

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"reward_client.image_format={self.image_format!r} is not one of {list(IMAGE_FORMATS)}"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RewardClientSettings:
        """From the flat keys of ``reward_client`` (any subset); an unknown key is an error."""
        retry_keys = {f.name for f in fields(RetryPolicy)}
        known = retry_keys | {"server", "chunk_size", "pairs_per_sample", "image_format", "wait_deadline_s"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"reward_client: unknown key(s) {unknown}; known: {sorted(known)}")
        retry = RetryPolicy(**{key: float(options[key]) for key in retry_keys if key in options})
        return cls(
            server=str(options.get("server") or ""),
            chunk_size=int(options.get("chunk_size", DEFAULT_CHUNK_SIZE)),
            retry=retry,
            pairs_per_sample=int(options.get("pairs_per_sample", 0)),
            image_format=str(options.get("image_format", DEFAULT_IMAGE_FORMAT)),
            wait_deadline_s=float(options.get("wait_deadline_s", DEFAULT_WAIT_DEADLINE_S)),
        )

    def resolved(self, environ: Mapping[str, str]) -> RewardClientSettings:
        """These settings completed from ``environ`` (the training boundary passes ``os.environ``):
        an empty ``server`` becomes ``REWARD_SERVER`` (else the default server) and the API key
        ``REWARD_SERVER_API_KEY`` ("" = none), so the client reads no environment of its own."""
        server = self.server or environ.get(SERVER_ENV) or DEFAULT_SERVER
        return replace(self, server=server, api_key=environ.get(API_KEY_ENV) or "")

    def as_mapping(self) -> dict[str, Any]:
        """The flat ``reward_client`` keys (what a config holds)."""
        retry = {f.name: getattr(self.retry, f.name) for f in fields(RetryPolicy)}
        return {
            "server": self.server,
            **retry,
            "chunk_size": self.chunk_size,
            "pairs_per_sample": self.pairs_per_sample,
            "image_format": self.image_format,
            "wait_deadline_s": self.wait_deadline_s,
        }


def parse_server_list(spec: str) -> list[str]:
    """``"h1:p1,h2:p2"`` (optionally with ``http://``/``https://``) -> base URLs without trailing slash."""
    urls = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        url = entry if entry.startswith(("http://", "https://")) else f"http://{entry}"
        host_port = url.split("://", 1)[1]
        if not host_port or host_port.startswith(":"):
            raise ValueError(f"{SERVER_ENV}: {entry!r} is not host:port")
        urls.append(url.rstrip("/"))
    if not urls:
        raise ValueError(f"{SERVER_ENV}: no server in {spec!r}; expected host:port[,host:port...]")
    return urls


def encode_image(image, image_format: str = DEFAULT_IMAGE_FORMAT) -> bytes:
    """File bytes of a PIL image or uint8 array in ``image_format``: ``"jpeg"`` as the original
    client (``flow_grpo/rewards.py`` ~64-76: RGB, PIL's default quality 75) or lossless ``"png"``."""
    if image_format == "png":
        return image_to_png(image)
    if image_format != "jpeg":
        raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
    image = image if isinstance(image, Image.Image) else Image.fromarray(_uint8_array(image))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def _uint8_array(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise TypeError(f"expected a PIL image or a uint8 (H, W[, C]) array, got {array.dtype} {array.shape}")
    return array


def image_to_png(image) -> bytes:
    """PNG bytes of a PIL image or a uint8 array (H, W), (H, W, 3) or (H, W, 4); lossless."""
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise TypeError(
                f"expected a PIL image or a uint8 (H, W[, C]) array, got {array.dtype} {array.shape}"
            )
        image = Image.fromarray(array)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class RewardClient:
    """Scores samples with one or more reward servers; returns float64 scores with NaN for failures."""

    def __init__(
        self,
        servers: str | Sequence[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        retry: RetryPolicy = RetryPolicy(),
        api_key: str | None = None,
        max_parallel_chunks: int | None = None,
        image_format: str = DEFAULT_IMAGE_FORMAT,
    ) -> None:
        self.servers = parse_server_list(servers if isinstance(servers, str) else ",".join(servers))
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.retry = retry
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
        self.image_format = image_format
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_chunks or 2 * len(self.servers))
        self._down_until: dict[str, float] = {}  # server -> monotonic time its cooldown ends

    @classmethod
    def from_env(cls, default: str | None = None, **kwargs) -> RewardClient:
        """Servers from ``REWARD_SERVER`` (else ``default``, else 127.0.0.1:12341)."""
        return cls(os.environ.get(SERVER_ENV) or default or DEFAULT_SERVER, **kwargs)

    @classmethod
    def from_settings(cls, settings: RewardClientSettings) -> RewardClient:
        """A client for ``settings.server`` (``REWARD_SERVER`` when it is empty: settings not
        :meth:`~RewardClientSettings.resolved`, as a tool builds them)."""
        options = {
            "chunk_size": settings.chunk_size,
            "retry": settings.retry,
            "image_format": settings.image_format,
            "api_key": settings.api_key,
        }
        if settings.server:
            return cls(settings.server, **options)
        return cls.from_env(**options)

    def score(self, samples: Sequence[RewardSample]) -> np.ndarray:
        """Scores in [0, 1] in the order of ``samples``; NaN where the judge failed on an item."""
        return self._score_all(samples)

    def compare(self, pairs: Sequence[PairSample]) -> np.ndarray:
        """``p(first better than second)`` per pair, the judge shown the first edit first (protocol
        version 2 pairwise items); NaN where the judge failed. Chunked and retried like :meth:`score`."""
        return self._score_all(pairs)

    def _score_all(self, entries: Sequence[RewardSample | PairSample]) -> np.ndarray:
        chunks = [
            entries[start : start + self.chunk_size] for start in range(0, len(entries), self.chunk_size)
        ]
        futures = [self._pool.submit(self._score_chunk, chunk, index) for index, chunk in enumerate(chunks)]
        scores = [score for future in futures for score in future.result()]
        return np.asarray(scores, dtype=np.float64).reshape(len(entries))

    def health(self, server: str | None = None, timeout_s: float = 5.0) -> dict:
        """``GET /health`` of one server (the first by default)."""
        response = requests.get(
            f"{server or self.servers[0]}/health", headers=self.headers, timeout=timeout_s
        )
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _item(self, entry: RewardSample | PairSample) -> dict:
        if isinstance(entry, PairSample):
            return {
                "kind": "pairwise",
                "image": encode_image(entry.first_image, self.image_format),
                "image_b": encode_image(entry.second_image, self.image_format),
                "source_image": encode_image(entry.source_image, self.image_format),
                "instruction": entry.instruction,
                "requirement": entry.requirement,
            }
        return {
            "image": encode_image(entry.edited_image, self.image_format),
            "source_image": encode_image(entry.source_image, self.image_format),
            "instruction": entry.instruction,
            "requirement": entry.requirement,
            "more_source_images": [image_to_png(image) for image in entry.more_source_images],
        }

    def _score_chunk(self, chunk: Sequence[RewardSample | PairSample], chunk_index: int) -> list[float]:
        """The chunk's scores; items failed retryably are posted again (only those) within the
        chunk's deadline, moving on to the next server each round."""
        started = time.monotonic()
        items = [self._item(entry) for entry in chunk]
        scores: list[float | None] = [None] * len(chunk)
        pending, attempt = list(range(len(chunk))), 0
        while pending:
            payload = build_score_request([items[i] for i in pending])
            got, _errors, retryable = self._post_with_retries(
                payload,
                len(pending),
                first_server=(chunk_index + attempt) % len(self.servers),
                started=started,
            )
            for index, score in zip(pending, got, strict=True):
                scores[index] = score
            pending = [
                i for i, score, again in zip(pending, got, retryable, strict=True) if score is None and again
            ]
            remaining = self.retry.deadline_s - (time.monotonic() - started)
            if pending and remaining <= 0:
                break  # they stay NaN, like any item the judge could not score
            if pending:
                time.sleep(min(self.retry.backoff(attempt), remaining))
                attempt += 1
        return [np.nan if score is None else score for score in scores]

    def _pick_server(self, position: int) -> tuple[int, bool]:
        """The first server from ``position`` on (round robin) that is not in cooldown, and whether
        one was found; with every server in cooldown, the one at ``position``."""
        now = time.monotonic()
        for offset in range(len(self.servers)):
            candidate = (position + offset) % len(self.servers)
            if self._down_until.get(self.servers[candidate], 0.0) <= now:
                return candidate, True
        return position % len(self.servers), False

    def _post_with_retries(
        self, payload: dict, expected: int, first_server: int, started: float | None = None
    ):
        """(scores, errors, retryable) of one request, retried on connection errors, time-outs and
        503 until ``deadline_s`` after ``started`` (default: now)."""
        started = time.monotonic() if started is None else started
        attempt, last_error, tried = 0, "", []
        position = first_server
        while True:
            position, healthy = self._pick_server(position)
            server = self.servers[position]
            tried.append(server)
            remaining = self.retry.deadline_s - (time.monotonic() - started)
            try:
                response = requests.post(
                    f"{server}/score",
                    json=payload,
                    headers=self.headers,
                    timeout=max(0.1, min(self.retry.request_timeout_s, remaining)),
                )
                if response.status_code == 200:
                    self._down_until.pop(server, None)
                    body = response.json()
                    return (*parse_score_response(body, expected), parse_retryable(body, expected))
                if response.status_code not in RETRYABLE_STATUS:
                    raise RewardRequestRejected(
                        f"reward server {server} answered HTTP {response.status_code}: {response.text[:500]}"
                    )
                last_error = f"HTTP {response.status_code} from {server}: {response.text[:200]}"
            except (requests.ConnectionError, requests.Timeout) as error:
                last_error = f"{type(error).__name__} from {server}: {error}"
            self._down_until[server] = time.monotonic() + self.retry.server_cooldown_s
            remaining = self.retry.deadline_s - (time.monotonic() - started)
            if remaining <= 0:
                raise RewardServerUnavailable(
                    f"no reward server answered within {self.retry.deadline_s:.0f}s "
                    f"(tried {sorted(set(tried))}, {len(tried)} attempts); last error: {last_error}. "
                    f"Start one with `python reward_server/reward_server.py ...` and set {SERVER_ENV}=host:port."
                )
            position += 1
            if not healthy or not self._pick_server(position)[1]:
                # Every server is failing: back off before the next round (a restarting server).
                time.sleep(min(self.retry.backoff(attempt), remaining))
                attempt += 1
