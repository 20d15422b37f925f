"""Where errors become responses, in one place: every bad request a 4xx JSON ``{"error": ...}``
and a log line; Redis unreachable or a workspace incomplete on disk a 503 that says so (paths
relative to ``MODEL_DIR``); anything else unexpected a 500 JSON naming only an ``error_id``, the
exception logged under that id: no response carries an exception's text or a server path."""

from __future__ import annotations

import logging
import uuid

import redis
from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from xmodal.errors import ApiError, XmodalError, redact
from xmodal.logfmt import kv

log = logging.getLogger("backend")
_HANDLERS: list = []


def _handles(exc_type):
    def register(fn):
        _HANDLERS.append((exc_type, fn))
        return fn
    return register


def register_error_handlers(app: Flask) -> None:
    for exc_type, fn in _HANDLERS:
        app.register_error_handler(exc_type, fn)


@_handles(ApiError)
def _api_error(exc: ApiError):
    g.error = exc.message
    return jsonify(exc.body()), exc.status

@_handles(RequestEntityTooLarge)
def _too_large(exc):
    g.error = "body too large"
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return jsonify({"error": f"the request body is larger than the limit of {limit} bytes "
                             "(XMODAL_MAX_CONTENT_LENGTH)"}), 413

@_handles(HTTPException)
def _http_error(exc: HTTPException):
    g.error = exc.description
    return jsonify({"error": exc.description or exc.name}), exc.code

@_handles(XmodalError)
def _project_not_ready(exc: XmodalError):
    # the workspace on disk is incomplete or unreadable: the server's state, not the request
    g.error = str(exc)
    log.error(kv("project.not_ready", path=request.path, project=g.get("project"), error=str(exc)))
    return jsonify({"error": redact(str(exc), current_app.extensions["xmodal"].model_dir)}), 503

@_handles(redis.RedisError)
def _redis_error(exc):
    g.error = f"redis: {exc}"
    log.error(kv("redis.error", path=request.path, project=g.get("project"), error=str(exc)))
    return jsonify({"error": "the backend's Redis is unavailable; retry later"}), 503

@_handles(Exception)
def _unexpected(exc):
    # the one place an unexpected exception becomes a response: the details (exception text,
    # paths under MODEL_DIR) go to the log under an id; the caller gets the id only
    error_id = uuid.uuid4().hex[:12]
    g.error = f"{type(exc).__name__} error_id={error_id}"
    log.exception(kv("unexpected", path=request.path, project=g.get("project"), error_id=error_id,
                     error=f"{type(exc).__name__}: {exc}"))
    return jsonify({"error": "internal error; the backend's log has the details under this "
                             "error_id", "error_id": error_id}), 500

