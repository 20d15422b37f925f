"""Pushing an index's predictions into Label Studio.

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

``xmodal project create`` / ``grow`` use :func:`push_current_predictions` and
:func:`refresh_task_options` (every open task, under the same lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

import redis

from xmodal.index.pairs import PairStore
from xmodal.index.store import IndexSnapshot, IndexStore
from xmodal.index.workspace import Workspace
from xmodal.jobs.queueing import flag_key
from xmodal.labelstudio.client import connect
from xmodal.labelstudio.config import label_fields
from xmodal.labelstudio.images import ImageURLs, document_root
from xmodal.labelstudio.predictions import UnknownItem, task_prediction
from xmodal.labelstudio.tasks import OptionRanker, TaskRegistry, ranked_candidates, task_data
from xmodal.logfmt import kv
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)



def push_current_predictions(client, r, ws, pid: int) -> tuple[str | None, int]:
    """Predictions of the current index for every unlabelled task, then the project's
    model_version = the index's version. Under the same Redis lock as the workers' push, so a
    rebuild finishing meanwhile cannot be overwritten by an older version."""
    from xmodal.index.pairs import PairStore
    from xmodal.index.store import load_current
    from xmodal.labelstudio.config import label_fields
    from xmodal.labelstudio.predictions import UnknownItem, task_prediction
    from xmodal.redis_conn import pkey

    with r.lock(pkey(ws.name, "ls", "lock"), timeout=600, blocking_timeout=600):
        snap = load_current(ws, r)
        if snap is None:
            return None, 0
        annotated = PairStore(r, ws.name).annotated_task_ids()
        from_name, to_name = label_fields(r, ws)
        preds = {}
        for task in client.list_tasks(pid):
            if task.get("is_labeled") or int(task["id"]) in annotated:
                continue
            with contextlib.suppress(UnknownItem, ValueError):
                preds[int(task["id"])] = task_prediction(snap, task, from_name, to_name)
        pushed = client.push_predictions(pid, preds, snap.model_version) if preds else 0
        client.set_model_version(pid, snap.model_version)
        return snap.model_version, pushed


def refresh_task_options(client, r, ws, pid: int, n_candidates: int, urls: ImageURLs | None = None,
                         snap=None) -> int:
    """Re-rank the options of unlabelled tasks with the current index (PATCH their data) and drop
    their predictions of that version (the caller pushes them again: they named old options).

    One request per changed task, so the rebuild job should call it only for the next few tasks;
    ``xmodal project create``/``grow`` call it for all. Returns how many tasks changed."""
    from xmodal.index.pairs import PairStore
    from xmodal.index.store import load_current

    snap = snap if snap is not None else load_current(ws, r)
    if snap is None or not snap.has_signal:
        return 0
    annotated = PairStore(r, ws.name).annotated_task_ids()
    mode = ws.config["label_studio"].get("images") or "inline"
    urls = urls or ImageURLs(ws, mode, document_root(ws.config["label_studio"].get("document_root")))
    stale: dict[int, list[int]] = {}
    for p in client.sdk.predictions.list(project=pid):
        if p.model_version == snap.model_version:
            stale.setdefault(int(p.task), []).append(int(p.id))
    changed = 0
    for task in client.list_tasks(pid):
        data = task.get("data") or {}
        if task.get("is_labeled") or int(task["id"]) in annotated or data.get("item_id") is None:
            continue
        item = str(data["item_id"])
        if item not in snap.rows(ws.select):
            continue
        ranked = ranked_candidates(snap, ws.select, item, [], n_candidates)
        old = [o.get("value") for o in data.get("options") or [] if isinstance(o, dict)]
        if old == ranked:
            continue
        new = task_data(ws, item, int(data.get("cluster", 0)), ranked, urls)
        client.sdk.tasks.update(id=int(task["id"]), data=dict(data, **new))
        # its prediction of this version named an option of the old list: push it again
        for prediction_id in stale.get(int(task["id"]), []):
            client.sdk.predictions.delete(id=prediction_id)
        changed += 1
    return changed


# -- one task -------------------------------------------------------------------------------
class LabelStudioPushError(RuntimeError):
    """The index was published but Label Studio could not be updated (RQ retries the job)."""


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
    """What the rebuild's push needs from Label Studio, over :class:`LabelStudioClient` (tests
    stand a recording fake in for it through :func:`open_label_studio`)."""

    def __init__(self, url: str, api_key: str):
        self.client = connect(url, api_key)

    def list_tasks(self, project_id: int, fields: str = "task_only") -> list[dict] | None:
        """Tasks as dicts (``id``, ``data``, ``is_labeled``; ``annotations`` with fields="all");
        None when they cannot be listed (the push falls back on the task registry)."""
        return self.client.list_tasks(project_id, fields=fields)

    def push_predictions(self, project_id: int, predictions: dict, model_version: str):
        # each rebuild (a retry too) pushes a version number of its own: no duplicate check needed
        return self.client.push_predictions(project_id, predictions, model_version,
                                            parallel=ls_parallel(), skip_existing=False)

    def update_tasks_data(self, project_id: int, data_by_task_id: dict) -> int:
        return self.client.update_tasks_data(data_by_task_id, parallel=ls_parallel())

    def set_model_version(self, project_id: int, version: str):
        return self.client.set_model_version(project_id, version)


def open_label_studio(url: str, api_key: str):
    """Factory used by the rebuild job (tests replace it with a fake)."""
    return LabelStudioAPI(url, api_key)


def ls_first() -> int:
    """``$XMODAL_LS_FIRST``: open tasks pushed (options re-ranked) before ``model_version`` flips."""
    return max(1, int(os.environ.get("XMODAL_LS_FIRST", "3")))


def ls_parallel() -> int:
    """``$XMODAL_LS_PARALLEL``: requests in flight to Label Studio (its dev server overlaps ~4)."""
    return max(1, int(os.environ.get("XMODAL_LS_PARALLEL", "4")))


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

