"""A thin, idempotent wrapper over label-studio-sdk 2.1.x for the xmodal loop.

    from xmodal.labelstudio import connect
    ls = connect("http://127.0.0.1:8080", api_key)          # ConfigError if unreachable / bad key
    pid = ls.ensure_project("coco", Path("label_config/image_to_text.xml").read_text())
    ids = ls.import_tasks(pid, tasks)                        # {item_id: task_id}; reruns add nothing
    ls.ensure_ml_backend(pid, "http://127.0.0.1:9090", "xmodal")
    ls.push_predictions(pid, {task_id: {"result": [...], "score": 0.4}}, "v3")
    ls.set_model_version(pid, "v3")                          # after the push, see below

Facts about Label Studio 1.23.2 this relies on (measured, /work/shared/docs/label-studio-1.23.md):
- ``ml.create`` calls the backend's ``GET /health`` and ``POST /setup`` and registers a project
  webhook ``<backend url>/webhook`` for all actions itself: never add another one (every event
  would arrive twice). It also sets the project's ``model_version`` to the backend's *title*.
- "Uncertainty sampling" (``GET /api/projects/<id>/next/``) serves tasks whose prediction
  ``model_version`` equals the project's ``model_version``, lowest ``score`` first; when they
  differ the order silently falls back to random. Hence ``set_model_version`` after every push.
- ``retrieve_tasks_predictions`` (Data Manager action) skips tasks that already have a prediction
  of the current version; ``push_predictions`` does the same on our side.
- Predictions are stored one request each (~0.1-0.2 s on the dev server); the bulk
  ``import/predictions`` silently drops results whose choice is a dynamic option. So a caller
  that needs speed pushes the few tasks ``/next/`` serves first (``parallel`` requests at a time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from xmodal.errors import ConfigError

UNCERTAINTY = "Uncertainty sampling"
PAGE_SIZE = 500


class AnnotationRecord(NamedTuple):
    task_id: int
    annotation_id: int
    result: list
    was_cancelled: bool


def _dump(obj: Any) -> Any:
    """SDK (pydantic) objects -> plain dicts/lists; plain values unchanged."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, list):
        return [_dump(x) for x in obj]
    return obj


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of a failed Label Studio call, without what must not reach a log or
    ``xmodal status``: an SDK ApiError's str() dumps every response header, its session cookie
    included, so it is the status code and the body."""
    if isinstance(exc, ApiError):
        return f"{type(exc).__name__}: HTTP {exc.status_code}: {_errors(exc)[:500]}"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{type(exc).__name__}: HTTP {exc.response.status_code}: {exc.response.text[:500]}"
    return f"{type(exc).__name__}: {exc}"


def _errors(exc: ApiError) -> str:
    """The useful part of an SDK ApiError (its str() dumps every response header)."""
    body = exc.body
    if isinstance(body, dict):
        return json.dumps(body.get("validation_errors") or body.get("detail") or body)
    return str(body)


def _url(url: str) -> str:
    return url.rstrip("/")


class LabelStudioClient:
    """Operations the product needs. ``self.sdk`` is the underlying ``LabelStudio`` client."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60):
        self.url = _url(url)
        self.sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    # -- raw HTTP for what the SDK lacks ----------------------------------------------------------
    def _get(self, path: str, **params) -> httpx.Response:
        """GET, retried twice on a 5xx: Label Studio on SQLite answers 500 "database is locked"
        when a read that writes (``/next/`` takes a task lock) meets a concurrent prediction push
        (seen once in the e2e test)."""
        wrapper = self.sdk._client_wrapper  # its headers carry "Token <key>" or a refreshed JWT
        for delay in (0.2, 0.5, None):
            r = httpx.get(f"{self.url}{path}", params=params, headers=wrapper.get_headers(),
                          timeout=wrapper.get_timeout())
            if r.status_code < 500 or delay is None:
                return r
            time.sleep(delay)
        return r

    # -- projects --------------------------------------------------------------------------------
    def find_project(self, title: str) -> int | None:
        """Id of the oldest project with exactly this title, or None."""
        ids = [p.id for p in self.sdk.projects.list(title=title, page_size=PAGE_SIZE) if p.title == title]
        return min(ids) if ids else None

    def ensure_project(self, title: str, label_config: str, sampling: str = UNCERTAINTY) -> int:
        """Find the project by title or create it; bring its label config and sampling up to date.

        Label Studio rejects an invalid config (or one incompatible with existing annotations, or a
        title shorter than 3 characters) with HTTP 400: raised as ConfigError with LS's reasons."""
        pid = self.find_project(title)
        try:
            if pid is None:
                return self.sdk.projects.create(title=title, label_config=label_config, sampling=sampling).id
            project = self.sdk.projects.get(pid)
            changes = {}
            if (project.label_config or "").strip() != label_config.strip():
                changes["label_config"] = label_config
            if project.sampling != sampling:
                changes["sampling"] = sampling
            if changes:
                self.sdk.projects.update(id=pid, **changes)
        except ApiError as exc:
            if exc.status_code != 400:
                raise
            raise ConfigError(f"Label Studio rejected project {title!r}: {_errors(exc)}") from exc
        return pid

    def set_model_version(self, project_id: int, version: str) -> None:
        """Point the project at ``version`` so /next/ orders by that version's prediction scores."""
        self.sdk.projects.update(id=project_id, model_version=version)

    # -- tasks -----------------------------------------------------------------------------------
    def list_tasks(self, project_id: int, *, fields: str = "task_only") -> list[dict]:
        """Every task of the project as a dict (``id``, ``data``, ``is_labeled``, ...).
        ``fields="all"`` adds ``annotations`` and ``predictions``."""
        return [_dump(t) for t in self.sdk.tasks.list(project=project_id, fields=fields, page_size=PAGE_SIZE)]

    def import_tasks(self, project_id: int, tasks: Iterable[Mapping]) -> dict[str, int]:
        """Import tasks whose ``data.item_id`` is not in the project yet; returns ``{item_id: task_id}``
        for every given task (existing and new), so a rerun imports nothing and returns the same map.

        A task is ``{"data": {...}}`` or just the data dict; ``data.item_id`` is required (it is what
        makes the import idempotent) and compared as a string."""
        wanted: dict[str, dict] = {}
        for task in tasks:
            task = dict(task)
            if not isinstance(task.get("data"), Mapping):
                task = {"data": task}
            item = task["data"].get("item_id")
            if item is None:
                raise ValueError(f"task without data.item_id: {json.dumps(task)[:200]}")
            wanted.setdefault(str(item), task)
        have = self._task_ids_by_item(project_id)
        new = [t for item, t in wanted.items() if item not in have]
        if new:
            self.sdk.projects.import_tasks(project_id, request=new, commit_to_project=True)
            have = self._task_ids_by_item(project_id)
        return {item: have[item] for item in wanted if item in have}

    def _task_ids_by_item(self, project_id: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.list_tasks(project_id):
            item = (t.get("data") or {}).get("item_id")
            if item is not None:
                out.setdefault(str(item), t["id"])  # the oldest task wins if duplicates exist
        return out

    def next_task(self, project_id: int) -> dict | None:
        """The task Label Studio would serve next to this user (``GET /api/projects/<id>/next/``),
        or None when there is none left (LS answers 404)."""
        r = self._get(f"/api/projects/{project_id}/next/")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    # -- ML backend and storage ------------------------------------------------------------------
    def ensure_ml_backend(self, project_id: int, url: str, title: str) -> int:
        """Connect the ML backend at ``url`` once (matched by URL); returns its id.

        ``ml.create`` makes LS call the backend's /health and /setup (so it must be up) and
        register ``<url>/webhook`` as a project webhook for all events: do not add one yourself.
        It is connected for interactive pre-annotations: the page's search box asks it for the
        texts that match (``xmodal.labelstudio.page_search``).
        LS also sets the project's model_version to ``title``; call ``set_model_version`` after
        pushing predictions."""
        for backend in self.sdk.ml.list(project=project_id):
            if _url(backend.url) == _url(url):
                if not backend.is_interactive:   # connected before the page search existed
                    self.sdk.ml.update(id=backend.id, project=project_id, url=backend.url, is_interactive=True)
                return backend.id
        try:
            return self.sdk.ml.create(project=project_id, url=url, title=title, is_interactive=True).id
        except ApiError as exc:
            raise ConfigError(
                f"Label Studio could not connect the ML backend at {url} (HTTP {exc.status_code}: "
                f"{_errors(exc)}). Check that the backend is running and reachable FROM the Label Studio "
                "host; for a backend on localhost Label Studio needs "
                "LABEL_STUDIO_ML_BLOCK_LOCAL_IP=false and LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false."
            ) from exc

    def interactive(self, project_id: int, task_id: int, context: dict) -> list[dict]:
        """What the labelling page gets when a region is made with interactive pre-annotation on
        (the page search: ``xmodal.labelstudio.page_search``): Label Studio's
        ``/api/ml/<id>/interactive-annotating``, which calls the backend's /predict with
        ``context``. Returns the result regions (empty when it gave none)."""
        backend = next((b for b in self.sdk.ml.list(project=project_id) if b.is_interactive), None)
        if backend is None:
            raise ConfigError(f"project {project_id} has no ML backend connected for interactive "
                              "pre-annotations")
        wrapper = self.sdk._client_wrapper
        r = httpx.post(f"{self.url}/api/ml/{backend.id}/interactive-annotating",
                       json={"task": int(task_id), "context": context},
                       headers=wrapper.get_headers(), timeout=wrapper.get_timeout())
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise ConfigError(f"Label Studio's interactive call failed: {body['errors']}")
        return list((body.get("data") or {}).get("result") or [])

    def ensure_local_storage(self, project_id: int, path: str, title: str | None = None) -> int:
        """Register ``path`` as a local-files import storage (once) so LS serves its files at
        ``/data/local-files/?d=<path relative to the document root>``; returns the storage id.

        The storage is not synced: tasks come from ``import_tasks``, the storage only grants access.
        LS requires LOCAL_FILES_SERVING_ENABLED=true and ``path`` strictly under
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (else HTTP 400)."""
        path = path.rstrip("/")
        for storage in self.sdk.import_storage.local.list(project=project_id):
            if (storage.path or "").rstrip("/") == path:
                return storage.id
        try:
            return self.sdk.import_storage.local.create(
                project=project_id, path=path, title=title or path, use_blob_urls=True).id
        except ApiError as exc:
            raise ConfigError(
                f"Label Studio refused local storage {path} (HTTP {exc.status_code}: {_errors(exc)}). "
                "Start Label Studio with LOCAL_FILES_SERVING_ENABLED=true and "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a parent directory of it."
            ) from exc

    # -- predictions and annotations -------------------------------------------------------------
    def push_predictions(self, project_id: int, predictions_by_task_id: Mapping[int, Mapping],
                         model_version: str, *, parallel: int = 1, skip_existing: bool = True,
                         existing: Mapping[int, int] | None = None) -> dict[int, int]:
        """Store one prediction per task: values are ``{"result": [...], "score": float}`` (other keys
        ignored). ``existing[task]``: the task's prediction, updated in place (``PATCH``; created
        anew if it is gone). Tasks that already have a prediction of ``model_version`` are skipped
        with ``skip_existing``, so a retry does not duplicate. Returns ``{task id: prediction id}``
        for the ones written.

        Label Studio stores predictions one request at a time (~0.1-0.2 s each on its dev server);
        ``parallel`` > 1 sends that many at once (its threaded server overlaps them, SQLite still
        serialises the writes). The duplicate check asks per task (``GET /api/predictions/?task=``,
        ~0.07 s), never for the whole project's list, which grows with every version."""
        existing = existing or {}

        def push(item) -> tuple[int, int | None]:
            task_id, pred = int(item[0]), item[1]
            if skip_existing and any(p.model_version == model_version
                                     for p in self.sdk.predictions.list(task=task_id)):
                return task_id, None
            kwargs = {"score": float(pred["score"])} if pred.get("score") is not None else {}
            result = list(pred.get("result") or [])
            if task_id in existing:
                try:
                    self.sdk.predictions.update(id=int(existing[task_id]), result=result,
                                                model_version=model_version, **kwargs)
                    return task_id, int(existing[task_id])
                except ApiError as exc:
                    if exc.status_code != 404:
                        raise
            created = self.sdk.predictions.create(task=task_id, result=result,
                                                  model_version=model_version, **kwargs)
            return task_id, int(created.id)

        done = self._each(push, list(predictions_by_task_id.items()), parallel)
        return {t: p for t, p in done if p is not None}

    def task_data(self, task_id: int) -> dict:
        """A task's ``data`` as Label Studio has it now."""
        return dict(_dump(self.sdk.tasks.get(int(task_id))).get("data") or {})

    def update_task_data(self, task_id: int, data: Mapping) -> None:
        """Replace a task's ``data`` (``PATCH /api/tasks/<id>/``), e.g. re-ranked ``options``."""
        self.sdk.tasks.update(id=int(task_id), data=dict(data))

    def update_tasks_data(self, data_by_task_id: Mapping[int, Mapping], *, parallel: int = 1) -> int:
        """``update_task_data`` for several tasks, ``parallel`` requests at a time; returns how many."""
        return len(self._each(lambda kv: self.update_task_data(*kv), list(data_by_task_id.items()),
                              parallel))

    @staticmethod
    def _each(fn, items: list, parallel: int) -> list:
        """``[fn(x) for x in items]``, with up to ``parallel`` requests in flight (the SDK's httpx
        client is thread-safe). The first exception is raised after the others finished."""
        if parallel <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
            return list(pool.map(fn, items))

    def list_annotations(self, project_id: int) -> list[AnnotationRecord]:
        """(task_id, annotation_id, result, was_cancelled) for every annotation of every task,
        skipped ones (was_cancelled) included: the source of truth a resync job rebuilds from,
        since webhooks are delivered once with a 1 s timeout and may be lost."""
        out = []
        for task in self.list_tasks(project_id, fields="all"):
            for ann in task.get("annotations") or []:
                out.append(AnnotationRecord(int(task["id"]), int(ann["id"]), list(ann.get("result") or []),
                                            bool(ann.get("was_cancelled"))))
        return out


def connect(url: str, api_key: str, *, timeout: float = 60) -> LabelStudioClient:
    """A client for the Label Studio at ``url``, checked with one authenticated request.

    Raises ConfigError saying what to check when the server cannot be reached or rejects the key."""
    if not url:
        raise ConfigError("no Label Studio URL: set LABEL_STUDIO_URL (e.g. http://127.0.0.1:8080)")
    if not api_key:
        raise ConfigError("no Label Studio API key: set LABEL_STUDIO_API_KEY (Account & Settings > "
                          "Access Token in Label Studio)")
    try:
        client = LabelStudioClient(url, api_key, timeout=timeout)
        client.sdk.users.whoami()
    except httpx.TransportError as exc:
        raise ConfigError(f"cannot reach Label Studio at {url} ({type(exc).__name__}: {exc}); check "
                          "LABEL_STUDIO_URL and that the server is running") from exc
    except ApiError as exc:
        if exc.status_code in (401, 403) or exc.status_code is None:
            detail = exc.body.get("detail") if isinstance(exc.body, dict) else exc.body
            raise ConfigError(
                f"Label Studio at {url} rejected the API key ({exc.status_code}: {detail}); check "
                "LABEL_STUDIO_API_KEY. A legacy token needs legacy tokens enabled in the organization "
                "(LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true when it was created); a personal access "
                "token must be the refresh token shown by Label Studio") from exc
        raise ConfigError(f"unexpected answer from Label Studio at {url} ({exc.status_code}: "
                          f"{_errors(exc)}); is LABEL_STUDIO_URL the server's base URL?") from exc
    return client


__all__ = ["AnnotationRecord", "LabelStudioClient", "UNCERTAINTY", "connect"]
