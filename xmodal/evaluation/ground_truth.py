"""What the data set's couplings say: the oracle's answer for a medoid and the metrics of a
similarity (or of a product index as it serves) against them. Used by the demo, the simulated
sessions and the product-path evaluation.
"""

from __future__ import annotations

import numpy as np

# -- ground truth and metrics -----------------------------------------------------------------

class GroundTruth:
    """What the oracle knows, and the metrics of a similarity matrix against it.

    Recall@K (the COCO protocol): image→text, every text of the image is relevant; text→image,
    its image. MAP (same label = relevant) when the data set has labels for every item. Queries are
    capped at ``max_queries`` per direction (seeded sample) so that big folders stay fast.
    """

    def __init__(self, ds, max_queries: int = 1000, ks=(1, 5, 10), seed: int = 0):
        self.ds = ds
        self.ks = tuple(ks)
        self.n_images, self.n_texts = ds.n_images, ds.n_texts
        self.texts_of_image: list[list[int]] = [[] for _ in range(ds.n_images)]
        self.image_of_text = np.full(ds.n_texts, -1, dtype=np.int64)
        for i, t in ds.pairs:
            self.texts_of_image[int(i)].append(int(t))
            if self.image_of_text[t] < 0:
                self.image_of_text[t] = i
        rng = np.random.default_rng(seed)
        img_q = np.flatnonzero([bool(ts) for ts in self.texts_of_image])
        txt_q = np.flatnonzero(self.image_of_text >= 0)
        self.image_queries = (np.sort(rng.choice(img_q, max_queries, replace=False))
                              if len(img_q) > max_queries else img_q)
        self.text_queries = (np.sort(rng.choice(txt_q, max_queries, replace=False))
                             if len(txt_q) > max_queries else txt_q)
        self.rel_i2t = np.zeros((len(self.image_queries), self.n_texts), dtype=bool)
        for r, i in enumerate(self.image_queries):
            self.rel_i2t[r, self.texts_of_image[i]] = True
        labelled = ds.has_labels and not (np.any(ds.image_labels == "") or np.any(ds.text_labels == ""))
        self.image_labels = np.asarray(ds.image_labels).astype(str) if labelled else None
        self.text_labels = np.asarray(ds.text_labels).astype(str) if labelled else None

    def match(self, select: str, row: int) -> int | None:
        """The oracle's answer for a medoid: the other-modality row it matches (None: no match)."""
        if select == "image":
            ts = self.texts_of_image[row]
            return ts[0] if ts else None
        i = int(self.image_of_text[row])
        return i if i >= 0 else None

    def chance(self) -> dict:
        k = 10
        return {"recall@10": 0.5 * (min(k, self.n_texts) / self.n_texts + min(k, self.n_images) / self.n_images)
                if k in self.ks else None}

    def evaluate(self, image_codes: np.ndarray, text_codes: np.ndarray) -> dict:
        """Metrics of ``S = image_codes @ text_codes.T`` (dot product = similarity)."""
        return self.evaluate_scores(lambda rows: image_codes[rows] @ text_codes.T,
                                    lambda rows: text_codes[rows] @ image_codes.T)

    def evaluate_index(self, snap) -> dict:
        """Metrics of a product index as it serves: ``IndexSnapshot.scores`` of the indexed query
        items (so the workspace's ``"enhance"`` options, CSLS included, are measured too)."""
        def through(modality):
            hub = snap.hubness(modality)
            return lambda rows: snap.scores(modality, snap.codes(modality)[rows],
                                            query_hub=None if hub is None else hub[rows])
        return self.evaluate_scores(through("image"), through("text"))

    def evaluate_scores(self, i2t, t2i) -> dict:
        """Metrics of ``i2t(image rows)`` (n_queries, n_texts) and ``t2i(text rows)`` scores."""
        from xmodal.core.metrics import mean_average_precision, recall_at_k

        out = {}
        if len(self.image_queries):
            S = i2t(self.image_queries)
            for k, v in recall_at_k(S, self.rel_i2t, self.ks).items():
                out[f"recall@{k}_i2t"] = v
            if self.image_labels is not None:
                out["map_i2t"] = mean_average_precision(S, self.image_labels[self.image_queries], self.text_labels)
        if len(self.text_queries):
            S = t2i(self.text_queries)
            for k, v in recall_at_k(S, self.image_of_text[self.text_queries], self.ks).items():
                out[f"recall@{k}_t2i"] = v
            if self.image_labels is not None:
                out["map_t2i"] = mean_average_precision(S, self.text_labels[self.text_queries], self.image_labels)
        return {k: float(v) for k, v in out.items()}

    def recall_at_10_excluding(self, snap, images: set, texts: set) -> dict:
        """Recall@10 of a product index as the COCO protocol counts it (a query is a hit when a
        relevant item is among its 10 best: for image→text any text of the image, for text→image
        its image), over the items that are not references: queries and targets both exclude the
        ids in ``images`` / ``texts``. ``{"i2t", "t2i"}``; None without signal."""
        if snap is None or not snap.has_signal:
            return {"i2t": None, "t2i": None}
        ds = self.ds
        keep_i = np.asarray([x not in images for x in ds.image_ids])
        keep_t = np.asarray([x not in texts for x in ds.text_ids])
        rows_i, rows_t = snap.rows("image"), snap.rows("text")
        img = np.asarray([rows_i[x] for x in ds.image_ids])
        txt = np.asarray([rows_t[x] for x in ds.text_ids])

        def hits(query_modality, q_rows, target_rows, keep, relevant) -> float | None:
            if not len(q_rows):
                return None
            S = np.asarray(snap.scores(query_modality, snap.codes(query_modality)[q_rows]), np.float64)
            S = S[:, target_rows]
            S[:, ~keep] = -np.inf
            top = np.argpartition(-S, min(10, S.shape[1]) - 1, axis=1)[:, :10]   # the 10 best, any order
            return round(float(np.mean(np.take_along_axis(relevant, top, axis=1).any(axis=1))), 4)

        q = [(r, i) for r, i in enumerate(self.image_queries) if keep_i[i]]
        i2t = hits("image", img[[i for _, i in q]], txt, keep_t, self.rel_i2t[[r for r, _ in q]]) if q else None
        qt = [t for t in self.text_queries if keep_t[t] and keep_i[self.image_of_text[t]]]
        rel = np.zeros((len(qt), len(img)), dtype=bool)
        rel[np.arange(len(qt)), self.image_of_text[qt]] = True
        t2i = hits("text", txt[qt], img, keep_i, rel) if qt else None
        return {"i2t": i2t, "t2i": t2i}
