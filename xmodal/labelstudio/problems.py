"""A problem (an annotation that could not become a pair) shown on its task: :func:`flag_problems`
sets ``data.problem`` (a line of the labelling page and a column of the Data Manager), and clears
it once the annotation is fixed."""

from __future__ import annotations

import contextlib
import logging

import redis

from xmodal.labelstudio import connection
from xmodal.labelstudio.tasks import TaskRegistry
from xmodal.logfmt import kv
from xmodal.project.pairs import PairStore
from xmodal.project.workspace import Workspace

log = logging.getLogger(__name__)


def flag_problems(redis_client: redis.Redis, ws: Workspace) -> dict:
    """Show each problem on its task in Label Studio (``data.problem``), and clear the flag of a
    task whose annotation is no longer a problem. Returns what changed."""
    conn = connection.ls_connection(redis_client, ws)
    if conn is None:
        return {"flags": "skipped: no Label Studio connection"}
    records = PairStore(redis_client, ws.name).records().values()
    want: dict[int, str] = {}
    for rec in sorted(records, key=lambda r: r.get("updated_at") or 0):
        if rec.get("task_id") is None or rec.get("state") == "deleted":
            continue
        tid = int(rec["task_id"])
        if rec.get("state") == "problem":
            want[tid] = f"⚠ xmodal could not use the last answer: {rec.get('message')}"
        else:
            want.pop(tid, None)
    registry = TaskRegistry(redis_client, ws.name)
    shown = {t["id"]: (t["data"].get("problem") or "") for t in registry.tasks()}
    todo = {t: want.get(t, "") for t in set(shown) | set(want) if shown.get(t, "") != want.get(t, "")}
    if not todo:
        return {"flags": "unchanged"}
    api = connection.open_label_studio(conn["url"], conn["api_key"])
    changed = {}
    for tid, text in todo.items():
        with contextlib.suppress(Exception):   # a task deleted meanwhile: nothing to flag
            changed[tid] = dict(api.task_data(tid), problem=text)
    if changed:
        api.update_tasks_data(conn["project_id"], changed)
        registry.record([{"id": t, "data": d} for t, d in changed.items()])
    log.info(kv("ls.flags", project=ws.name, flagged=sum(1 for v in todo.values() if v),
                cleared=sum(1 for v in todo.values() if not v)))
    return {"flags": len(changed)}


