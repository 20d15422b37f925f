"""Pushing an index into Label Studio: task pages, predictions, the model version.

The push (:func:`refresh_label_studio`) runs only when the project is linked to a Label Studio
project and a URL and API key are known, and only for the index that is still current: it holds a
Redis lock per project, so two racing workers cannot leave Label Studio's ``model_version`` on the
older index. Label Studio stores predictions one request at a time (~0.1-0.2 s each), so the push
is prioritised:

1. the tasks served next get their whole data rebuilt with options ranked by the new index, and
   their predictions, then the project's ``model_version`` flips to the new index: from here on
   ``/next/`` serves by the new scores (it only considers tasks with a prediction of that version),
   and this is when the label counts as having reached Label Studio. "Served next" depends on how
   the annotator opened the stream: "Uncertainty sampling" takes the lowest scores, a labelling
   stream started from a Data Manager tab follows the tab's order (by default the task id; measured
   with a real browser on 1.23.2). So the first batch is the ``$XMODAL_LS_FIRST`` (default 1)
   lowest-scored open tasks and the ``$XMODAL_LS_FIRST`` first by id. Each carries a whole page
   (every text of a smaller project), 0.3-0.5 s apiece for a busy Label Studio: in the browser
   test, label -> flip took 0.66-1.48 s with 1 (0 of 11 served tasks behind) and 1.4-2.7 s with
   2 (3-4 of 11 behind). A team with several annotators at once can raise it (each annotator's
   next task is one of the lowest-scored), or rely on step 2, which pushes them next;
2. every other open task gets its data and prediction in chunks, ``$XMODAL_LS_PARALLEL``
   (default 4) requests at a time, so that whatever order serves a task its page is the newest,
   stopping early when a newer rebuild is queued (its index supersedes this one and it pushes its
   own first batch sooner). The rest takes the two orders in turns (:func:`serving_order`); its
   first chunk (the next-lowest score and the next by id: what is served after the task now on
   screen) goes at once, the others after ``$XMODAL_LS_REST_DELAY_S`` (default 1) quiet seconds, cut
   short by any other job waiting on the queue: while a person labels quickly, the next label's
   first batch must not queue in Label Studio behind these page PATCHes;
Each task has **one** prediction, updated in place for every new index
(:mod:`xmodal.labelstudio.prediction_log`).

The tasks come from the task registry (:class:`~xmodal.labelstudio.tasks.TaskRegistry`), filled at
import and from every webhook; Label Studio's task list is read only when the registry is empty.

``xmodal project create`` / ``grow`` use :func:`push_current_predictions` and
:func:`refresh_task_options` (every open task, under the same lock).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis

from xmodal import settings
from xmodal.index.snapshot import IndexSnapshot
from xmodal.index.store import IndexStore, load_current
from xmodal.jobs.queueing import flag_key, get_queue
from xmodal.labelstudio import connection
from xmodal.labelstudio.client import describe_error
from xmodal.labelstudio.config import label_fields
from xmodal.labelstudio.prediction_log import PredictionLog
from xmodal.labelstudio.predictions import UnknownItem, task_prediction
from xmodal.labelstudio.tasks import OptionRanker, TaskRegistry
from xmodal.logfmt import kv
from xmodal.project.medoids import candidate_pool
from xmodal.project.pairs import PairStore
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)


class LabelStudioPushError(RuntimeError):
    """The index was published but Label Studio could not be updated (RQ retries the job)."""


def _others_waiting(redis_client: redis.Redis) -> bool:
    """Whether another job waits on the queue of the job running this (none outside a worker)."""
    from rq import get_current_job

    job = get_current_job()
    return job is not None and get_queue(redis_client, job.origin).count > 0


# -- the push of a rebuild -----------------------------------------------------------------------

def _open_tasks(redis_client, ws: Workspace, api, pid: int) -> tuple[list[dict], str]:
    registry = TaskRegistry(redis_client, ws.name)
    tasks = registry.tasks()
    if tasks:
        return tasks, "registry"
    tasks = api.list_tasks(pid) or []
    registry.record(tasks)
    return tasks, "label_studio"


def refresh_label_studio(redis_client: redis.Redis, ws: Workspace, snap: IndexSnapshot,
                         job_id: str | None = None, lock_timeout: float = 600,
                         on_ready: Callable[[dict], None] | None = None) -> dict:
    """Push the current index into Label Studio (see the module doc). ``on_ready(info)`` is called
    right after the flip. Returns what was done (for the stats)."""
    conn = connection.ls_connection(redis_client, ws)
    if conn is None:
        return {"ls": "skipped: no Label Studio connection"}
    store = IndexStore(redis_client, ws)
    lock = redis_client.lock(pkey(ws.name, "ls", "lock"), timeout=lock_timeout,
                             blocking_timeout=lock_timeout)
    pid = conn["project_id"]
    registry, log_ = TaskRegistry(redis_client, ws.name), PredictionLog(redis_client, ws.name)

    def failed(what: str, exc: Exception) -> LabelStudioPushError:
        return LabelStudioPushError(
            f"index {snap.model_version} of {ws.name!r} is published, but {what} Label Studio at "
            f"{conn['url']} (project {pid}) failed: {describe_error(exc)}")

    with lock:
        current = store.current_version()
        if current != snap.version:
            log.info(kv("ls.skip", project=ws.name, job=job_id, version=snap.version,
                        current=current, why="superseded"))
            return {"ls": f"skipped: superseded by v{current}"}
        t0 = time.perf_counter()
        try:
            api = connection.open_label_studio(conn["url"], conn["api_key"])
            tasks, source = _open_tasks(redis_client, ws, api, pid)
        except Exception as exc:
            raise failed("listing the tasks of", exc) from exc
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
        if not preds:   # every task labelled: nothing to push, and Label Studio refuses a
            #            model_version no prediction carries (HTTP 400), which would retry forever
            log.info(kv("ls.skip", project=ws.name, job=job_id, version=snap.version, why="no open task"))
            return {"ls": "skipped: no open task", "ls_task_source": source}
        first, rest = serving_order({t: p["score"] for t, p in preds.items()}, settings.get("XMODAL_LS_FIRST"))
        ranker = OptionRanker(ws, snap, candidate_pool(ws))
        timing: dict[str, float] = {}

        def whole(t: int) -> dict:
            """The task as the ranker rewrites it: the registry's copy, or Label Studio's own data
            when the registry did not keep the task's fields (a ``partial`` record)."""
            return {"id": t, "data": api.task_data(t)} if by_id[t].get("partial") else by_id[t]

        def push(part: list[int], flip: bool = False) -> int:
            """Rebuild the data of ``part`` with this index's ranking and push its predictions
            (then, with ``flip``, the project's model_version), both at once: the prediction names
            the best of the new options, known here, and the flip needs only the predictions.
            Returns how many tasks' data changed."""
            t_rank = time.perf_counter()
            new_data = {t: d for t in part if (d := ranker.new_data(whole(t))) is not None}
            timing["rank_s"] = round(timing.get("rank_s", 0) + time.perf_counter() - t_rank, 4)
            for t, d in new_data.items():
                preds[t] = task_prediction(snap, {"data": d}, from_name, to_name, score=preds[t]["score"])

            def predictions_then_flip():
                spent = {"predictions_s": _timed(log_.push, api, pid, {t: preds[t] for t in part},
                                                 snap.model_version)}
                if flip:
                    spent["flip_s"] = _timed(api.set_model_version, pid, snap.model_version)
                return spent

            with ThreadPoolExecutor(max_workers=2) as pool:
                pending = [pool.submit(predictions_then_flip)]
                if new_data:
                    pending.append(pool.submit(
                        lambda: {"data_s": _timed(api.update_tasks_data, pid, new_data)}))
                for f in pending:
                    for k, v in f.result().items():
                        timing[k] = round(timing.get(k, 0) + v, 4)
            if new_data:
                registry.record([{"id": t, "data": d} for t, d in new_data.items()])
            return len(new_data)

        # 1. the tasks served next: data rebuilt with options ranked by this index, predictions,
        #    model_version
        timing["prep_s"] = round(time.perf_counter() - t0, 4)   # the tasks, their predictions, the ranker
        try:
            reranked = push(first, flip=True)
            first_timing = dict(timing)
        except Exception as exc:
            raise failed(f"pushing {len(first)} predictions (after rebuilding the data of "
                         f"{len(first)} tasks) and the model version to", exc) from exc
        ready_s = time.perf_counter() - t0
        info = {"ls": "pushed", "ls_tasks": len(first), "ls_options": reranked,
                "ls_unknown": unknown, "ls_task_source": source, "push_s": round(ready_s, 4),
                "ls_first_data_s": first_timing.get("data_s"),
                "ls_first_predictions_s": first_timing.get("predictions_s"),
                "ls_flip_s": first_timing.get("flip_s"), "ls_prep_s": first_timing.get("prep_s"),
                "ls_rank_s": first_timing.get("rank_s")}
        log.info(kv("ls.ready", project=ws.name, job=job_id, version=snap.model_version,
                    tasks=len(first), options=reranked, s=ready_s, data_s=first_timing.get("data_s"),
                    predictions_s=first_timing.get("predictions_s"), flip_s=first_timing.get("flip_s"),
                    prep_s=first_timing.get("prep_s"), rank_s=first_timing.get("rank_s")))
        if on_ready is not None:
            on_ready(dict(info))

        # 2. every other open task, its page too (whatever order serves it), unless a newer index
        #    is on its way
        chunk = max(1, settings.get("XMODAL_LS_PARALLEL") // 2)   # small: a newer rebuild waits for at most one chunk

        def superseded() -> bool:
            return bool(redis_client.exists(flag_key(ws.name))) or store.current_version() != snap.version

        pushed, stopped = 0, None
        for i in range(0, len(rest), chunk):
            if i == chunk:   # the next served went first; now a quiet moment
                quiet_until = time.monotonic() + settings.get("XMODAL_LS_REST_DELAY_S")
                while time.monotonic() < quiet_until and not superseded() \
                        and not _others_waiting(redis_client):
                    time.sleep(0.05)
            if superseded():
                stopped = "newer labels"
                break
            part = rest[i:i + chunk]
            try:
                reranked += push(part)
            except Exception as exc:
                raise failed(f"pushing {len(part)} more tasks to", exc) from exc
            pushed += len(part)
        push_s = time.perf_counter() - t0
    log.info(kv("ls.pushed", project=ws.name, job=job_id, version=snap.model_version,
                tasks=len(first) + pushed, options=reranked,
                skipped_unknown=unknown, stopped=stopped, source=source, s=push_s))
    return dict(info, ls_tasks=len(first) + pushed, ls_options_all=reranked,
                ls_rest=f"stopped: {stopped}" if stopped else "done", push_all_s=round(push_s, 4))


def serving_order(scores: dict[int, float], n_first: int) -> tuple[list[int], list[int]]:
    """(first batch, the rest) of the open tasks ``{task id: score}``, in the order Label Studio
    may serve them. "Uncertainty sampling" takes the lowest score, a labelling stream opened from a
    Data Manager tab the tab's order (by default the task id), so both orders take turns: the first
    batch is the ``n_first`` lowest-scored and the ``n_first`` first by id, the rest starts with
    the next of each (what is served after the task now on screen: in the browser test, 2 of 11
    served tasks were behind when the rest went by score alone, the next by id coming last)."""
    by_score = sorted(scores, key=lambda t: (scores[t], t))
    by_id = sorted(scores)
    first = list(dict.fromkeys(by_score[:n_first] + by_id[:n_first]))
    taken = set(first)
    turns = (t for pair in zip(by_score, by_id) for t in pair)
    return first, [t for t in dict.fromkeys(turns) if t not in taken]


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# -- project create / grow -----------------------------------------------------------------------

def push_current_predictions(client, r, ws, pid: int) -> tuple[str | None, int]:
    """Predictions of the current index for every unlabelled task, then the project's
    model_version = the index's version; a task's prediction is updated in place. Under the same
    Redis lock as the workers' push, so a rebuild finishing meanwhile cannot be overwritten by an
    older version."""
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
        log_ = PredictionLog(r, ws.name)
        pushed = client.push_predictions(pid, preds, snap.model_version, skip_existing=False,
                                         existing=log_.ids(preds)) if preds else {}
        log_.record(pushed)
        client.set_model_version(pid, snap.model_version)
        return snap.model_version, len(pushed)


def refresh_task_options(client, r, ws, pid: int, snap=None) -> int:
    """Rebuild the data of every unlabelled task with options ranked by the current index (PATCH);
    the caller pushes their predictions again (they named options of the old list). Returns how
    many tasks changed."""
    snap = snap if snap is not None else load_current(ws, r)
    if snap is None or not snap.has_signal:
        return 0
    annotated = PairStore(r, ws.name).annotated_task_ids()
    ranker = OptionRanker(ws, snap, candidate_pool(ws))
    changed = {}
    for task in client.list_tasks(pid):
        data = task.get("data") or {}
        if task.get("is_labeled") or int(task["id"]) in annotated or data.get("item_id") is None:
            continue
        new = ranker.new_data(task)
        if new is not None:
            changed[int(task["id"])] = new
    if changed:
        client.update_tasks_data(changed)
        TaskRegistry(r, ws.name).record([{"id": t, "data": d} for t, d in changed.items()])
    return len(changed)
