"""The index of one project version: the similarity codes of every image and text, and what
ranks, searches and scores with them (:class:`IndexSnapshot`).

An index is self-contained: the codes of every item (rows in the order of the stored ids), the
reference features (to encode new queries), the pairs it was built from and the medoid order (for
the priority of unlabelled predictions). With the workspace option ``"enhance"`` (beyond the paper)
it also holds the z-score statistics of the SSR columns (``"zscore"``, so new queries are encoded
like the indexed items), the CSLS hubness terms of every item (``"csls"``,
:mod:`xmodal.core.hubness`, applied by :meth:`IndexSnapshot.scores`) and the class bridge.

Above ``ann_threshold`` items of a modality (:mod:`xmodal.index.ann`) /search and
:meth:`IndexSnapshot.rank` without a candidate list take a shortlist from the ANN index and
re-score it exactly; with no ANN file (old indexes, small projects, an unreadable file) they are
exact.
"""


from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmodal.core.bridge import bridge_embeddings, centred, fuse_codes, project
from xmodal.core.calibration import PlattCalibrator, top_z
from xmodal.core.hubness import apply_csls, knn_mean
from xmodal.core.ssr import ssr, ssr_codes, top_k
from xmodal.errors import DataError
from xmodal.index import ann as ann_mod
from xmodal.project.workspace import other

log = logging.getLogger(__name__)

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
    # the self-trained map ("map", xmodal.core.pseudomap): codes end with sqrt(b)·map code
    map_weight: float = 0.0                     # b; 0 = no map part
    map_image_mean: np.ndarray | None = None    # (d_image,) mean of the unit image features
    map_text_mean: np.ndarray | None = None     # (d_text,) mean of the unit text features
    map_matrix: np.ndarray | None = None        # (d_image, dims) the map, on the text directions below
    map_text_matrix: np.ndarray | None = None   # (d_text, dims) the texts' map directions; None: all
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
        if self.bridge_weight:
            codes = fuse_codes(codes, self._bridge_of(modality, features), self.bridge_weight)
        if self.map_weight:
            from xmodal.core.pseudomap import image_map_codes, text_map_codes

            fitted = {"image_mean": self.map_image_mean, "text_mean": self.map_text_mean,
                      "matrix": self.map_matrix}
            if self.map_text_matrix is not None:
                fitted["text_matrix"] = self.map_text_matrix
            m = image_map_codes(features, fitted) if modality == "image" else text_map_codes(features, fitted)
            codes = fuse_codes(codes, m, self.map_weight)
        return codes

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
