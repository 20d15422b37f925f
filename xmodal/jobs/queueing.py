"""Enqueueing rebuild jobs on RQ, coalesced per project.

At most one rebuild is *queued* per project: the flag ``P:{p}:rebuild:queued`` (value
``<job id>|<epoch>``) is set with SET NX when a job is enqueued and cleared by that job, atomically
with its snapshot of the pairs (see :mod:`workers.rebuild`). So

- pairs arriving while a rebuild is queued (not started) add nothing: that job will read them;
- pairs arriving while a rebuild runs (after its snapshot) enqueue exactly one more;
- a flag left behind by a job that vanished or failed (worker crash, enqueue error) is replaced;
  so is one naming a STARTED job that holds no lease (its process died before its snapshot,
  :mod:`xmodal.jobs.lease`). A job that says QUEUED but is in no queue or registry ("lost": a
  worker popped it from the queue and Redis went down before the worker recorded it as started;
  back from its append-only file, Redis has the job QUEUED and in no list, and every later label
  was coalesced into it) is replaced by :mod:`workers.recovery`, which every ``xmodal worker``
  runs every few seconds, as is a job that died *after* its snapshot: a label coalesces into it,
  since telling it from a job a worker is starting takes a second look a webhook cannot wait for.

Retries: ``Retry(max=$XMODAL_REBUILD_RETRIES, interval=$XMODAL_REBUILD_RETRY_INTERVALS)``; intervals
above 0 need a worker started with ``--with-scheduler`` (``xmodal worker`` does). After the last
retry the job lands in RQ's failed registry with its exception.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from xmodal import settings
from xmodal.jobs import lease
from xmodal.logfmt import kv
from xmodal.redis_conn import check_project_name, key_prefix, pkey

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "xmodal"
REBUILD_FUNC = "workers.rebuild.rebuild"
FLAG_TTL_S = 3600          # a flag is never left for longer than this
FLAG_GRACE_S = 30          # a flag whose job does not exist yet may be an enqueue in flight
PLACED_RECHECK_S = 0.2     # a worker takes a job out of its queue ms before it records it started
# a flag's job that is QUEUED in no queue counts as lost only this long after it was enqueued: a job
# lost to a Redis restart stays so for the flag's hour, one a busy worker holds between its pop and
# its start does not, and a sweep every 5 s that replaced such a job fed itself a chain of them
LOST_GRACE_S = 10

# KEYS: flag ; ARGV: expected old value, new value, ttl
_REPLACE_FLAG = """
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""

# KEYS: flag ; ARGV: value
_CLEAR_FLAG_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def queue_name() -> str:
    """``$XMODAL_QUEUE`` (default ``xmodal``): the RQ queue of rebuild jobs."""
    return settings.get("XMODAL_QUEUE")


def embed_queue_for(rebuild_queue: str) -> str:
    """The feature-extraction queue beside a rebuild queue: ``$XMODAL_EMBED_QUEUE``, default
    ``<rebuild queue>-embed`` (see :mod:`workers.embed`)."""
    return settings.get("XMODAL_EMBED_QUEUE") or f"{rebuild_queue}-embed"


def get_queue(redis_client: redis.Redis, name: str | None = None) -> Queue:
    return Queue(name or queue_name(), connection=redis_client)


def retry_policy() -> Retry | None:
    """``Retry`` from ``$XMODAL_REBUILD_RETRIES`` (default 3; 0 = no retry) and
    ``$XMODAL_REBUILD_RETRY_INTERVALS`` (seconds, default ``5,30,120``: backoff)."""
    n = settings.get("XMODAL_REBUILD_RETRIES")
    if n <= 0:
        return None
    intervals = settings.get("XMODAL_REBUILD_RETRY_INTERVALS") or [0]
    return Retry(max=n, interval=intervals)


def job_timeout() -> int:
    return settings.get("XMODAL_REBUILD_TIMEOUT")


def flag_key(project: str) -> str:
    return pkey(project, "rebuild", "queued")


def new_job_id(project: str) -> str:
    """RQ job ids allow letters, digits, '_' and '-': ``<prefix>-rebuild-<project>-<hex>``."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in check_project_name(project))
    pre = "".join(c if c.isalnum() or c in "_-" else "_" for c in key_prefix())
    return f"{pre}-rebuild-{safe}-{uuid.uuid4().hex[:12]}"


def job_state(redis_client: redis.Redis, job_id: str, project: str) -> str | None:
    """``"alive"`` (waiting in its queue or registry, or started and holding its lease),
    ``"died"`` (STARTED, but its process is gone: no lease, :mod:`xmodal.jobs.lease`), ``"lost"``
    (QUEUED, DEFERRED or SCHEDULED, but in no queue or registry that would ever run it: see the
    module doc), ``"ended"`` (finished, failed, ...), or None when there is no such job."""
    state = _state(redis_client, job_id, project)
    if state == "lost":   # or between a worker's pop and its start: look again a moment later
        time.sleep(PLACED_RECHECK_S)
        state = _state(redis_client, job_id, project)
    return state


def _state(redis_client: redis.Redis, job_id: str, project: str) -> str | None:
    try:
        job = Job.fetch(job_id, connection=redis_client)
    except NoSuchJobError:
        return None
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return "alive" if lease.started_job_alive(redis_client, project, job) else "died"
    if status not in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        return "ended"
    return "alive" if _placed(redis_client, job) else "lost"


def _placed(redis_client: redis.Redis, job: Job) -> bool:
    """Whether something will run ``job``: its queue (or rq's intermediate list, or the started
    registry a worker records it in before the status says so), or the deferred or scheduled
    registry."""
    from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    queue = get_queue(redis_client, job.origin)
    pipe = redis_client.pipeline(transaction=False)
    pipe.lpos(queue.key, job.id)
    pipe.lpos(queue.intermediate_queue_key, job.id)
    in_lists = any(pos is not None for pos in pipe.execute())
    return in_lists or any(job.id in registry(queue=queue) for registry in (
        StartedJobRegistry, DeferredJobRegistry, ScheduledJobRegistry))


def stuck_flag(redis_client: redis.Redis, project: str) -> dict | None:
    """The project's coalescing flag when no live job stands behind it: ``{"job", "state",
    "age_s"}`` (state ``died``, ``lost``, ``ended``, or ``missing``; a missing job only past
    :data:`FLAG_GRACE_S`, before which it may be an enqueue in flight, a lost one past
    :data:`LOST_GRACE_S`), else None."""
    raw = redis_client.get(flag_key(project))
    if not raw:
        return None
    job_id, _, ts = raw.decode().partition("|")
    state = job_state(redis_client, job_id, project) or "missing"
    age = time.time() - float(ts or 0)
    if state == "alive" or (state == "missing" and age < FLAG_GRACE_S) or (state == "lost" and age < LOST_GRACE_S):
        return None
    return {"job": job_id, "state": state, "age_s": round(age, 1)}


def enqueue_rebuild(redis_client: redis.Redis, project: str, reason: str = "",
                    queue: str | None = None, *, replace_lost: bool = False) -> tuple[str, bool]:
    """Make sure a rebuild of ``project`` will run after this call.

    Returns ``(job_id, enqueued)``: ``enqueued`` is False when an already queued job will pick the
    change up (coalesced). A label never waits here: a job between a worker's pop and its start
    looks "lost" for a moment, and looking twice takes :data:`PLACED_RECHECK_S` (a webhook that
    slept it went from ~8 to ~26 ms a label with a live worker), so a label coalesces into a lost
    job and the recovery sweep, which looks twice, replaces it (``replace_lost``)."""
    flag = flag_key(project)
    job_id = new_job_id(project)
    value = f"{job_id}|{time.time():.3f}"
    if redis_client.set(flag, value, nx=True, ex=FLAG_TTL_S):
        return _enqueue(redis_client, project, job_id, value, reason, queue), True
    old = redis_client.get(flag)
    if old is None:  # cleared between SET NX and GET: the job started; try once more
        if redis_client.set(flag, value, nx=True, ex=FLAG_TTL_S):
            return _enqueue(redis_client, project, job_id, value, reason, queue), True
        old = redis_client.get(flag) or b""
    old = old.decode()
    old_id, _, ts = old.partition("|")
    state = job_state(redis_client, old_id, project) if replace_lost else _state(redis_client, old_id, project)
    age = time.time() - float(ts or 0)
    if state == "alive" or (state is None and age < FLAG_GRACE_S) or \
            (state == "lost" and (not replace_lost or age < LOST_GRACE_S)):
        log.debug(kv("rebuild.coalesced", project=project, job=old_id, reason=reason))
        return old_id, False
    # stale flag: its job failed, finished or vanished without clearing it
    if redis_client.register_script(_REPLACE_FLAG)(keys=[flag], args=[old, value, FLAG_TTL_S]):
        log.warning(kv("rebuild.stale_flag", project=project, job=old_id, replaced_by=job_id))
        return _enqueue(redis_client, project, job_id, value, reason, queue), True
    return (redis_client.get(flag) or b"").decode().partition("|")[0], False


def _enqueue(redis_client, project, job_id, flag_value, reason, queue) -> str:
    q = get_queue(redis_client, queue)
    try:
        q.enqueue(REBUILD_FUNC, project, job_id=job_id, retry=retry_policy(),
                  job_timeout=job_timeout(), result_ttl=86400, failure_ttl=7 * 86400,
                  description=f"rebuild {project} ({reason or 'manual'})",
                  meta={"project": project, "reason": reason, "enqueued_at": time.time()})
    except Exception:
        redis_client.register_script(_CLEAR_FLAG_IF)(keys=[flag_key(project)], args=[flag_value])
        raise
    log.info(kv("rebuild.enqueued", project=project, job=job_id, queue=q.name, reason=reason))
    return job_id


def enqueue_resync(redis_client: redis.Redis, project: str, reason: str = "",
                   queue: str | None = None) -> str:
    """Replay Label Studio's annotations into the pair store, then rebuild (workers.resync)."""
    job_id = new_job_id(project).replace("-rebuild-", "-resync-", 1)
    get_queue(redis_client, queue).enqueue(
        "workers.resync.resync", project, job_id=job_id, retry=retry_policy(),
        job_timeout=job_timeout(), result_ttl=86400, failure_ttl=7 * 86400,
        description=f"resync {project} from Label Studio ({reason or 'manual'})",
        meta={"project": project, "reason": reason, "enqueued_at": time.time()})
    log.info(kv("resync.enqueued", project=project, job=job_id, reason=reason))
    return job_id


def enqueue_flags(redis_client: redis.Redis, project: str, queue: str | None = None) -> str:
    """Show the project's problems on their tasks in Label Studio (``workers.problems``); the job
    reads the pair store when it runs, so several enqueued at once do the work once."""
    job_id = new_job_id(project).replace("-rebuild-", "-flags-", 1)
    get_queue(redis_client, queue).enqueue(
        "workers.problems.flag_problems", project, job_id=job_id, retry=retry_policy(),
        job_timeout=job_timeout(), result_ttl=3600, failure_ttl=7 * 86400,
        description=f"flag the problems of {project} in Label Studio",
        meta={"project": project, "enqueued_at": time.time()})
    log.info(kv("flags.enqueued", project=project, job=job_id))
    return job_id


def enqueue_growth(redis_client: redis.Redis, project: str, reason: str = "",
                   queue: str | None = None) -> str:
    """Embed and add the project's pending items (``workers.growth.add_pending``), on the embed
    queue (long work must not hold up a label's rebuild); the job reads what is pending when it
    runs, so several enqueued at once do the work once."""
    job_id = new_job_id(project).replace("-rebuild-", "-items-", 1)
    Queue(embed_queue_for(queue or queue_name()), connection=redis_client).enqueue(
        "workers.growth.add_pending", project, job_id=job_id, retry=retry_policy(),
        job_timeout=settings.get("XMODAL_EMBED_TIMEOUT"), result_ttl=86400, failure_ttl=7 * 86400,
        description=f"add the pending items of {project} ({reason or 'manual'})",
        meta={"project": project, "reason": reason, "enqueued_at": time.time()})
    log.info(kv("items.enqueued", project=project, job=job_id, reason=reason))
    return job_id


def enqueue_removal(redis_client: redis.Redis, project: str, image_ids: list[str], text_ids: list[str],
                    queue: str | None = None) -> str:
    """Remove items (``workers.growth.remove_job``) on the rebuild queue: a quick rewrite of the
    workspace, then a rebuild."""
    job_id = new_job_id(project).replace("-rebuild-", "-remove-", 1)
    get_queue(redis_client, queue).enqueue(
        "workers.growth.remove_job", project, list(image_ids), list(text_ids), job_id=job_id,
        retry=retry_policy(), job_timeout=job_timeout(), result_ttl=86400, failure_ttl=7 * 86400,
        description=f"remove {len(image_ids)} images and {len(text_ids)} texts from {project}",
        meta={"project": project, "enqueued_at": time.time()})
    log.info(kv("items.removal_enqueued", project=project, job=job_id, images=len(image_ids),
                texts=len(text_ids)))
    return job_id
