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

The score does not depend on the task's option list: it is the item's similarity to its best
match among *all* items of the other modality, so tasks whose options are older than the index are
still ordered by how sure the index is about their item. The proposed choice is the best of the
task's own options (Label Studio only pre-selects a choice that is one of them).

The push (``refresh_label_studio``) runs only when the project is linked to a Label Studio project
and a URL and API key are known, and only for the index that is still current: it holds a Redis
lock per project, so two racing workers cannot leave Label Studio's ``model_version`` on the older
index. Label Studio stores predictions one request at a time (~0.1-0.2 s each), so the push is
prioritised:

1. the ``$XMODAL_LS_FIRST`` (default 3) open tasks with the lowest scores -- the ones "Uncertainty
   sampling" serves next -- get their options re-ranked by the new index (top ``candidates``; the
   paste-an-id field of the label config still reaches any item) and their predictions (top-1 =
   first option), then the project's ``model_version`` flips to the new index: from here on
   ``/next/`` serves by the new scores (it only considers tasks with a prediction of that version),
   and this is when the label counts as having reached Label Studio;
2. the other open tasks get their predictions in chunks, ``$XMODAL_LS_PARALLEL`` (default 4)
   requests at a time, stopping early when a newer rebuild is queued (its index supersedes this one
   and it pushes its own first batch sooner).
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

import redis

from workers.logfmt import kv
from workers.queueing import flag_key
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
        top = ranking[0][0]
        score = item_certainty(snap, item_id)
        result = [{"from_name": from_name, "to_name": to_name, "type": "choices",
                   "value": {"choices": [top]}}]
    else:
        result, score = [], snap.medoid_priority(item_id)
    return {"result": result, "score": round(float(score), 6), "model_version": snap.model_version}


def item_certainty(snap: IndexSnapshot, item_id: str) -> float:
    """Similarity of an item of the select modality to its best match among all candidates."""
    best = snap.rank(snap.select, str(item_id), None, k=1)
    return best[0][1] if best else 0.0


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
        # each rebuild (a retry too) pushes a version number of its own: no duplicate check needed
        return self._fn("push_predictions")(project_id, predictions, model_version,
                                            parallel=ls_parallel(), skip_existing=False)

    def update_tasks_data(self, project_id: int, data_by_task_id: dict) -> int:
        return self._fn("update_tasks_data")(data_by_task_id, parallel=ls_parallel())

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


def ls_first() -> int:
    """``$XMODAL_LS_FIRST``: open tasks pushed (options re-ranked) before ``model_version`` flips."""
    return max(1, int(os.environ.get("XMODAL_LS_FIRST", "3")))


def ls_parallel() -> int:
    """``$XMODAL_LS_PARALLEL``: requests in flight to Label Studio (its dev server overlaps ~4)."""
    return max(1, int(os.environ.get("XMODAL_LS_PARALLEL", "4")))


class OptionRanker:
    """Re-ranked ``data.options`` for tasks of the workspace, by an index with signal."""

    def __init__(self, ws: Workspace, snap: IndexSnapshot):
        from xmodal import bootstrap

        self.ws, self.snap, self.bootstrap = ws, snap, bootstrap
        self.n = int(ws.config.get("candidates") or 10)
        self._urls = self._texts = None

    def new_data(self, task: dict) -> dict | None:
        """The task's data with options re-ranked by the index, or None if they already are."""
        data = task.get("data") or {}
        ranked = self.bootstrap.ranked_candidates(self.snap, self.ws.select, str(data["item_id"]), [],
                                                  self.n)
        if not ranked or option_values(data.get("options")) == ranked:
            return None
        if self.ws.select == "image":
            if self._texts is None:
                self._texts = dict(zip(self.ws.ids("text"), self.ws.contents("text")))
        elif self._urls is None:
            ls = self.ws.config["label_studio"]
            self._urls = self.bootstrap.ImageURLs(self.ws, ls.get("images") or "inline",
                                                  self.bootstrap.document_root(ls.get("document_root")))
        return dict(data, options=self.bootstrap.task_options(self.ws, ranked, self._urls, self._texts))


def refresh_label_studio(redis_client: redis.Redis, ws: Workspace, snap: IndexSnapshot,
                         job_id: str | None = None, lock_timeout: float = 600,
                         on_ready: Callable[[dict], None] | None = None) -> dict:
    """Push predictions of the current index for every not-yet-annotated task, the next-served ones
    first with re-ranked options, and point the project's ``model_version`` at it (see the module
    doc). ``on_ready(info)`` is called right after the flip. Returns what was done (for the stats)."""
    conn = ls_connection(redis_client, ws)
    if conn is None:
        return {"ls": "skipped: no Label Studio connection"}
    store = IndexStore(redis_client, ws)
    lock = redis_client.lock(pkey(ws.name, "ls", "lock"), timeout=lock_timeout,
                             blocking_timeout=lock_timeout)
    pid = conn["project_id"]

    def failed(what: str, exc: Exception) -> LabelStudioPushError:
        return LabelStudioPushError(
            f"index {snap.model_version} of {ws.name!r} is published, but {what} Label Studio at "
            f"{conn['url']} (project {pid}) failed: {type(exc).__name__}: {exc}")

    with lock:
        current = store.current_version()
        if current != snap.version:
            log.info(kv("ls.skip", project=ws.name, job=job_id, version=snap.version,
                        current=current, why="superseded"))
            return {"ls": f"skipped: superseded by v{current}"}
        t0 = time.perf_counter()
        try:
            api = open_label_studio(conn["url"], conn["api_key"])
            tasks = api.list_tasks(pid)
        except Exception as exc:
            raise failed("listing the tasks of", exc) from exc
        source = "label_studio"
        if tasks is None:
            tasks, source = TaskRegistry(redis_client, ws.name).tasks(), "registry"
        annotated = PairStore(redis_client, ws.name).annotated_task_ids()
        from_name, to_name = label_fields(redis_client, ws)
        preds, by_id, unknown = {}, {}, 0
        for task in tasks:
            tid = task.get("id")
            if tid is None or int(tid) in annotated or task.get("is_labeled"):
                continue
            try:
                preds[int(tid)] = task_prediction(snap, task, from_name, to_name)
                by_id[int(tid)] = task
            except (UnknownItem, ValueError):
                unknown += 1
        # "Uncertainty sampling" serves the lowest score first
        order = sorted(preds, key=lambda t: (preds[t]["score"], t))
        first, rest = order[:ls_first()], order[ls_first():]

        # 1. the next-served tasks: options re-ranked by this index, predictions, model_version
        new_data = {}
        if snap.has_signal and hasattr(api, "update_tasks_data"):
            ranker = OptionRanker(ws, snap)
            new_data = {t: d for t in first if (d := ranker.new_data(by_id[t])) is not None}
        try:
            if new_data:
                api.update_tasks_data(pid, new_data)
                TaskRegistry(redis_client, ws.name).record(
                    [{"id": t, "data": d} for t, d in new_data.items()])
                for t, d in new_data.items():
                    preds[t] = task_prediction(snap, {"data": d}, from_name, to_name)
            if first:
                api.push_predictions(pid, {t: preds[t] for t in first}, snap.model_version)
            api.set_model_version(pid, snap.model_version)
        except Exception as exc:
            raise failed(f"pushing {len(first)} predictions (after re-ranking the options of "
                         f"{len(new_data)} tasks) and the model version to", exc) from exc
        ready_s = time.perf_counter() - t0
        info = {"ls": "pushed", "ls_tasks": len(first), "ls_options": len(new_data),
                "ls_unknown": unknown, "ls_task_source": source, "push_s": round(ready_s, 4)}
        log.info(kv("ls.ready", project=ws.name, job=job_id, version=snap.model_version,
                    tasks=len(first), options=len(new_data), s=ready_s))
        if on_ready is not None:
            on_ready(dict(info))

        # 2. everything else, unless a newer index is on its way
        chunk = 2 * ls_parallel()
        pushed, stopped = 0, None
        for i in range(0, len(rest), chunk):
            if redis_client.exists(flag_key(ws.name)) or store.current_version() != snap.version:
                stopped = "newer labels"
                break
            part = rest[i:i + chunk]
            try:
                api.push_predictions(pid, {t: preds[t] for t in part}, snap.model_version)
            except Exception as exc:
                raise failed(f"pushing {len(part)} more predictions to", exc) from exc
            pushed += len(part)
        push_s = time.perf_counter() - t0
    log.info(kv("ls.pushed", project=ws.name, job=job_id, version=snap.model_version,
                tasks=len(first) + pushed, options=len(new_data), skipped_unknown=unknown,
                stopped=stopped, source=source, s=push_s))
    return dict(info, ls_tasks=len(first) + pushed, ls_rest=f"stopped: {stopped}" if stopped else "done",
                push_all_s=round(push_s, 4))


__all__ = ["NONE_CHOICE", "LabelStudioPushError", "task_prediction", "item_certainty",
           "refresh_label_studio", "label_fields", "choices_fields", "ls_connection",
           "open_label_studio", "UnknownItem"]
