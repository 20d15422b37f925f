"""``GET /metrics``: a hand-written Prometheus text exposition (format 0.0.4).

Hand-written rather than ``prometheus_client`` because every number lives in Redis (shared by all
gunicorn workers and RQ workers), so there is no in-process registry to keep: each scrape reads
Redis. Metrics (all prefixed ``xmodal_``):

- ``xmodal_pairs{project}``: live reference pairs;
- ``xmodal_index_version{project}``, ``xmodal_index_pairs{project}``,
  ``xmodal_index_age_seconds{project}``: the current index;
- ``xmodal_index_stale{project}``: 1 when pairs changed since the current index's snapshot;
- ``xmodal_rebuild_seconds{project}``, ``xmodal_label_to_prediction_seconds{project}``: last rebuild;
- ``xmodal_queue_depth{queue}``, ``xmodal_jobs{queue,state}`` (started/failed/scheduled/deferred),
  ``xmodal_workers``;
- ``xmodal_webhook_seconds`` histogram: time to answer a webhook, measured in the backend.
"""

from __future__ import annotations

import time

import redis
from rq import Worker
from rq.registry import (DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry,
                         StartedJobRegistry)

from workers import stats
from workers.queueing import get_queue
from xmodal.index_store import IndexStore
from xmodal.pairs import PairStore
from xmodal.redis_conn import gkey
from xmodal.workspace import Workspace, list_workspaces

WEBHOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def webhook_key() -> str:
    return gkey("metrics", "webhook")


def observe_webhook(redis_client: redis.Redis, seconds: float) -> None:
    pipe = redis_client.pipeline(transaction=False)
    key = webhook_key()
    for b in WEBHOOK_BUCKETS:
        if seconds <= b:
            pipe.hincrby(key, f"le_{b}", 1)
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", seconds)
    pipe.execute()


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Out:
    def __init__(self):
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def metric(self, name: str, kind: str, help_: str, value, **labels) -> None:
        if name not in self._declared:
            self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            self._declared.add(name)
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{lab}}} {float(value):.6g}" if lab else f"{name} {float(value):.6g}")


def render(redis_client: redis.Redis, base, queue_name: str) -> str:
    out = _Out()
    now = time.time()
    names = set(stats.known_projects(redis_client)) | {w.name for w in list_workspaces(base)}
    for name in sorted(names):
        ws = Workspace(base / name)
        pairs = PairStore(redis_client, name)
        out.metric("xmodal_pairs", "gauge", "Live reference pairs (annotations naming a match).",
                   pairs.count(), project=name)
        store = IndexStore(redis_client, ws)
        info = store.info()
        if info:
            out.metric("xmodal_index_version", "gauge", "Version of the current index.",
                       int(info.get("version", 0)), project=name)
            out.metric("xmodal_index_pairs", "gauge", "Pairs in the current index.",
                       int(info.get("n_pairs", 0)), project=name)
            out.metric("xmodal_index_age_seconds", "gauge", "Seconds since the current index was built.",
                       now - float(info.get("built_at", now)), project=name)
        last = stats.last_rebuild(redis_client, name)
        if last:
            out.metric("xmodal_index_stale", "gauge",
                       "1 when pairs changed after the last rebuild's snapshot.",
                       int(pairs.changes() > int(last.get("changes", 0))), project=name)
            out.metric("xmodal_rebuild_seconds", "gauge", "Duration of the last rebuild job.",
                       last.get("total_s", 0), project=name)
            if last.get("label_to_prediction_s") is not None:
                out.metric("xmodal_label_to_prediction_seconds", "gauge",
                           "Label arrival to new predictions, oldest new pair of the last rebuild.",
                           last["label_to_prediction_s"], project=name)
    q = get_queue(redis_client, queue_name)
    out.metric("xmodal_queue_depth", "gauge", "Jobs waiting in the queue.", q.count, queue=q.name)
    for state, reg in (("started", StartedJobRegistry), ("failed", FailedJobRegistry),
                       ("scheduled", ScheduledJobRegistry), ("deferred", DeferredJobRegistry)):
        out.metric("xmodal_jobs", "gauge", "Jobs per RQ registry.",
                   reg(queue=q).count, queue=q.name, state=state)
    out.metric("xmodal_workers", "gauge", "RQ workers listening on the queue.",
               len(Worker.all(queue=q)))
    raw = {k.decode(): v.decode() for k, v in redis_client.hgetall(webhook_key()).items()}
    name = "xmodal_webhook_seconds"
    out.lines += [f"# HELP {name} Time to answer a Label Studio webhook.", f"# TYPE {name} histogram"]
    for b in WEBHOOK_BUCKETS:
        out.lines.append(f'{name}_bucket{{le="{b}"}} {int(raw.get(f"le_{b}", 0))}')
    out.lines.append(f'{name}_bucket{{le="+Inf"}} {int(raw.get("count", 0))}')
    out.lines.append(f"{name}_sum {float(raw.get('sum', 0)):.6g}")
    out.lines.append(f"{name}_count {int(raw.get('count', 0))}")
    return "\n".join(out.lines) + "\n"
