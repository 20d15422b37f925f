"""Label Studio tasks: the data of one medoid's task (its item and ranked options) and the
registry of the tasks the backend has seen.

Options: before the index can rank (Pearson needs 2 pairs) every task offers the same diverse
pool (k-medoids of the other modality); after, the top ``candidates`` by the current index
(:func:`ranked_candidates`, :class:`OptionRanker` for the rebuild's re-ranking).

The registry is filled from every task the backend sees (``/predict`` bodies, webhook payloads, TASKS_CREATED) and
by whoever imports the tasks; the rebuild job falls back on it to know which tasks to refresh
predictions for when the Label Studio client cannot list them.
"""

from __future__ import annotations

import html
import json

import redis

from xmodal.index.store import IndexSnapshot
from xmodal.index.workspace import Workspace
from xmodal.labelstudio.images import MEDOID_THUMB, OPTION_THUMB, ImageURLs, document_root
from xmodal.redis_conn import pkey

# -- tasks ------------------------------------------------------------------------------------

def ranked_candidates(snap, select: str, item_id: str, pool: list[str], n: int) -> list[str]:
    """Top ``n`` of the other modality for ``item_id`` by the index, or the diverse pool."""
    if snap is not None and snap.has_signal:
        return [cid for cid, _ in snap.rank(select, item_id, None, n)]
    return list(pool[:n])


def task_options(ws, candidates: list[str], urls: ImageURLs, texts: dict | None = None) -> list[dict]:
    """``data.options`` of a task: one ``{"value": id, "html": ...}`` per candidate (captions for
    image tasks, thumbnails for text tasks). ``texts``: id -> text, if the caller has it already."""
    if ws.select == "image":
        texts = texts if texts is not None else dict(zip(ws.ids("text"), ws.contents("text")))
        return [{"value": c, "html": html.escape(texts[c], quote=False)} for c in candidates]
    return [{"value": c, "html": f"<img src='{urls(c, OPTION_THUMB)}' style='max-height:120px' "
                                 f"title='{html.escape(c)}'>"} for c in candidates]


def task_data(ws, item_id: str, cluster: int, candidates: list[str], urls: ImageURLs) -> dict:
    """``data`` of one Label Studio task (keys documented in label_config/README.md)."""
    texts = dict(zip(ws.ids("text"), ws.contents("text")))
    options = task_options(ws, candidates, urls, texts)
    if ws.select == "image":
        return {"item_id": item_id, "image": urls(item_id, MEDOID_THUMB), "options": options,
                "cluster": int(cluster)}
    return {"item_id": item_id, "text": texts[item_id], "options": options, "cluster": int(cluster)}


def build_tasks(ws, medoid_ids: list[str], pool: list[str], n_candidates: int, urls: ImageURLs,
                snap=None) -> list[dict]:
    """One task per medoid, in anytime order; ``cluster`` = the medoid's position."""
    select = ws.select
    return [{"data": task_data(ws, m, j, ranked_candidates(snap, select, m, pool, n_candidates), urls)}
            for j, m in enumerate(medoid_ids)]


def _record_tasks(r, ws, task_ids: dict[str, int], tasks: list[dict]) -> None:

    by_item = {t["data"]["item_id"]: t for t in tasks}
    TaskRegistry(r, ws.name).record([{"id": tid, "data": by_item[item]["data"]}
                                     for item, tid in task_ids.items() if item in by_item])


class OptionRanker:
    """Re-ranked ``data.options`` for tasks of the workspace, by an index with signal."""

    def __init__(self, ws: Workspace, snap: IndexSnapshot):
        self.ws, self.snap = ws, snap
        self.n = int(ws.config.get("candidates") or 10)
        self._urls = self._texts = None

    def new_data(self, task: dict) -> dict | None:
        """The task's data with options re-ranked by the index, or None if they already are."""
        data = task.get("data") or {}
        ranked = ranked_candidates(self.snap, self.ws.select, str(data["item_id"]), [],
                                                  self.n)
        if not ranked or option_values(data.get("options")) == ranked:
            return None
        if self.ws.select == "image":
            if self._texts is None:
                self._texts = dict(zip(self.ws.ids("text"), self.ws.contents("text")))
        elif self._urls is None:
            ls = self.ws.config["label_studio"]
            self._urls = ImageURLs(self.ws, ls.get("images") or "inline",
                                                  document_root(ls.get("document_root")))
        return dict(data, options=task_options(self.ws, ranked, self._urls, self._texts))

NONE_CHOICE = "__none__"


def option_values(options) -> list[str] | None:
    """Choice values of ``data.options`` (``[{"value", "html"}]`` or plain strings), without the
    "none of these" choice. None when the task has no option list."""
    if not isinstance(options, list):
        return None
    out = []
    for o in options:
        v = o.get("value") if isinstance(o, dict) else o
        if isinstance(v, (str, int)) and str(v) != NONE_CHOICE:
            out.append(str(v))
    return out


class TaskRegistry:
    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis = redis_client
        self.key = pkey(project, "tasks")

    def record(self, tasks) -> int:
        """Remember ``{"id", "data": {"item_id", "options"}}`` tasks; returns how many."""
        mapping = {}
        for t in tasks or []:
            if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
                continue
            try:
                tid = int(t.get("id"))
            except (TypeError, ValueError):
                continue
            item = t["data"].get("item_id")
            if item is None:
                continue
            mapping[str(tid)] = json.dumps({"item_id": str(item),
                                            "options": option_values(t["data"].get("options"))})
        if mapping:
            self.redis.hset(self.key, mapping=mapping)
        return len(mapping)

    def get(self, task_id) -> dict | None:
        raw = self.redis.hget(self.key, str(int(task_id)))
        return json.loads(raw) if raw else None

    def tasks(self) -> list[dict]:
        """As Label Studio-shaped tasks: ``{"id", "data": {"item_id", "options"}}``."""
        out = []
        for k, v in self.redis.hgetall(self.key).items():
            rec = json.loads(v)
            data = {"item_id": rec["item_id"]}
            if rec.get("options") is not None:
                data["options"] = [{"value": o} for o in rec["options"]]
            out.append({"id": int(k), "data": data})
        return sorted(out, key=lambda t: t["id"])

    def forget(self, task_ids) -> None:
        ids = [str(int(t)) for t in task_ids]
        if ids:
            self.redis.hdel(self.key, *ids)
