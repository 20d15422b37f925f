"""SSR columns kept between rebuilds: eq. 10's cosine of every item to one reference item.

A column depends on the workspace's features only (which item is the reference, not which pair
it is in), so a rebuild after one more label needs one new column per modality instead of all
n·k products again. At 100k items × 200 references those products were the largest part of a
default rebuild (1.2–1.8 s of about 4 s, profiled; ``xmodal bench``, section ``index``).

A column is kept **z-scored** (its cosines minus their mean, over their standard deviation, the
z-scored index's columns, :func:`xmodal.core.ssr.column_stats`), with the mean and deviation beside
it: a column and its statistics never change, so the default index's codes skip the z-score pass
(0.03-0.04 s of a 100k one-pair update, docs/scale.md); the faithful index gets the cosines back.

Columns live in ``features/ssr-columns/<modality>-z-<key>/`` (:class:`Columns`), ``<key>`` naming the
features file they were computed from (:func:`xmodal.fileio.file_key`: device, inode, mtime and
size, as :func:`xmodal.index.build.bridge_space` keys its files): features written anew (items
added, :mod:`xmodal.project.items`) are a new file, so a rebuild never mixes columns of two item
sets, and the directories of older files are deleted. Racing
workers at worst compute a column twice; it is kept once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodal.core.ssr import column_stats, l2_normalize
from xmodal.fileio import file_key
from xmodal.project.workspace import Workspace, atomic_save_npy

log = logging.getLogger(__name__)

#: feature rows normalised and multiplied at a time (bounds the temporary: 8192 × 1280 float32 = 40 MB)
CHUNK_ROWS = 8192


def column_dir(ws: Workspace, modality: str) -> Path:
    """The directory of ``modality``'s columns for its current features file."""
    return ws.root / "features" / "ssr-columns" / f"{modality}-z-{file_key(ws.features_path(modality))}"


@dataclass
class Columns:
    """One modality's features, memory-mapped, and the column directory of that file. Opened under
    the items lock (:func:`open_columns`), it stays consistent with the ids read there after the
    lock is released: a mapping keeps the file it was opened on.

    The directory holds ``columns.f32``, the columns one after the other (n float32 each), and
    ``rows.npy``, which item each is of and its z-score statistics. A column is appended under
    ``.lock``, then ``rows.npy`` is replaced: a reader takes ``rows.npy`` first and never reads
    past the columns it names, and bytes a crash left past them are cut before the next append."""

    ws: Workspace
    modality: str
    features: np.ndarray
    directory: Path

    def get(self, rows, z_scored: bool = True) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """``(SSR, (mean, std))``: ``SSR`` is ``(n, len(rows))`` float32, column j the cosine of
        every item to item ``rows[j]`` (eq. 10 with that item as the reference), z-scored with
        ``mean`` and ``std`` (``z_scored=False``: the cosines themselves, a new array), read where
        kept, computed (then kept) where not, in Fortran order (one contiguous column each; a
        read-only view of the kept file when those columns are kept one after the other); ``mean``
        and ``std`` are its columns' z-score statistics (:func:`xmodal.core.ssr.column_stats`), kept
        with them: a column and its statistics never change, so one more label computes one each."""
        R, stats = self._get(rows)
        return (R, stats) if z_scored else (_cosines(R, stats), stats)

    def _get(self, rows) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        kept, data = self._kept()
        where = _positions(kept)
        # in the order asked: kept in pair order, the next rebuild reads them as one slice
        missing = list(dict.fromkeys(r for r in rows.tolist() if r not in where))
        if missing:
            new = self._compute(rows=missing)
            mean, std = column_stats(new.T)
            new -= mean[:, None]
            new /= std[:, None]
            new_stats = np.column_stack([np.asarray(missing, np.float64), mean, std])
            if self._append(new_stats, new):
                kept, data = self._kept()
                where = _positions(kept)
        at = np.asarray([where.get(r, -1) for r in rows.tolist()], np.int64)
        if len(at) and at[0] >= 0 and np.array_equal(at, np.arange(at[0], at[0] + len(at))):
            # the columns asked for are kept one after the other (labels in the order they came):
            # the mapping itself, no 80 MB copy per modality at 100k × 200
            part = kept[at[0]:at[0] + len(at)]
            return data[at[0]:at[0] + len(at)].T, (part[:, 1].astype(np.float32), part[:, 2].astype(np.float32))
        out = np.empty((len(rows), len(self.features)), np.float32)   # (k, n): its .T is (n, k)
        stats = np.empty((len(rows), 2), np.float32)
        at_new = {r: i for i, r in enumerate(missing)}
        for j, r in enumerate(rows.tolist()):
            if at[j] >= 0:
                out[j], stats[j] = data[at[j]], kept[at[j], 1:]
            else:
                out[j], stats[j] = new[at_new[r]], new_stats[at_new[r], 1:]
        return out.T, (stats[:, 0].copy(), stats[:, 1].copy())

    def of_vectors(self, vectors: np.ndarray, z_scored: bool = True) -> tuple[np.ndarray, tuple]:
        """:meth:`get` for references that are not items (a written description's features): not kept."""
        cols = self._compute(vectors=vectors).T
        stats = column_stats(cols)
        if z_scored:
            cols -= stats[0]
            cols /= stats[1]
        return cols, stats

    def _compute(self, rows=None, vectors=None) -> np.ndarray:
        """:func:`cosine_columns` with the items' feature norms kept beside the columns (a new
        column is then one product over the features, not a normalised copy of them too)."""
        path = self.directory / "norms.npy"
        try:
            norms = np.load(path, allow_pickle=False)
            norms = norms if norms.shape == (len(self.features),) else None
        except (OSError, ValueError):
            norms = None
        cols, found = cosine_columns(self.features, rows=rows, vectors=vectors, norms=norms)
        if norms is None:
            try:
                with self._writing():
                    atomic_save_npy(path, found)
            except OSError:
                pass   # computed again next time
        return cols

    def _kept(self) -> tuple[np.ndarray, np.ndarray]:
        """(``(len, 3)`` float64: item row, mean, std of each kept column; the columns as a
        read-only ``(len, n)`` mapping)."""
        n = len(self.features)
        try:
            kept = np.load(self.directory / "rows.npy", allow_pickle=False)
            if kept.ndim == 2 and kept.shape[1] == 3 and len(kept) and n:
                return kept, np.memmap(self.directory / "columns.f32", np.float32, "r", shape=(len(kept), n))
        except (OSError, ValueError):
            pass   # none yet, or torn: compute what is asked
        return np.zeros((0, 3)), np.zeros((0, n), np.float32)

    def _append(self, new_stats: np.ndarray, cols: np.ndarray) -> bool:
        """Keep new columns, ``new_stats`` their (row, mean, std) (best effort: a full disk costs
        only the next rebuild's time). Returns whether they are kept (by this call or a racing one)."""
        n = len(self.features)
        try:
            with self._writing():
                kept, _ = self._kept()
                have = set(kept[:, 0].tolist())
                fresh = [i for i, r in enumerate(new_stats[:, 0].tolist()) if r not in have]
                if not fresh:
                    return True                          # a racing worker kept them first
                with open(self.directory / "columns.f32", "ab") as f:
                    f.truncate(len(kept) * n * 4)        # what a crash left past the named columns
                    f.seek(0, os.SEEK_END)
                    (cols if len(fresh) == len(cols) else np.ascontiguousarray(cols[fresh])).tofile(f)
                atomic_save_npy(self.directory / "rows.npy", np.concatenate([kept, new_stats[fresh]]))
            return True
        except OSError as exc:
            log.warning("workspace %s: SSR columns not kept (%s); the next rebuild computes them again",
                        self.ws.name, exc)
            return False

    @contextlib.contextmanager
    def _writing(self):
        """The directory's write lock; the first writer of a new features file deletes the
        directories of the older ones (their columns are of items that changed)."""
        d = self.directory
        fresh = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        if fresh and column_dir(self.ws, self.modality) == d:
            for old in d.parent.glob(f"{self.modality}-*"):
                if old != d:
                    shutil.rmtree(old, ignore_errors=True)


def _cosines(Z: np.ndarray, stats) -> np.ndarray:
    """Kept z-scores back to the cosines they were made of (Fortran order, as kept)."""
    out = np.multiply(Z, np.asarray(stats[1], np.float32), order="F")
    out += np.asarray(stats[0], np.float32)
    return out


def _positions(kept: np.ndarray) -> dict[int, int]:
    """item row -> its column's position in the kept file."""
    return {int(r): i for i, r in enumerate(kept[:, 0].astype(np.int64).tolist())}


def open_columns(ws: Workspace, modality: str) -> Columns:
    """``modality``'s columns; call it under ``ws.items_lock(shared=True)``."""
    return Columns(ws, modality, ws.load_features(modality, mmap=True), column_dir(ws, modality))


def cosine_columns(features: np.ndarray, rows=None, vectors: np.ndarray | None = None,
                   norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(columns, norms)``: ``columns`` is ``(k, n)`` float32, row j the cosines of every row of
    ``features`` to ``features[rows[j]]`` (or to ``vectors[j]``, e.g. a written description's
    features): SSR column j, stored as a row. ``CHUNK_ROWS`` feature rows at a time, so a
    memory-mapped features file is read once and never copied whole. ``norms``: the feature rows'
    L2 norms, computed in the same pass when not given, and returned. A zero or non-finite row has
    cosines 0 (as :func:`l2_normalize` makes it)."""
    refs = l2_normalize(features[np.asarray(rows, dtype=np.int64)] if vectors is None else vectors)
    n = len(features)
    out = np.empty((len(refs), n), np.float32)
    found = np.empty(n, np.float32) if norms is None else norms
    for s in range(0, n, CHUNK_ROWS):
        block = np.asarray(features[s:s + CHUNK_ROWS], np.float32)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if norms is None:
                found[s:s + CHUNK_ROWS] = np.sqrt(np.einsum("ij,ij->i", block, block))
            part = refs @ block.T
            part /= found[s:s + CHUNK_ROWS]
        part[~np.isfinite(part)] = 0.0
        out[:, s:s + CHUNK_ROWS] = part
    return out, found


def forget(ws: Workspace) -> None:
    """Delete every kept column (the next rebuild computes its own: ``xmodal bench``'s full rebuild)."""
    shutil.rmtree(ws.root / "features" / "ssr-columns", ignore_errors=True)
