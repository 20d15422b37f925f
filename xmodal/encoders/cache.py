"""On-disk feature cache keyed by content hash and encoder id.

One SQLite file per :attr:`Encoder.cache_id` (table ``features(key TEXT PRIMARY KEY, vector
BLOB)``, WAL journal so several processes can read and write at once). Keys are the sha256 of the
item's content (file bytes for images, UTF-8 text for texts), so a renamed or copied file is still
a hit and an edited one is a miss.

What is cached is the encoder's per-item stage (:meth:`Encoder.features`); for SIF that is the
eq. 6 weighted average, before the corpus-dependent common-component removal, which
:func:`embed_with_cache` applies afterwards. Failures are never cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from xmodal.encoders.base import Encoder, Failure, batches, default_cache_dir, progress_bar, valid_rows

# SQLite's limit on host parameters in one statement is 32766 (>= 3.32); stay far below it
_CHUNK = 500


class FeatureCache:
    """Vectors by ``(encoder cache id, content key)`` under ``root`` (default:
    ``$XMODAL_CACHE_DIR/features`` or ``~/.cache/xmodal/features``)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir() / "features"
        self._ready: set[Path] = set()  # files whose schema this process has checked

    def path(self, encoder_id: str) -> Path:
        """The SQLite file for one encoder id: a readable prefix plus a hash of the full id."""
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", encoder_id.split("|")[0])[:40]
        digest = hashlib.sha256(encoder_id.encode()).hexdigest()[:20]
        return self.root / f"{slug}-{digest}.sqlite"

    def _connect(self, encoder_id: str) -> sqlite3.Connection:
        path = self.path(encoder_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path not in self._ready or not path.exists()  # the file may have been deleted
        # autocommit mode: reads take no write lock, writes open their own transaction
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses only the last writes
        if fresh:
            try:
                _init_schema(db, encoder_id)
            except BaseException:
                db.close()
                raise
            self._ready.add(path)
        return db

    def get(self, encoder_id: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (missing keys are simply absent)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        if not unique:
            return found
        with closing(self._connect(encoder_id)) as db:
            for chunk in batches(len(unique), _CHUNK):
                part = unique[chunk]
                rows = db.execute(
                    f"SELECT key, vector FROM features WHERE key IN ({','.join('?' * len(part))})",
                    part,
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def rows(self, encoder_id: str, keys: Sequence[str | None], dim: int) -> tuple[np.ndarray, list[int]]:
        """A ``(len(keys), dim)`` float32 matrix holding the cached rows, and the indices of the
        rows still to compute (uncached keys; a ``None`` key, e.g. a missing file, always)."""
        hits = self.get(encoder_id, [k for k in keys if k is not None])
        F = np.empty((len(keys), dim), dtype=np.float32)
        misses = []
        for i, key in enumerate(keys):
            if key in hits:
                F[i] = hits[key]
            else:
                misses.append(i)
        return F, misses

    def put_valid(self, encoder_id: str, keys: Sequence[str | None], vectors: np.ndarray) -> None:
        """Store the rows that hold a real embedding and have a key (failures are never cached)."""
        ok = valid_rows(vectors) & np.array([k is not None for k in keys], dtype=bool)
        self.put(encoder_id, [k for k, good in zip(keys, ok) if good], vectors[ok])

    def put(self, encoder_id: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store one float32 vector per key (an existing key is overwritten)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if not len(keys):
            return
        with closing(self._connect(encoder_id)) as db, db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?)",
                ((k, v.tobytes()) for k, v in zip(keys, vectors)),
            )


def _init_schema(db: sqlite3.Connection, encoder_id: str, patience_s: float = 60.0) -> None:
    """WAL mode + tables, retried while another process holds the lock.

    Several processes opening a fresh file at once (the workers of ``xmodal embed --distributed``)
    race on ``PRAGMA journal_mode=WAL``, which needs an exclusive lock and can fail with
    "database is locked" at once, without waiting in the busy handler (seen here: 1 in 80 opens
    with 4 processes). WAL is persistent, so it is only switched on when not already set."""
    deadline = time.monotonic() + patience_s
    delay = 0.005
    while True:
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")  # persistent: readers and writers don't block
            db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vector BLOB)")
            # the full id, so that a file can be traced back to its encoder
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('encoder_id', ?)", (encoder_id,))
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def content_key(item: str, modality: str) -> str | None:
    """sha256 of an image file's bytes or of a text's UTF-8; None for a missing image file."""
    h = hashlib.sha256()
    if modality == "image":
        try:
            with open(item, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return None  # the encoder reports it as a failure
    else:
        h.update(item.encode("utf-8"))
    return h.hexdigest()


def embed_with_cache(
    encoder: Encoder,
    items: Sequence[str],
    cache: FeatureCache,
    *,
    keys: Sequence[str | None] | None = None,
    progress: bool = True,
    fit: bool = False,
    batch_size: int = 256,
) -> tuple[np.ndarray, list[Failure]]:
    """``encoder.transform(items)`` (or ``fit_transform`` with ``fit=True``), computing only the
    per-item features that ``cache`` does not hold yet.

    ``keys`` (one per item) replaces content hashing when the caller already knows stable content
    keys. Misses are computed and stored ``batch_size`` at a time, so an interrupted run keeps
    what it finished. Returns the ``(n, dim)`` float32 matrix and the failures as
    ``(item, reason)`` (NaN rows for images, zero rows for texts).
    """
    items = [os.fspath(i) for i in items]
    if fit:
        encoder.fit_features(items)
    if keys is None:
        keys = [content_key(item, encoder.modality) for item in items]
    elif len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    cache_id = encoder.cache_id
    F, misses = cache.rows(cache_id, keys, encoder.dim)
    failures: list[Failure] = []
    # one bar over the misses instead of one per chunk from the encoder
    inner_progress, encoder.progress = encoder.progress, False
    try:
        with progress_bar(len(misses), encoder.name, "item", progress) as bar:
            for chunk in batches(len(misses), batch_size):
                rows = misses[chunk]
                computed = encoder.features([items[i] for i in rows])
                failures.extend(encoder.failures_)
                F[rows] = computed
                cache.put_valid(cache_id, [keys[i] for i in rows], computed)
                bar.update(len(rows))
    finally:
        encoder.progress = inner_progress
    encoder.failures_ = failures
    if fit:
        encoder.fit_finish(F[valid_rows(F)])
    return encoder.finish(F), failures
