"""Recovering rebuilds lost with their process (SIGKILL, OOM kill, a host that went away).

A rebuild clears its project's coalescing flag when it takes its snapshot (:mod:`xmodal.jobs.queueing`):
pairs arriving later enqueue a new rebuild. If the process dies after that snapshot, the pairs it
read are in no index, and when no further webhook arrives nothing would enqueue another rebuild.
RQ 3.0.0 alone notices 1.5 to 11.5 minutes later and, with retries off, never re-runs the job (see
:mod:`xmodal.jobs.lease`).

So every ``xmodal worker`` runs ``sweep()`` in a daemon thread of its parent process (the one that
forks the work horses), at start-up and then every ``$XMODAL_RECOVER_INTERVAL_S`` seconds (default
5). For each known project (``P:projects``) it enqueues a rebuild, through the ordinary coalesced
``enqueue_rebuild`` (so N sweeping workers still queue at most one), when

- a rebuild's lease expired without being released (``xmodal.jobs.lease.reap``): it died mid-run;
- the coalescing flag names a job that will never run (:func:`xmodal.jobs.queueing.stuck_flag`):
  a STARTED job holding no lease past its start-up grace (it died before taking the lease), a job
  that says QUEUED but is in no queue or registry (a worker popped it and Redis went down before
  the worker recorded it; after Redis came back from its append-only file the flag pointed at it
  for its whole hour and the index stayed stale), or no job at all past the enqueue grace.
  ``enqueue_rebuild`` replaces such a flag rather than coalescing new pairs into a dead job.

A restarted worker, or any other live one, therefore rebuilds within a lease TTL plus one sweep
interval (about 15 s by default; docs/operations.md has the measured times). The dead job itself
is left to rq: it later moves it to the failed registry (``AbandonedJobError``) or, with retries
left, runs it again, which only adds a version.
A rebuild that *fails* (raises) releases its lease and is rq's to retry; it is not re-enqueued here.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from xmodal import settings
from xmodal.jobs import lease
from xmodal.jobs.queueing import enqueue_rebuild, stuck_flag
from xmodal.jobs.stats import known_projects
from xmodal.logfmt import kv

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0


def interval_s() -> float:
    """``$XMODAL_RECOVER_INTERVAL_S`` (default 5): seconds between two sweeps of a worker."""
    return settings.get("XMODAL_RECOVER_INTERVAL_S")


def _flag_job_dead(redis_client: redis.Redis, project: str) -> str | None:
    """The id of the job the flag names if it will never run, else None. A job that *ended* with
    the flag still naming it failed before its snapshot: rq's retries run it again, or the next
    label replaces the flag (re-enqueued here, a rebuild that keeps failing would loop forever);
    ``xmodal status`` shows such a flag."""
    stuck = stuck_flag(redis_client, project)
    return stuck["job"] if stuck is not None and stuck["state"] != "ended" else None


def recover_project(redis_client: redis.Redis, project: str, queue: str | None = None) -> str | None:
    """Enqueue a rebuild of ``project`` if one died mid-run; returns the (possibly coalesced)
    job id, or None when nothing was lost."""
    dead = lease.reap(redis_client, project)
    flagged = _flag_job_dead(redis_client, project)
    if flagged and flagged not in dead:
        dead.append(flagged)
    if not dead:
        return None
    job_id, enqueued = enqueue_rebuild(redis_client, project, reason=f"recover: {dead[0]} died",
                                       queue=queue, replace_lost=True)
    log.warning(kv("rebuild.recovered", project=project, dead=",".join(dead), job=job_id,
                   enqueued=enqueued))
    return job_id


def sweep(redis_client: redis.Redis, queue: str | None = None) -> dict[str, str]:
    """One pass over every known project: ``{project: rebuild job id}`` for those recovered."""
    out = {}
    for project in known_projects(redis_client):
        try:
            job_id = recover_project(redis_client, project, queue)
        except (ValueError, redis.RedisError) as exc:   # a bad name in the set, Redis away
            log.warning(kv("recovery.error", project=project, error=str(exc)))
            continue
        if job_id:
            out[project] = job_id
    return out


def _own_client(connection: redis.Redis) -> redis.Redis:
    """A client with its own pool: the work horses, forked from this process, never share it."""
    pool = connection.connection_pool
    return redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class,
                                                  **pool.connection_kwargs))


def start_sweeper(worker) -> threading.Thread:
    """Run ``sweep`` now and every ``interval_s()`` in a daemon thread of ``worker``'s process."""
    client = _own_client(worker.connection)
    every = interval_s()

    def loop():
        while True:
            try:
                sweep(client)   # onto the rebuild queue ($XMODAL_QUEUE), whatever this one serves
            except Exception:   # never let the sweeper die quietly
                log.exception(kv("recovery.sweep_failed", worker=worker.name))
            time.sleep(every)

    thread = threading.Thread(target=loop, name="xmodal-recovery", daemon=True)
    thread.start()
    log.info(kv("recovery.started", worker=worker.name, interval_s=every,
                lease_s=lease.ttl_s()))
    return thread
