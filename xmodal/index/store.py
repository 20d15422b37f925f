"""Versioned retrieval indexes: whole files on disk, a forward-only "current" pointer in Redis.

- Version numbers come from ``INCR P:{p}:index:seq`` (seeded from the highest version on disk when
  the key is missing, e.g. after Redis lost its data, so a version number is never reused).
- A rebuild writes ``index/v<N>.npz`` completely (temporary file + ``os.replace``) and then moves
  ``P:{p}:index:current`` to N with a Lua compare-and-set that only ever moves it forward. Readers
  therefore never see a half-written index, and racing workers end on the highest version.
- ``load_current(project)`` keeps the loaded index in a process-global cache keyed by version: one
  Redis GET per call, a file load only when the version changed.
- Old versions are pruned, keeping the newest ``keep`` files and never the current one.
- A file is validated when it is read (whole zip, every array, consistent shapes, finite values: a
  valid ``.npz`` of NaNs made /search answer ``"score": NaN``, which is not JSON); a current file
  that is missing or corrupt is not served: the newest valid older version is, and a rebuild is
  enqueued (:func:`load_current`). The cached index is served only while its file is the one it
  was read from (one ``stat`` per call): a file replaced or removed on disk is read again, so
  junk written over every version is noticed and rebuilt, not served from memory.

An index file is self-contained: the similarity codes of every image and text (rows in the order of
the stored ids), the reference features (to encode new queries), the pairs it was built from and
the medoid order (for the priority of unlabelled predictions). With the workspace option
``"enhance"`` (beyond the paper, default off = faithful SSM-AL) it also holds the z-score statistics
of the SSR columns (``"zscore"``, so new queries are encoded like the indexed items) and the CSLS
hubness terms of every item (``"csls"``, :mod:`xmodal.core.hubness`, applied by
:meth:`IndexSnapshot.scores`). Files written before these fields existed load as faithful indexes.

Above ``ann_threshold`` items of a modality (:mod:`xmodal.index.ann`, default 100 000) the rebuild also
builds an approximate-nearest-neighbour index of that modality's codes; it is written beside the
index file as ``index/v<N>.<modality>.faiss`` *before* the ``.npz`` (whose meta names it) and
before the pointer moves, pruned with its version, and loaded lazily by the snapshot on the first
search. /search and :meth:`IndexSnapshot.rank` without a candidate list then take a shortlist from
it and re-score the shortlist exactly; with no ANN file (old indexes, small projects, faiss
missing, an unreadable file) they are exact.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from xmodal.core.bridge import bridge_embeddings, centred, fuse_codes, project
from xmodal.core.calibration import PlattCalibrator, top_z
from xmodal.core.hubness import apply_csls, knn_mean
from xmodal.core.ssr import ssr, ssr_codes, top_k
from xmodal.errors import DataError
from xmodal.index import ann as ann_mod
from xmodal.index.workspace import Workspace, atomic_write_bytes, other
from xmodal.logfmt import kv
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)

DEFAULT_KEEP = 5
_FILE_RE = re.compile(r"^v(\d+)\.npz$")

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


def model_version(version: int) -> str:
    """The version string Label Studio sees (``model_version`` of predictions and /setup)."""
    return f"v{int(version)}"


def parse_model_version(text) -> int | None:
    m = re.fullmatch(r"v(\d+)", str(text or ""))
    return int(m.group(1)) if m else None


@dataclass
class IndexSnapshot:
    """One loaded index version (read-only)."""

    project: str
    version: int
    measure: str
    image_ids: np.ndarray          # (n,) str
    text_ids: np.ndarray           # (m,) str
    image_codes: np.ndarray        # (n, k') float32, dot product = similarity
    text_codes: np.ndarray         # (m, k')
    image_refs: np.ndarray         # (k, d_image) unit-norm reference features
    text_refs: np.ndarray          # (k, d_text)
    pair_rows: np.ndarray          # (k, 2) image row, text row (-1: a written reference text)
    annotation_ids: np.ndarray     # (k,) annotation id of each reference (first one if deduplicated)
    medoid_ids: np.ndarray         # selected-modality medoids in anytime order
    select: str = "image"
    sparse_top_k: int | None = None
    sparse_power: float = 1.0
    meta: dict = field(default_factory=dict)
    # "enhance" (beyond the paper; None = faithful SSM-AL)
    image_col_stats: np.ndarray | None = None   # (2, k) mean, std of each image SSR column ("zscore")
    text_col_stats: np.ndarray | None = None    # (2, k) same for the texts
    image_hub: np.ndarray | None = None         # (n,) mean top-k similarity to the texts ("csls")
    text_hub: np.ndarray | None = None          # (m,) mean top-k similarity to the images
    csls_k: int | None = None                   # k of the hubness terms; None = no CSLS
    # the class bridge ("bridge", xmodal.core.bridge): codes end with sqrt(w)·bridge embedding
    bridge_weight: float = 0.0                  # w; 0 = codes are SSR codes only
    bridge_means: np.ndarray | None = None      # (2, d_text) collection means: images', texts'
    bridge_classes: np.ndarray | None = None    # (c,) ImageNet classes seen in the images
    bridge_class_emb: np.ndarray | None = None  # (c, d_text) their prompts' text embeddings
    bridge_basis: np.ndarray | None = None      # (d_text, b) the bridge part's principal directions
    # approximate search (xmodal.index.ann): built indexes by modality (the rebuild), else loaded lazily
    # from the files beside ``path`` that meta["ann"] names
    ann: dict = field(default_factory=dict, repr=False)
    path: Path | None = None                    # the .npz this snapshot was read from
    file_id: tuple | None = None                # (device, inode, size, mtime) of it when read
    _rows: dict = field(default_factory=dict, repr=False)

    @property
    def n_pairs(self) -> int:
        return int(len(self.pair_rows))

    @property
    def model_version(self) -> str:
        return model_version(self.version)

    @property
    def built_at(self) -> float:
        return float(self.meta.get("built_at", 0.0))

    @property
    def has_signal(self) -> bool:
        """Whether the index can rank at all: Pearson needs 2 references (with one, every centred
        SSR vector is zero), cosine needs 1. Below that every score is 0 ("unlabelled")."""
        return self.image_codes.shape[1] > 0 and self.n_pairs >= (2 if self.measure == "pearson" else 1)

    def ids(self, modality: str) -> np.ndarray:
        return self.image_ids if modality == "image" else self.text_ids

    def codes(self, modality: str) -> np.ndarray:
        return self.image_codes if modality == "image" else self.text_codes

    def rows(self, modality: str) -> dict[str, int]:
        if modality not in self._rows:
            self._rows[modality] = {str(x): i for i, x in enumerate(self.ids(modality).tolist())}
        return self._rows[modality]

    @property
    def enhance(self) -> list[str]:
        """The enhancements this index was built with (``[]`` = faithful SSM-AL)."""
        return list(self.meta.get("enhance") or [])

    @property
    def uses_csls(self) -> bool:
        return bool(self.csls_k) and self.image_hub is not None and self.text_hub is not None

    def hubness(self, modality: str) -> np.ndarray | None:
        """Stored CSLS terms of the indexed items of ``modality`` (None without CSLS)."""
        return self.image_hub if modality == "image" else self.text_hub

    def ann_index(self, modality: str):
        """The ANN index over ``modality``'s codes (:class:`xmodal.index.ann.AnnIndex`), or None: then
        searches over that modality are exact. Loaded on first use; a missing or unreadable file
        is logged once and means exact search."""
        if modality in self.ann:
            return self.ann[modality]
        found = None
        if modality in (self.meta.get("ann") or ()) and self.path is not None and self.has_signal:
            p = ann_mod.path_for(self.path, modality)
            try:
                found = ann_mod.AnnIndex.load(p)
                if found.n != len(self.ids(modality)) or found.dim != self.codes(modality).shape[1]:
                    log.warning("project=%s index v%s: %s does not match the index (%d×%d); exact "
                                "search", self.project, self.version, p.name, found.n, found.dim)
                    found = None
            except Exception as exc:  # noqa: BLE001 - missing file, faiss absent, corrupt file
                log.warning("project=%s index v%s: no ANN index for %s (%s: %s); exact search",
                            self.project, self.version, modality, type(exc).__name__, exc)
                found = None
        self.ann[modality] = found
        return found

    def _ann_top(self, query_modality: str, q: np.ndarray, k: int, query_hub=None):
        """Top-k by the ANN shortlist re-scored exactly: list of (rows, scores) per query row, or
        None when the target modality has no ANN index."""
        tgt = other(query_modality)
        index = self.ann_index(tgt) if self.has_signal else None
        if index is None:
            return None
        n = len(self.ids(tgt))
        cand, _ = index.search(q, ann_mod.shortlist(k, n))
        out = []
        for i in range(len(q)):
            rows = cand[i][cand[i] >= 0]
            qi = q[i:i + 1]
            hub = None if query_hub is None else np.atleast_1d(query_hub)[i:i + 1]
            if hub is None and self.uses_csls:   # r(q) from the shortlist: its k best similarities
                hub = knn_mean(qi @ self.codes(tgt)[rows].T, self.csls_k, axis=1)
            s = self.scores(query_modality, qi, rows, query_hub=hub)
            idx, vals = top_k(s, min(k, len(rows)))
            out.append((rows[idx[0]], vals[0]))
        return out

    def _to_codes(self, R: np.ndarray, modality: str) -> np.ndarray:
        stats = self.image_col_stats if modality == "image" else self.text_col_stats
        return ssr_codes(R, self.measure, self.sparse_top_k, self.sparse_power,
                         None if stats is None else (stats[0], stats[1]))

    def encode(self, modality: str, features: np.ndarray) -> np.ndarray:
        """Codes of new items (e.g. a free-text query embedded with the workspace's encoder)."""
        refs = self.image_refs if modality == "image" else self.text_refs
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if not self.has_signal:
            return np.zeros((len(features), self.image_codes.shape[1]), dtype=np.float32)
        if features.shape[1] != refs.shape[1]:
            raise DataError(f"query features have dimension {features.shape[1]}; the index's "
                            f"{modality} features have {refs.shape[1]}")
        codes = self._to_codes(ssr(features, refs), modality)
        if not self.bridge_weight:
            return codes
        return fuse_codes(codes, self._bridge_of(modality, features), self.bridge_weight)

    def _bridge_of(self, modality: str, features: np.ndarray) -> np.ndarray:
        """Centred bridge embeddings of new items: a text's own features; an image's top classes
        among those the collection's images showed (the only ones with embeddings here)."""
        mean = self.bridge_means[0 if modality == "image" else 1]
        if modality == "text":
            return project(centred(features, mean)[0], self.bridge_basis)
        from xmodal.encoders.image_words import TOP_CLASSES, top_classes

        known = {int(c): j for j, c in enumerate(np.asarray(self.bridge_classes).astype(np.int64))}
        found = top_classes(features, (self.meta.get("encoders") or {}).get("image") or "", 4 * TOP_CLASSES)
        if found is None:
            raise DataError("this index's class bridge needs the image encoder it was built with")
        pos = np.zeros((len(features), TOP_CLASSES), np.int64)
        probs = np.zeros((len(features), TOP_CLASSES), np.float32)
        for i, (classes, p) in enumerate(zip(*found)):
            seen = [(known[int(c)], q) for c, q in zip(classes, p) if int(c) in known][:TOP_CLASSES]
            for j, (row, q) in enumerate(seen):
                pos[i, j], probs[i, j] = row, q
        probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
        return project(centred(bridge_embeddings(probs, pos, self.bridge_class_emb), mean)[0],
                       self.bridge_basis)

    def scores(self, query_modality: str, query_codes: np.ndarray,
               candidate_rows: np.ndarray | None = None,
               query_hub: np.ndarray | None = None) -> np.ndarray:
        """Similarity of each query code row to the candidates of the other modality.

        With CSLS (``"enhance": ["csls"]``) the score is ``2·q·t − r(q) − r(t)``: ``r(t)`` is the
        candidate's stored hubness term, ``r(q)`` the query's, ``query_hub`` for indexed items
        (:meth:`hubness`) or else computed here from the query's k best similarities to all items
        of the other modality (what the stored terms of the indexed items are).
        """
        tgt = other(query_modality)
        target_all = self.codes(tgt)
        target = target_all if candidate_rows is None else target_all[candidate_rows]
        q = np.atleast_2d(query_codes)
        if not self.has_signal:
            return np.zeros((len(q), len(target)), dtype=np.float32)
        S = q @ target.T
        if not self.uses_csls:
            return S
        if query_hub is None:
            full = S if candidate_rows is None else q @ target_all.T
            query_hub = knn_mean(full, self.csls_k, axis=1)
        r_t = self.hubness(tgt)
        return apply_csls(S, np.atleast_1d(query_hub),
                          r_t if candidate_rows is None else r_t[candidate_rows])

    def labelled_matches(self, query_modality: str, query_id: str) -> list[str]:
        """The items of the other modality that the labels this index was built from pair with
        ``query_id`` (a written reference text is no item: left out); ``[]`` for an unknown id."""
        row = self.rows(query_modality).get(str(query_id))
        if row is None:
            return []
        q, t = (0, 1) if query_modality == "image" else (1, 0)
        pairs = self.pair_rows[(self.pair_rows[:, q] == row) & (self.pair_rows[:, t] >= 0)]
        ids = self.ids(other(query_modality))
        return [str(ids[r]) for r in pairs[:, t]]

    def rank(self, query_modality: str, query_id: str, candidate_ids=None,
             k: int | None = None) -> list[tuple[str, float]]:
        """Candidates of the other modality for an item of ``query_modality``, best first.

        ``candidate_ids`` restricts the ranking (unknown ids are dropped); without signal all scores
        are 0 and the candidates keep their given order. Raises KeyError for an unknown query id.
        """
        row = self.rows(query_modality)[str(query_id)]
        tgt = other(query_modality)
        hub = self.hubness(query_modality)
        if candidate_ids is None and k is not None:
            approx = self._ann_top(query_modality, self.codes(query_modality)[row:row + 1], k,
                                   None if hub is None else hub[row:row + 1])
            if approx is not None:
                ids = self.ids(tgt)
                return [(str(ids[r]), float(v)) for r, v in zip(*approx[0])]
        if candidate_ids is None:
            cand_rows = np.arange(len(self.ids(tgt)))
        else:
            known = self.rows(tgt)
            cand_rows = np.asarray([known[c] for c in map(str, candidate_ids) if c in known],
                                   dtype=np.int64)
        if len(cand_rows) == 0:
            return []
        s = self.scores(query_modality, self.codes(query_modality)[row], cand_rows,
                        query_hub=None if hub is None else hub[row:row + 1])
        k = len(cand_rows) if k is None else min(k, len(cand_rows))
        if self.has_signal:
            idx, vals = top_k(s, k)
            idx, vals = idx[0], vals[0]
        else:
            idx, vals = np.arange(k), np.zeros(k, dtype=np.float32)
        ids = self.ids(tgt)
        return [(str(ids[cand_rows[i]]), float(v)) for i, v in zip(idx, vals)]

    def search(self, query_modality: str, query_codes: np.ndarray, k: int = 10):
        """Top-k items of the other modality for code rows: list of (id, score) per query.

        Through the ANN shortlist (re-scored exactly) when the other modality has an ANN index,
        else exact over every item."""
        ids = self.ids(other(query_modality))
        approx = self._ann_top(query_modality, np.atleast_2d(query_codes), k)
        if approx is not None:
            return [[(str(ids[r]), float(v)) for r, v in zip(rows, vals)] for rows, vals in approx]
        s = self.scores(query_modality, query_codes)
        if self.has_signal:
            idx, vals = top_k(s, k)
        else:
            kk = min(k, s.shape[1])
            idx = np.tile(np.arange(kk), (len(s), 1))
            vals = np.zeros_like(idx, dtype=np.float32)
        return [[(str(ids[i]), float(v)) for i, v in zip(ri, rv)] for ri, rv in zip(idx, vals)]

    def confidence(self, item_id: str) -> float:
        """Calibrated probability that the top candidate for an item of the select modality is
        right (:mod:`xmodal.core.calibration`: how far the best score stands out of the item's
        scores against every candidate, mapped through the index's leave-one-out fit); 0 without
        signal."""
        if not self.has_signal:
            return 0.0
        row = self.rows(self.select)[str(item_id)]
        hub = self.hubness(self.select)
        s = self.scores(self.select, self.codes(self.select)[row], None,
                        query_hub=None if hub is None else hub[row:row + 1])
        return float(PlattCalibrator.from_dict(self.meta.get("calibration")).predict(top_z(s))[0])

    @property
    def written_references(self) -> dict[int, str]:
        """Descriptions annotators wrote that serve as text references, by annotation id."""
        return {int(a): d for a, d in (self.meta.get("written_references") or {}).items()}

    def medoid_priority(self, item_id: str) -> float:
        """Anytime position of a medoid scaled to [0, 1); 1.0 for items that are not medoids."""
        order = self._rows.get("medoids")
        if order is None:
            order = self._rows["medoids"] = {str(m): i for i, m in enumerate(self.medoid_ids.tolist())}
        pos = order.get(str(item_id))
        return 1.0 if pos is None else pos / max(len(order), 1)


# -- files ------------------------------------------------------------------------------------
def index_path(ws: Workspace, version: int) -> Path:
    return ws.index_dir / f"v{int(version)}.npz"


def versions_on_disk(ws: Workspace) -> list[int]:
    if not ws.index_dir.is_dir():
        return []
    out = []
    for p in ws.index_dir.iterdir():
        m = _FILE_RE.match(p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def write_snapshot(ws: Workspace, snap: IndexSnapshot) -> Path:
    """Serialize the whole index to ``index/v<N>.npz`` atomically, after the ANN files of
    ``snap.ann`` (``index/v<N>.<modality>.faiss``, each atomic too), which its meta then names."""
    path = index_path(ws, snap.version)
    built = {m: a for m, a in snap.ann.items() if a is not None}
    for modality, index in built.items():
        index.save(ann_mod.path_for(path, modality))
    meta = dict(snap.meta, project=snap.project, version=snap.version, measure=snap.measure,
                select=snap.select, sparse_top_k=snap.sparse_top_k, sparse_power=snap.sparse_power,
                csls_k=snap.csls_k, ann=sorted(built), bridge_weight=snap.bridge_weight)
    optional = {name: np.asarray(getattr(snap, name), dtype=np.float32) for name in _OPTIONAL
                if getattr(snap, name) is not None}
    buf = io.BytesIO()
    np.savez(buf, **optional, image_ids=np.asarray(snap.image_ids, dtype=str),
             text_ids=np.asarray(snap.text_ids, dtype=str),
             image_codes=snap.image_codes.astype(np.float32), text_codes=snap.text_codes.astype(np.float32),
             image_refs=snap.image_refs.astype(np.float32), text_refs=snap.text_refs.astype(np.float32),
             pair_rows=np.asarray(snap.pair_rows, dtype=np.int64).reshape(-1, 2),
             annotation_ids=np.asarray(snap.annotation_ids, dtype=np.int64),
             medoid_ids=np.asarray(snap.medoid_ids, dtype=str),
             meta=np.asarray(json.dumps(meta)))
    atomic_write_bytes(path, buf.getvalue())
    snap.path = path
    return path


_OPTIONAL = ("image_col_stats", "text_col_stats", "image_hub", "text_hub", "bridge_means",
             "bridge_classes", "bridge_class_emb", "bridge_basis")


class CorruptIndex(DataError):
    """An index file that cannot be read whole or does not hold a consistent index."""


def read_snapshot(path: Path, project: str | None = None) -> IndexSnapshot:
    """Read and validate an index file: FileNotFoundError if it is missing, :class:`CorruptIndex`
    for anything unreadable (a truncated zip, a missing array, inconsistent shapes)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            file_id = _file_id(os.fstat(fh.fileno()))
            meta = json.loads(str(z["meta"]))
            optional = {name: z[name] for name in _OPTIONAL if name in z.files}
            snap = IndexSnapshot(
                project=project or meta.get("project", ""), version=int(meta["version"]),
                measure=meta["measure"], select=meta.get("select", "image"),
                sparse_top_k=meta.get("sparse_top_k"), sparse_power=float(meta.get("sparse_power") or 1.0),
                image_ids=z["image_ids"], text_ids=z["text_ids"],
                image_codes=z["image_codes"], text_codes=z["text_codes"],
                image_refs=z["image_refs"], text_refs=z["text_refs"],
                pair_rows=z["pair_rows"], annotation_ids=z["annotation_ids"],
                medoid_ids=z["medoid_ids"], meta=meta, csls_k=meta.get("csls_k"), path=Path(path),
                file_id=file_id, bridge_weight=float(meta.get("bridge_weight") or 0.0), **optional)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, KeyError, ValueError, EOFError...
        raise CorruptIndex(f"index file {Path(path).name} is unreadable: {type(exc).__name__}") from exc
    problem = _inconsistency(snap, Path(path))
    if problem:
        raise CorruptIndex(f"index file {Path(path).name} is inconsistent: {problem}")
    return snap


def _inconsistency(snap: IndexSnapshot, path: Path) -> str | None:
    """What makes a loaded index unusable (shapes only: cheap at any size), or None."""
    m = _FILE_RE.match(path.name)
    if m and int(m.group(1)) != snap.version:
        return f"it says version {snap.version}"
    k = len(snap.pair_rows)
    checks = [
        (snap.image_codes.ndim == 2 and snap.image_codes.shape[0] == len(snap.image_ids), "image codes"),
        (snap.text_codes.ndim == 2 and snap.text_codes.shape[0] == len(snap.text_ids), "text codes"),
        (snap.image_codes.shape[1:] == snap.text_codes.shape[1:], "code widths"),
        (snap.pair_rows.ndim == 2 and snap.pair_rows.shape[1] == 2, "pair rows"),
        (len(snap.annotation_ids) == k, "annotation ids"),
        (len(snap.image_refs) == k and len(snap.text_refs) == k, "reference features"),
    ]
    bad = [what for ok, what in checks if not ok]
    if bad:
        return ", ".join(bad) + " do not match"
    # a float64 sum per array: NaN or infinity anywhere makes it non-finite, without an n x d mask
    floats = {"image codes": snap.image_codes, "text codes": snap.text_codes,
              "image references": snap.image_refs, "text references": snap.text_refs,
              **{name.replace("_", " "): getattr(snap, name) for name in _OPTIONAL}}
    broken = [what for what, a in floats.items()
              if a is not None and np.size(a) and not np.isfinite(np.sum(a, dtype=np.float64))]
    return ", ".join(broken) + " hold non-finite values (NaN or infinity)" if broken else None


def _file_id(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _same_file(snap: IndexSnapshot) -> bool:
    """Whether the file ``snap`` was read from is still there, unchanged."""
    try:
        return snap.path is not None and _file_id(os.stat(snap.path)) == snap.file_id
    except OSError:
        return False


# -- the store -----------------------------------------------------------------------------
class IndexStore:
    """Versions and the current pointer of one project's index."""

    def __init__(self, redis_client: redis.Redis, ws: Workspace, keep: int | None = None):
        self.redis = redis_client
        self.ws = ws
        self.project = ws.name
        self.keep = keep if keep is not None else int(os.environ.get("XMODAL_KEEP_VERSIONS", DEFAULT_KEEP))
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
        if cached is not None and cached.version == version and _same_file(cached):
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
