"""Label Studio 1.23's REST API for the xmodal loop, on one pooled ``httpx.Client``.

    from xmodal.labelstudio import connect
    ls = connect("http://127.0.0.1:8080", api_key)          # ConfigError if unreachable / bad key
    pid = ls.ensure_project("coco", Path("label_config/image_to_text.xml").read_text())
    ids = ls.import_tasks(pid, tasks)                        # {item_id: task_id}; reruns add nothing
    ls.ensure_ml_backend(pid, "http://127.0.0.1:9090", "xmodal")
    ls.push_predictions(pid, {task_id: {"result": [...], "score": 0.4}}, "v3")
    ls.set_model_version(pid, "v3")                          # after the push, see below

It speaks HTTP itself rather than through label-studio-sdk, which pulled ~350 MB (pandas, opencv,
nltk, ...) and capped numpy for the dozen endpoints used here; the endpoints, query parameters and
pagination are the ones that SDK 2.1.x used.

Facts about Label Studio 1.23.2 this relies on (measured, /work/shared/docs/label-studio-1.23.md):
- Connecting an ML backend (``POST /api/ml/``) calls the backend's ``GET /health`` and ``POST /setup``
  and registers a project webhook ``<backend url>/webhook`` for all actions itself: never add another
  one (every event would arrive twice). It also sets the project's ``model_version`` to the backend's
  *title*.
- "Uncertainty sampling" (``GET /api/projects/<id>/next/``) serves tasks whose prediction
  ``model_version`` equals the project's ``model_version``, lowest ``score`` first; when they
  differ the order silently falls back to random. Hence ``set_model_version`` after every push.
- ``retrieve_tasks_predictions`` (Data Manager action) skips tasks that already have a prediction
  of the current version; ``push_predictions`` does the same on our side.
- Predictions are stored one request each (~0.1-0.2 s on the dev server); the bulk
  ``import/predictions`` silently drops results whose choice is a dynamic option. So a caller
  that needs speed pushes the few tasks ``/next/`` serves first (``parallel`` requests at a time).
- Lists are paginated (``?page=&page_size=``; projects at most 100 a page) and a page past the end
  answers 404 "Invalid page."
- A personal access token is a JWT *refresh* token: requests carry ``Bearer <access token>``, got
  from ``POST /api/token/refresh/`` and renewed before it expires (5 min); a legacy token is sent as
  ``Token <key>``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx

from xmodal.errors import ConfigError

UNCERTAINTY = "Uncertainty sampling"
PAGE_SIZE = 500
RETRY_DELAYS = (0.2, 0.5)   # seconds before the 2nd and the 3rd try of a request
RENEW_BEFORE = 30           # seconds: an access token this close to its expiry is renewed first


class AnnotationRecord(NamedTuple):
    task_id: int
    annotation_id: int
    result: list
    was_cancelled: bool


class FileAnswer(NamedTuple):
    """What :meth:`LabelStudioClient.download` got: the status, a redirect's ``Location``, the
    body (None unless 200 and within the limit) and whether it was over the limit."""
    status: int
    location: str | None
    content: bytes | None
    over_limit: bool = False


class LabelStudioError(Exception):
    """Label Studio answered a request with an error status. Keeps the status code and the body
    (parsed when it is JSON), never the response headers: they carry the session cookie, and this
    error's text reaches logs and ``xmodal status``."""

    def __init__(self, status_code: int, body: Any):
        super().__init__(status_code, body)
        self.status_code = status_code
        self.body = body

    @classmethod
    def of(cls, response: httpx.Response) -> LabelStudioError:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return cls(response.status_code, body)

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {_errors(self)[:500]}"


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of a failed Label Studio call, for a log line or ``xmodal status``
    (:class:`LabelStudioError` tells its status and body, never its headers)."""
    return f"{type(exc).__name__}: {exc}"


def _errors(exc: LabelStudioError) -> str:
    """The useful part of an error body: Label Studio's validation errors or detail."""
    body = exc.body
    if isinstance(body, dict):
        return json.dumps(body.get("validation_errors") or body.get("detail") or body)
    return str(body)


def _url(url: str) -> str:
    return url.rstrip("/")


def _jwt_claims(token: str) -> dict | None:
    """The claims of a JWT (not verified: the server does that), or None for anything else, e.g. a
    legacy token (40 hex digits)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioClient:
    """Operations the product needs, plus :meth:`api` for any other endpoint. One ``httpx.Client``
    (keep-alive connections, thread-safe: ``push_predictions`` shares it between threads)."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60):
        self.url = _url(url)
        self._key = api_key
        self._personal = _jwt_claims(api_key) is not None   # a personal access token
        self._access: tuple[str, float] | None = None        # (access token, its expiry)
        self._access_lock = threading.Lock()
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"User-Agent": "xmodal", "Accept": "application/json"})

    def close(self) -> None:
        self._http.close()

    # -- HTTP ------------------------------------------------------------------------------------
    def _authorization(self) -> str:
        """The Authorization header: ``Token <key>`` for a legacy token; for a personal access
        token (a JWT refresh token) ``Bearer <access token>``, exchanged at /api/token/refresh/
        once and again shortly before the access token expires (under a lock: one exchange when
        several threads need it)."""
        if not self._personal:
            return f"Token {self._key}"
        with self._access_lock:
            if self._access is None or self._access[1] - RENEW_BEFORE < time.time():
                r = self._http.post("/api/token/refresh/", json={"refresh": self._key})
                if r.status_code != 200:
                    raise LabelStudioError.of(r)
                access = r.json()["access"]
                self._access = (access, float((_jwt_claims(access) or {}).get("exp") or 0))
            return f"Bearer {self._access[0]}"

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One request, tried up to three times when Label Studio answers 5xx/429 or the connection
        drops before an answer, as the SDK did for every call: Label Studio on SQLite answers 500
        "database is locked" when a request that writes (``/next/`` takes a task lock, a
        prediction push) meets a concurrent one (seen in the e2e test). Any status is returned."""
        for delay in (*RETRY_DELAYS, None):
            try:
                r = self._http.request(method, path, headers={"Authorization": self._authorization()},
                                       **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if delay is None:
                    raise
            else:
                if delay is None or (r.status_code < 500 and r.status_code != 429):
                    return r
            time.sleep(delay)
        raise AssertionError("unreachable")

    def download(self, path: str, max_bytes: int) -> FileAnswer:
        """GET a file at ``path`` (``/data/upload/...?...``: a path on this Label Studio, so the key
        goes nowhere else), never following a redirect, reading at most ``max_bytes``."""
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"not a path on this Label Studio: {path[:200]!r}")
        headers = {"Authorization": self._authorization(), "Accept": "image/*,*/*;q=0.5"}
        with self._http.stream("GET", path, headers=headers) as r:
            if r.status_code != 200:
                return FileAnswer(r.status_code, r.headers.get("location"), None)
            declared = r.headers.get("content-length") or ""
            if declared.isdigit() and int(declared) > max_bytes:
                return FileAnswer(200, None, None, True)
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    return FileAnswer(200, None, None, True)
            return FileAnswer(200, None, bytes(body))

    def _get(self, path: str, **params) -> httpx.Response:
        """GET ``path`` (with the retry), whatever the answer's status."""
        return self._send("GET", path, params=params)

    def api(self, method: str, path: str, **kwargs) -> Any:
        """``method path`` (httpx keyword arguments: ``params``, ``json``) -> the answer's JSON, or
        None for an empty one. LabelStudioError for an error status, and for a success that is not
        JSON (a URL that is not Label Studio's API answers an HTML page)."""
        r = self._send(method, path, **kwargs)
        if not r.is_success:
            raise LabelStudioError.of(r)
        try:
            return r.json() if r.content else None
        except ValueError:
            raise LabelStudioError(r.status_code, r.text) from None

    def _pages(self, path: str, items: str, total: str, **params) -> Iterator[dict]:
        """Every item of a paginated list: the answers' ``items`` lists, page after page until
        ``total`` items came (or an empty page, or a 404 past the first page: Label Studio's
        answer to a page past the end, e.g. when items were deleted while listing)."""
        seen = 0
        for page in itertools.count(1):
            r = self._send("GET", path, params={**params, "page": page, "page_size": PAGE_SIZE})
            if r.status_code == 404 and page > 1:
                return
            if not r.is_success:
                raise LabelStudioError.of(r)
            body = r.json()
            yield from body[items]
            seen += len(body[items])
            if not body[items] or seen >= body[total]:
                return

    # -- projects --------------------------------------------------------------------------------
    def find_project(self, title: str) -> int | None:
        """Id of the oldest project with exactly this title, or None (Label Studio's ``title``
        filter matches substrings, case-insensitively)."""
        ids = [p["id"] for p in self._pages("/api/projects/", "results", "count", title=title)
               if p["title"] == title]
        return min(ids) if ids else None

    def get_project(self, project_id: int) -> dict:
        """The project as Label Studio has it (``title``, ``label_config``, ``model_version``, ...)."""
        return self.api("GET", f"/api/projects/{int(project_id)}/")

    def delete_project(self, project_id: int) -> None:
        """Delete the project with its tasks, annotations and predictions."""
        self.api("DELETE", f"/api/projects/{int(project_id)}/")

    def ensure_project(self, title: str, label_config: str, sampling: str = UNCERTAINTY) -> int:
        """Find the project by title or create it; bring its label config and sampling up to date.

        Label Studio rejects an invalid config (or one incompatible with existing annotations, or a
        title shorter than 3 characters) with HTTP 400: raised as ConfigError with LS's reasons."""
        pid = self.find_project(title)
        try:
            if pid is None:
                return int(self.api("POST", "/api/projects/", json={
                    "title": title, "label_config": label_config, "sampling": sampling})["id"])
            project = self.get_project(pid)
            changes = {}
            if (project.get("label_config") or "").strip() != label_config.strip():
                changes["label_config"] = label_config
            if project.get("sampling") != sampling:
                changes["sampling"] = sampling
            if changes:
                self.api("PATCH", f"/api/projects/{pid}/", json=changes)
        except LabelStudioError as exc:
            if exc.status_code != 400:
                raise
            raise ConfigError(f"Label Studio rejected project {title!r}: {_errors(exc)}") from exc
        return pid

    def set_model_version(self, project_id: int, version: str) -> None:
        """Point the project at ``version`` so /next/ orders by that version's prediction scores."""
        self.api("PATCH", f"/api/projects/{int(project_id)}/", json={"model_version": version})

    # -- tasks -----------------------------------------------------------------------------------
    def list_tasks(self, project_id: int, *, fields: str = "task_only") -> list[dict]:
        """Every task of the project as a dict (``id``, ``data``, ``is_labeled``, ...).
        ``fields="all"`` adds ``annotations`` and ``predictions``."""
        return list(self._pages("/api/tasks/", "tasks", "total", project=int(project_id), fields=fields))

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
            self.api("POST", f"/api/projects/{int(project_id)}/import", json=new,
                     params={"commit_to_project": "true"})
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
        r = self._get(f"/api/projects/{int(project_id)}/next/")
        if r.status_code == 404:
            return None
        if not r.is_success:
            raise LabelStudioError.of(r)
        return r.json()

    # -- ML backend and storage ------------------------------------------------------------------
    def _ml_backends(self, project_id: int) -> list[dict]:
        return self.api("GET", "/api/ml/", params={"project": int(project_id)})

    def ensure_ml_backend(self, project_id: int, url: str, title: str) -> int:
        """Connect the ML backend at ``url`` once (matched by URL); returns its id.

        Connecting makes LS call the backend's /health and /setup (so it must be up) and register
        ``<url>/webhook`` as a project webhook for all events: do not add one yourself.
        It is connected for interactive pre-annotations: the page's search box asks it for the
        texts that match (``xmodal.labelstudio.page_search``).
        LS also sets the project's model_version to ``title``; call ``set_model_version`` after
        pushing predictions."""
        for backend in self._ml_backends(project_id):
            if _url(backend["url"]) == _url(url):
                if not backend.get("is_interactive"):   # connected before the page search existed
                    self.api("PATCH", f"/api/ml/{int(backend['id'])}", json={
                        "project": int(project_id), "url": backend["url"], "is_interactive": True})
                return int(backend["id"])
        try:
            return int(self.api("POST", "/api/ml/", json={
                "project": int(project_id), "url": url, "title": title, "is_interactive": True})["id"])
        except LabelStudioError as exc:
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
        backend = next((b for b in self._ml_backends(project_id) if b.get("is_interactive")), None)
        if backend is None:
            raise ConfigError(f"project {project_id} has no ML backend connected for interactive "
                              "pre-annotations")
        body = self.api("POST", f"/api/ml/{int(backend['id'])}/interactive-annotating",
                        json={"task": int(task_id), "context": context}) or {}
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
        for storage in self.api("GET", "/api/storages/localfiles/", params={"project": int(project_id)}):
            if (storage.get("path") or "").rstrip("/") == path:
                return int(storage["id"])
        try:
            return int(self.api("POST", "/api/storages/localfiles/", json={
                "project": int(project_id), "path": path, "title": title or path,
                "use_blob_urls": True})["id"])
        except LabelStudioError as exc:
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
        for the ones written (an update in place skips the check: it cannot duplicate, and the check
        was one more Label Studio request per task before the flip).

        Label Studio stores predictions one request at a time (~0.1-0.2 s each on its dev server);
        ``parallel`` > 1 sends that many at once (its threaded server overlaps them, SQLite still
        serialises the writes). The duplicate check asks per task (``GET /api/predictions/?task=``,
        ~0.07 s), never for the whole project's list, which grows with every version."""
        existing = existing or {}

        def push(item) -> tuple[int, int | None]:
            task_id, pred = int(item[0]), item[1]
            body = {"result": list(pred.get("result") or []), "model_version": model_version}
            if pred.get("score") is not None:
                body["score"] = float(pred["score"])
            if task_id in existing:   # in place: a retry writes the same again, nothing to check first
                try:
                    self.api("PATCH", f"/api/predictions/{int(existing[task_id])}/", json=body)
                    return task_id, int(existing[task_id])
                except LabelStudioError as exc:
                    if exc.status_code != 404:
                        raise
            if skip_existing and any(p.get("model_version") == model_version for p in
                                     self.api("GET", "/api/predictions/", params={"task": task_id})):
                return task_id, None
            created = self.api("POST", "/api/predictions/", json={"task": task_id, **body})
            return task_id, int(created["id"])

        done = self._each(push, list(predictions_by_task_id.items()), parallel)
        return {t: p for t, p in done if p is not None}

    def task_data(self, task_id: int) -> dict:
        """A task's ``data`` as Label Studio has it now."""
        return dict(self.api("GET", f"/api/tasks/{int(task_id)}/").get("data") or {})

    def update_task_data(self, task_id: int, data: Mapping) -> None:
        """Replace a task's ``data`` (``PATCH /api/tasks/<id>/``), e.g. re-ranked ``options``."""
        self.api("PATCH", f"/api/tasks/{int(task_id)}/", json={"data": dict(data)})

    def update_tasks_data(self, data_by_task_id: Mapping[int, Mapping], *, parallel: int = 1) -> int:
        """``update_task_data`` for several tasks, ``parallel`` requests at a time; returns how many."""
        return len(self._each(lambda kv: self.update_task_data(*kv), list(data_by_task_id.items()),
                              parallel))

    @staticmethod
    def _each(fn, items: list, parallel: int) -> list:
        """``[fn(x) for x in items]``, with up to ``parallel`` requests in flight (the httpx client
        is thread-safe). The first exception is raised after the others finished."""
        if parallel <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
            return list(pool.map(fn, items))

    def create_annotation(self, task_id: int, result: list, *, was_cancelled: bool = False,
                          **fields) -> dict:
        """Annotate a task as this user (what an annotator's submit or skip does; Label Studio then
        calls the backend's /webhook itself); returns the annotation (``id``, ...). ``fields``:
        more of its fields, e.g. ``lead_time``."""
        return self.api("POST", f"/api/tasks/{int(task_id)}/annotations/",
                        json={"result": result, "was_cancelled": was_cancelled, **fields})

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
    client = LabelStudioClient(url, api_key, timeout=timeout)
    try:
        client.api("GET", "/api/current-user/whoami")
    except httpx.TransportError as exc:
        client.close()
        raise ConfigError(f"cannot reach Label Studio at {url} ({type(exc).__name__}: {exc}); check "
                          "LABEL_STUDIO_URL and that the server is running") from exc
    except LabelStudioError as exc:
        client.close()
        if exc.status_code in (401, 403):
            detail = exc.body.get("detail") if isinstance(exc.body, dict) else exc.body
            raise ConfigError(
                f"Label Studio at {url} rejected the API key ({exc.status_code}: {detail}); check "
                "LABEL_STUDIO_API_KEY. A legacy token needs legacy tokens enabled in the organization "
                "(LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true when it was created); a personal access "
                "token must be the refresh token shown by Label Studio") from exc
        raise ConfigError(f"unexpected answer from Label Studio at {url} ({exc.status_code}: "
                          f"{_errors(exc)}); is LABEL_STUDIO_URL the server's base URL?") from exc
    return client


__all__ = ["AnnotationRecord", "FileAnswer", "LabelStudioClient", "LabelStudioError", "UNCERTAINTY", "connect",
           "describe_error"]
