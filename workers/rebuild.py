"""The rebuild job: pairs in Redis + features on disk -> a new index version (+ Label Studio).

``rebuild(project)`` runs in an RQ worker (``xmodal worker`` = stock ``rq worker``):

Steps 1–2 are :mod:`xmodal.index.build`:

1. one Lua script, atomically: clear this job's coalescing flag, take the next version number and
   read every pair. A pair written after it re-enqueues (the flag is gone); a pair written before
   it is in this build. Because the version is taken in the same step as the pairs, a higher
   version always holds at least the pairs of a lower one, and the forward-only current pointer
   ends on the newest data whatever order racing workers finish in;
2. map annotation ids to feature rows (pairs naming items no longer in the workspace are skipped
   with a warning), drop duplicate (image, text) pairs, build the SSR index over the workspace
   features (``SSRIndex``); with fewer pairs than the measure needs the index is "unlabelled":
   zero-width codes, every score 0 (see :mod:`xmodal.labelstudio.predictions` for what Label Studio gets);
3. write ``index/v<N>.npz`` whole and move the current pointer (``IndexStore.publish``);
4. if still current and the project is linked to Label Studio: re-rank the options of the tasks
   Label Studio serves next, push their predictions, set the project's ``model_version``, then push
   the other open tasks' predictions (:func:`xmodal.labelstudio.push.refresh_label_studio`);
5. record timings (:mod:`xmodal.jobs.stats`), including label->new-predictions latency measured from each
   new pair's arrival time to the moment Label Studio serves by the new index (the flip of step 4),
   or to the publication when there is no Label Studio step;
6. meanwhile (in a thread, from the flip of step 4 on, or from step 4's start when there is no
   flip), find this version's own CSLS neighbourhoods for the next rebuild
   (:mod:`xmodal.index.neighbours`): the next label's rebuild rescores them instead of searching
   all pairs of items.

Errors are raised with a message that says what to fix; RQ retries (:mod:`xmodal.jobs.queueing`) and then
keeps the job in its failed registry. A process that dies instead (SIGKILL, OOM) stops renewing the
job's lease (:mod:`xmodal.jobs.lease`); a worker's recovery sweep then enqueues the rebuild again
(``workers.recovery``).
Meanwhile the previous index keeps serving: nothing is published before step 3 completes.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import redis

from xmodal import settings
from xmodal.errors import DataError
from xmodal.index import neighbours
from xmodal.index.build import build_snapshot, take_snapshot
from xmodal.index.store import IndexStore
from xmodal.jobs import lease, stats
from xmodal.labelstudio.push import LabelStudioPushError, refresh_label_studio
from xmodal.logfmt import kv
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import get_redis, pkey

log = logging.getLogger(__name__)



def _connection(redis_client):
    if redis_client is not None:
        return redis_client
    from rq import get_current_job

    job = get_current_job()
    return job.connection if job is not None else get_redis()


def rebuild(project: str, redis_client: redis.Redis | None = None) -> dict:
    """RQ job: build and publish a new index version of ``project``; returns its stats.

    The job holds its lease (:mod:`xmodal.jobs.lease`) from before the snapshot to the end, so that a
    process dying mid-rebuild is noticed within seconds and the rebuild re-enqueued
    (:mod:`workers.recovery`)."""
    from rq import get_current_job

    t_start = time.time()
    job = get_current_job()
    job_id = job.id if job is not None else None
    r = _connection(redis_client)
    with lease.hold(r, project, job_id):
        return _rebuild(project, r, job_id, t_start)


def _test_pause() -> None:
    """Test hook, off unless set: ``$XMODAL_TEST_REBUILD_PAUSE_S`` seconds of sleep right after
    the snapshot, so that tests/test_faults.py can kill a worker mid-rebuild deterministically."""
    pause = settings.get("XMODAL_TEST_REBUILD_PAUSE_S")
    if pause:
        time.sleep(pause)


def _find_neighbourhoods(ws: Workspace, snap, job_id: str | None) -> Future:
    """This version's own CSLS neighbourhoods (:func:`xmodal.index.neighbours.refresh`), found in a
    thread while the rest of the push waits on Label Studio: the next label's rebuild, queued behind
    this job, must not also wait for the search (run after the push, it added a median 1.3 s to
    label → served at 10,000 items, load ~4). The future's result: seconds it took, or None
    (nothing to find, or it failed: the next rebuild finds them)."""
    t0 = time.perf_counter()

    def find():
        try:
            return round(time.perf_counter() - t0, 4) if neighbours.refresh(ws, snap) else None
        except (OSError, ValueError, MemoryError) as exc:
            log.warning(kv("rebuild.neighbours_failed", project=ws.name, job=job_id,
                           error=f"{type(exc).__name__}: {exc}"))
            return None

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neighbours")
    try:
        return pool.submit(find)
    finally:
        pool.shutdown(wait=False)


def _rebuild(project: str, r: redis.Redis, job_id: str | None, t_start: float) -> dict:
    ws = Workspace.for_project(project)
    if not ws.exists():
        raise DataError(f"rebuild {project}: no workspace at {ws.root} (is MODEL_DIR the same for "
                        "the backend and the workers?)")
    store = IndexStore(r, ws)
    prev_version = store.current_version()
    prev_snapshot_at = 0.0
    if prev_version is not None:
        try:
            prev_snapshot_at = float(store.info().get("snapshot_at") or 0.0)
        except ValueError:
            prev_snapshot_at = 0.0
    version, changes, pairs, snapshot_at = take_snapshot(r, ws, job_id)
    log.info(kv("rebuild.start", project=project, job=job_id, version=version, pairs=len(pairs),
                changes=changes))
    _test_pause()
    t0 = time.perf_counter()
    snap, skipped = build_snapshot(ws, version, pairs,
                                   meta={"job_id": job_id, "changes": changes,
                                         "snapshot_at": snapshot_at})
    build_s = time.perf_counter() - t0
    if skipped:
        log.warning(kv("rebuild.skipped_pairs", project=project, job=job_id, n=len(skipped),
                       annotations=",".join(map(str, skipped[:10]))))
    t0 = time.perf_counter()
    path, is_current = store.publish(snap)
    write_s = time.perf_counter() - t0
    published_at = time.time()
    new_arrivals = [p["received_at"] for p in pairs if p.get("received_at", 0) > prev_snapshot_at]
    recorded: list[dict] = []

    def record(ls: dict, ready_at: float) -> dict:
        """Stats of this rebuild, the latency measured at ``ready_at``: when Label Studio serves
        by the new index (its model_version flipped), else when the index was published."""
        latencies = [ready_at - a for a in new_arrivals]
        result = {
            "project": project, "job_id": job_id, "version": version,
            "model_version": snap.model_version, "current": is_current, "pairs": snap.n_pairs,
            "skipped_pairs": len(skipped), "changes": changes, "has_signal": snap.has_signal,
            "build_s": round(build_s, 4), "write_s": round(write_s, 4),
            "total_s": round(ready_at - t_start, 4), "finished_at": ready_at, "path": str(path),
            "new_pairs": len(new_arrivals),
            "label_to_prediction_s": round(max(latencies), 4) if latencies else None,
            **ls,
        }
        if is_current:
            stats.record_rebuild(r, project, result, latencies)
        recorded.append(result)
        return result

    ls_error = None
    finding: list[Future] = []

    def find_neighbourhoods() -> None:
        if is_current and not finding:
            finding.append(_find_neighbourhoods(ws, snap, job_id))

    def ready(info: dict) -> dict:
        # the search starts once Label Studio has flipped: started with the push, it took CPU
        # from Label Studio's answers on the label's path (2 cores, a busy process beside)
        out = record(info, time.time())
        find_neighbourhoods()
        return out

    try:
        ls = {"ls": "skipped: superseded"} if not is_current else \
            refresh_label_studio(r, ws, snap, job_id=job_id, on_ready=ready)
    except LabelStudioPushError as exc:
        ls, ls_error = {"ls": f"failed: {exc}"}, exc
    finally:
        find_neighbourhoods()   # no flip: no Label Studio, nothing to push, or the push failed
    done_at = time.time()
    if recorded:   # recorded when Label Studio flipped: add how the rest of the push went
        extra = dict(ls, total_s=round(done_at - t_start, 4), finished_at=done_at)
        result = dict(recorded[-1], **extra)
        last = pkey(project, "rebuild", "last")
        if is_current and r.hget(last, "version") == str(version).encode():
            r.hset(last, mapping={k: str(v) for k, v in extra.items() if v is not None})
    else:
        result = record(ls, published_at)
    if finding and (took := finding[0].result()) is not None:
        result["neighbours_s"] = took
    log.info(kv("rebuild.done", **{k: v for k, v in result.items() if k != "path"}))
    if ls_error is not None:
        raise ls_error  # after recording: search and /predict already serve the new index
    return result
