"""Flask app speaking Label Studio's ML backend protocol (no label-studio-ml dependency).

Routes (thin; the work is in :class:`backend.model.XmodalModel`):

- ``GET /health`` -> ``{"status": "UP", "model_class": "XmodalModel"}`` (never behind auth)
- ``POST /setup`` -> ``{"model_version": "v<N>"}``
- ``POST /predict`` -> ``{"results": [prediction per task, in task order], "model_version"}``
- ``POST /webhook`` -> stores/removes a pair, enqueues a coalesced rebuild, answers at once
- ``GET|POST /search`` -> ``{"results": [{"id", "score", "path"|"text"}]}``
- ``GET /metrics`` -> Prometheus text

Configuration (``create_app(config)`` keys, defaulting to the environment variable of the same
name): ``REDIS_URL`` (or ``REDIS``, a client object), ``MODEL_DIR``, ``XMODAL_QUEUE``,
``XMODAL_PROJECT``, ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``, ``MAX_CONTENT_LENGTH``
(``$XMODAL_MAX_CONTENT_LENGTH``, bytes, default 32 MiB), ``TEXT_ENCODER_LOADER`` (callable).

Every bad request gets a 4xx JSON ``{"error": ...}`` and a log line; Redis being unreachable or a
workspace that is incomplete on disk is a 503 that says so (paths relative to ``MODEL_DIR``);
anything else unexpected is a 500 JSON naming only an ``error_id``, with the exception logged under
that id: no response carries an exception's text or a server path.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend import auth
from backend.jsonbody import json_object, max_content_length, too_large_message
from backend.jsonout import FiniteJSONProvider
from backend.metrics import observe_webhook, render
from backend.model import XmodalModel
from backend.services import Backend
from xmodal.errors import ApiError, XmodalError, redact
from xmodal.labelstudio.annotations import ls_project_id, webhook_project
from xmodal.logfmt import kv

log = logging.getLogger("backend")

ENV_KEYS = ("REDIS_URL", "MODEL_DIR", "XMODAL_QUEUE", "XMODAL_PROJECT", "BASIC_AUTH_USER",
            "BASIC_AUTH_PASS")


def _json_body() -> dict:
    return json_object(request)


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
    creds = auth.credentials(app.config)
    if creds:
        log.info(kv("auth.basic", user=creds[0]))

    def model_for_ls(body: dict, link_default: bool = False) -> XmodalModel:
        ws = backend.resolver.for_label_studio(ls_project_id(body.get("project")), link_default)
        g.project = ws.name
        return XmodalModel(backend, ws)

    # -- hooks -----------------------------------------------------------------------------
    @app.before_request
    def _start():
        g.t0 = time.perf_counter()
        g.project = None
        if not auth.authorized(request, creds):
            resp = jsonify({"error": "authentication required"})
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Basic realm="xmodal"'
            return resp
        return None

    @app.after_request
    def _log(resp):
        ms = 1000 * (time.perf_counter() - g.get("t0", time.perf_counter()))
        level = logging.WARNING if resp.status_code >= 400 else logging.INFO
        if request.path == "/health" and resp.status_code == 200:
            level = logging.DEBUG
        log.log(level, kv("http", method=request.method, path=request.path, status=resp.status_code,
                          project=g.get("project"), action=g.get("action"), ms=round(ms, 2),
                          error=g.get("error")))
        if request.path == "/webhook" and not str(g.get("error") or "").startswith("redis:"):
            try:   # (not when Redis just failed: a frozen Redis would hold the answer twice as long)
                observe_webhook(backend.redis, ms / 1000)
            except redis.RedisError:
                pass
        return resp

    # -- errors ----------------------------------------------------------------------------
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        g.error = exc.message
        return jsonify(exc.body()), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        g.error = "body too large"
        limit = app.config["MAX_CONTENT_LENGTH"]
        return jsonify({"error": too_large_message(limit)}), 413

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        g.error = exc.description
        return jsonify({"error": exc.description or exc.name}), exc.code

    @app.errorhandler(XmodalError)
    def _project_not_ready(exc: XmodalError):
        # the workspace on disk is incomplete or unreadable: the server's state, not the request
        g.error = str(exc)
        log.error(kv("project.not_ready", path=request.path, project=g.get("project"), error=str(exc)))
        return jsonify({"error": redact(str(exc), backend.model_dir)}), 503

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc):
        g.error = f"redis: {exc}"
        log.error(kv("redis.error", path=request.path, project=g.get("project"), error=str(exc)))
        return jsonify({"error": "the backend's Redis is unavailable; retry later"}), 503

    @app.errorhandler(Exception)
    def _unexpected(exc):
        # the one place an unexpected exception becomes a response: the details (exception text,
        # paths under MODEL_DIR) go to the log under an id; the caller gets the id only
        error_id = uuid.uuid4().hex[:12]
        g.error = f"{type(exc).__name__} error_id={error_id}"
        log.exception(kv("unexpected", path=request.path, project=g.get("project"), error_id=error_id,
                         error=f"{type(exc).__name__}: {exc}"))
        return jsonify({"error": "internal error; the backend's log has the details under this "
                                 "error_id", "error_id": error_id}), 500

    # -- routes ----------------------------------------------------------------------------
    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify({"status": "UP", "model_class": XmodalModel.model_class})

    @app.post("/setup")
    def setup():
        body = _json_body()
        return jsonify(model_for_ls(body, link_default=True).setup(body))

    @app.post("/predict")
    def predict():
        body = _json_body()
        if not isinstance(body.get("tasks"), list):
            raise ApiError(400, "'tasks' must be a list of tasks")
        model = model_for_ls(body)
        model._learn_label_config(body.get("label_config"))
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        return jsonify(model.predict(body["tasks"], context=params.get("context")))

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError(400, "a webhook needs an 'action' string")
        g.action = action
        known = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
                 "TASKS_CREATED", "TASKS_DELETED")
        if action not in known:
            return jsonify({"status": "ignored", "action": action})
        ws = backend.resolver.for_label_studio(webhook_project(body))
        g.project = ws.name
        return jsonify(XmodalModel(backend, ws).fit(action, body))

    @app.route("/search", methods=["GET", "POST"])
    def search():
        params = request.args.to_dict() if request.method == "GET" else _json_body()
        ws = backend.resolver.for_query(params.get("project"))
        g.project = ws.name
        return jsonify(XmodalModel(backend, ws).search(params))

    @app.get("/metrics")
    def metrics():
        text = render(backend.redis, backend.model_dir, backend.queue)
        return Response(text, mimetype="text/plain; version=0.0.4; charset=utf-8")

    return app
