"""The HTTP application: ``GET /health`` and ``POST /score`` (protocol in ``docs/reward-protocol.md``).

Every client mistake is answered with a 4xx JSON ``{"error": message}`` naming the field or item;
only a bug in the server itself can give a 500, and no request can stop the process.

``GET /health`` is open even with an API key (load balancers and orchestrators probe without
credentials, as they do vLLM's server); without the key it reveals only the status, the backend
and the template. Its status is ``ok``, ``degraded`` (a judge replica is down and being restarted;
the others serve) or ``down`` (no replica alive; answered with 503). Every other route needs the key.

A server without a pairwise question (``info["pairwise_template"]`` is None: its prompt is a
``--template-file`` and no ``--pairwise-template-file`` was given) refuses a request holding a
pairwise item with a 400 naming the item, before any judge work.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Mapping

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from reward_server.batcher import DynamicBatcher, RetryableError
from reward_server.images import decode_item
from reward_server.prompt_template import PAIRWISE_TEMPLATES
from reward_server.protocol import (
    PAIRWISE,
    PROMPT_FIELDS,
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    RawItem,
    build_score_response,
    parse_score_request,
)

LOGGER = logging.getLogger("reward_server")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


_PUBLIC_HEALTH_FIELDS = ("status", "protocol", "backend")


def _public_health(health: Mapping[str, object]) -> dict:
    """What an unauthenticated probe may see: status, backend and the templates' names (and hashes)."""
    return {k: v for k, v in health.items() if k in _PUBLIC_HEALTH_FIELDS or k in PROMPT_FIELDS}


def _check_pairwise_supported(raw_items: list[RawItem], info: Mapping[str, object]) -> None:
    """A pairwise item needs a pairwise question; without one the request is a 400 naming the first
    such item and how to start the server with one (nothing is scored)."""
    if info.get("pairwise_template") is not None:
        return
    for index, raw in enumerate(raw_items):
        if raw.kind == PAIRWISE:
            raise ProtocolError(
                400,
                f"items[{index}]: a pairwise item, but this server has no pairwise question (its judge "
                "prompt is a --template-file); start the server with --pairwise-template-file PATH, or "
                f"with a built-in --template ({', '.join(sorted(PAIRWISE_TEMPLATES))}) instead of --template-file",
            )


def _check_body_headers() -> None:
    """``POST /score`` takes identity-encoded JSON only; anything else is a 415 naming the header."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported: send plain JSON")
    if request.mimetype != "application/json":
        got = request.headers.get("Content-Type") or "none"
        raise ProtocolError(415, f"Content-Type must be application/json, got {got!r}")


def _authorised(api_key: str | None) -> bool:
    if not api_key:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest: the comparison time does not reveal how much of the key was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def create_app(
    batcher: DynamicBatcher,
    info: Mapping[str, str | None],
    limits: Limits = Limits(),
    api_key: str | None = None,
    max_queued_items: int = 100_000,
) -> Flask:
    """The Flask app; ``info`` holds ``backend``, ``model`` and the judge prompts' names and hashes
    (``protocol.PROMPT_FIELDS``) for ``/health``.

    ``max_queued_items``: beyond this many waiting items new requests get 503 (the client backs off
    and retries) instead of growing the queue without bound.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes

    @app.before_request
    def check_api_key():
        if request.path == "/health" and request.method in ("GET", "HEAD"):
            return None
        if not _authorised(api_key):
            return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        return None

    health = functools.partial(_health, batcher, info, api_key)
    app.add_url_rule("/health", "health_check", health, methods=["GET"])
    score = functools.partial(_score, batcher, info, limits, max_queued_items)
    app.add_url_rule("/score", "score", score, methods=["POST"])
    _register_error_handlers(app)
    return app


def _health(batcher: DynamicBatcher, info: Mapping[str, str | None], api_key: str | None):
    """``GET /health``: status from the live replicas (503 when none is alive); the full record
    (backend, model, template) only for an authorised caller."""
    alive, total = batcher.replicas_alive()
    status = "ok" if alive == total else "degraded" if alive else "down"
    health = {
        "status": status,
        "protocol": PROTOCOL_VERSION,
        **dict(info),
        "replicas_alive": alive,
        "replicas": total,
    }
    body = health if _authorised(api_key) else _public_health(health)
    return jsonify(body), 503 if status == "down" else 200


def _score(batcher: DynamicBatcher, info: Mapping[str, str | None], limits: Limits, max_queued_items: int):
    """``POST /score``: checked request -> batcher -> one score (or error) per item; 503 with
    ``Retry-After`` when no replica is alive or the queue is full."""
    try:
        _check_body_headers()
        raw_items = parse_score_request(request.get_data(cache=False), limits)
        _check_pairwise_supported(raw_items, info)
        items = [decode_item(raw, index, limits) for index, raw in enumerate(raw_items)]
    except ProtocolError as error:
        return _error(error.status, error.message)
    if batcher.replicas_alive()[0] == 0:
        response, status = _error(503, "no judge replica is alive (restarting); retry later")
        response.headers["Retry-After"] = "5"
        return response, status
    if batcher.queued() + len(items) > max_queued_items:
        response, status = _error(503, f"server busy: more than {max_queued_items} items queued")
        response.headers["Retry-After"] = "1"
        return response, status
    results = batcher.score(items)
    errors = [e for _, e in results]
    body = build_score_response(
        [s for s, _ in results], errors, [isinstance(e, RetryableError) for e in errors]
    )
    # Every score names the prompts that produced it (the templates' names and text hashes).
    body.update({key: info[key] for key in PROMPT_FIELDS if key in info})
    return jsonify(body)


def _register_error_handlers(app: Flask) -> None:
    """Every error as the protocol's JSON error body: HTTP errors keep their code, anything else is
    a logged 500 that names only the exception type."""

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _error(error.code or 500, f"{error.name}: {error.description}")

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        LOGGER.exception("internal error while serving %s %s", request.method, request.path)
        return _error(500, f"internal server error ({type(error).__name__})")
