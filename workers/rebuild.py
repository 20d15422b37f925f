"""The rebuild job: pairs in Redis + features on disk -> a new index version (+ Label Studio).

``rebuild(project)`` runs in an RQ worker (``xmodal worker`` = stock ``rq worker``):

1. one Lua script, atomically: clear this job's coalescing flag, take the next version number and
   read every pair. A pair written after it re-enqueues (the flag is gone); a pair written before
   it is in this build. Because the version is taken in the same step as the pairs, a higher
   version always holds at least the pairs of a lower one, and the forward-only current pointer
   ends on the newest data whatever order racing workers finish in;
2. map annotation ids to feature rows (pairs naming items no longer in the workspace are skipped
   with a warning), drop duplicate (image, text) pairs, build the SSR index over the workspace
   features (``SSRIndex``); with fewer pairs than the measure needs the index is "unlabelled":
   zero-width codes, every score 0 (see :mod:`workers.predictions` for what Label Studio gets);
3. write ``index/v<N>.npz`` whole and move the current pointer (``IndexStore.publish``);
4. if still current and the project is linked to Label Studio: re-rank the options of the tasks
   Label Studio serves next, push their predictions, set the project's ``model_version``, then push
   the other open tasks' predictions (``refresh_label_studio``);
5. record timings (``workers.stats``), including label->new-predictions latency measured from each
   new pair's arrival time to the moment Label Studio serves by the new index (the flip of step 4),
   or to the publication when there is no Label Studio step.

Errors are raised with a message that says what to fix; RQ retries (``workers.queueing``) and then
keeps the job in its failed registry. A process that dies instead (SIGKILL, OOM) stops renewing the
job's lease; a worker's recovery sweep then enqueues the rebuild again (``workers.recovery``).
Meanwhile the previous index keeps serving: nothing is published before step 3 completes.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import redis

from workers import lease, stats
from workers.logfmt import kv
from workers.predictions import LabelStudioPushError, refresh_label_studio
from xmodal.ann import build_for as build_ann
from xmodal.core.hubness import hubness_terms
from xmodal.core.ssr import SSRIndex, l2_normalize
from xmodal.errors import DataError
from xmodal.index_store import IndexSnapshot, IndexStore, versions_on_disk
from xmodal.pairs import pairs_from_records
from xmodal.redis_conn import get_redis, pkey
from xmodal.workspace import Workspace, parse_enhance

log = logging.getLogger(__name__)

# KEYS: flag, seq, pairs, changes ; ARGV: job id, version floor
_SNAPSHOT = """
local f = redis.call('GET', KEYS[1])
if f and ARGV[1] ~= '' and string.sub(f, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then redis.call('SET', KEYS[2], floor) end
local v = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
return {v, redis.call('GET', KEYS[4]) or '0', redis.call('HGETALL', KEYS[3]), t[1], t[2]}
"""


def take_snapshot(redis_client: redis.Redis, ws: Workspace, job_id: str | None):
    """(version, changes counter, live pair records, snapshot time) — atomically."""
    project = ws.name
    disk = versions_on_disk(ws)
    script = redis_client.register_script(_SNAPSHOT)
    v, changes, flat, sec, usec = script(
        keys=[pkey(project, "rebuild", "queued"), pkey(project, "index", "seq"),
              pkey(project, "pairs"), pkey(project, "pairs", "changes")],
        args=[job_id or "", disk[-1] if disk else 0])
    raw = dict(zip(flat[0::2], flat[1::2]))
    return int(v), int(changes), pairs_from_records(raw), int(sec) + int(usec) / 1e6


def build_snapshot(ws: Workspace, version: int, pairs: list[dict], meta: dict | None = None):
    """The index of ``pairs`` over the workspace features. Returns (IndexSnapshot, skipped)."""
    cfg = ws.config
    select = cfg["select"]
    image_ids, text_ids = ws.ids("image"), ws.ids("text")
    X, Y = ws.load_features("image"), ws.load_features("text")
    img_row, txt_row = ws.row_of("image"), ws.row_of("text")
    rows, ann_ids, seen, skipped = [], [], set(), []
    for p in pairs:
        i, t = img_row.get(str(p.get("image_id"))), txt_row.get(str(p.get("text_id")))
        if i is None or t is None:
            skipped.append(p["annotation_id"])
            continue
        if (i, t) in seen:
            continue
        seen.add((i, t))
        rows.append((i, t))
        ann_ids.append(p["annotation_id"])
    pair_rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    measure = cfg["measure"]
    enhance = parse_enhance(cfg.get("enhance"))
    csls_k = int(cfg.get("csls_k") or 10) if "csls" in enhance else None
    needed = 2 if measure == "pearson" else 1
    col_stats = {"image": None, "text": None}
    hub = {"image": None, "text": None}
    timings, ann = {}, {}
    if len(pair_rows) >= needed:
        index = SSRIndex(measure=measure, sparse_top_k=cfg.get("sparse_top_k"),
                         sparse_power=float(cfg.get("sparse_power") or 1.0),
                         standardize="zscore" in enhance, copy=False)  # X, Y are ours: normalise in place
        index.fit(X, Y, pair_rows)
        image_codes, text_codes = index.image_codes_, index.text_codes_
        image_refs = index.image_features_[pair_rows[:, 0]]
        text_refs = index.text_features_[pair_rows[:, 1]]
        if index.standardize:
            col_stats = {"image": np.stack(index.image_col_stats_), "text": np.stack(index.text_col_stats_)}
        if csls_k:
            t0 = time.perf_counter()
            hub["image"], hub["text"] = hubness_terms(image_codes, text_codes, csls_k)
            timings["hubness_s"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()   # ANN over the codes of a modality above ann_threshold items
        ann = build_ann({"image": image_codes, "text": text_codes}, cfg)
        if ann:
            timings["ann_s"] = round(time.perf_counter() - t0, 4)
    else:  # unlabelled: no cross-modal signal yet, every score is 0
        image_codes = np.zeros((len(X), 0), np.float32)
        text_codes = np.zeros((len(Y), 0), np.float32)
        image_refs = l2_normalize(X[pair_rows[:, 0]]) if len(pair_rows) else np.zeros((0, X.shape[1]), np.float32)
        text_refs = l2_normalize(Y[pair_rows[:, 1]]) if len(pair_rows) else np.zeros((0, Y.shape[1]), np.float32)
    snap = IndexSnapshot(
        project=ws.name, version=version, measure=measure, select=select,
        sparse_top_k=cfg.get("sparse_top_k"), sparse_power=float(cfg.get("sparse_power") or 1.0),
        image_ids=np.asarray(image_ids, dtype=str), text_ids=np.asarray(text_ids, dtype=str),
        image_codes=np.ascontiguousarray(image_codes, np.float32),
        text_codes=np.ascontiguousarray(text_codes, np.float32),
        image_refs=np.asarray(image_refs, np.float32), text_refs=np.asarray(text_refs, np.float32),
        pair_rows=pair_rows, annotation_ids=np.asarray(ann_ids, dtype=np.int64),
        medoid_ids=np.asarray(ws.medoid_ids(), dtype=str),
        image_col_stats=col_stats["image"], text_col_stats=col_stats["text"],
        image_hub=hub["image"], text_hub=hub["text"], csls_k=csls_k, ann=ann,
        meta=dict(meta or {}, built_at=time.time(), skipped_pairs=len(skipped), enhance=enhance,
                  encoders={m: _encoder_id(ws, m) for m in ("image", "text")}, **timings))
    return snap, skipped


def _encoder_id(ws: Workspace, modality: str) -> str | None:
    try:
        return ws.features_info(modality).get("encoder_id")
    except DataError:
        return None


def _connection(redis_client):
    if redis_client is not None:
        return redis_client
    from rq import get_current_job

    job = get_current_job()
    return job.connection if job is not None else get_redis()


def rebuild(project: str, redis_client: redis.Redis | None = None) -> dict:
    """RQ job: build and publish a new index version of ``project``; returns its stats.

    The job holds its lease (:mod:`workers.lease`) from before the snapshot to the end, so that a
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
    pause = os.environ.get("XMODAL_TEST_REBUILD_PAUSE_S")
    if pause:
        time.sleep(float(pause))


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
    try:
        ls = {"ls": "skipped: superseded"} if not is_current else \
            refresh_label_studio(r, ws, snap, job_id=job_id, on_ready=lambda info: record(info, time.time()))
    except LabelStudioPushError as exc:
        ls, ls_error = {"ls": f"failed: {exc}"}, exc
    done_at = time.time()
    if recorded:   # recorded when Label Studio flipped: add how the rest of the push went
        extra = dict(ls, total_s=round(done_at - t_start, 4), finished_at=done_at)
        result = dict(recorded[-1], **extra)
        last = pkey(project, "rebuild", "last")
        if is_current and r.hget(last, "version") == str(version).encode():
            r.hset(last, mapping={k: str(v) for k, v in extra.items() if v is not None})
    else:
        result = record(ls, published_at)
    log.info(kv("rebuild.done", **{k: v for k, v in result.items() if k != "path"}))
    if ls_error is not None:
        raise ls_error  # after recording: search and /predict already serve the new index
    return result
