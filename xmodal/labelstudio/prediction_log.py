"""The one Label Studio prediction of each task, updated in place for every new index: its id is
kept in Redis (``P:{p}:ls:predictions``), so predictions never pile up, and the annotation of a
page that is open while a newer index arrives still names an existing prediction (Label Studio
refuses a submit whose ``parent_prediction`` was deleted: 400 "object does not exist", the label
would be lost)."""

from __future__ import annotations

import redis

from xmodal.redis_conn import pkey


class PredictionLog:
    """The one Label Studio prediction of each task this project pushed to, by task id."""

    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis = redis_client
        self.key = pkey(project, "ls", "predictions")

    def ids(self, task_ids) -> dict[int, int]:
        task_ids = [int(t) for t in task_ids]
        if not task_ids:
            return {}
        raw = self.redis.hmget(self.key, [str(t) for t in task_ids])
        return {t: int(v) for t, v in zip(task_ids, raw) if v}

    def record(self, pushed: dict | None) -> None:
        if pushed:
            self.redis.hset(self.key, mapping={str(t): str(int(p)) for t, p in pushed.items()})

    def push(self, api, pid: int, preds: dict, model_version: str) -> int:
        """Push ``preds`` ({task: prediction}), updating each task's prediction in place; returns
        how many were written."""
        if not preds:
            return 0
        pushed = api.push_predictions(pid, preds, model_version, existing=self.ids(preds)) or {}
        self.record(pushed)
        return len(preds)


