"""The HTTP application: ``GET /health`` and ``POST /score`` (protocol in ``docs/reward-protocol.md``).

Every client mistake is answered with a 4xx JSON ``{"error": message}`` naming the field or item;
only a bug in the server itself can give a 500, and no request can stop the process.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from reward_server.batcher import DynamicBatcher
from reward_server.images import decode_item
from reward_server.protocol import Limits, ProtocolError, build_score_response, parse_score_request

LOGGER = logging.getLogger("reward_server")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _authorised(api_key: str | None) -> bool:
    if not api_key:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest: the comparison time does not reveal how much of the key was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def create_app(
    batcher: DynamicBatcher,
    info: Mapping[str, str],
    limits: Limits = Limits(),
    api_key: str | None = None,
    max_queued_items: int = 100_000,
) -> Flask:
    """The Flask app; ``info`` holds ``backend``, ``model`` and ``template`` for ``/health``.

    ``max_queued_items``: beyond this many waiting items new requests get 503 (the client backs off
    and retries) instead of growing the queue without bound.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    health = {"status": "ok", **dict(info)}

    @app.before_request
    def check_api_key():
        if not _authorised(api_key):
            return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        return None

    @app.get("/health")
    def health_check():
        return jsonify(health)

    @app.post("/score")
    def score():
        try:
            raw_items = parse_score_request(request.get_data(cache=False), limits)
            items = [decode_item(raw, index, limits) for index, raw in enumerate(raw_items)]
        except ProtocolError as error:
            return _error(error.status, error.message)
        if batcher.queued() + len(items) > max_queued_items:
            response, status = _error(503, f"server busy: more than {max_queued_items} items queued")
            response.headers["Retry-After"] = "1"
            return response, status
        results = batcher.score(items)
        return jsonify(build_score_response([s for s, _ in results], [e for _, e in results]))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _error(error.code or 500, f"{error.name}: {error.description}")

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        LOGGER.exception("internal error while serving %s %s", request.method, request.path)
        return _error(500, f"internal server error ({type(error).__name__})")

    return app
