"""The growth job: items that arrived through any door become part of the live project.

Every door lands here: ``POST /items`` and Label Studio's ``TASKS_CREATED`` (backend/model.py)
record the items as pending (:class:`xmodal.project.pending.PendingItems`) and enqueue
``add_pending`` on the embed queue; ``xmodal items add`` records them and runs
:func:`run_pending` in its own process. One run:

1. adds what is pending (:func:`xmodal.project.items.add_items`: embedded, appended, the far
   ones counted), then takes exactly those entries off the pending hash;
2. rebuilds the index at once, in this process (:func:`workers.rebuild.rebuild`, under its lease):
   the new items get their codes against the current references and are searchable, ranked in
   the pages' options and in the predictions it pushes to Label Studio;
3. when new items of the select modality fall far from every medoid, extends the medoids
   (:func:`xmodal.labelstudio.project.grow_project`: k-medoids ``extend``) and imports the new
   medoid tasks into the linked Label Studio project (else rewrites tasks.json).

What it did is kept in ``P:{project}:items:last`` for ``xmodal status``. :func:`remove` is the
other direction: items dropped, a pair that named one kept as a problem (``item_removed``), the
problems flagged in Label Studio, a rebuild enqueued.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from xmodal.errors import DataError
from xmodal.index.store import IndexStore
from xmodal.jobs.queueing import enqueue_flags, enqueue_rebuild
from xmodal.labelstudio.connection import ls_connection
from xmodal.labelstudio.project import grow_project
from xmodal.labelstudio.push import LabelStudioPushError
from xmodal.logfmt import Say, kv, quiet
from xmodal.project.items import add_items, remove_items
from xmodal.project.pairs import PairStore
from xmodal.project.pending import PendingItems, record_run
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import get_redis

log = logging.getLogger(__name__)


def _workspace(project: str) -> Workspace:
    ws = Workspace.for_project(project)
    if not ws.exists():
        raise DataError(f"items of {project}: no workspace at {ws.root} (is MODEL_DIR the same for "
                        "the backend and the workers?)")
    return ws


def add_pending(project: str, redis_client: redis.Redis | None = None) -> dict:
    """RQ job: add the project's pending items (module doc); returns what it did."""
    from rq import get_current_job

    job = get_current_job()
    r = redis_client or (job.connection if job is not None else get_redis())
    return run_pending(r, _workspace(project), say=lambda msg: log.info(kv("items.progress",
                                                                           project=project, msg=msg)))


def remove_job(project: str, image_ids: list[str], text_ids: list[str],
               redis_client: redis.Redis | None = None) -> dict:
    """RQ job: :func:`remove` (``DELETE /items``)."""
    from rq import get_current_job

    job = get_current_job()
    r = redis_client or (job.connection if job is not None else get_redis())
    out = remove(r, _workspace(project), image_ids, text_ids, queue=job.origin if job is not None else None)
    record_run(r, project, dict(out, status="removed", finished_at=time.time()))
    return out


def run_pending(r: redis.Redis, ws: Workspace, *, workers_embed: bool = False, feature_cache=None,
                say: Say = quiet, progress: bool = False) -> dict:
    """Steps 1-3 of the module doc for what is pending now."""
    t0 = time.time()
    pending = PendingItems(r, ws.name)
    images, texts, raw = pending.snapshot()
    if not raw:
        return {"status": "nothing pending"}
    images, fetch_failed = _fetched(r, ws, images, say)
    try:
        change = add_items(ws, images, texts, feature_cache=feature_cache, workers_embed=workers_embed,
                           say=say, progress=progress)
    except DataError as exc:
        # refused whole (an id given again with other content meanwhile, a file gone): nothing was
        # added; the entries leave the queue so that the next items are not held behind them
        pending.done(raw)
        record_run(r, ws.name, {"status": "refused", "error": str(exc), "finished_at": time.time()})
        raise
    pending.done(raw)
    out = {"status": "added" if change.changed else "unchanged", **change.summary()}
    out["failed"] = fetch_failed + out["failed"]
    if change.changed:
        from workers.rebuild import rebuild

        t1 = time.perf_counter()
        try:
            built = rebuild(ws.name, r)
            out.update(version=built["version"], ls=built.get("ls"))
            say(f"index {built['model_version']} published with the new items "
                f"({time.perf_counter() - t1:.1f} s; Label Studio: {built.get('ls')})")
        except LabelStudioPushError as exc:   # published and searchable; the push is retried by the next rebuild
            out.update(version=IndexStore(r, ws).current_version(), ls=f"failed: {exc}")
            say(f"index published with the new items; the push to Label Studio failed: {exc}")
        out["rebuild_s"] = round(time.perf_counter() - t1, 3)
    conn = ls_connection(r, ws)
    k = len(ws.medoid_ids()) + change.propose_medoids
    if change.propose_medoids and conn is None and ws.config["label_studio"].get("project_id") is not None:
        # linked, but no URL or key here: the proposal is kept, for `project grow` to carry out
        out["medoids_note"] = (f"{change.propose_medoids} new medoid(s) proposed for {len(change.far)} far "
                               f"items; Label Studio is not reachable from here: run `xmodal project grow "
                               f"--name {ws.name} --k {k}` with LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY")
        say(out["medoids_note"])
    elif change.propose_medoids:
        conn = conn or {}
        grown = grow_project(ws.name, k, label_studio_url=conn.get("url"), api_key=conn.get("api_key"),
                             redis_client=r, say=say)
        out.update(new_medoids=grown.medoid_ids[-grown.new_medoids:] if grown.new_medoids else [],
                   new_tasks=grown.new_tasks)
        say(f"{grown.new_medoids} new medoid(s) for the far items; {grown.new_tasks} new task(s) in "
            "Label Studio" if conn else f"{grown.new_medoids} new medoid(s); tasks.json rewritten")
    out["searchable_s"] = round(time.time() - min(_received(raw), default=t0), 3)
    record_run(r, ws.name, dict(out, finished_at=time.time()))
    log.info(kv("items.done", project=ws.name, **{k: v for k, v in out.items()
                                                  if k in ("status", "version", "searchable_s")},
                images=len(change.added["image"]), texts=len(change.added["text"]),
                far=len(change.far), new_tasks=out.get("new_tasks", 0)))
    return out


def _fetched(r: redis.Redis, ws: Workspace, images: dict[str, str], say: Say):
    """Pending images that are Label Studio URLs (``TASKS_CREATED`` of uploads or storage),
    fetched through the configured Label Studio (:func:`xmodal.labelstudio.fetch.fetch_image`:
    only its origin, the image limits, a cache). Returns (images as local files, failures)."""
    prefix = "label-studio:"
    wanted = {i: c[len(prefix):] for i, c in images.items() if c.startswith(prefix)}
    if not wanted:
        return images, []
    out = {i: c for i, c in images.items() if i not in wanted}
    conn = ls_connection(r, ws)
    if conn is None:
        why = "no Label Studio connection to fetch it through"
        return out, [{"id": i, "error": why} for i in wanted]
    from xmodal.labelstudio.connection import open_label_studio
    from xmodal.labelstudio.fetch import fetch_images
    from xmodal.labelstudio.source import fetched_image_id, remember_urls

    client = open_label_studio(conn["url"], conn["api_key"]).client
    paths, errors, _ = fetch_images(client, wanted)   # network errors raise: the items stay pending
    failed = [{"id": i, "error": why} for i, why in errors.items()]
    urls = {}
    for item_id, path in paths.items():
        # a source task's image: its id gets the fetched file's extension, as project create names it
        final = fetched_image_id(item_id, path)
        out[final] = str(path)
        urls[final] = wanted[item_id]
    remember_urls(ws.root, urls)    # a --from-label-studio project's pages show the task's URL
    say(f"{len(wanted) - len(failed)} image(s) fetched through Label Studio"
        + (f"; {len(failed)} not: {failed[0]['error']}" if failed else ""))
    return out, failed


def _received(raw: dict) -> list[float]:
    out = []
    for v in raw.values():
        try:
            out.append(float(json.loads(v)["received_at"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def remove(r: redis.Redis, ws: Workspace, image_ids=(), text_ids=(), say: Say = quiet,
           queue: str | None = None) -> dict:
    """Drop items; a pair naming one becomes a problem (module doc)."""
    change = remove_items(ws, image_ids, text_ids, say=say)
    gone = {m: set(v) for m, v in change.removed.items()}
    store = PairStore(r, ws.name)
    orphaned = 0
    for rec in store.records().values():
        if rec.get("state") != "pair":
            continue
        hit = ("image", rec.get("image_id")) if rec.get("image_id") in gone["image"] else \
            ("text", rec.get("text_id")) if rec.get("text_id") in gone["text"] else None
        if hit is None:
            continue
        given = f"{rec.get('image_id')} <-> {rec.get('text_id') or rec.get('description')}"
        store.mark_problem(rec["annotation_id"], rec.get("task_id"), "item_removed",
                           f"the {hit[0]} {hit[1]!r} was removed from the project, so this pair no "
                           "longer counts; add the item again or label the task anew",
                           given=given, item_id=hit[1])
        orphaned += 1
    out = {**change.summary(), "pairs_now_problems": orphaned}
    if change.changed:
        out["job_id"], _ = enqueue_rebuild(r, ws.name, "items removed", queue=queue)
        if orphaned and ls_connection(r, ws) is not None:
            enqueue_flags(r, ws.name, queue=queue)
    say(f"{orphaned} stored pair(s) named a removed item: kept as problems (xmodal status)")
    return out
