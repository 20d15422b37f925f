"""The Flask app factory: Label Studio's ML backend protocol (no label-studio-ml dependency) and the
project's own API, as blueprints (:mod:`backend.routes`), with auth, request logging and the one
place where errors become responses.

Configuration (``create_app(config)`` keys, defaulting to the environment variable of the same
name): ``REDIS_URL`` (or ``REDIS``, a client object), ``MODEL_DIR``, ``XMODAL_QUEUE``,
``XMODAL_PROJECT``, ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``, ``MAX_CONTENT_LENGTH``
(``$XMODAL_MAX_CONTENT_LENGTH``, bytes, default 32 MiB), ``TEXT_ENCODER_LOADER`` (callable),
``WARM_START`` (``$XMODAL_WARM_START``: load what the first /search needs in a background thread
at start, :mod:`backend.warm`).

Every bad request gets a 4xx JSON ``{"error": ...}`` and a log line; Redis being unreachable or a
workspace that is incomplete on disk is a 503 that says so (paths relative to ``MODEL_DIR``);
anything else unexpected is a 500 JSON naming only an ``error_id``, with the exception logged under
that id: no response carries an exception's text or a server path.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from flask import Flask, current_app, g, jsonify, request

from backend import auth, warm
from backend.errors import register_error_handlers
from backend.jsonbody import max_content_length
from backend.jsonout import FiniteJSONProvider
from backend.metrics import observe_webhook
from backend.routes import api, ml_backend
from backend.services import Backend
from xmodal import settings
from xmodal.logfmt import kv

log = logging.getLogger("backend")

ENV_KEYS = ("REDIS_URL", "MODEL_DIR", "XMODAL_QUEUE", "XMODAL_PROJECT", "BASIC_AUTH_USER",
            "BASIC_AUTH_PASS")


def create_app(config: dict | None = None) -> Flask:
    app = Flask("xmodal-backend")
    app.json = FiniteJSONProvider(app)   # never NaN in a response (backend.jsonout)
    for key in ENV_KEYS:
        if os.environ.get(key):
            app.config[key] = os.environ[key]
    app.config["MAX_CONTENT_LENGTH"] = max_content_length()
    app.config.update(config or {})
    backend = Backend.from_config(app.config)
    app.extensions["xmodal"] = backend
    app.extensions["xmodal_auth"] = creds = auth.credentials(app.config)
    if creds:
        log.info(kv("auth.basic", user=creds[0]))

    app.before_request(_authenticate_and_time)
    app.after_request(_log_request)
    register_error_handlers(app)
    app.register_blueprint(ml_backend)
    app.register_blueprint(api)
    if app.config.get("WARM_START", settings.get("XMODAL_WARM_START")):
        app.extensions["xmodal_warm"] = warm.start(backend)
    return app


def _authenticate_and_time():
    g.t0 = time.perf_counter()
    g.project = None
    if not auth.authorized(request, current_app.extensions["xmodal_auth"]):
        resp = jsonify({"error": "authentication required"})
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Basic realm="xmodal"'
        return resp
    return None


def _log_request(resp):
    ms = 1000 * (time.perf_counter() - g.get("t0", time.perf_counter()))
    level = logging.WARNING if resp.status_code >= 400 else logging.INFO
    if request.path == "/health" and resp.status_code == 200:
        level = logging.DEBUG
    log.log(level, kv("http", method=request.method, path=request.path, status=resp.status_code,
                      project=g.get("project"), action=g.get("action"), ms=round(ms, 2),
                      error=g.get("error")))
    if request.path == "/webhook" and not str(g.get("error") or "").startswith("redis:"):
        try:   # (not when Redis just failed: a frozen Redis would hold the answer twice as long)
            observe_webhook(current_app.extensions["xmodal"].redis, ms / 1000)
        except redis.RedisError:
            pass
    return resp
