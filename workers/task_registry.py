"""Label Studio tasks this project has seen: task id -> the item it asks about and its options.

Filled from every task the backend sees (``/predict`` bodies, webhook payloads, TASKS_CREATED) and
by whoever imports the tasks; the rebuild job falls back on it to know which tasks to refresh
predictions for when the Label Studio client cannot list them.
"""

from __future__ import annotations

import json

import redis

from xmodal.redis_conn import pkey

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
