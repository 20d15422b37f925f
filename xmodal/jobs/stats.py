"""Timings of rebuilds (read by ``xmodal status`` and ``GET /metrics``).

``P:{p}:rebuild:last`` (hash) holds the last finished rebuild: version, job, number of pairs,
seconds spent building, writing and pushing predictions, and the label->new-predictions latency
(from the arrival time of the newest pair it included to the end of its Label Studio push, or to
the index publication when there is no Label Studio step). ``P:{p}:rebuild:latency`` keeps the
latency of every newly included pair of the recent rebuilds (newest first).

Histograms for ``GET /metrics`` are Redis hashes of cumulative bucket counts (``le_<bound>``,
``count``, ``sum``), so every gunicorn and RQ worker process adds to the same series:
``P:metrics:webhook`` (time to answer a webhook), ``P:{p}:metrics:rebuild`` (rebuild duration) and
``P:{p}:metrics:latency`` (label -> new predictions, one observation per newly included pair).
"""

from __future__ import annotations

import redis

from xmodal.redis_conn import gkey, pkey

LATENCY_KEEP = 500
WEBHOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REBUILD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def webhook_histogram_key() -> str:
    return gkey("metrics", "webhook")


def rebuild_histogram_key(project: str) -> str:
    return pkey(project, "metrics", "rebuild")


def latency_histogram_key(project: str) -> str:
    return pkey(project, "metrics", "latency")


def observe(pipe, key: str, buckets: tuple[float, ...], *values: float) -> None:
    """Add observations to the histogram hash ``key`` (commands queued on ``pipe``)."""
    for b in buckets:
        n = sum(1 for v in values if v <= b)
        if n:
            pipe.hincrby(key, f"le_{b}", n)
    pipe.hincrby(key, "count", len(values))
    pipe.hincrbyfloat(key, "sum", float(sum(values)))


def read_histogram(redis_client: redis.Redis, key: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in redis_client.hgetall(key).items()}


def projects_key() -> str:
    return gkey("projects")


_remembered: set[tuple[int, str, str]] = set()


def remember_project(redis_client: redis.Redis, project: str) -> None:
    """Add to ``P:projects`` (once per process and client: it is on the webhook's hot path)."""
    key = (id(redis_client), projects_key(), project)
    if key not in _remembered:
        redis_client.sadd(projects_key(), project)
        _remembered.add(key)


def known_projects(redis_client: redis.Redis) -> list[str]:
    return sorted(p.decode() for p in redis_client.smembers(projects_key()))


def record_rebuild(redis_client: redis.Redis, project: str, stats: dict,
                   latencies: list[float]) -> None:
    pipe = redis_client.pipeline(transaction=True)
    last = pkey(project, "rebuild", "last")
    pipe.delete(last)
    pipe.hset(last, mapping={k: str(v) for k, v in stats.items() if v is not None})
    lat = pkey(project, "rebuild", "latency")
    if latencies:
        pipe.lpush(lat, *[f"{x:.6f}" for x in latencies])
        pipe.ltrim(lat, 0, LATENCY_KEEP - 1)
        observe(pipe, latency_histogram_key(project), REBUILD_BUCKETS, *latencies)
    if stats.get("total_s") is not None:
        observe(pipe, rebuild_histogram_key(project), REBUILD_BUCKETS, float(stats["total_s"]))
    pipe.sadd(projects_key(), project)
    pipe.execute()


def last_rebuild(redis_client: redis.Redis, project: str) -> dict:
    raw = redis_client.hgetall(pkey(project, "rebuild", "last"))
    out = {}
    for k, v in raw.items():
        v = v.decode()
        try:
            out[k.decode()] = float(v) if "." in v or "e" in v else int(v)
        except ValueError:
            out[k.decode()] = v
    return out


def recent_latencies(redis_client: redis.Redis, project: str) -> list[float]:
    return [float(x) for x in redis_client.lrange(pkey(project, "rebuild", "latency"), 0, -1)]
