"""Label Studio predictions from an index: the one formatter used by ``/predict`` and by the
rebuild job's push, and the push itself.

A task asks about one item of the workspace's *select* modality (``data.item_id``) and offers
candidates of the other modality as choices (``data.options``, values = item ids). Its prediction:

- with a ranking signal (Pearson: >= 2 pairs, cosine: >= 1): the top-1 candidate as a ``choices``
  result, ``score`` = its cross-modal similarity (eq. 32/33, in [-1, 1]). Label Studio's
  "Uncertainty sampling" serves the lowest score first, i.e. the medoid the index is least sure of;
- without signal ("unlabelled" index, no cross-modal information yet): an empty result (proposing
  an arbitrary caption would only bias the annotator) and ``score`` = the item's anytime position
  among the medoids scaled to [0, 1), so the medoids are served in anytime (coverage) order.

The push (``refresh_label_studio``) runs only when the project is linked to a Label Studio project
and a URL and API key are known, and only for the index that is still current: it holds a Redis
lock per project, so two racing workers cannot leave Label Studio's ``model_version`` on the older
index.
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET

import redis

from workers.logfmt import kv
from workers.task_registry import NONE_CHOICE, TaskRegistry, option_values
from xmodal.index_store import IndexSnapshot, IndexStore
from xmodal.pairs import PairStore
from xmodal.redis_conn import pkey
from xmodal.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_FIELDS = {"image": ("caption", "image"), "text": ("image", "text")}


# -- label config ---------------------------------------------------------------------------
def choices_fields(label_config: str | None) -> tuple[str, str] | None:
    """(name, toName) of the first ``<Choices>`` (or ``<TextArea>``) tag of a labelling config."""
    if not label_config or not isinstance(label_config, str):
        return None
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return None
    for tag in ("Choices", "TextArea"):
        for el in root.iter(tag):
            if el.get("name") and el.get("toName"):
                return el.get("name"), el.get("toName").split(",")[0]
    return None


def label_fields(redis_client: redis.Redis | None, ws: Workspace) -> tuple[str, str]:
    """(from_name, to_name) for results: workspace config, else what the backend learned from
    Label Studio's labelling config, else the defaults of the select modality."""
    cfg = ws.config
    ls = cfg["label_studio"]
    if ls.get("from_name") and ls.get("to_name"):
        return ls["from_name"], ls["to_name"]
    if redis_client is not None:
        learned = redis_client.hmget(pkey(ws.name, "ls"), "from_name", "to_name")
        if learned[0] and learned[1]:
            return learned[0].decode(), learned[1].decode()
    return DEFAULT_FIELDS[cfg["select"]]


# -- one task -------------------------------------------------------------------------------
class LabelStudioPushError(RuntimeError):
    """The index was published but Label Studio could not be updated (RQ retries the job)."""


class UnknownItem(KeyError):
    """The task names an item that is not in the project."""


def task_prediction(snap: IndexSnapshot, task: dict, from_name: str, to_name: str) -> dict:
    """Label Studio prediction for one task (see the module doc). Raises UnknownItem / ValueError."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict) or data.get("item_id") is None:
        raise ValueError("task has no data.item_id")
    item_id = str(data["item_id"])
    if item_id not in snap.rows(snap.select):
        raise UnknownItem(f"item {item_id!r} is not a {snap.select} of this project")
    candidates = option_values(data.get("options"))
    ranking = snap.rank(snap.select, item_id, candidates, k=1)
    if snap.has_signal and ranking:
        top, score = ranking[0]
        result = [{"from_name": from_name, "to_name": to_name, "type": "choices",
                   "value": {"choices": [top]}}]
    else:
        result, score = [], snap.medoid_priority(item_id)
    return {"result": result, "score": round(float(score), 6), "model_version": snap.model_version}


# -- the Label Studio step of a rebuild -----------------------------------------------------
def ls_connection(redis_client: redis.Redis, ws: Workspace) -> dict | None:
    """``{"url", "api_key", "project_id"}`` or None when the project has no Label Studio link.

    URL: ``$LABEL_STUDIO_URL``, else the workspace config, else the ``hostname`` Label Studio sent
    to /setup. Key: ``$LABEL_STUDIO_API_KEY``, else the ``access_token`` sent to /setup."""
    ls = ws.config["label_studio"]
    pid = ls.get("project_id")
    if pid is None:
        return None
    learned = {k.decode(): v.decode() for k, v in redis_client.hgetall(pkey(ws.name, "ls")).items()}
    url = os.environ.get("LABEL_STUDIO_URL") or ls.get("url") or learned.get("url")
    key = os.environ.get("LABEL_STUDIO_API_KEY") or learned.get("api_key")
    if not url or not key:
        return None
    return {"url": url.rstrip("/"), "api_key": key, "project_id": int(pid)}


class LabelStudioAPI:
    """What the rebuild needs from Label Studio, over :mod:`xmodal.labelstudio`.

    Adjust here (only here) if that wrapper's API differs: ``connect(url, api_key)`` returns a
    client; ``push_predictions`` / ``set_model_version`` / ``list_tasks`` are looked up as methods
    of the client first, then as module functions taking the client first.
    """

    def __init__(self, url: str, api_key: str):
        from xmodal import labelstudio

        self.module = labelstudio
        self.client = labelstudio.connect(url, api_key)

    def _fn(self, name):
        meth = getattr(self.client, name, None)
        if callable(meth):
            return meth
        fn = getattr(self.module, name, None)
        if callable(fn):
            return lambda *a, **k: fn(self.client, *a, **k)
        return None

    def list_tasks(self, project_id: int, fields: str = "task_only") -> list[dict] | None:
        """Tasks as dicts (``id``, ``data``, ``is_labeled``; ``annotations`` with fields="all")."""
        fn = self._fn("list_tasks")
        if fn is not None:
            return [t if isinstance(t, dict) else _task_dict(t) for t in fn(project_id, fields=fields)]
        tasks_api = getattr(self.client, "tasks", None)  # a label_studio_sdk.LabelStudio client
        if tasks_api is not None and hasattr(tasks_api, "list"):
            return [_task_dict(t) for t in tasks_api.list(project=project_id, fields=fields)]
        return None

    def push_predictions(self, project_id: int, predictions: dict, model_version: str):
        return self._fn("push_predictions")(project_id, predictions, model_version)

    def set_model_version(self, project_id: int, version: str):
        return self._fn("set_model_version")(project_id, version)


def _task_dict(t) -> dict:
    if hasattr(t, "model_dump"):
        return t.model_dump(mode="json")
    return {"id": getattr(t, "id", None), "data": getattr(t, "data", None) or {},
            "is_labeled": getattr(t, "is_labeled", False),
            "annotations": getattr(t, "annotations", None) or []}


def open_label_studio(url: str, api_key: str):
    """Factory used by the rebuild job (tests replace it with a fake)."""
    return LabelStudioAPI(url, api_key)


def refresh_label_studio(redis_client: redis.Redis, ws: Workspace, snap: IndexSnapshot,
                         job_id: str | None = None, lock_timeout: float = 600) -> dict:
    """Push predictions of the current index for every not-yet-annotated task, then point the
    project's ``model_version`` at it. Returns what was done (for the rebuild stats)."""
    conn = ls_connection(redis_client, ws)
    if conn is None:
        return {"ls": "skipped: no Label Studio connection"}
    store = IndexStore(redis_client, ws)
    lock = redis_client.lock(pkey(ws.name, "ls", "lock"), timeout=lock_timeout,
                             blocking_timeout=lock_timeout)
    with lock:
        current = store.current_version()
        if current != snap.version:
            log.info(kv("ls.skip", project=ws.name, job=job_id, version=snap.version,
                        current=current, why="superseded"))
            return {"ls": f"skipped: superseded by v{current}"}
        t0 = time.perf_counter()
        try:
            api = open_label_studio(conn["url"], conn["api_key"])
            tasks = api.list_tasks(conn["project_id"])
        except Exception as exc:
            raise LabelStudioPushError(
                f"index {snap.model_version} of {ws.name!r} is published, but Label Studio at "
                f"{conn['url']} (project {conn['project_id']}) could not be reached to list "
                f"tasks: {type(exc).__name__}: {exc}") from exc
        source = "label_studio"
        if tasks is None:
            tasks, source = TaskRegistry(redis_client, ws.name).tasks(), "registry"
        pairs = PairStore(redis_client, ws.name)
        annotated = pairs.annotated_task_ids()
        from_name, to_name = label_fields(redis_client, ws)
        preds, unknown = {}, 0
        for task in tasks:
            tid = task.get("id")
            if tid is None or int(tid) in annotated or task.get("is_labeled"):
                continue
            try:
                preds[int(tid)] = task_prediction(snap, task, from_name, to_name)
            except (UnknownItem, ValueError):
                unknown += 1
        try:
            if preds:
                api.push_predictions(conn["project_id"], preds, snap.model_version)
            api.set_model_version(conn["project_id"], snap.model_version)
        except Exception as exc:
            raise LabelStudioPushError(
                f"index {snap.model_version} of {ws.name!r} is published, but pushing {len(preds)} "
                f"predictions / the model version to Label Studio at {conn['url']} (project "
                f"{conn['project_id']}) failed: {type(exc).__name__}: {exc}") from exc
        push_s = time.perf_counter() - t0
    log.info(kv("ls.pushed", project=ws.name, job=job_id, version=snap.model_version,
                tasks=len(preds), skipped_unknown=unknown, source=source, s=push_s))
    return {"ls": "pushed", "ls_tasks": len(preds), "ls_unknown": unknown, "ls_task_source": source,
            "push_s": round(push_s, 4)}


__all__ = ["NONE_CHOICE", "LabelStudioPushError", "task_prediction", "refresh_label_studio", "label_fields",
           "choices_fields", "ls_connection", "open_label_studio", "UnknownItem"]
