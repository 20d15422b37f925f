"""A project's connection to its Label Studio: where it is, with which key, and what the backend
learned from Label Studio (the Redis hash ``P:{p}:ls``, owned here the way
:class:`~xmodal.project.pairs.PairStore` owns the pairs).

- :class:`ConnectionRecord` — what ``/setup`` and ``/predict`` taught the backend: the URL and token
  a trusted ``/setup`` sent, the labelling config's field names, the last URL refused;
- :func:`ls_connection` — the URL, key and project id the workers call, or None (never a host the
  operator did not configure: :mod:`xmodal.labelstudio.hosts`);
- :func:`open_label_studio` — the client the workers use, one per Label Studio and key in a
  process (tests stand a recording fake in for it).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from xmodal import settings
from xmodal.labelstudio.client import LabelStudioClient
from xmodal.labelstudio.hosts import ENV, trusted_url
from xmodal.logfmt import kv
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)


class ConnectionRecord:
    """The Redis hash ``P:{p}:ls`` of one project."""

    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis, self.project = redis_client, project
        self.key = pkey(project, "ls")

    def learned(self) -> dict[str, str]:
        return {k.decode(): v.decode(errors="replace") for k, v in self.redis.hgetall(self.key).items()}

    def learn(self, *, url: str | None = None, api_key: str | None = None) -> None:
        """What a trusted ``/setup`` sent: Label Studio's URL (the operator's spelling of it) and
        its token."""
        values = {k: v for k, v in (("url", url), ("api_key", api_key)) if v}
        if values:
            self.redis.hset(self.key, mapping=values)

    def learn_fields(self, from_name: str, to_name: str) -> None:
        """The choices' from/to names of the labelling config (predictions must name them)."""
        self.redis.hset(self.key, mapping={"from_name": from_name, "to_name": to_name})

    def fields(self) -> tuple[str, str] | None:
        learned = self.redis.hmget(self.key, "from_name", "to_name")
        return (learned[0].decode(), learned[1].decode()) if learned[0] and learned[1] else None

    def refuse(self, url: str, where: str) -> None:
        """Record and log a Label Studio URL that is not configured (nothing is sent to it)."""
        shown = url[:200]
        self.redis.hset(self.key, mapping={"refused_url": shown, "refused_at": time.time()})
        log.warning(kv("ls.untrusted_host", project=self.project, url=shown, where=where,
                       fix=f"set LABEL_STUDIO_URL or {ENV} to send the Label Studio API key there"))

    def refused(self) -> str | None:
        """The last refused URL (for ``xmodal status``), if any."""
        value = self.redis.hget(self.key, "refused_url")
        return value.decode(errors="replace") if value else None


def ls_connection(redis_client: redis.Redis, ws: Workspace) -> dict | None:
    """``{"url", "api_key", "project_id"}`` or None when the project has no Label Studio link.

    URL: ``$LABEL_STUDIO_URL``, else the workspace config, else the ``hostname`` Label Studio sent
    to /setup. Key: ``$LABEL_STUDIO_API_KEY``, else the ``access_token`` sent to /setup. None as
    well when the URL is not one the operator configured (:mod:`xmodal.labelstudio.hosts`): the
    key never goes to a host a /setup request picked."""
    ls = ws.config["label_studio"]
    pid = ls.get("project_id")
    if pid is None:
        return None
    record = ConnectionRecord(redis_client, ws.name)
    learned = record.learned()
    named = settings.get("LABEL_STUDIO_URL") or ls.get("url") or learned.get("url")
    key = settings.get("LABEL_STUDIO_API_KEY") or learned.get("api_key")
    if not named or not key:
        return None
    url = trusted_url(named, ls)   # the configured spelling: what the client parses and calls
    if url is None:
        record.refuse(named, where="connection")
        return None
    return {"url": url.rstrip("/"), "api_key": key, "project_id": int(pid)}


class LabelStudioAPI:
    """What the push needs from Label Studio, over :class:`LabelStudioClient` (tests stand a
    recording fake in for it through :func:`open_label_studio`)."""

    def __init__(self, url: str, api_key: str):
        # no check request: every job runs in a fresh work horse (the client cache below dies with
        # it), and the check (GET whoami) cost each label's push 0.3-0.8 s of Label Studio's time
        # on a loaded machine before its first useful request. A bad key or an unreachable server
        # fails that first request instead, and the push says which (LabelStudioPushError).
        self.client = LabelStudioClient(url, api_key)

    def list_tasks(self, project_id: int, fields: str = "task_only") -> list[dict] | None:
        """Tasks as dicts (``id``, ``data``, ``is_labeled``; ``annotations`` with fields="all")."""
        return self.client.list_tasks(project_id, fields=fields)

    def push_predictions(self, project_id: int, predictions: dict, model_version: str,
                         existing: dict | None = None) -> dict:
        """``{task id: prediction id}``: the task's prediction ``existing[task]`` updated in place,
        else a new one. Each rebuild (a retry too) pushes a version number of its own: no duplicate
        check needed."""
        return self.client.push_predictions(project_id, predictions, model_version,
                                            parallel=settings.get("XMODAL_LS_PARALLEL"), skip_existing=False,
                                            existing=existing)

    def update_tasks_data(self, project_id: int, data_by_task_id: dict) -> int:
        return self.client.update_tasks_data(data_by_task_id, parallel=settings.get("XMODAL_LS_PARALLEL"))

    def task_data(self, task_id: int) -> dict:
        return self.client.task_data(task_id)

    def set_model_version(self, project_id: int, version: str):
        return self.client.set_model_version(project_id, version)


_apis: dict[tuple[str, str], LabelStudioAPI] = {}
_apis_lock = threading.Lock()


def open_label_studio(url: str, api_key: str):
    """The client the push uses, one per Label Studio and key in this process: connecting checks
    the key with a request, which every rebuild would otherwise pay again."""
    with _apis_lock:
        api = _apis.get((url, api_key))
    if api is None:
        api = LabelStudioAPI(url, api_key)
        with _apis_lock:
            _apis[(url, api_key)] = api
    return api


