"""The routes: Label Studio's ML backend protocol and the project's own API, as two blueprints.

Thin handlers: each reads its body (:mod:`backend.jsonbody`), finds the project's workspace and
hands over to :class:`backend.model.XmodalModel`; errors are the app's handlers' (backend.app).

- ``GET /health`` -> ``{"status": "UP", "model_class": "XmodalModel"}`` (never behind auth)
- ``POST /setup`` -> ``{"model_version": "v<N>"}``
- ``POST /predict`` -> ``{"results": [prediction per task, in task order], "model_version"}``
- ``POST /webhook`` -> stores/removes a pair, enqueues a coalesced rebuild, answers at once
- ``GET|POST /search`` -> ``{"results": [{"id", "score", "path"|"text"}]}``
- ``POST /items`` -> 202 ``{"status": "queued", "pending", "job_id"}``: new images and texts for
  the project (backend/items.py); ``DELETE /items`` -> 202: removes some
- ``GET /metrics`` -> Prometheus text
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from backend.items import delete_items, post_items, source_event
from backend.jsonbody import json_object
from backend.metrics import render
from backend.model import XmodalModel
from backend.services import Backend
from xmodal.errors import ApiError
from xmodal.labelstudio.annotations import ls_project_id, webhook_project

WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
                   "TASKS_CREATED", "TASKS_DELETED")

ml_backend = Blueprint("ml_backend", __name__)
api = Blueprint("api", __name__)


def _backend() -> Backend:
    return current_app.extensions["xmodal"]


def _model_for_label_studio(body: dict, link_default: bool = False) -> XmodalModel:
    backend = _backend()
    ws = backend.resolver.for_label_studio(ls_project_id(body.get("project")), link_default)
    g.project = ws.name
    return XmodalModel(backend, ws)


@ml_backend.get("/health")
@ml_backend.get("/")
def health():
    return jsonify({"status": "UP", "model_class": XmodalModel.model_class})


@ml_backend.post("/setup")
def setup():
    body = json_object(request)
    return jsonify(_model_for_label_studio(body, link_default=True).setup(body))


@ml_backend.post("/predict")
def predict():
    body = json_object(request)
    if not isinstance(body.get("tasks"), list):
        raise ApiError(400, "'tasks' must be a list of tasks")
    model = _model_for_label_studio(body)
    model.learn_label_config(body.get("label_config"))
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    return jsonify(model.predict(body["tasks"], context=params.get("context")))


@ml_backend.post("/webhook")
def webhook():
    body = json_object(request)
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise ApiError(400, "a webhook needs an 'action' string")
    g.action = action
    if action not in WEBHOOK_ACTIONS:
        return jsonify({"status": "ignored", "action": action})
    backend = _backend()
    ls_id = webhook_project(body)
    ws = backend.resolver.for_label_studio(ls_id)
    g.project = ws.name
    if backend.resolver.is_source(ws, ls_id):   # the project --from-label-studio read: items only
        made = backend.resolver.made_from(ls_id) or [ws]
        if len(made) == 1:
            return jsonify(source_event(backend, made[0], action, body))
        return jsonify({"status": "ok", "projects": {w.name: source_event(backend, w, action, body)
                                                     for w in made}})
    return jsonify(XmodalModel(backend, ws).fit(action, body))


@api.route("/search", methods=["GET", "POST"])
def search():
    params = request.args.to_dict() if request.method == "GET" else json_object(request)
    backend = _backend()
    ws = backend.resolver.for_query(params.get("project"))
    g.project = ws.name
    return jsonify(XmodalModel(backend, ws).search(params))


@api.route("/items", methods=["POST", "DELETE"])
def items():
    body = json_object(request)
    backend = _backend()
    ws = backend.resolver.for_query(body.get("project"))
    g.project = ws.name
    out = (post_items if request.method == "POST" else delete_items)(backend, ws, body)
    return jsonify(out), 202 if out["status"] == "queued" else 200


@api.get("/metrics")
def metrics():
    backend = _backend()
    return Response(render(backend.redis, backend.model_dir, backend.queue),
                    mimetype="text/plain; version=0.0.4; charset=utf-8")
