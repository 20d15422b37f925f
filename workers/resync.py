"""The resync job: Label Studio's annotations are the source of truth, webhooks only a fast path.

Label Studio delivers a webhook once, synchronously, with a 1 s timeout; a slow or unreachable
backend loses the event. ``resync(project)`` lists every task with its annotations and replays
them through the same validation as ``/webhook`` (``xmodal.labelstudio.annotations.apply_annotation``), so:

- a missed CREATED/UPDATED is stored (an older listing never overrides a newer webhook: the pair
  store ignores events older than what it holds);
- a missed ANNOTATIONS_DELETED / TASKS_DELETED is applied: a stored annotation absent from the
  listing is tombstoned, but only if it arrived before the listing started (a label posted while
  the listing runs is not mistaken for a deleted one);

and then enqueues a rebuild. The report (the job's result, the ``resync.done`` log line and
``xmodal project resync``) has counts and the annotation ids it ``added`` (stored or changed) and
``removed``. The backend enqueues a resync on ``START_TRAINING`` (Label Studio's "Start Training"
button) when the project has a Label Studio connection.
"""

from __future__ import annotations

import logging
import time

import redis

from xmodal.errors import ApiError, DataError
from xmodal.jobs.queueing import enqueue_rebuild
from xmodal.labelstudio import connection
from xmodal.labelstudio.annotations import apply_annotation, parse_annotation_event
from xmodal.labelstudio.config import label_fields
from xmodal.labelstudio.tasks import TaskRegistry
from xmodal.logfmt import kv
from xmodal.project.pairs import PairStore
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import get_redis

log = logging.getLogger(__name__)

RESYNC_FUNC = "workers.resync.resync"
REPORT_IDS = 1000   # annotation ids listed in the report (the counts are always complete)


def resync(project: str, redis_client: redis.Redis | None = None, rebuild: bool = True) -> dict:
    from rq import get_current_job

    job = get_current_job()
    job_id = job.id if job is not None else None
    r = redis_client or (job.connection if job is not None else get_redis())
    ws = Workspace.for_project(project)
    if not ws.exists():
        raise DataError(f"resync {project}: no workspace at {ws.root}")
    conn = connection.ls_connection(r, ws)
    if conn is None:
        raise DataError(f"resync {project}: the project has no Label Studio connection (link it and "
                        "set LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, or connect the backend in "
                        "Label Studio so that /setup tells it)")
    pairs, registry = PairStore(r, project), TaskRegistry(r, project)
    from_name, _ = label_fields(r, ws)
    started = time.time()
    api = connection.open_label_studio(conn["url"], conn["api_key"])
    tasks = api.list_tasks(conn["project_id"], fields="all")
    if tasks is None:
        raise DataError(f"resync {project}: the Label Studio client cannot list tasks")
    tasks = _checked_listing(project, conn, tasks)
    _check_overlap(project, conn, pairs, tasks)
    registry.record(tasks)
    counts = {"stored": 0, "same": 0, "stale": 0, "tombstoned": 0, "invalid": 0, "deleted": 0}
    seen_annotations, seen_tasks, changed = set(), set(), False
    added, removed = [], []
    for task in tasks:
        seen_tasks.add(int(task["id"]))
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or not _is_id(ann.get("id")):
                counts["invalid"] += 1
                continue
            seen_annotations.add(int(ann["id"]))
            payload = {"action": "ANNOTATION_UPDATED", "annotation": dict(ann, task=task["id"]),
                       "task": task}
            try:
                out = apply_annotation(pairs, registry, ws, parse_annotation_event(payload, from_name),
                                       received_at=started)
            except ApiError as exc:
                counts["invalid"] += 1
                log.warning(kv("resync.invalid", project=project, job=job_id, annotation=ann.get("id"),
                               error=exc.message))
                continue
            counts[out["status"]] = counts.get(out["status"], 0) + 1
            changed |= out["pair_changed"]
            if out["status"] == "stored":
                added.append(int(ann["id"]))
    for ann_id, rec in pairs.records().items():
        if rec.get("state") == "deleted" or ann_id in seen_annotations:
            continue
        if float(rec.get("received_at") or 0) >= started:
            continue  # arrived while listing: not evidence of a deletion
        if pairs.delete(ann_id) == "deleted":
            counts["deleted"] += 1
            removed.append(int(ann_id))
            changed |= rec.get("state") == "pair"
    result = {"project": project, "job_id": job_id, "tasks": len(tasks),
              "annotations": len(seen_annotations), "changed": changed, **counts,
              "added": added[:REPORT_IDS], "removed": removed[:REPORT_IDS],
              "seconds": round(time.time() - started, 3)}
    if rebuild:
        result["rebuild_job"], _ = enqueue_rebuild(r, project, "resync")
    log.info(kv("resync.done", **{k: v for k, v in result.items() if k not in ("added", "removed")},
                added_ids=",".join(map(str, added[:20])), removed_ids=",".join(map(str, removed[:20]))))
    return result


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked_listing(project: str, conn: dict, tasks) -> list[dict]:
    """The listing, if it is a list of tasks with ids; DataError before anything is changed
    otherwise (a fuzzing run's fake Label Studio answered ``{}`` for every task: TypeErrors)."""
    bad = next((t for t in tasks if not isinstance(t, dict) or not _is_id(t.get("id"))), None) \
        if isinstance(tasks, list) else tasks
    if bad is not None:
        raise DataError(f"resync {project}: Label Studio at {conn['url']} answered the task list of "
                        f"project {conn['project_id']} with {str(bad)[:120]!r}, not tasks with ids: "
                        "nothing changed")
    return tasks


def _check_overlap(project: str, conn: dict, pairs: PairStore, tasks: list[dict]) -> None:
    """A resync tombstones every stored annotation the listing lacks. An empty listing, or one
    that shares none of three or more tasks with the stored annotations (another or a recreated
    Label Studio project, a proxy's empty answer), would delete them all: refuse instead (a
    fuzzing run's fake Label Studio answered an empty list and 16 of 16 pairs went)."""
    live = {int(rec["task_id"]) for rec in pairs.records().values()
            if rec.get("state") != "deleted" and rec.get("task_id") is not None}
    listed = {int(t["id"]) for t in tasks}
    # one or two: tasks deleted in Label Studio while the webhook was lost, as likely as not
    if live and (not listed or (len(live) >= 3 and not live & listed)):
        raise DataError(f"resync {project}: Label Studio at {conn['url']} listed {len(listed)} tasks for "
                        f"project {conn['project_id']}, none of the {len(live)} tasks the stored "
                        "annotations belong to: nothing deleted. Is it the project's Label Studio and "
                        "project id (LABEL_STUDIO_URL, xmodal project list)?")
