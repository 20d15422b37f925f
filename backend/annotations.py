"""One annotation event -> the pair store, after validation (shared by /webhook and the resync job).

Validation happens before any write, so a refused event (409/422) never changes a stored pair.
"""

from __future__ import annotations

import logging
import time

from backend.errors import ApiError
from backend.webhook import AnnotationEvent
from workers.logfmt import kv
from workers.task_registry import TaskRegistry
from xmodal.pairs import PairStore
from xmodal.workspace import Workspace, other

log = logging.getLogger(__name__)


def apply_annotation(pairs: PairStore, tasks: TaskRegistry, ws: Workspace, ev: AnnotationEvent,
                     received_at: float | None = None) -> dict:
    """Store the pair (or the "none") an annotation names. Returns what happened, including
    ``pair_changed`` (whether the set of live pairs changed: the caller enqueues a rebuild).

    Raises ApiError: 409 for a task deleted in Label Studio, 422 for an unknown task or an item
    that is not in the project."""
    project = ws.name
    if pairs.is_task_deleted(ev.task_id):
        raise ApiError(409, f"task {ev.task_id} was deleted in Label Studio; annotation "
                            f"{ev.annotation_id} is not stored", task=ev.task_id)
    item_id = ev.item_id
    if item_id is None:
        known = tasks.get(ev.task_id)
        if known is None:
            raise ApiError(422, f"unknown task {ev.task_id}: the payload has no task.data.item_id "
                                "and the backend never saw this task", task=ev.task_id)
        item_id = known["item_id"]
    select = ws.select
    if item_id not in ws.row_of(select):
        raise ApiError(422, f"task {ev.task_id} names {select} {item_id!r}, which is not in "
                            f"project {project!r}", task=ev.task_id, item=item_id)
    received = received_at or time.time()
    prev = pairs.get(ev.annotation_id)
    kind, choice, warning = ev.kind, ev.choice, None
    if kind == "pair" and ev.source == "textarea" and choice not in ws.row_of(other(select)):
        # "none of these" + a mistyped id: the annotator's "none" still holds
        warning = (f"pasted {other(select)} id {choice!r} is not in project {project!r}; "
                   "stored as 'none of these'")
        log.warning(kv("annotation.unknown_pasted_id", project=project,
                       annotation=ev.annotation_id, item=choice))
        kind, choice = "none", None
    if kind == "pair":
        if choice not in ws.row_of(other(select)):
            raise ApiError(422, f"annotation {ev.annotation_id} names {other(select)} {choice!r}, "
                                f"which is not in project {project!r}",
                           annotation=ev.annotation_id, item=choice)
        image_id, text_id = (item_id, choice) if select == "image" else (choice, item_id)
        status = pairs.put(ev.annotation_id, ev.task_id, image_id, text_id, ev.updated_at,
                           received_at=received)
    else:
        image_id = text_id = None
        status = pairs.mark_none(ev.annotation_id, ev.task_id, ev.updated_at, received_at=received)
    if ev.task is not None:
        tasks.record([ev.task])
    out = {"status": status, "annotation_id": ev.annotation_id, "task_id": ev.task_id,
           "kind": kind, "image_id": image_id, "text_id": text_id,
           "pair_changed": status == "stored" and (kind == "pair" or (prev or {}).get("state") == "pair")}
    if warning:
        out["warning"] = warning
    return out
