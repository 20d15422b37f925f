"""Label Studio webhook payloads -> validated events (pure functions, no I/O).

Label Studio 1.23 sends (see docs/label-studio-1.23.md): ``ANNOTATION_CREATED`` and
``ANNOTATION_UPDATED`` with ``annotation`` (``id``, ``result``, ``was_cancelled``, ``task``,
``updated_at``...), ``task`` (``id``, ``data``) and ``project`` (object); ``ANNOTATIONS_DELETED``
(plural) with ``annotations: [{"id": ...}]``; ``TASKS_CREATED`` / ``TASKS_DELETED`` with ``tasks``;
``START_TRAINING`` with only ``action`` and ``project``; ``PROJECT_UPDATED`` and others, ignored.

:func:`apply_annotation` then turns one event into what the annotator meant, and stores it
(shared by /webhook and the resync job). Nothing a person enters is lost:

- a chosen option -> the pair (``source="choice"``); a choice that is no longer among the task's
  options still names an item of the project, so it still counts;
- "None of these" + a result of the page's search over all texts picked -> that pair
  (``search``, :mod:`xmodal.labelstudio.page_search`);
- "None of these" + text: an id of the other modality -> that pair (``pasted_id``); a text of the
  project, pasted whole -> that pair (``pasted_text``); anything else on an image task -> a
  written description, a reference text of its own (``written``, :mod:`xmodal.project.references`);
- a skip (``was_cancelled``) -> stays a skip (``none``);
- what cannot become a pair -> a **problem** (:meth:`PairStore.mark_problem`) the team sees in
  ``xmodal status`` and on the task in Label Studio (``data.problem``): "None of these" with
  nothing written, an id-like text that is no id, a description over
  :data:`~xmodal.project.references.MAX_DESCRIPTION_CHARS` characters, a text task answered with
  words, an answer of a task whose item or chosen item is not in the project. The answer is kept
  whole in the record.

Validation happens before any write, so a refused event never changes a stored pair; an event
about a task deleted in Label Studio is a 409, one naming items that are not in the project a 422
(both also for a replay), and those 422s are recorded as problems too.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from xmodal.errors import ApiError
from xmodal.labelstudio.page_search import CHECK_FIELD, HIT_FIELD, HITS_FIELD, SEARCH_FIELD, picked_id
from xmodal.labelstudio.tasks import NONE_CHOICE, TaskRegistry
from xmodal.logfmt import kv
from xmodal.project.pairs import PairStore, TaskDeleted
from xmodal.project.workspace import Workspace, other

log = logging.getLogger(__name__)


ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
# the page's own regions, none of them the answer (the check line is the backend's, not the person's)
SEARCH_REGIONS = (SEARCH_FIELD, HITS_FIELD, HIT_FIELD, CHECK_FIELD)


def int_id(value, what: str) -> int:
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
    choice: str | None          # what the choices region says (an id, "__none__"), or None
    text: str | None            # what the text area says (a pasted id or text, a description)
    cancelled: bool             # the annotator skipped the task
    item_id: str | None         # the task's item (select modality), from the payload's task
    updated_at: object          # Label Studio's timestamp (ISO string) or None
    task: dict | None           # the payload's task object, when present
    hit: str | None = None      # the number picked among the search results ("3"), or None
    hits: list | None = None    # the search result lines the page showed (page_search)


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


def extract_answer(result, from_name: str | None = None) -> tuple[str | None, str | None]:
    """What an annotation's result says: ``(choice, text)``, each None when absent.

    ``choice``: the first value of the ``choices`` region named ``from_name`` (else of the first
    choices region); ``text``: the entries of the first ``textarea`` region, joined by spaces.
    The page search's regions (``search``, ``hits``, ``hit``: :func:`extract_search`) are not
    the answer's choice or text.
    """
    if not isinstance(result, list):
        raise ApiError(400, "annotation.result must be a list")
    regions = [r for r in result if isinstance(r, dict) and isinstance(r.get("value"), dict)
               and r.get("from_name") not in SEARCH_REGIONS]
    if from_name:
        regions.sort(key=lambda r: r.get("from_name") != from_name)
    choice = text = None
    for region in regions:
        kind = str(region.get("type", "")).lower()
        if choice is None and (kind == "choices" or (not kind and "choices" in region["value"])):
            vals = _values(region, "choices")
            choice = vals[0] if vals else None
        elif text is None and (kind == "textarea" or (not kind and "text" in region["value"])):
            vals = _values(region, "text")
            text = " ".join(vals) if vals else None
    return choice, text


def extract_search(result) -> tuple[str | None, list[str] | None]:
    """The page search's part of a result: the number picked in ``hit`` and the ``hits`` lines."""
    hit = hits = None
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            continue
        if region.get("from_name") == HIT_FIELD:
            vals = _values(region, "choices")
            hit = vals[0] if vals else None
        elif region.get("from_name") == HITS_FIELD:
            hits = _values(region, "text")
    return hit, hits


def parse_annotation_event(payload: dict, from_name: str | None = None) -> AnnotationEvent:
    action = payload["action"]
    ann = payload.get("annotation")
    if not isinstance(ann, dict):
        raise ApiError(400, f"{action} without an 'annotation' object")
    if "id" not in ann:
        raise ApiError(400, "annotation.id is missing")
    annotation_id = int_id(ann.get("id"), "annotation.id")
    task = payload.get("task") if isinstance(payload.get("task"), dict) else None
    task_ref = ann.get("task", task.get("id") if task else None)
    if task_ref is None:
        raise ApiError(400, "annotation.task is missing")
    task_id = int_id(task_ref, "annotation.task")
    if task is not None and task.get("id") is not None and int_id(task["id"], "task.id") != task_id:
        raise ApiError(400, f"annotation.task {task_id} and task.id {task['id']} differ")
    if isinstance(ann.get("task"), dict) and task is None:
        task = ann["task"]
    cancelled = ann.get("was_cancelled") is True
    choice, text = (None, None) if cancelled else extract_answer(ann.get("result", []), from_name)
    hit, hits = (None, None) if cancelled else extract_search(ann.get("result", []))
    item_id = None
    if task is not None and isinstance(task.get("data"), dict):
        raw = task["data"].get("item_id")
        item_id = None if raw is None else str(raw)
    return AnnotationEvent(action=action, annotation_id=annotation_id, task_id=task_id, choice=choice,
                           text=text, cancelled=cancelled, item_id=item_id,
                           updated_at=ann.get("updated_at"), task=task, hit=hit, hits=hits)


MAX_DELETED = 100_000   # ids one ANNOTATIONS_DELETED may carry (~1.5 s of Redis work)


def parse_deleted_annotations(payload: dict) -> list[int]:
    anns = payload.get("annotations")
    if anns is None and isinstance(payload.get("annotation"), dict):
        anns = [payload["annotation"]]
    if not isinstance(anns, list) or not anns:
        raise ApiError(400, "ANNOTATIONS_DELETED needs a non-empty 'annotations' list")
    if len(anns) > MAX_DELETED:
        raise ApiError(413, f"ANNOTATIONS_DELETED lists {len(anns)} annotations; at most {MAX_DELETED} "
                            "per webhook: send them in parts, or run `xmodal project resync`, which "
                            "reads every annotation from Label Studio")
    return [int_id(a, "annotations[].id") for a in anns]


def parse_tasks(payload: dict, limit: int | None = None) -> list[dict]:
    tasks = payload.get("tasks")
    if not isinstance(tasks, list):
        raise ApiError(400, f"{payload.get('action')} needs a 'tasks' list")
    if limit is not None and len(tasks) > limit:
        raise ApiError(413, f"{payload.get('action')} lists {len(tasks)} tasks; at most {limit} per "
                            "webhook: send them in parts")
    return tasks


@dataclass
class Answer:
    """What an annotation means (see the module doc)."""
    kind: str                       # "pair" | "skip" | "problem"
    source: str | None = None       # pairs: choice | search | pasted_id | pasted_text | written
    other_id: str | None = None     # pairs: the item of the other modality
    description: str | None = None  # written pairs
    problem: str | None = None      # problems: a kind...
    message: str | None = None      # ... and what the team should do


def _id_like(text: str) -> bool:
    """One token with a digit or a sign in it (``t-typo``, ``4936#2``, ``img/01.jpg``): meant as
    an id. Words (``dog``, ``dog.``) are a description."""
    word = text.rstrip(".!,")
    return len(text) <= 100 and not any(c.isspace() for c in text) and \
        any(not (c.isalpha() or c == "'") for c in word)


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!")


_texts_by_content: dict[tuple, dict[str, str]] = {}


def _text_ids_by_content(ws: Workspace) -> dict[str, str]:
    """normalised text -> its (first) id, cached per items file."""
    try:
        key = (str(ws.root), ws.items_path.stat().st_mtime_ns)
    except (OSError, AttributeError):
        key = (str(ws.root), None)
    found = _texts_by_content.get(key)
    if found is None:
        found = {}
        for tid, text in zip(ws.ids("text"), ws.contents("text")):
            found.setdefault(_normal(text), tid)
        _texts_by_content.clear()   # one workspace at a time is the common case; keep memory flat
        _texts_by_content[key] = found
    return found


def _choice_id(choice: str, known: dict) -> str | None:
    """The item id a choice names: the id itself (the option's alias), or the id at the end of an
    option's filter value (``"<text>  <id>"``, a config without aliases)."""
    if choice in known:
        return choice
    tail = choice.rsplit("  ", 1)[-1]
    return tail if tail in known else None


def interpret(ws: Workspace, ev: AnnotationEvent) -> Answer:
    """The annotator's answer (see the module doc); never raises for what a person typed."""
    from xmodal.project.references import MAX_DESCRIPTION_CHARS

    tgt = other(ws.select)
    known = ws.row_of(tgt)
    if ev.cancelled:
        return Answer("skip")
    choice = (ev.choice or "").strip()
    if choice and not choice.startswith(NONE_CHOICE):
        found = _choice_id(choice, known)
        if found is not None:   # a text typed but hidden behind a real choice does not count
            return Answer("pair", "choice", found)
        return Answer("problem", problem="unknown_choice",
                      message=f"the chosen {tgt} {choice[:80]!r} is not in the project (removed?): "
                              f"pick another one or update the annotation")
    if ev.hit is not None:   # a search result picked (under "None of these")
        found = picked_id(ev.hits, ev.hit, known)
        if found is not None:
            return Answer("pair", "search", found)
        if not (ev.text or "").strip():
            shown = "no search results were on the page" if not ev.hits else \
                f"result {ev.hit[:10]!r} of the search is not a text of this project"
            return Answer("problem", problem="unknown_hit",
                          message=f"a search result was picked but {shown}: search again and pick "
                                  "a result, or describe the image")
    text = (ev.text or "").strip()
    if not text and ev.hits:
        return Answer("problem", problem="no_match",
                      message="the texts were searched but no result was picked and nothing was "
                              "written: pick the number of a right result, or describe the image")
    if not text:
        what = "None of these was chosen" if choice else "the annotation has no answer"
        hint = "describe the image" if ws.select == "image" else "paste an image id shown under a thumbnail"
        return Answer("problem", problem="no_match",
                      message=f"{what} and nothing was written: {hint}, pick a match, or skip the task")
    if text in known:
        return Answer("pair", "pasted_id", text)
    if ws.select == "image":
        same = _text_ids_by_content(ws).get(_normal(text))
        if same is not None:
            return Answer("pair", "pasted_text", same)
        if _id_like(text):
            return Answer("problem", problem="unknown_id",
                          message=f"{text[:80]!r} is not a text id of this project (a typo?): paste an "
                                  "id shown in grey, or write a few words describing the image")
        if not any(c.isalpha() for c in text):
            return Answer("problem", problem="no_match",
                          message="the description has no words: describe the image in a few words")
        if len(text) > MAX_DESCRIPTION_CHARS:
            return Answer("problem", problem="too_long",
                          message=f"the description has {len(text)} characters; the limit is "
                                  f"{MAX_DESCRIPTION_CHARS}: shorten it to what is in the image")
        return Answer("pair", "written", description=" ".join(text.split()))
    return Answer("problem", problem="unknown_id",
                  message=f"{text[:80]!r} is not an image id of this project: pick a thumbnail, or "
                          "paste the id shown under it")


def apply_annotation(pairs: PairStore, tasks: TaskRegistry, ws: Workspace, ev: AnnotationEvent,
                     received_at: float | None = None) -> dict:
    """Store what an annotation means (see the module doc). Returns what happened, including
    ``pair_changed`` (whether the set of live pairs changed: the caller enqueues a rebuild) and,
    for a problem, ``problem`` and ``message`` (the caller flags the task in Label Studio).

    Raises ApiError: 409 for a task deleted in Label Studio; 422 (recorded as a problem first) for a
    task the backend never saw without an item id, an item or a chosen item not in the project."""
    try:   # every write checks the task, atomically with it: a TASKS_DELETED cannot slip between
        return _apply(pairs, tasks, ws, ev, received_at)
    except TaskDeleted:
        raise ApiError(409, f"task {ev.task_id} was deleted in Label Studio; annotation "
                            f"{ev.annotation_id} is not stored", task=ev.task_id) from None


def _apply(pairs: PairStore, tasks: TaskRegistry, ws: Workspace, ev: AnnotationEvent,
           received_at: float | None) -> dict:
    project = ws.name
    received = received_at or time.time()
    given = ev.text if ev.text is not None else (f"search result {ev.hit}" if ev.hit else ev.choice)
    item_id = ev.item_id
    if item_id is None:
        known = tasks.get(ev.task_id)
        if known is None:
            msg = (f"unknown task {ev.task_id}: the payload has no task.data.item_id and the backend "
                   "never saw this task")
            pairs.mark_problem(ev.annotation_id, ev.task_id, "unknown_task", msg, given,
                               updated_at=ev.updated_at, received_at=received)
            raise ApiError(422, msg, task=ev.task_id, problem="unknown_task")
        item_id = known["item_id"]
    select = ws.select
    if item_id not in ws.row_of(select):
        msg = f"task {ev.task_id} names {select} {item_id!r}, which is not in project {project!r}"
        pairs.mark_problem(ev.annotation_id, ev.task_id, "unknown_item", msg, given, item_id=item_id,
                           updated_at=ev.updated_at, received_at=received)
        raise ApiError(422, msg, task=ev.task_id, item=item_id, problem="unknown_item")
    prev = pairs.get(ev.annotation_id)
    answer = interpret(ws, ev)
    image_id = text_id = None
    if answer.kind == "pair":
        image_id, text_id = (item_id, answer.other_id) if select == "image" else (answer.other_id, item_id)
        status = pairs.put(ev.annotation_id, ev.task_id, image_id, text_id, ev.updated_at,
                           received_at=received, description=answer.description, source=answer.source)
    elif answer.kind == "skip":
        status = pairs.mark_none(ev.annotation_id, ev.task_id, ev.updated_at, received_at=received)
    else:
        status = pairs.mark_problem(ev.annotation_id, ev.task_id, answer.problem, answer.message, given,
                                    item_id=item_id, updated_at=ev.updated_at, received_at=received)
        log.warning(kv("annotation.problem", project=project, annotation=ev.annotation_id,
                       task=ev.task_id, problem=answer.problem))
        if answer.problem == "unknown_choice":   # the payload names an item the project lacks
            raise ApiError(422, f"annotation {ev.annotation_id} names {other(select)} "
                                f"{(ev.choice or '')[:80]!r}, which is not in project {project!r}",
                           annotation=ev.annotation_id, item=ev.choice, problem=answer.problem)
    if ev.task is not None:
        tasks.record([ev.task])
    was = (prev or {}).get("state")
    out = {"status": status, "annotation_id": ev.annotation_id, "task_id": ev.task_id,
           "kind": answer.kind, "source": answer.source, "image_id": image_id, "text_id": text_id,
           "pair_changed": status == "stored" and (answer.kind == "pair" or was == "pair"),
           # the task's flag in Label Studio changes when a problem appears or goes away
           "flag_changed": status == "stored" and (answer.kind == "problem" or was == "problem")}
    if answer.description is not None:
        out["description"] = answer.description
    if answer.kind == "problem":
        out.update(problem=answer.problem, message=answer.message)
    if status == "stored" and answer.kind == "pair" and answer.source != "choice" and ev.text is not None:
        log.info(kv("annotation.from_text", project=project, annotation=ev.annotation_id,
                    source=answer.source))
    return out


def ls_project_id(value) -> int | None:
    """``"12.1712345678"`` / ``12`` / ``"12"`` / ``{"id": 12, ...}`` -> 12; None if absent/invalid."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        return None
    # ids beyond 64 bits are no Label Studio project's (and a 300-digit one, used as a directory
    # name, was an ENAMETOOLONG 500)
    if isinstance(value, int):
        return value if 0 <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer() and 0 <= value < 2**63:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,18})(?:\.\d{1,30})?\s*", value)
        return int(m.group(1)) if m else None
    return None
