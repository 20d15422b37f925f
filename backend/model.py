"""The ML backend's model, in label-studio-ml's familiar shape: ``predict(tasks, context)`` and
``fit(event, data)``, plus ``setup`` and ``search``.

Nothing heavy happens here: predictions read the current index (process-global cache, reloaded
when its version changes), ``fit`` stores or removes one pair in Redis and enqueues a coalesced
rebuild for the RQ workers. A webhook is answered in milliseconds.
"""

from __future__ import annotations

import logging
import tempfile

import numpy as np

from backend.decoding import decode
from backend.encoding import image_encoder, text_encoder
from backend.items import items_from_tasks
from backend.local_images import known_item, readable_path, resolve_image
from backend.services import Backend
from xmodal.errors import ApiError
from xmodal.index.build import unlabelled_snapshot
from xmodal.index.snapshot import IndexSnapshot
from xmodal.index.store import load_current
from xmodal.index.text_search import similar_texts
from xmodal.index.text_search import warm as warm_text_search
from xmodal.jobs.queueing import enqueue_flags, enqueue_resync
from xmodal.jobs.stats import remember_project
from xmodal.labelstudio.annotations import (
    ANNOTATION_ACTIONS,
    MAX_DELETED,
    apply_annotation,
    int_id,
    parse_annotation_event,
    parse_deleted_annotations,
    parse_tasks,
)
from xmodal.labelstudio.config import choices_fields, label_fields
from xmodal.labelstudio.connection import ConnectionRecord, ls_connection
from xmodal.labelstudio.hosts import configured_urls, trusted_url
from xmodal.labelstudio.page_check import check_result, typed_entry
from xmodal.labelstudio.page_search import hits_lines, hits_result, search_query
from xmodal.labelstudio.predictions import UnknownItem, task_prediction
from xmodal.labelstudio.tasks import TaskRegistry
from xmodal.logfmt import kv
from xmodal.project.pairs import PairStore
from xmodal.project.workspace import Workspace, other

log = logging.getLogger(__name__)


MAX_K = 1000


_learned_fields: dict[str, tuple[str, str]] = {}


class XmodalModel:
    """One request's view of one project (cheap to construct)."""

    model_class = "XmodalModel"

    def __init__(self, backend: Backend, ws: Workspace):
        self.backend = backend
        self.ws = ws
        self.project = ws.name
        self.redis = backend.redis
        self.pairs = PairStore(self.redis, self.project)
        self.tasks = TaskRegistry(self.redis, self.project)

    # -- index ---------------------------------------------------------------------------
    def index(self) -> IndexSnapshot:
        snap = load_current(self.ws, self.redis)
        return snap if snap is not None else unlabelled_snapshot(self.ws)

    def learn_label_config(self, label_config) -> None:
        """Remember the choices' from/to names of the project's labelling config (predictions
        must name them)."""
        fields = choices_fields(label_config)
        if fields and _learned_fields.get(self.project) != fields:
            ConnectionRecord(self.redis, self.project).learn_fields(*fields)
            _learned_fields[self.project] = fields

    # -- Label Studio protocol -----------------------------------------------------------
    def setup(self, body: dict) -> dict:
        self.learn_label_config(body.get("schema") or body.get("label_config"))
        learned, host, ls = {}, body.get("hostname"), self.ws.config["label_studio"]
        if isinstance(host, str) and host.startswith(("http://", "https://")):
            if (url := trusted_url(host, ls)) is not None:   # the operator's spelling of it
                learned["url"] = url
            else:   # recorded and logged; nothing is ever sent there
                ConnectionRecord(self.redis, self.project).refuse(host, where="setup")
                host = None
        # the token is kept when the calls it authorises go to a configured URL: the one /setup
        # named (trusted), or the operator's own (a Label Studio that calls itself "localhost"
        # while the operator configured 127.0.0.1 still gets its predictions)
        if ((host is not None or configured_urls(ls)) and isinstance(body.get("access_token"), str)
                and body["access_token"]):
            learned["api_key"] = body["access_token"]
        ConnectionRecord(self.redis, self.project).learn(**learned)
        remember_project(self.redis, self.project)
        if self.ws.select == "image":   # the page's search box: ready before the first search
            warm_text_search(self.ws)
        snap = self.index()
        if snap.version == 0:
            job_id, _ = self.backend.enqueue_rebuild(self.project, "setup: no index yet")
            log.info(kv("setup.first_rebuild", project=self.project, job=job_id))
        return {"model_version": snap.model_version}

    def predict(self, tasks: list, context=None) -> dict:
        if not isinstance(tasks, list):
            raise ApiError(400, "'tasks' must be a list of tasks")
        if isinstance(context, dict) and isinstance(context.get("result"), list):
            return self.interactive(tasks, context)
        snap = self.index()
        self.tasks.record(tasks, items=self.ws.row_of(self.ws.select))
        from_name, to_name = label_fields(self.redis, self.ws)
        results, errors = [], []
        for i, task in enumerate(tasks):
            try:
                if not isinstance(task, dict):
                    raise ValueError("task is not an object")
                results.append(task_prediction(snap, self._with_item_id(task), from_name, to_name))
            except (UnknownItem, ValueError, ApiError) as exc:
                tid = task.get("id") if isinstance(task, dict) else None
                msg = exc.message if isinstance(exc, ApiError) else str(exc).strip("'\"")
                errors.append({"task": tid, "index": i, "error": msg})
                # keep one result per task: Label Studio pairs results with tasks by position
                results.append({"result": [], "score": 0.0, "model_version": snap.model_version})
        if errors:
            log.warning(kv("predict.bad_tasks", project=self.project, n=len(errors),
                           first=errors[0]["error"]))
            if len(errors) == len(tasks):
                raise ApiError(422, "no task of this request names an item of the project",
                               project=self.project, errors=errors[:20])
        out = {"results": results, "model_version": snap.model_version}
        if errors:
            out["errors"] = errors[:20]
        return out

    def interactive(self, tasks: list, context) -> dict:
        """Label Studio's interactive call (a region was made on the page, ``context.result``): the
        page search over all texts (:mod:`xmodal.labelstudio.page_search`) when the region is a
        search of an image task, the check of an entry of the answer box
        (:mod:`xmodal.labelstudio.page_check`), else no suggestion, so a click on the page never
        changes what the person chose."""
        query = search_query(context) if self.ws.select == "image" else None
        typed = typed_entry(context)
        model_version = self.index().model_version
        _, to_name = label_fields(self.redis, self.ws)
        result = []
        if query is not None:
            lines = hits_lines(self.ws, query, similar=self._similar_texts)
            log.info(kv("predict.page_search", project=self.project, words=len(query.split()),
                        hits=len(lines)))
            result += hits_result(lines, to_name)
        if typed is not None:   # an entry of the answer box: checked before it counts (page_check)
            checked = check_result(self.ws, *typed, to_name)
            log.info(kv("predict.page_check", project=self.project, field=typed[0],
                        refused=len(checked) > 1))
            result += checked
        return {"results": [{"result": result, "score": 0.0, "model_version": model_version}]}

    def _similar_texts(self, query: str, k: int) -> list[str]:
        """The texts nearest to ``query`` embedded with the workspace's text encoder."""
        encoder = text_encoder(self.ws, self.backend.text_encoder_loader)
        return similar_texts(self.ws, encoder.transform([query])[0], k)

    def _with_item_id(self, task: dict) -> dict:
        """A task imported without ``data.item_id`` but with the image of an image project (a path
        or local-files URL): the project's image at that location (not read; see local_images)."""
        data = task.get("data")
        if not isinstance(data, dict) or data.get("item_id") is not None or self.ws.select != "image" \
                or not isinstance(data.get("image"), str):
            return task
        item = known_item(resolve_image(data["image"], self.ws), self.ws)
        if item is None:
            raise UnknownItem(f"image {data['image'][:200]!r} is not an image of this project")
        return dict(task, data=dict(data, item_id=item))

    def fit(self, event: str, data: dict) -> dict:
        """Webhook events -> pair changes (+ a coalesced rebuild). Never rebuilds inline."""
        remember_project(self.redis, self.project)
        if event in ANNOTATION_ACTIONS:
            return self._annotation(data)
        if event == "ANNOTATIONS_DELETED":
            ids = parse_deleted_annotations(data)
            removed = [a for a, state in zip(ids, self.pairs.delete_many(ids)) if state == "deleted"]
            return self._changed(event, bool(removed), removed=removed[:100], n_removed=len(removed),
                                 annotations=len(ids))
        if event == "TASKS_DELETED":
            ids = [int_id(t, "TASKS_DELETED: tasks[].id") for t in parse_tasks(data, MAX_DELETED)]
            removed = self.pairs.delete_tasks(ids, registry_key=self.tasks.key)
            self.tasks.forget(ids)
            return self._changed(event, bool(removed), removed=removed, tasks=ids)
        if event == "TASKS_CREATED":
            tasks = parse_tasks(data)
            recorded = self.tasks.record(tasks, items=self.ws.row_of(self.ws.select))
            return {"status": "ok", "tasks_recorded": recorded,
                    "items": items_from_tasks(self.backend, self.ws, tasks)}
        if event == "START_TRAINING":
            if ls_connection(self.redis, self.ws) is not None:
                # replay Label Studio's annotations first (webhooks can be lost), then rebuild
                job_id = enqueue_resync(self.redis, self.project, event, self.backend.queue)
                return {"status": "queued", "job_id": job_id, "job": "resync", "enqueued": True}
            job_id, enqueued = self.backend.enqueue_rebuild(self.project, event)
            return {"status": "queued", "job_id": job_id, "job": "rebuild", "enqueued": enqueued}
        return {"status": "ignored", "action": event}

    def _changed(self, event: str, changed: bool, **info) -> dict:
        out = {"status": "ok" if changed else "unchanged", **info}
        if changed:
            out["job_id"], out["enqueued"] = self.backend.enqueue_rebuild(self.project, event)
        return out

    def _annotation(self, data: dict) -> dict:
        from_name, _ = label_fields(self.redis, self.ws)
        ev = parse_annotation_event(data, from_name)
        try:
            out = apply_annotation(self.pairs, self.tasks, self.ws, ev)
        except ApiError as exc:
            if exc.details.get("problem"):   # recorded: show it on the task too
                self._flag_problems()
            raise
        if out.pop("pair_changed"):
            out["job_id"], out["enqueued"] = self.backend.enqueue_rebuild(self.project, ev.action)
        if out.pop("flag_changed"):
            self._flag_problems()
        return out

    def _flag_problems(self) -> None:
        if ls_connection(self.redis, self.ws) is not None:
            enqueue_flags(self.redis, self.project, queue=self.backend.queue)

    # -- retrieval -----------------------------------------------------------------------
    def search(self, params: dict) -> dict:
        raw_k = params.get("k", 10)
        try:   # a query string gives "5"; JSON true or 2.5 are no count (int() took them as 1 and 2)
            if isinstance(raw_k, bool) or (isinstance(raw_k, float) and not raw_k.is_integer()):
                raise ValueError
            k = int(raw_k)
        except (TypeError, ValueError, OverflowError):
            raise ApiError(400, "k must be an integer") from None
        if not 1 <= k <= MAX_K:
            raise ApiError(400, f"k must be between 1 and {MAX_K}")
        given = [f for f in ("text", "image", "image_id", "text_id") if params.get(f) not in (None, "")]
        if len(given) != 1:
            raise ApiError(400, "give exactly one of 'text' (free text -> images), 'image' (an image "
                                "path, local-files URL or data: URL -> texts), 'image_id' (-> texts) "
                                "or 'text_id' (-> images)")
        field = given[0]
        query = params[field]
        if not isinstance(query, (str, int)):
            raise ApiError(400, f"{field} must be a string")
        query = str(query)
        snap = self.index()
        item = None   # (modality, id) when the query is an item of the project
        if field == "text":
            if len(query) > 10000:
                raise ApiError(400, "text is longer than 10000 characters")
            if snap.has_signal:
                enc = text_encoder(self.ws, self.backend.text_encoder_loader)
                features = np.asarray(enc.transform([query]), dtype=np.float32)
                codes = snap.encode("text", features)
            else:
                codes = np.zeros((1, 0), np.float32)
            hits, target = snap.search("text", codes, k)[0], "image"
        elif field == "image":
            ref = resolve_image(query, self.ws)   # refused here, before any read, if outside the roots
            known = known_item(ref, self.ws)
            if known is not None:
                item = ("image", known)
                hits = snap.rank("image", known, None, k)
            else:
                codes = self._image_codes(snap, ref) if snap.has_signal else np.zeros((1, 0), np.float32)
                hits = snap.search("image", codes, k)[0]
            target = "text"
            query = query[:40] + "..." if query.startswith("data:") else query[:300]  # echoed back
        else:
            qmod = "image" if field == "image_id" else "text"
            try:
                hits = snap.rank(qmod, query, None, k)
            except KeyError:
                raise ApiError(404, f"{qmod} {query!r} is not in project {self.project!r}") from None
            item, target = (qmod, query), other(qmod)
        labelled = snap.labelled_matches(*item) if item else []
        if labelled:   # a person paired them: first, with the score the index gives them
            first = snap.rank(item[0], item[1], labelled)
            hits = (first + [h for h in hits if h[0] not in labelled])[:k]
        contents = self.ws.contents(target)
        rows = self.ws.row_of(target)
        key = "path" if target == "image" else "text"
        results = [{"id": i, "score": round(s, 6), key: contents[rows[i]] if i in rows else None,
                    **({"labelled": True} if i in labelled else {})}
                   for i, s in hits]
        return {"project": self.project, "model_version": snap.model_version,
                "unlabelled": not snap.has_signal, "query": {field: query}, "target": target,
                "results": results}

    def _image_codes(self, snap: IndexSnapshot, ref) -> np.ndarray:
        enc = image_encoder(self.ws, self.backend.image_encoder_loader)
        with tempfile.TemporaryDirectory(prefix="xmodal-query-") as tmp:
            path = readable_path(ref, tmp)   # size and header checked: no decode yet
            # the decode itself, on the process's decode threads (bounded, see backend.decoding)
            features = np.asarray(decode(enc.features, [path]), dtype=np.float32)
        if not np.isfinite(features).all():
            why = (getattr(enc, "failures_", None) or [(None, "cannot read image")])[0][1]
            raise ApiError(422, f"the query image could not be embedded: {why}")
        return snap.encode("image", features)
