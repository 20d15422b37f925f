"""Which index versions a project has: version numbers and the forward-only "current" pointer in
Redis, pruning on disk, and :func:`load_current` with its process-wide cache.

- Version numbers come from ``INCR P:{p}:index:seq`` (seeded from the highest version on disk when
  the key is missing, e.g. after Redis lost its data, so a version number is never reused).
- A rebuild writes ``index/v<N>.npz`` completely (:mod:`xmodal.index.files`) and then moves
  ``P:{p}:index:current`` to N with a Lua compare-and-set that only ever moves it forward. Readers
  therefore never see a half-written index, and racing workers end on the highest version.
- ``load_current(project)`` keeps the loaded index in a process-global cache keyed by version: one
  Redis GET per call, a file load only when the version changed. The cached index is served only
  while its file is the one it was read from (one ``stat`` per call): a file replaced or removed
  on disk is read again, so junk written over every version is noticed and rebuilt, not served
  from memory. A current file that is missing or corrupt is not served: the newest valid older
  version is, and a rebuild is enqueued.
- Old versions are pruned, keeping the newest ``keep`` files and never the current one.
"""


from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import redis

from xmodal import settings
from xmodal.errors import DataError
from xmodal.index import ann as ann_mod
from xmodal.index.files import CorruptIndex, index_path, read_snapshot, same_file, versions_on_disk, write_snapshot
from xmodal.index.snapshot import IndexSnapshot
from xmodal.logfmt import kv
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)

DEFAULT_KEEP = 5

# KEYS: current, info ; ARGV: version, info json fields (k1, v1, k2, v2, ...)
_SET_CURRENT = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local v = tonumber(ARGV[1])
if v <= cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return v
"""

# KEYS: seq ; ARGV: floor (highest version known on disk)
_NEXT_VERSION = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if cur < floor then redis.call('SET', KEYS[1], floor) end
return redis.call('INCR', KEYS[1])
"""


class IndexStore:
    """Versions and the current pointer of one project's index."""

    def __init__(self, redis_client: redis.Redis, ws: Workspace, keep: int | None = None):
        self.redis = redis_client
        self.ws = ws
        self.project = ws.name
        self.keep = keep if keep is not None else settings.get("XMODAL_KEEP_VERSIONS")
        self.seq_key = pkey(self.project, "index", "seq")
        self.current_key = pkey(self.project, "index", "current")
        self.info_key = pkey(self.project, "index", "info")
        self._set_current = redis_client.register_script(_SET_CURRENT)
        self._next = redis_client.register_script(_NEXT_VERSION)

    def next_version(self) -> int:
        disk = versions_on_disk(self.ws)
        return int(self._next(keys=[self.seq_key], args=[disk[-1] if disk else 0]))

    def current_version(self) -> int | None:
        """The current version: Redis pointer, or the newest file on disk when Redis has none."""
        raw = self.redis.get(self.current_key)
        if raw is not None:
            return int(raw)
        disk = versions_on_disk(self.ws)
        return disk[-1] if disk else None

    def info(self) -> dict:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.info_key).items()}

    def publish(self, snap: IndexSnapshot) -> tuple[Path, bool]:
        """Write the file, then move the pointer forward if ``snap.version`` is newer.

        Returns (path, became_current)."""
        path = write_snapshot(self.ws, snap)
        info = {"version": snap.version, "built_at": snap.built_at, "n_pairs": snap.n_pairs,
                "path": str(path), "model_version": snap.model_version,
                "snapshot_at": snap.meta.get("snapshot_at", snap.built_at),
                "job_id": snap.meta.get("job_id") or ""}
        args = [str(snap.version)]
        for k, v in info.items():
            args += [k, str(v)]
        now_current = int(self._set_current(keys=[self.current_key, self.info_key], args=args))
        self.prune()
        return path, now_current == snap.version

    def prune(self) -> list[int]:
        """Delete all but the newest ``keep`` version files (never the current one)."""
        disk = versions_on_disk(self.ws)
        current = self.current_version()
        drop = [v for v in disk[:-self.keep] if v != current] if self.keep > 0 else []
        for v in drop:
            npz = index_path(self.ws, v)
            for p in [npz, *npz.parent.glob(f"{npz.stem}.*{ann_mod.SUFFIX}")]:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        # ANN files of a rebuild that died before writing its .npz (older than the newest file)
        newest = disk[-1] if disk else 0
        for p in self.ws.index_dir.glob(f"v*{ann_mod.SUFFIX}") if disk else ():
            m = re.match(r"^v(\d+)\.", p.name)
            if m and int(m.group(1)) < newest and int(m.group(1)) not in disk:
                p.unlink(missing_ok=True)
        return drop

    def load(self, version: int) -> IndexSnapshot:
        return read_snapshot(index_path(self.ws, version), self.project)


_cache: dict[tuple[str, str], IndexSnapshot] = {}
# a current version that could not be loaded -> what serves instead (None: no valid version)
_fallback: dict[tuple[str, str], tuple[int, IndexSnapshot | None]] = {}
_cache_lock = threading.Lock()


def load_current(project: str | Workspace, redis_client: redis.Redis) -> IndexSnapshot | None:
    """The current index of a project (None if none was built yet), cached per process by version.

    A current file that is missing or corrupt (:func:`read_snapshot` validates it) is not served:
    the newest valid older version on disk is (None when there is none), a rebuild is enqueued,
    and the choice is kept for this process until the pointer moves on."""
    ws = project if isinstance(project, Workspace) else Workspace.for_project(project)
    store = IndexStore(redis_client, ws)
    key = (str(ws.root.resolve()), store.current_key)
    for _ in range(3):
        version = store.current_version()
        if version is None:
            return None
        cached = _cache.get(key)
        if cached is not None and cached.version == version and same_file(cached):
            return cached
        fallback = _fallback.get(key)
        if fallback is not None and fallback[0] == version:
            return fallback[1]
        try:
            t0 = time.perf_counter()
            snap = store.load(version)
        except FileNotFoundError:
            if store.current_version() != version:
                # the pointer moved on and the file was pruned between GET and open: read it again
                log.warning("project=%s index v%s vanished while loading; retrying", ws.name, version)
                continue
            return _fall_back(store, key, version, "missing")
        except CorruptIndex as exc:
            return _fall_back(store, key, version, str(exc))
        with _cache_lock:
            prev = _cache.get(key)
            if prev is None or prev.version <= snap.version:
                _cache[key] = snap
        log.info("project=%s loaded index v%s (%d pairs) in %.1f ms", ws.name, version,
                 snap.n_pairs, 1000 * (time.perf_counter() - t0))
        return snap
    raise DataError(f"project {ws.name!r}: the current index file could not be loaded")


def _fall_back(store: IndexStore, key, version: int, why: str) -> IndexSnapshot | None:
    from xmodal.jobs.queueing import enqueue_rebuild

    snap = None
    for older in reversed([v for v in versions_on_disk(store.ws) if v < version]):
        try:
            snap = store.load(older)
            break
        except (FileNotFoundError, CorruptIndex) as exc:
            log.warning(kv("index.unreadable", project=store.project, version=older, error=str(exc)))
    try:
        job_id, _ = enqueue_rebuild(store.redis, store.project,
                                    reason=f"index v{version} unreadable ({why})")
    except Exception as exc:  # noqa: BLE001 - serving the fallback matters more than the enqueue
        job_id = f"not enqueued: {type(exc).__name__}"
    log.error(kv("index.fallback", project=store.project, current=version,
                 serving=snap.version if snap is not None else "none (unlabelled)", why=why,
                 rebuild=job_id))
    with _cache_lock:
        _fallback[key] = (version, snap)
    return snap


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _fallback.clear()
