"""Approximate nearest-neighbour search over similarity codes, for /search above ~100k items.

Exact search (:meth:`xmodal.index.snapshot.IndexSnapshot.search`) scores every item: one
``n × k'`` product plus a partition per query, ~5 ms at 100k items and ~50 ms at 1M on two cores.
Above a threshold of items (workspace key ``"ann_threshold"``, else ``$XMODAL_ANN_THRESHOLD``,
default :data:`DEFAULT_THRESHOLD` = 100 000) the rebuild job also builds an inverted-file index
of that modality's codes (faiss ``IndexIVFScalarQuantizer``, 8-bit codes, inner product) and writes
it beside the index file as ``index/v<N>.<modality>.faiss`` before the pointer flips.

A query then goes in two steps:

1. **candidates** — :meth:`AnnIndex.search` probes the ``nprobe`` inverted lists nearest the query
   and returns the ``shortlist(k)`` best items by the (8-bit approximate) inner product;
2. **exact re-scoring** — :class:`~xmodal.index.snapshot.IndexSnapshot` scores that shortlist with
   its float32 codes (``IndexSnapshot.scores``, which also applies CSLS when the index was built
   with ``"enhance": ["csls"]``) and keeps the top k. Returned scores are therefore exact; only
   membership of the top k is approximate. With CSLS the candidates are still retrieved by inner
   product: an item whose CSLS rank is high but whose inner-product rank is below the shortlist
   (``4·k``, at least 64) is missed.

Why IVF and not HNSW (measured in ``docs/scale.md``, "Search and rebuild at scale"): the index is
rebuilt after every label batch, so build time matters as much as query time. On SSR codes of
clustered features (100k × 200) IVF built in 2–3 s where HNSW took 11 s (faiss) to 20 s
(hnswlib) and usearch 181 s, at equal or better recall@10 for the same latency; its memory is one
byte per code dimension (plus ids) instead of the float32 codes plus a graph; and large ``k`` (up
to 1000) only needs a few more lists probed, not a wider beam.

faiss is imported lazily: without it (or without an ANN file) search is exact.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from xmodal import settings
from xmodal.fileio import atomic_file

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 100_000
SUFFIX = ".faiss"
MIN_SHORTLIST = 64
SHORTLIST_FACTOR = 4
TRAIN_PER_LIST = 40          # k-means training points per inverted list (faiss warns below 39)
KMEANS_ITERATIONS = 10


def threshold(config: dict | None = None) -> int:
    """Items of a modality above which the rebuild builds an ANN index for it: the workspace key
    ``ann_threshold``, else ``$XMODAL_ANN_THRESHOLD``, else 100 000 (0 or less = never)."""
    value = (config or {}).get("ann_threshold")
    if value is None:
        value = settings.get("XMODAL_ANN_THRESHOLD")
    try:
        return int(value)
    except (TypeError, ValueError):
        log.warning("ann_threshold %r is not an integer; using %d", value, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD


def wanted(n_items: int, dim: int, config: dict | None = None) -> bool:
    """Whether an index over ``n_items`` codes of width ``dim`` gets an ANN structure."""
    t = threshold(config)
    return t > 0 and dim > 0 and n_items > t and available()


def available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def default_nlist(n: int) -> int:
    """Inverted lists: 2·√n up to 1024 lists (632 at 100k, 1024 at 1M), √n above (~1M items), at
    least 1, at most n/8. Finer lists gave better recall at the same items scanned on small
    indexes (.92 vs .73 recall@10 at 20k items), not at 1M (.984 with 2000 lists, .971 with 1000),
    where every extra list costs build time: assigning 1M codes to 2000 lists is ~2x the 12 s that
    1000 lists took (20 training points per list and 10 k-means iterations; 40 and 25 took 49 s
    for the same recall)."""
    root = math.sqrt(max(n, 1))
    return int(max(1, min(round(min(2 * root, max(1024.0, root))), max(1, n // 8))))


def shortlist(k: int, n: int) -> int:
    """Candidates re-scored exactly for a top-k query: 4·k, at least 64, at most n."""
    return int(min(n, max(SHORTLIST_FACTOR * int(k), MIN_SHORTLIST)))


class AnnIndex:
    """An IVF (8-bit scalar quantised, inner product) index over one modality's code rows."""

    def __init__(self, index, n: int, dim: int, nlist: int, nprobe_min: int | None = None):
        self.index = index
        self.n, self.dim, self.nlist = int(n), int(dim), int(nlist)
        # k=10 probes 1/8 of the lists (~12 % of the items): recall@10 ≈ .96 on SSR codes at 100k
        self.nprobe_min = int(nprobe_min or max(1, min(self.nlist, max(8, self.nlist // 8))))

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, codes: np.ndarray, nlist: int | None = None, seed: int = 0) -> AnnIndex:
        """Train the coarse quantiser on a sample of ``codes`` (40 per list), then add all rows
        (row numbers are the ids)."""
        import faiss

        codes = np.ascontiguousarray(codes, dtype=np.float32)
        n, dim = codes.shape
        if n == 0 or dim == 0:
            raise ValueError("an ANN index needs at least one code row of positive width")
        nlist = int(nlist or default_nlist(n))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = KMEANS_ITERATIONS
        n_train = min(n, TRAIN_PER_LIST * nlist)
        sample = codes if n_train == n else \
            codes[np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))]
        index.train(sample)
        for s in range(0, n, 1 << 18):      # bounded temporaries in add
            index.add(codes[s:s + (1 << 18)])
        return cls(index, n, dim, nlist)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` atomically (temporary file + ``os.replace``)."""
        import faiss

        data = faiss.serialize_index(self.index)
        path = Path(path)
        with atomic_file(path) as f:
            f.write(memoryview(data))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnnIndex:
        import faiss

        index = faiss.read_index(str(path))
        ivf = faiss.extract_index_ivf(index)
        return cls(index, index.ntotal, index.d, ivf.nlist)

    def nbytes(self) -> int:
        """Approximate memory of the index: one byte per dimension per code + ids + centroids."""
        return self.n * (self.dim + 8) + self.nlist * self.dim * 4

    # -- querying -------------------------------------------------------------------------
    def nprobe_for(self, n_candidates: int) -> int:
        """Lists probed for ``n_candidates`` results: ``nprobe_min`` for the 64-item shortlist of
        k ≤ 16, growing with the cube root of the shortlist (×4 at k=1000: a top-1000 is spread
        over many more lists than a top-10), and at least enough lists to hold twice the shortlist
        on average; at most all of them."""
        per_list = max(self.n / max(self.nlist, 1), 1.0)
        grow = max(1.0, n_candidates / MIN_SHORTLIST) ** (1 / 3)
        return int(min(self.nlist, max(math.ceil(self.nprobe_min * grow),
                                       math.ceil(2 * n_candidates / per_list))))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)``, each ``(len(queries), min(k, n))``, best first, by the approximate
        inner product; a row of ``-1`` (score ``-inf``) marks a slot the probed lists could not
        fill."""
        import faiss

        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query codes have width {q.shape[1]}; the ANN index has {self.dim}")
        k = int(min(max(k, 1), self.n))
        params = faiss.SearchParametersIVF(nprobe=self.nprobe_for(k))
        D, I = self.index.search(q, k, params=params)
        D = np.where(I < 0, -np.inf, D).astype(np.float32)
        return I.astype(np.int64), D


def path_for(index_file: str | os.PathLike, modality: str) -> Path:
    """``index/v<N>.npz`` -> ``index/v<N>.<modality>.faiss``."""
    p = Path(index_file)
    return p.with_name(f"{p.stem}.{modality}{SUFFIX}")


def build_for(codes_by_modality: dict[str, np.ndarray], config: dict | None = None) -> dict:
    """ANN indexes for the modalities with more items than the threshold: ``{modality: AnnIndex}``
    (empty below it, or when faiss is not installed)."""
    out = {}
    for modality, codes in codes_by_modality.items():
        codes = np.asarray(codes)
        if codes.ndim == 2 and wanted(len(codes), codes.shape[1], config):
            out[modality] = AnnIndex.build(codes)
    return out
