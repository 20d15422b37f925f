"""Label Studio webhook payloads -> validated events (pure functions, no I/O).

Label Studio 1.23 sends (see docs/label-studio-1.23.md): ``ANNOTATION_CREATED`` and
``ANNOTATION_UPDATED`` with ``annotation`` (``id``, ``result``, ``was_cancelled``, ``task``,
``updated_at``...), ``task`` (``id``, ``data``) and ``project`` (object); ``ANNOTATIONS_DELETED``
(plural) with ``annotations: [{"id": ...}]``; ``TASKS_CREATED`` / ``TASKS_DELETED`` with ``tasks``;
``START_TRAINING`` with only ``action`` and ``project``; ``PROJECT_UPDATED`` and others, ignored.

:func:`apply_annotation` then stores one event in the pair store after validation (shared by
/webhook and the resync job); validation happens before any write, so a refused event
(409/422) never changes a stored pair.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from xmodal.errors import ApiError
from xmodal.index.pairs import PairStore
from xmodal.index.workspace import Workspace, other
from xmodal.labelstudio.tasks import NONE_CHOICE, TaskRegistry
from xmodal.logfmt import kv

log = logging.getLogger(__name__)


ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def _int_id(value, what: str) -> int:
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value.strip()):
        return int(value)
    raise ApiError(400, f"{what} must be a non-negative integer id, got {value!r}"[:300])


@dataclass
class AnnotationEvent:
    action: str
    annotation_id: int
    task_id: int
    kind: str                   # "pair" | "none"
    choice: str | None          # the chosen item id (other modality), when kind == "pair"
    source: str | None          # "choices" | "textarea": where the id came from
    item_id: str | None         # the task's item (select modality), from the payload's task
    updated_at: object          # Label Studio's timestamp (ISO string) or None
    task: dict | None           # the payload's task object, when present


def webhook_project(payload: dict) -> int | None:
    """The Label Studio project id of a webhook payload."""
    pid = ls_project_id(payload.get("project"))
    if pid is None and isinstance(payload.get("annotation"), dict):
        pid = ls_project_id(payload["annotation"].get("project"))
    if pid is None and isinstance(payload.get("task"), dict):
        pid = ls_project_id(payload["task"].get("project"))
    return pid


def _values(region: dict, key: str) -> list[str]:
    values = region["value"].get(key)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        raise ApiError(400, f"result value {key!r} of {region.get('from_name')!r} is not a list")
    return [str(v).strip() for v in values if isinstance(v, (str, int)) and str(v).strip()]


def extract_choice(result, from_name: str | None = None) -> tuple[str, str | None, str | None]:
    """What an annotation's result says: ``(kind, id, source)``.

    - a ``choices`` region naming an id (``value.choices[0]``) -> ("pair", id, "choices");
    - a ``textarea`` region with a pasted id (``value.text[0]``) -> ("pair", id, "textarea"), also
      when the choice is "none of these" (``__none__``): the shipped label configs show the text
      area exactly then, for the annotator to paste the right id;
    - "none of these" without a pasted id, or nothing usable -> ("none", None, source).
    The ``choices`` region named ``from_name`` wins over other choices regions.
    """
    if not isinstance(result, list):
        raise ApiError(400, "annotation.result must be a list")
    regions = [r for r in result if isinstance(r, dict) and isinstance(r.get("value"), dict)]
    if from_name:
        regions.sort(key=lambda r: r.get("from_name") != from_name)
    choice = pasted = None
    for region in regions:
        kind = str(region.get("type", "")).lower()
        if choice is None and (kind == "choices" or (not kind and "choices" in region["value"])):
            vals = _values(region, "choices")
            choice = vals[0] if vals else None
        elif pasted is None and (kind == "textarea" or (not kind and "text" in region["value"])):
            vals = _values(region, "text")
            pasted = vals[0] if vals else None
    if choice is not None and choice != NONE_CHOICE:
        return "pair", choice, "choices"
    if pasted is not None and pasted != NONE_CHOICE:
        return "pair", pasted, "textarea"
    return "none", None, "choices" if choice else None


def parse_annotation_event(payload: dict, from_name: str | None = None) -> AnnotationEvent:
    action = payload["action"]
    ann = payload.get("annotation")
    if not isinstance(ann, dict):
        raise ApiError(400, f"{action} without an 'annotation' object")
    if "id" not in ann:
        raise ApiError(400, "annotation.id is missing")
    annotation_id = _int_id(ann.get("id"), "annotation.id")
    task = payload.get("task") if isinstance(payload.get("task"), dict) else None
    task_ref = ann.get("task", task.get("id") if task else None)
    if task_ref is None:
        raise ApiError(400, "annotation.task is missing")
    task_id = _int_id(task_ref, "annotation.task")
    if task is not None and task.get("id") is not None and _int_id(task["id"], "task.id") != task_id:
        raise ApiError(400, f"annotation.task {task_id} and task.id {task['id']} differ")
    if isinstance(ann.get("task"), dict) and task is None:
        task = ann["task"]
    if ann.get("was_cancelled") is True:
        kind, choice, source = "none", None, None
    else:
        kind, choice, source = extract_choice(ann.get("result", []), from_name)
    item_id = None
    if task is not None and isinstance(task.get("data"), dict):
        raw = task["data"].get("item_id")
        item_id = None if raw is None else str(raw)
    return AnnotationEvent(action=action, annotation_id=annotation_id, task_id=task_id, kind=kind,
                           choice=choice, source=source, item_id=item_id, updated_at=ann.get("updated_at"),
                           task=task)


def parse_deleted_annotations(payload: dict) -> list[int]:
    anns = payload.get("annotations")
    if anns is None and isinstance(payload.get("annotation"), dict):
        anns = [payload["annotation"]]
    if not isinstance(anns, list) or not anns:
        raise ApiError(400, "ANNOTATIONS_DELETED needs a non-empty 'annotations' list")
    return [_int_id(a, "annotations[].id") for a in anns]


def parse_tasks(payload: dict) -> list[dict]:
    tasks = payload.get("tasks")
    if not isinstance(tasks, list):
        raise ApiError(400, f"{payload.get('action')} needs a 'tasks' list")
    return tasks


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


def ls_project_id(value) -> int | None:
    """``"12.1712345678"`` / ``12`` / ``"12"`` / ``{"id": 12, ...}`` -> 12; None if absent/invalid."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)(?:\.\d+)?\s*", value)
        return int(m.group(1)) if m else None
    return None
