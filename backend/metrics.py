"""``GET /metrics``: a hand-written Prometheus text exposition (format 0.0.4).

Hand-written rather than ``prometheus_client`` because every number lives in Redis (shared by all
gunicorn workers and RQ workers), so there is no in-process registry to keep: each scrape reads
Redis. Metrics (all prefixed ``xmodal_``):

- ``xmodal_pairs{project}``: live reference pairs;
- ``xmodal_index_version{project}``, ``xmodal_index_pairs{project}``,
  ``xmodal_index_age_seconds{project}``: the current index;
- ``xmodal_index_stale{project}``: 1 when pairs changed since the current index's snapshot;
- ``xmodal_rebuild_flag_stuck{project}``: 1 when the coalescing flag names a rebuild that will
  never run (a worker's recovery sweep replaces it within seconds: alert if it stays);
- ``xmodal_rebuild_seconds{project}``, ``xmodal_label_to_prediction_seconds{project}``: last rebuild;
- ``xmodal_rebuild_duration_seconds{project}`` histogram: every rebuild, start to the moment the
  new index serves (Label Studio's model_version flipped, or published when there is no LS step);
- ``xmodal_label_to_prediction_latency_seconds{project}`` histogram: one observation per new pair;
- ``xmodal_queue_depth{queue}``, ``xmodal_jobs{queue,state}`` (started/failed/scheduled/deferred)
  of the rebuild queue and its feature-extraction queue, ``xmodal_workers``;
- ``xmodal_webhook_seconds`` histogram: time to answer a webhook, measured in the backend.
"""

from __future__ import annotations

import time

import redis
from rq import Worker
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from xmodal.index.store import IndexStore
from xmodal.jobs import stats
from xmodal.jobs.queueing import embed_queue_for, get_queue, stuck_flag
from xmodal.jobs.stats import (
    REBUILD_BUCKETS,
    WEBHOOK_BUCKETS,
    latency_histogram_key,
    read_histogram,
    rebuild_histogram_key,
    webhook_histogram_key,
)
from xmodal.project.pairs import PairStore
from xmodal.project.pending import PendingItems
from xmodal.project.workspace import Workspace, list_workspaces


def observe_webhook(redis_client: redis.Redis, seconds: float) -> None:
    pipe = redis_client.pipeline(transaction=False)
    stats.observe(pipe, webhook_histogram_key(), WEBHOOK_BUCKETS, seconds)
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
        self.lines.append(f"{name}{_labels(labels)} {float(value):.6g}")

    def histogram(self, name: str, help_: str, raw: dict, buckets, **labels) -> None:
        """A cumulative histogram from a hash written by :func:`xmodal.jobs.stats.observe`."""
        if name not in self._declared:
            self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            self._declared.add(name)
        for b in buckets:
            self.lines.append(f"{name}_bucket{_labels(dict(labels, le=b))} {int(raw.get(f'le_{b}', 0))}")
        self.lines.append(f"{name}_bucket{_labels(dict(labels, le='+Inf'))} {int(raw.get('count', 0))}")
        self.lines.append(f"{name}_sum{_labels(labels)} {float(raw.get('sum', 0)):.6g}")
        self.lines.append(f"{name}_count{_labels(labels)} {int(raw.get('count', 0))}")


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}" if labels else ""


def render(redis_client: redis.Redis, base, queue_name: str) -> str:
    out = _Out()
    now = time.time()
    names = set(stats.known_projects(redis_client)) | {w.name for w in list_workspaces(base)}
    for name in sorted(names):
        ws = Workspace(base / name)
        pairs = PairStore(redis_client, name)
        out.metric("xmodal_pairs", "gauge", "Live reference pairs (annotations naming a match).",
                   pairs.count(), project=name)
        for modality, n in PendingItems(redis_client, name).counts().items():
            out.metric("xmodal_items_pending", "gauge",
                       "Items received (POST /items, TASKS_CREATED, xmodal items add) and not yet "
                       "embedded and indexed.", n, project=name, modality=modality)
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
        out.metric("xmodal_rebuild_flag_stuck", "gauge",
                   "1 when the coalescing flag names a rebuild that will never run (lost, died, gone).",
                   int(stuck_flag(redis_client, name) is not None), project=name)
        rebuilds = read_histogram(redis_client, rebuild_histogram_key(name))
        if rebuilds:
            out.histogram("xmodal_rebuild_duration_seconds",
                          "Rebuild job start to the new index serving.", rebuilds, REBUILD_BUCKETS,
                          project=name)
        latency = read_histogram(redis_client, latency_histogram_key(name))
        if latency:
            out.histogram("xmodal_label_to_prediction_latency_seconds",
                          "Label arrival to predictions by an index that includes it (per pair).",
                          latency, REBUILD_BUCKETS, project=name)
    q = get_queue(redis_client, queue_name)
    for each in (q, get_queue(redis_client, embed_queue_for(q.name))):
        out.metric("xmodal_queue_depth", "gauge", "Jobs waiting in the queue.", each.count,
                   queue=each.name)
        for state, reg in (("started", StartedJobRegistry), ("failed", FailedJobRegistry),
                           ("scheduled", ScheduledJobRegistry), ("deferred", DeferredJobRegistry)):
            out.metric("xmodal_jobs", "gauge", "Jobs per RQ registry.",
                       reg(queue=each).count, queue=each.name, state=state)
    out.metric("xmodal_workers", "gauge", "RQ workers listening on the queue.",
               len(Worker.all(queue=q)))
    out.histogram("xmodal_webhook_seconds", "Time to answer a Label Studio webhook.",
                  read_histogram(redis_client, webhook_histogram_key()), WEBHOOK_BUCKETS)
    return "\n".join(out.lines) + "\n"
