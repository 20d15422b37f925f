"""Items offered to a live project through the backend: ``POST /items`` and the tasks of Label
Studio's ``TASKS_CREATED``. Both are checked here, in the request (a bad one is a 4xx and nothing
is recorded), then recorded as pending (:class:`xmodal.project.pending.PendingItems`) and left to
the growth job (``workers.growth.add_pending``, enqueued on the embed queue): the request is
answered in milliseconds, 202 with what is pending.

``DELETE /items`` ``{"project", "images": [ids], "texts": [ids]}`` removes items (a job; a pair
naming one is kept as a problem). ``POST /items`` body:
``{"project": P, "images": {id: path}, "texts": {id: text}}``. An image is a path (or ``file://``
/ Label Studio local-files URL) under the operator's image roots, exactly as ``/search`` takes
one (:func:`backend.local_images.resolve_image`): nothing is fetched from a URL, nothing is read
outside the roots, the size and pixel limits hold. At most :data:`MAX_ITEMS` items a request
(413).

A task's image becomes a local file in one place, :func:`task_image_file`: what resolves locally
(a path, ``file://``, a local-files URL under the roots) is used as it is; an image uploaded to
Label Studio or kept in its storage (``/data/upload/...``, ``/tasks/<id>/resolve/...``, a URL)
is recorded as ``label-studio:<url>`` and fetched by the growth job through the configured Label
Studio (``xmodal.labelstudio.fetch``: only that origin, the image limits, a cache); nothing is
fetched while a webhook waits for its answer. Ids: the task's ``image_id``/``text_id``, else its
new ``item_id`` (select modality), else the image's path under its root (or ``ls-<task
id>-<file name>``) and ``ls-<task id>`` for the text, as ``--from-label-studio`` names them.

The *source* project of a ``--from-label-studio`` workspace sends ``TASKS_CREATED`` and
``TASKS_DELETED`` too (:func:`source_event`): its tasks are read with that command's fields and ids
(:mod:`xmodal.labelstudio.source`), their images always fetched through Label Studio.
"""

from __future__ import annotations

import logging

from backend.local_images import check_decodable, resolve_image
from xmodal.errors import ApiError, DataError
from xmodal.jobs.queueing import enqueue_growth, enqueue_removal
from xmodal.labelstudio.annotations import MAX_DELETED, int_id, parse_tasks
from xmodal.labelstudio.connection import ls_connection
from xmodal.labelstudio.source import task_entry, task_image_id, task_item_ids
from xmodal.logfmt import kv
from xmodal.project.items import ItemConflict, check_items, new_items
from xmodal.project.pending import PendingItems
from xmodal.project.workspace import Workspace

log = logging.getLogger(__name__)

MAX_ITEMS = 10_000
UNDEFINED = "$undefined$"   # Label Studio's data key for a file its config has not named yet


def _local_image(ref: str, ws: Workspace) -> tuple[str, str]:
    """(real path, path relative to its root) of a local image reference, or an ApiError."""
    if isinstance(ref, str) and ref.strip().startswith("data:"):
        raise ApiError(400, "an inline data: image cannot be an item: give a file under the image roots")
    image = resolve_image(ref, ws)   # 400 for URLs, 403 outside the roots, before any read
    try:
        check_decodable(image)       # 413 / 422 on the header only
    except FileNotFoundError:
        raise ApiError(404, f"image {image.shown!r} does not exist (under the allowed roots)") from None
    return image.path, image.shown


def _record(backend, ws: Workspace, images: dict[str, str], texts: dict[str, str], source: str,
            remote: dict[str, str] | None = None) -> dict:
    try:
        fresh_i, fresh_t, unchanged = new_items(ws, images, texts)
    except ItemConflict as exc:
        raise ApiError(409, str(exc)) from None
    except DataError as exc:
        raise ApiError(400, str(exc)) from None
    fresh_i = dict(fresh_i, **(remote or {}))
    pending = PendingItems(backend.redis, ws.name)
    pending.put("image", fresh_i, source)
    pending.put("text", fresh_t, source)
    out = {"status": "queued" if fresh_i or fresh_t else "unchanged",
           "pending": {"image": len(fresh_i), "text": len(fresh_t)}, "unchanged": unchanged}
    if fresh_i or fresh_t:
        out["job_id"] = enqueue_growth(backend.redis, ws.name, source, queue=backend.queue)
    log.info(kv("items.received", project=ws.name, source=source, images=len(fresh_i),
                texts=len(fresh_t), unchanged=sum(unchanged.values())))
    return out


def post_items(backend, ws: Workspace, body: dict) -> dict:
    """``POST /items`` (module doc)."""
    images, texts = body.get("images") or {}, body.get("texts") or {}
    for what, given in (("images", images), ("texts", texts)):
        if not isinstance(given, dict):
            raise ApiError(400, f"'{what}' must be an object of id -> {'path' if what == 'images' else 'text'}")
    if not images and not texts:
        raise ApiError(400, "give 'images' (id -> path under the image roots) and/or 'texts' (id -> text)")
    if len(images) + len(texts) > MAX_ITEMS:
        raise ApiError(413, f"{len(images) + len(texts)} items in one request; at most {MAX_ITEMS}: "
                            "send them in parts")
    try:
        check_items("image", images)
        check_items("text", texts)
    except DataError as exc:
        raise ApiError(400, str(exc)) from None
    paths = {item_id: _local_image(ref, ws)[0] for item_id, ref in images.items()}
    return _record(backend, ws, paths, texts, "api")


def delete_items(backend, ws: Workspace, body: dict) -> dict:
    """``DELETE /items`` ``{"project", "images": [ids], "texts": [ids]}``: 202 and a removal job
    (workers.growth.remove_job); a stored pair naming a removed item is kept as a problem. Ids the
    project does not have are listed back and ignored."""
    wanted = {}
    for what, modality in (("images", "image"), ("texts", "text")):
        ids = body.get(what) or []
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise ApiError(400, f"'{what}' must be a list of {modality} ids")
        wanted[modality] = ids
    if not wanted["image"] and not wanted["text"]:
        raise ApiError(400, "give 'images' and/or 'texts': lists of the ids to remove")
    if len(wanted["image"]) + len(wanted["text"]) > MAX_ITEMS:
        raise ApiError(413, f"at most {MAX_ITEMS} ids in one request: send them in parts")
    known = {m: [i for i in wanted[m] if i in ws.row_of(m)] for m in wanted}
    unknown = {m: [i for i in wanted[m] if i not in ws.row_of(m)][:20] for m in wanted}
    out = {"status": "unchanged" if not any(known.values()) else "queued",
           "removing": {m: len(v) for m, v in known.items()}, "unknown": unknown}
    if any(known.values()):
        out["job_id"] = enqueue_removal(backend.redis, ws.name, known["image"], known["text"],
                                        queue=backend.queue)
    return out


LABEL_STUDIO_IMAGE = "label-studio:"   # a pending image the growth job fetches through Label Studio


def task_image_file(url: str, ws: Workspace) -> tuple[str, str] | None:
    """THE place a task's image URL becomes a local file: ``(real path, id)`` for what resolves
    locally (a path, ``file://``, a local-files URL under the image roots), else None. What does
    not (an upload ``/data/upload/...``, cloud storage) is fetched through the configured Label
    Studio by the growth job (:data:`LABEL_STUDIO_IMAGE`, ``xmodal.labelstudio.fetch``), never in
    the webhook's answer."""
    try:
        return _local_image(url, ws)
    except ApiError as exc:
        log.info(kv("items.task_image_not_local", project=ws.name, url=str(url)[:200], why=exc.message))
        return None


def _label_studio_url(url: str) -> bool:
    """A URL the growth job may try through Label Studio (``fetch_image`` refuses the rest)."""
    return url.startswith(("/data/upload/", "/data/local-files/", "/tasks/")) or \
        url.startswith(("http://", "https://"))


def items_from_tasks(backend, ws: Workspace, tasks: list) -> dict:
    """``TASKS_CREATED``: the tasks whose image or text the project does not have become items
    (the project's own medoid tasks carry ``data.item_id`` and are skipped)."""
    images, texts, remote, skipped = {}, {}, {}, 0
    known = ws.row_of(ws.select)
    linked = ls_connection(backend.redis, ws) is not None
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or str(data.get("item_id")) in known:
            continue
        tid = task.get("id")
        # ids: the task's image_id / text_id, else its (new) item_id for the select modality, else
        # the image's path under its root and "ls-task-<id>" for the text
        item = str(data["item_id"]) if data.get("item_id") not in (None, "") else None
        image_id = data.get("image_id") or (item if ws.select == "image" else None)
        url = data.get("image") if isinstance(data.get("image"), str) else data.get(UNDEFINED)
        if isinstance(url, str) and url.strip():
            found = task_image_file(url, ws)
            if found is not None:
                images[str(image_id or found[1])] = found[0]
            elif _label_studio_url(url.strip()) and linked:
                name = url.strip().split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "image"
                remote[str(image_id or f"ls-{tid}-{name}")] = LABEL_STUDIO_IMAGE + url.strip()
            else:
                skipped += 1
        if isinstance(data.get("text"), str) and data["text"].strip():
            texts[str(data.get("text_id") or (item if ws.select == "text" else None) or f"ls-{tid}")] = \
                data["text"]
    # an image to fetch: new by its id (its local file exists only once the job fetched it)
    remote = {i: u for i, u in remote.items() if i not in ws.row_of("image")}
    if not images and not texts and not remote:
        return {"status": "no new items", "skipped_images": skipped}
    try:
        out = _record(backend, ws, images, texts, "TASKS_CREATED", remote)
    except ApiError as exc:   # the tasks stay recorded; the webhook is not the place to fail
        log.warning(kv("items.tasks_refused", project=ws.name, error=exc.message))
        return {"status": "refused", "error": exc.message, "skipped_images": skipped}
    return dict(out, skipped_images=skipped)


def source_event(backend, ws: Workspace, action: str, body: dict) -> dict:
    """A webhook of the Label Studio project ``ws`` was made from (``--from-label-studio``; its
    webhook sends only these two): ``TASKS_CREATED`` -> :func:`items_from_source_tasks`,
    ``TASKS_DELETED`` -> their items removed. Any other action (its annotations are not labels of
    this project) is ignored."""
    if action == "TASKS_CREATED":
        return items_from_source_tasks(backend, ws, parse_tasks(body))
    if action == "TASKS_DELETED":
        ids = [int_id(t, "TASKS_DELETED: tasks[].id") for t in parse_tasks(body, MAX_DELETED)]
        pending = PendingItems(backend.redis, ws.name)   # imported and deleted before the job ran
        waiting = dict(zip(("image", "text"), pending.snapshot()[:2]))
        dropped = sum(pending.drop(m, task_item_ids(ids, waiting[m])) for m in waiting)
        gone = {m: task_item_ids(ids, ws.ids(m)) for m in ("image", "text")}
        return dict(delete_items(backend, ws, {"images": gone["image"], "texts": gone["text"]})
                    if any(gone.values()) else {"status": "unchanged"}, source_tasks=ids[:100],
                    pending_dropped=dropped)
    return {"status": "ignored", "action": action, "why": "a webhook of the source project"}


def items_from_source_tasks(backend, ws: Workspace, tasks: list) -> dict:
    """``TASKS_CREATED`` of the source project: each task's image and texts, with the fields and
    ids of ``--from-label-studio`` (:func:`xmodal.labelstudio.source.task_entry`), become pending
    items; the image is fetched through Label Studio by the growth job, which gives its id the
    fetched file's extension (:func:`xmodal.labelstudio.source.fetched_image_id`)."""
    source = ws.config.get("source") or {}
    fields = source.get("text_fields") or []
    images, texts, skipped = {}, {}, []
    for task in tasks:
        entry = task_entry(task, source.get("image_field"), fields)
        if entry is None:
            continue
        if entry.url and (_label_studio_url(entry.url) or entry.url.startswith("data:")):
            images[task_image_id(entry.task_id, entry.url)] = LABEL_STUDIO_IMAGE + entry.url
        elif entry.url or entry.refused:
            skipped.append(entry.task_id)
        texts.update(entry.texts)
    if not images and not texts:
        return {"status": "no new items", "skipped_images": len(skipped)}
    try:
        out = _record(backend, ws, {}, texts, "source TASKS_CREATED", images)
    except ApiError as exc:
        log.warning(kv("items.source_tasks_refused", project=ws.name, error=exc.message))
        return {"status": "refused", "error": exc.message, "skipped_images": len(skipped)}
    return dict(out, skipped_images=len(skipped))
