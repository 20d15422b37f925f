"""Timings of rebuilds (read by ``xmodal status`` and ``GET /metrics``).

``P:{p}:rebuild:last`` (hash) holds the last finished rebuild: version, job, number of pairs,
seconds spent building, writing and pushing predictions, and the label->new-predictions latency
(from the arrival time of the newest pair it included to the end of its Label Studio push, or to
the index publication when there is no Label Studio step). ``P:{p}:rebuild:latency`` keeps the
latency of every newly included pair of the recent rebuilds (newest first).
"""

from __future__ import annotations

import redis

from xmodal.redis_conn import gkey, pkey

LATENCY_KEEP = 500


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
