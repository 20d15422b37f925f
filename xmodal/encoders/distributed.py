"""Feature extraction fanned out as chunked RQ jobs, so that N workers on N machines share it.

Two halves, the job in :mod:`workers.embed` and the coordinator here:

- the job, :func:`embed_chunk`: one chunk of items (image paths or texts, with the content keys
  the coordinator hashed) through a frozen encoder's per-item stage (:meth:`Encoder.features`),
  via the worker machine's own feature cache; it returns the float32 rows (and the per-item
  failures) as its RQ result;
- the coordinator, :func:`embed_distributed`: a drop-in for
  :func:`xmodal.encoders.cache.embed_with_cache` that looks the items up in its own cache, splits
  the misses into chunks, enqueues them on the embed queue, waits with a progress bar, writes
  every finished chunk into its cache *as it arrives*, and assembles the rows in item order; the
  corpus-level stage (SIF's common-component removal) then runs here, as in-process.

Why results travel through Redis and not a shared SQLite file: the feature cache is SQLite in WAL
mode, which is safe for many writer *processes on one machine* (``BEGIN IMMEDIATE`` + a 60 s busy
timeout serialise them; tests/test_embed_jobs.py checks it) but not over NFS/SMB, where WAL's
shared-memory index does not work. So each machine keeps its own cache and a chunk's rows
(64 × 1280 float32 = 330 KB) come back as the job's result, deleted once collected.

The queue: ``$XMODAL_EMBED_QUEUE``, default ``<rebuild queue>-embed`` (``xmodal-embed``), *not*
the rebuild queue. RQ is FIFO per queue, so chunks on the rebuild queue would put a label's
rebuild (the < 2 s label -> new predictions loop) behind an hour of embedding. A worker listens
on its queues in priority order (``xmodal worker`` takes ``xmodal`` first, then
``xmodal-embed``), so a rebuild waits for at most the one chunk that worker is running
(a few seconds: keep chunks small).

Failures: a chunk that raises is retried (``$XMODAL_EMBED_RETRIES``, default 2, immediately, on
whichever worker is free); after the last try the coordinator cancels the chunks not started yet
and raises :class:`EmbedJobError` naming the chunk, its items and the worker's exception. Nothing
is lost: finished chunks are already in the coordinator's cache (and each worker's), job ids are
deterministic (encoder + content keys), so a rerun computes only what is missing and attaches to
chunks still queued or running instead of enqueueing them twice.

A worker checks that each image file has the content the coordinator hashed (the same path may
hold another file, or none, on another machine); a mismatch fails the chunk, which is then
retried, maybe on a worker that has the right file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np

from xmodal import settings
from xmodal.encoders.base import Encoder, Failure, NotFittedError, batches, progress_bar, valid_rows
from xmodal.encoders.cache import FeatureCache, content_key
from xmodal.errors import XmodalError

log = logging.getLogger(__name__)


EMBED_FUNC = "workers.embed.embed_chunk"
DEFAULT_CHUNK = {"image": 64, "text": 512}
# constructor options that name paths or UI on the coordinator's machine: never sent to workers
_LOCAL_OPTIONS = {"cache_dir", "progress"}


class EmbedJobError(XmodalError):
    """A chunk failed on every try, no worker listens, or the wait timed out."""


# -- configuration ------------------------------------------------------------------------------

def embed_queue_name() -> str:
    """``$XMODAL_EMBED_QUEUE``, default ``<$XMODAL_QUEUE or xmodal>-embed``."""
    from xmodal.jobs.queueing import embed_queue_for, queue_name

    return embed_queue_for(queue_name())


def retries() -> int:
    return settings.get("XMODAL_EMBED_RETRIES")


def chunk_timeout() -> int:
    return settings.get("XMODAL_EMBED_TIMEOUT")


def cached_features(encoder: Encoder, items: Sequence[str], cache: FeatureCache | None,
                    keys: Sequence[str | None]) -> tuple[np.ndarray, list[Failure]]:
    """Per-item features (no corpus-level stage) through ``cache``; failures are never cached."""
    cache_id = encoder.cache_id
    if cache is not None:
        F, misses = cache.rows(cache_id, keys, encoder.dim)
    else:
        F, misses = np.empty((len(items), encoder.dim), dtype=np.float32), list(range(len(items)))
    failures: list[Failure] = []
    if misses:
        computed = encoder.features([items[i] for i in misses])
        failures = list(encoder.failures_)
        F[misses] = computed
        if cache is not None:
            cache.put_valid(cache_id, [keys[i] for i in misses], computed)
    return F, failures


# -- the coordinator ----------------------------------------------------------------------------

def distributable(encoder: Encoder) -> bool:
    """True when a worker can rebuild the per-item stage from the encoder's name and options:
    every encoder but SIF with corpus word frequencies or self-trained vectors (fitted state)."""
    if getattr(encoder, "vectors", None) == "self" or getattr(encoder, "frequencies", None) == "corpus":
        return False
    try:
        encoder.cache_id
    except NotFittedError:
        return False
    return True


def chunk_job_id(cache_id: str, keys: Sequence[str | None], items: Sequence[str]) -> str:
    """Deterministic: the same chunk of the same content with the same encoder, the same id."""
    from xmodal.redis_conn import key_prefix

    h = hashlib.sha256(cache_id.encode())
    for k, item in zip(keys, items):
        h.update((k or "missing:" + item).encode("utf-8", "surrogatepass") + b"\0")
    pre = "".join(c if c.isalnum() or c in "_-" else "_" for c in key_prefix())
    return f"{pre}-embed-{h.hexdigest()[:32]}"


def _job_options(encoder: Encoder, options: dict | None) -> dict:
    """Constructor options to rebuild ``encoder`` on a worker (paths local to here dropped)."""
    out = {k: v for k, v in (options or {}).items() if k not in _LOCAL_OPTIONS}
    for attr in ("image_size", "backend", "a", "lang"):  # what enters the cache id
        if hasattr(encoder, attr):
            out.setdefault(attr, getattr(encoder, attr))
    if getattr(encoder, "weights", None) is not None:
        out.setdefault("weights", os.fspath(encoder.weights))
    return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in out.items()}


def _error_line(job) -> str:
    try:
        result = job.latest_result()
        text = result.exc_string if result is not None else None
    except Exception:  # an expired result
        text = None
    text = (text or "").strip()
    if not text:
        return "no exception recorded (worker killed? job timeout?)"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip()[:500]


def embed_distributed(
    encoder: Encoder,
    items: Sequence[str],
    cache: FeatureCache,
    *,
    options: dict | None = None,
    keys: Sequence[str | None] | None = None,
    fit: bool = False,
    connection=None,
    queue: str | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    worker_cache_root: str | None = None,
    timeout: float | None = None,
    no_worker_timeout: float = 60.0,
    poll_s: float = 0.1,
    say=None,
) -> tuple[np.ndarray, list[Failure]]:
    """``embed_with_cache`` with the misses computed by RQ workers on ``queue``.

    ``options``: the encoder's constructor options (the workers rebuild it from ``encoder.name``
    and these; ``cache_dir``/``progress`` stay local). ``worker_cache_root``: the workers' feature
    cache (default: each worker's own ``$XMODAL_CACHE_DIR/features``; "" = none). Encoders whose
    features need a corpus fit (``sif-self``, corpus frequencies) embed in this process.
    Raises :class:`EmbedJobError` when a chunk failed on every try, when no worker listens on the
    queue for ``no_worker_timeout`` seconds, or after ``timeout`` seconds.
    """
    from rq import Queue, Retry, Worker
    from rq.job import Job, JobStatus

    from xmodal.encoders.cache import embed_with_cache

    say = say or (lambda msg: log.info(msg))
    items = [os.fspath(i) for i in items]
    if not distributable(encoder):
        say(f"note: {encoder.name} learns its per-item features from the corpus: embedded in "
            "this process, not on the workers")
        return embed_with_cache(encoder, items, cache, keys=keys, progress=progress, fit=fit)
    if fit:
        encoder.fit_features(items)  # a no-op for the distributable encoders
    modality = encoder.modality
    if keys is None:
        keys = [content_key(item, modality) for item in items]
    elif len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    keys = list(keys)
    cache_id = encoder.cache_id
    F, misses = cache.rows(cache_id, keys, encoder.dim)
    failures: dict[int, Failure] = {}

    if misses:
        if connection is None:
            from xmodal.redis_conn import get_redis

            connection = get_redis()
        q = Queue(queue or embed_queue_name(), connection=connection)
        size = max(1, int(chunk_size or DEFAULT_CHUNK.get(modality, 64)))
        job_opts = _job_options(encoder, options)
        chunks = [misses[s] for s in batches(len(misses), size)]
        ids: list[str] = []
        for n, rows in enumerate(chunks):
            job_id = chunk_job_id(cache_id, [keys[i] for i in rows], [items[i] for i in rows])
            ids.append(job_id if job_id not in ids else f"{job_id}-{n}")  # a repeated chunk
        n_retries = retries()
        todo: dict[str, int] = {}   # job id -> chunk number, still to collect

        def enqueue(n: int):
            rows = chunks[n]
            return Queue.prepare_data(
                EMBED_FUNC,
                args=(modality, encoder.name, [items[i] for i in rows], [keys[i] for i in rows],
                      job_opts, worker_cache_root, cache_id),
                job_id=ids[n], timeout=chunk_timeout(), result_ttl=3600, failure_ttl=86400,
                retry=Retry(max=n_retries) if n_retries else None,
                description=f"embed {len(rows)} {modality}s with {encoder.name} "
                            f"(chunk {n + 1}/{len(chunks)})",
                meta={"chunk": n, "n_chunks": len(chunks), "items": len(rows)})

        fresh, attached = [], 0
        existing = Job.fetch_many(ids, connection=connection)
        for n, job in enumerate(existing):
            todo[ids[n]] = n
            status = job.get_status(refresh=False) if job is not None else None
            if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED,
                          JobStatus.SCHEDULED, JobStatus.FINISHED):
                attached += 1       # a previous run's chunk: wait for (or take) its result
            else:
                if job is not None:
                    job.delete()    # failed/canceled/stopped before: try it again
                fresh.append(enqueue(n))
        if fresh:
            q.enqueue_many(fresh)
        queued = f", {attached} chunks already queued by an earlier run" if attached else ""
        say(f"{len(misses)} {modality}s in {len(chunks)} chunks of <= {size} on queue {q.name!r}"
            f" ({len(items) - len(misses)} cached{queued})")

        t0 = time.monotonic()
        last_worker_seen = t0
        error: str | None = None    # the first chunk that failed for good

        def cancel_queued():
            """Cancel this run's chunks that no worker started; returns how many."""
            n = 0
            for job in Job.fetch_many(list(todo), connection=connection):
                if job is not None and job.get_status(refresh=False) in (
                        JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                    job.cancel()
                    job.delete()
                    del todo[job.id]
                    n += 1
            return n

        def give_up(msg: str):
            cancel_queued()
            raise EmbedJobError(
                f"{msg}. {done[0]} of {len(chunks)} chunks finished and are in the feature cache "
                f"({cache.root}): rerun the same command to compute only the rest, or embed in "
                "this process (without the distributed flag)")

        done = [0]
        with progress_bar(len(misses), f"{encoder.name} ({q.name})", "item", progress) as bar:
            try:
                while todo:
                    batch = list(todo)
                    for job_id, job in zip(batch, Job.fetch_many(batch, connection=connection)):
                        if job_id not in todo:   # cancelled above, after a failed chunk
                            continue
                        n = todo[job_id]
                        rows = chunks[n]
                        if job is None:   # expired or deleted by someone: enqueue it again
                            if error is None:
                                q.enqueue_many([enqueue(n)])
                            else:
                                del todo[job_id]
                            continue
                        status = job.get_status(refresh=False)
                        if status == JobStatus.FINISHED:
                            res = job.return_value()
                            if res is None:     # result expired: compute it again
                                job.delete()
                                q.enqueue_many([enqueue(n)])
                                continue
                            if res["cache_id"] != cache_id or res["shape"] != [len(rows), encoder.dim]:
                                give_up(f"chunk {n + 1}/{len(chunks)} came back from worker "
                                        f"{res.get('worker')} with encoder {res['cache_id']} and shape "
                                        f"{res['shape']}; expected {cache_id}, {[len(rows), encoder.dim]}")
                            part = np.frombuffer(res["features"], dtype=np.float32).reshape(res["shape"])
                            F[rows] = part
                            cache.put_valid(cache_id, [keys[i] for i in rows], part)
                            index = {items[i]: i for i in rows}
                            for item, why in res["failures"]:
                                failures[index.get(item, rows[0])] = (item, why)
                            job.delete()
                            del todo[job_id]
                            done[0] += 1
                            bar.update(len(rows))
                        elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                            del todo[job_id]
                            if error is None:
                                first = items[rows[0]] if modality == "image" else repr(items[rows[0]][:40])
                                error = (f"chunk {n + 1}/{len(chunks)} ({len(rows)} {modality}s, item "
                                         f"{rows[0]} = {first} …) {status.value} on worker "
                                         f"{job.worker_name or '?'} after {n_retries + 1} tries: "
                                         f"{_error_line(job)}")
                                # stop what has not started; collect what is running (its work is kept)
                                cancel_queued()
                    if not todo:
                        break
                    now = time.monotonic()
                    if Worker.count(queue=q):
                        last_worker_seen = now
                    elif now - last_worker_seen > no_worker_timeout:
                        give_up(f"no worker listens on queue {q.name!r} (waited "
                                f"{no_worker_timeout:.0f} s): start some with `xmodal worker` "
                                f"(they take {q.name!r} after the rebuild queue)")
                    if timeout is not None and now - t0 > timeout:
                        give_up(f"timed out after {timeout:.0f} s with {len(todo)} chunks left")
                    time.sleep(max(poll_s, 2e-4 * len(todo)))  # ~1 ms of Redis per 10 chunks
            except KeyboardInterrupt:
                cancel_queued()
                raise
        if error is not None:
            give_up(error)
        say(f"{len(misses)} {modality}s embedded by workers in {time.monotonic() - t0:.1f} s")

    fails = [failures[i] for i in sorted(failures)]
    encoder.failures_ = fails
    if fit:
        encoder.fit_finish(F[valid_rows(F)])
    return encoder.finish(F), fails


def default_chunks(n_items: int, n_workers: int, modality: str) -> int:
    """A chunk size giving each worker >= 4 chunks (load balance), capped at the default."""
    return max(1, min(DEFAULT_CHUNK.get(modality, 64), math.ceil(n_items / max(1, 4 * n_workers))))
