"""A running rebuild's lease: a short-lived Redis key that its own process keeps renewing.

RQ learns late that a job's process died. In rq 3.0.0 a job whose worker was SIGKILLed (or
OOM-killed, or whose host vanished) stays STARTED in the StartedJobRegistry until its heartbeat
expires (``min(job_timeout, 30 s job monitoring interval) + 60 s``) *and* some worker then runs its
registry maintenance, which happens at worker start-up and every 10 minutes. So a rebuild killed
after its snapshot (which cleared the coalescing flag, :mod:`xmodal.jobs.queueing`) could leave its
pairs out of every index for 1.5 to 11.5 minutes, or forever with retries off
(``XMODAL_REBUILD_RETRIES=0``: rq moves the job to the failed registry with ``AbandonedJobError``).

The lease tells within seconds instead. ``hold(r, project, job_id)`` (used by ``workers.rebuild``
around the whole job, taken before the snapshot) sets ``P:{p}:rebuild:lease:<job id>`` with a TTL of
``$XMODAL_REBUILD_LEASE_S`` (default 10 s), renewed by a daemon thread every third of that, and
adds the job id to the set ``P:{p}:rebuild:leases``. On the way out, by return or by exception, both
go. A job id still in the set whose key has expired is therefore a rebuild whose process died:
``reap()`` returns each such id once (to one caller) and ``workers.recovery`` re-enqueues.

A false alarm (a process so stalled that it missed three renewals) costs one extra rebuild of the
same pairs, never a lost pair: versions only move forward.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading

import redis

from xmodal import settings
from xmodal.logfmt import kv
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 10.0


def ttl_s() -> float:
    """``$XMODAL_REBUILD_LEASE_S`` (default 10): how long a lease outlives its last renewal."""
    return settings.get("XMODAL_REBUILD_LEASE_S")


def start_grace_s() -> float:
    """How long a STARTED rebuild may go without a lease (it takes one first thing): 3 TTLs,
    which also absorbs clock differences between worker hosts."""
    return 3 * ttl_s()


def lease_key(project: str, job_id: str) -> str:
    return pkey(project, "rebuild", "lease", job_id)


def leases_key(project: str) -> str:
    return pkey(project, "rebuild", "leases")


def _take(redis_client: redis.Redis, project: str, job_id: str, ttl_ms: int) -> None:
    from xmodal.jobs.stats import projects_key

    pipe = redis_client.pipeline(transaction=True)
    pipe.set(lease_key(project, job_id), "1", px=ttl_ms)
    pipe.sadd(leases_key(project), job_id)
    pipe.sadd(projects_key(), project)   # the recovery sweep visits known projects
    pipe.execute()


def _renew(redis_client, project, job_id, ttl_ms, stop: threading.Event) -> None:
    while not stop.wait(ttl_ms / 3000):
        try:
            _take(redis_client, project, job_id, ttl_ms)
        except redis.RedisError as exc:  # keep trying; an expired lease costs one extra rebuild
            log.warning(kv("lease.renew_failed", project=project, job=job_id, error=str(exc)))


@contextlib.contextmanager
def hold(redis_client: redis.Redis, project: str, job_id: str | None):
    """Hold the lease of ``job_id`` for the duration of the block (no-op without a job id: a
    direct call, whose caller sees its failure itself)."""
    if not job_id:
        yield
        return
    ttl_ms = int(ttl_s() * 1000)
    _take(redis_client, project, job_id, ttl_ms)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(redis_client, project, job_id, ttl_ms, stop),
                               name=f"lease-{job_id}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        try:
            pipe = redis_client.pipeline(transaction=True)
            pipe.delete(lease_key(project, job_id))
            pipe.srem(leases_key(project), job_id)
            pipe.execute()
        except redis.RedisError as exc:  # it expires by itself; recovery then rebuilds once more
            log.warning(kv("lease.release_failed", project=project, job=job_id, error=str(exc)))


def is_held(redis_client: redis.Redis, project: str, job_id: str) -> bool:
    return bool(redis_client.exists(lease_key(project, job_id)))


def started_job_alive(redis_client: redis.Redis, project: str, job) -> bool:
    """Whether an rq job in STARTED state is really running: it holds its lease, or it started
    so recently that it may not have taken it yet."""
    if is_held(redis_client, project, job.id):
        return True
    started = job.started_at
    if started is None:
        return True
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.UTC)
    age = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return age < start_grace_s()


def reap(redis_client: redis.Redis, project: str) -> list[str]:
    """Job ids whose lease expired without being released (their process died), each returned
    to exactly one caller (SREM decides)."""
    members = sorted(m.decode() for m in redis_client.smembers(leases_key(project)))
    if not members:
        return []
    pipe = redis_client.pipeline(transaction=False)
    for job_id in members:
        pipe.exists(lease_key(project, job_id))
    expired = [j for j, alive in zip(members, pipe.execute()) if not alive]
    return [j for j in expired if redis_client.srem(leases_key(project), j)]
