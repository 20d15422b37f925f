"""Semantic structure representation (SSR) and cross-modal similarity.

Every item is represented by its cosine similarities to the references of its own modality
(eq. 9–10). Because the references are matched one-to-one across modalities, dimension j means
"similarity to reference pair j" in both, and items of the two modalities are compared by the
Pearson correlation (eq. 32) or the cosine (eq. 33) of their SSR vectors.
"""

from __future__ import annotations

import numpy as np

MEASURES = ("pearson", "cosine")


def l2_normalize(X: np.ndarray, eps: float = 1e-12, *, copy: bool = True, norm: float = 1.0) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; to ``norm`` if given). Zero rows stay zero; rows with
    NaN/inf become zero.

    Two passes over the data (norms, then one scaled copy; in place with ``copy=False``): at
    100k×1280 features every extra temporary costs a noticeable part of a rebuild.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        sq = np.einsum("ij,ij->i", X, X)
        scale = np.float32(norm) / np.maximum(np.sqrt(sq), eps)
        out = np.multiply(X, scale[:, None], out=None if copy else X)
    bad = ~np.isfinite(sq)
    if bad.any():
        out[bad] = 0.0
    return out


def ssr(features: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Eq. 10: ``xr_i = [cos(x_i, x'_1), …, cos(x_i, x'_k)]`` — an (n, k) float32 matrix."""
    return l2_normalize(features) @ l2_normalize(references).T


def sparsify(R: np.ndarray, top_k: int, power: float = 1.0) -> np.ndarray:
    """ASIF-style relative representation: keep each row's ``top_k`` largest similarities
    (negatives dropped), zero the rest, raise what is kept to ``power``.

    Sharpens SSR vectors when there are many references (Norelli et al., 2023, "ASIF").
    """
    R = np.asarray(R, dtype=np.float32)
    if top_k <= 0:
        raise ValueError("top_k must be positive")
    out = np.clip(R, 0.0, None)
    if top_k < R.shape[1]:
        drop = np.argpartition(-out, top_k, axis=1)[:, top_k:]
        np.put_along_axis(out, drop, 0.0, axis=1)
    return out**power if power != 1.0 else out


def column_stats(R: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (std + ``eps``) of every column of R, float32: the z-score statistics of
    :func:`standardize_columns`."""
    R = np.asarray(R, dtype=np.float32)
    if len(R) == 0:
        return np.zeros(R.shape[1], np.float32), np.ones(R.shape[1], np.float32)
    mean = R.mean(axis=0, dtype=np.float64)
    # the squared deviations in float64, a block of rows at a time: R.std(dtype=float64) holds a
    # float64 copy of R (160 MB at 100k x 200), a quarter of a z-scored rebuild's extra time
    sq = np.zeros(R.shape[1])
    for s in range(0, len(R), 8192):
        d = R[s:s + 8192] - mean
        sq += np.einsum("ij,ij->j", d, d)
    return mean.astype(np.float32), (np.sqrt(sq / len(R)) + eps).astype(np.float32)


def standardize_columns(R: np.ndarray, reference: np.ndarray | None = None,
                        stats: tuple[np.ndarray, np.ndarray] | None = None,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Z-score every column (reference dimension) with the mean/std of ``reference`` (default R),
    or with precomputed ``stats = column_stats(reference)``: "how much more similar than usual to
    reference j", comparable across the two modalities. ``out``: where to write it."""
    R = np.asarray(R, dtype=np.float32)
    if stats is None:
        stats = column_stats(R if reference is None else reference)
    mean, scale = stats
    out = np.subtract(R, np.asarray(mean, np.float32), dtype=np.float32, out=out)   # one array, then in place
    out /= np.asarray(scale, np.float32)
    return out


def similarity_codes(R: np.ndarray, measure: str = "pearson", copy: bool = True, norm: float = 1.0) -> np.ndarray:
    """Rows transformed so that a plain dot product of two codes is the similarity.

    ``pearson`` (eq. 32): centre each SSR vector on its own mean, then unit-normalise;
    ``cosine`` (eq. 33): unit-normalise only. ``copy=False``: a float32 ``R`` is the caller's
    to overwrite (a z-scored or sparsified copy already). ``norm``: the rows' norm instead of 1
    (a part of fused codes, :func:`xmodal.core.bridge.fuse_codes`, written in place).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown similarity measure {measure!r}; use one of {MEASURES}")
    R = np.array(R, dtype=np.float32, copy=True if copy else None)  # the one copy; the rest is in place
    if measure == "pearson":
        R -= R.mean(axis=1, keepdims=True)
    return l2_normalize(R, copy=False, norm=norm)


#: rows of :func:`ssr_codes` transformed at a time: a block (4096 × a few hundred float32) stays in
#: cache through z-scoring, centring and normalising, instead of a pass over all n rows each
CODE_BLOCK_ROWS = 4096


def ssr_codes(R: np.ndarray, measure: str = "pearson", sparse_top_k: int | None = None,
              sparse_power: float = 1.0, col_stats: tuple[np.ndarray, np.ndarray] | None = None,
              out: np.ndarray | None = None, norm: float = 1.0):
    """SSR rows -> similarity codes: z-score the columns with ``col_stats`` (if given, see
    :class:`SSRIndex` ``standardize``), sparsify (if ``sparse_top_k``), then eq. 32/33, rows of
    norm ``norm``. ``out``: an (n, k) float32 array (e.g. the first columns of fused codes) to
    write them into instead of a new one. Without sparsification a block of rows at a time: at
    100k × 200 the whole-array passes were 0.16 s of a 0.45 s one-pair update."""
    if sparse_top_k:
        if col_stats is not None:
            R = standardize_columns(R, stats=col_stats)
        R = sparsify(R, sparse_top_k, sparse_power)
        if out is None:
            return similarity_codes(R, measure, copy=False, norm=norm)
        np.copyto(out, R)
        return similarity_codes(out, measure, copy=False, norm=norm)
    if measure not in MEASURES:
        raise ValueError(f"unknown similarity measure {measure!r}; use one of {MEASURES}")
    R = np.atleast_2d(np.asarray(R, dtype=np.float32))
    out = np.empty(R.shape, np.float32) if out is None else out
    for s in range(0, len(R), CODE_BLOCK_ROWS):
        block = out[s:s + CODE_BLOCK_ROWS]
        if col_stats is None:
            np.copyto(block, R[s:s + CODE_BLOCK_ROWS])
        else:
            standardize_columns(R[s:s + CODE_BLOCK_ROWS], stats=col_stats, out=block)
        similarity_codes(block, measure, copy=False, norm=norm)   # in place
    return out


def cross_similarity(RX: np.ndarray, RY: np.ndarray, measure: str = "pearson") -> np.ndarray:
    """``S(i, j)`` between SSR rows of two modalities, eq. 32 (Pearson) or eq. 33 (cosine)."""
    return similarity_codes(RX, measure) @ similarity_codes(RY, measure).T


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest scores of every row, best first."""
    scores = np.atleast_2d(scores)
    k = min(k, scores.shape[1])
    if k <= 0:
        empty = np.zeros((scores.shape[0], 0))
        return empty.astype(np.int64), empty.astype(scores.dtype)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _as_pairs(pairs) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs


class SSRIndex:
    """Cross-modal retrieval index over matched reference pairs.

    ``fit(image_features, text_features, pairs)`` with ``pairs[j] = (image row, text row)`` of the
    j-th reference pair. Adding or removing a pair recomputes only that SSR column (O(n·d)), which
    is what keeps the Label Studio loop fast; the similarity codes (cheap, O(n·k)) are rederived.

    A text reference need not be one of the indexed texts: eq. 10 needs only its feature vector
    ``x'_j``, and a reference only has to match its image's meaning (e.g. a description an annotator
    wrote for a medoid). ``pairs[j, 1] = -1`` marks such a reference; its features are the next row
    of ``text_reference_features`` (rows taken in the order of the -1 entries).

    Parameters
    ----------
    measure : "pearson" (eq. 32, default) or "cosine" (eq. 33).
    sparse_top_k, sparse_power : optional ASIF-style sparsification of the SSR vectors.
    standardize : z-score every SSR column (reference dimension) with the mean/std of that
        modality's indexed items before the eq. 32/33 codes (beyond the paper; off = faithful
        SSM-AL). Raw cosines of the two encoders have different scales and offsets per reference
        (CNN features are non-negative, so every image is "similar" to every reference image); after
        z-scoring, dimension j means "more similar to reference pair j than the collection usually
        is" in both modalities. Measured in ``docs/results.md`` ("Beyond the paper"): +25.7 % / +6.9 %
        Recall@10 (i2t / t2i) at N=20 on COCO-mini alone, and the base of ``ssm-al++`` (with CSLS,
        :mod:`xmodal.core.hubness`: +31 % / +16 %), which never lowers Wikipedia MAP. The column
        statistics are kept (``image_col_stats_``/``text_col_stats_``) and reused by
        :meth:`transform_images`/:meth:`transform_texts`, so a new query's code equals the indexed
        code of the same item. They are recomputed on every pair change (O(n·k)), so
        ``add_pairs``/``remove_pairs`` still equal a fresh ``fit``.
    copy : True (default) keeps the caller's feature arrays untouched; False unit-normalises float32
        arrays in place (eq. 10 needs only the normalised features, which the index keeps for
        ``add_pairs``), saving one copy of the features: 5 GB at 1M × 1280 (``docs/scale.md``).
    """

    def __init__(self, measure: str = "pearson", sparse_top_k: int | None = None,
                 sparse_power: float = 1.0, standardize: bool = False, copy: bool = True):
        if measure not in MEASURES:
            raise ValueError(f"unknown similarity measure {measure!r}; use one of {MEASURES}")
        self.measure = measure
        self.sparse_top_k = sparse_top_k
        self.sparse_power = sparse_power
        self.standardize = bool(standardize)
        self.copy = bool(copy)
        self.image_col_stats_ = self.text_col_stats_ = None
        self.ssr_standardized_ = False   # image_ssr_ / text_ssr_ hold z-scores already (fit_ssr)

    # -- building -------------------------------------------------------------------------
    def fit(self, image_features: np.ndarray, text_features: np.ndarray, pairs,
            text_reference_features: np.ndarray | None = None) -> SSRIndex:
        self.image_features_ = l2_normalize(image_features, copy=self.copy)
        self.text_features_ = l2_normalize(text_features, copy=self.copy)
        pairs = _as_pairs(pairs)
        self._check_pairs(pairs, text_reference_features)
        self.pairs_ = pairs
        self.image_references_ = self.image_features_[pairs[:, 0]]
        self.text_references_ = self._text_references(pairs, text_reference_features)
        self.image_ssr_ = self.image_features_ @ self.image_references_.T
        self.text_ssr_ = self.text_features_ @ self.text_references_.T
        self.ssr_standardized_ = False
        return self._derive_codes()

    def fit_ssr(self, image_ssr: np.ndarray, text_ssr: np.ndarray, pairs,
                image_references: np.ndarray, text_references: np.ndarray,
                image_col_stats=None, text_col_stats=None, codes: bool = True,
                standardized: bool = False) -> SSRIndex:
        """The index of SSR matrices computed elsewhere (eq. 10, e.g. columns kept between
        rebuilds, :mod:`xmodal.index.columns`): the same codes as :meth:`fit` over the features
        they came from, without the n·k products. ``image_ssr`` / ``text_ssr`` are (n, k) / (m, k),
        column j the cosines to reference pair ``pairs[j]``'s item (the caller's to keep: they are
        not copied); ``*_references`` the references' features. Without the items' features,
        :meth:`add_pairs` is unavailable; queries (:meth:`transform_images`) work. ``*_col_stats``:
        the columns' :func:`column_stats`, if known (``standardize``). ``codes=False`` leaves the
        codes to :meth:`derive_codes` (e.g. into fused codes once the bridge's weight is known).
        ``standardized``: the SSR matrices are z-scored already with ``*_col_stats`` (kept that
        way, :mod:`xmodal.index.columns`): the codes skip that pass (``ssr_standardized_``); the
        statistics still encode new queries."""
        self.pairs_ = _as_pairs(pairs)
        if image_ssr.shape[1] != len(self.pairs_) or text_ssr.shape[1] != len(self.pairs_):
            raise ValueError(f"SSR matrices of {image_ssr.shape[1]} / {text_ssr.shape[1]} columns for "
                             f"{len(self.pairs_)} reference pairs")
        self.image_features_ = self.text_features_ = None
        self.image_references_ = l2_normalize(image_references)
        self.text_references_ = l2_normalize(text_references)
        self.image_ssr_ = np.asarray(image_ssr, dtype=np.float32)
        self.text_ssr_ = np.asarray(text_ssr, dtype=np.float32)
        if standardized and (not self.standardize or image_col_stats is None or text_col_stats is None):
            raise ValueError("standardized SSR needs standardize=True and both column statistics")
        self.ssr_standardized_ = bool(standardized)
        self._set_stats(image_col_stats, text_col_stats)
        return self.derive_codes() if codes else self

    def add_pairs(self, pairs, text_reference_features: np.ndarray | None = None) -> SSRIndex:
        if self.image_features_ is None:
            raise ValueError("add_pairs needs the items' features: this index was fitted from SSR "
                             "matrices (fit_ssr); fit it again with the new pairs")
        new = _as_pairs(pairs)
        self._check_pairs(new, text_reference_features)
        refs = self._text_references(new, text_reference_features)
        self.pairs_ = np.vstack([self.pairs_, new])
        self.image_references_ = np.vstack([self.image_references_, self.image_features_[new[:, 0]]])
        self.text_references_ = np.vstack([self.text_references_, refs])
        self.image_ssr_ = np.hstack([self.image_ssr_, self.image_features_ @ self.image_features_[new[:, 0]].T])
        self.text_ssr_ = np.hstack([self.text_ssr_, self.text_features_ @ refs.T])
        return self._derive_codes()

    def remove_pairs(self, pairs) -> SSRIndex:
        """Drop the references equal to ``pairs`` (item pairs; a written text reference is removed
        with :meth:`remove_references` by position)."""
        drop = {tuple(p) for p in _as_pairs(pairs).tolist()}
        return self.remove_references([tuple(p) in drop for p in self.pairs_.tolist()])

    def remove_references(self, mask) -> SSRIndex:
        """Drop the references where ``mask`` (one bool per reference, in ``pairs_`` order) is True."""
        keep = ~np.asarray(mask, dtype=bool)
        self.pairs_ = self.pairs_[keep]
        self.image_references_ = self.image_references_[keep]
        self.text_references_ = self.text_references_[keep]
        self.image_ssr_ = self.image_ssr_[:, keep]
        self.text_ssr_ = self.text_ssr_[:, keep]
        if self.ssr_standardized_:   # z-scores of their own columns: the other columns' stats stay
            self.image_col_stats_ = tuple(np.asarray(a)[keep] for a in self.image_col_stats_)
            self.text_col_stats_ = tuple(np.asarray(a)[keep] for a in self.text_col_stats_)
            return self.derive_codes()
        return self._derive_codes()

    def _text_references(self, pairs: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        """(len(pairs), d) unit-norm text reference features: indexed rows, or rows of ``extra``."""
        out = np.empty((len(pairs), self.text_features_.shape[1]), dtype=np.float32)
        indexed = pairs[:, 1] >= 0
        out[indexed] = self.text_features_[pairs[indexed, 1]]
        if (~indexed).any():
            out[~indexed] = l2_normalize(extra)
        return out

    def _check_pairs(self, pairs: np.ndarray, extra: np.ndarray | None = None) -> None:
        n_img, n_txt = len(self.image_features_), len(self.text_features_)
        if pairs.size and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= n_img
                           or pairs[:, 1].min() < -1 or pairs[:, 1].max() >= n_txt):
            raise IndexError(f"a reference pair names an item outside the {n_img} images / {n_txt} texts")
        n_extra = int((pairs[:, 1] == -1).sum()) if pairs.size else 0
        have = 0 if extra is None else len(np.atleast_2d(extra))
        if n_extra != have:
            raise ValueError(f"{n_extra} text references outside the indexed texts (text row -1) but "
                             f"{have} rows of text_reference_features")
        if have and np.atleast_2d(extra).shape[1] != self.text_features_.shape[1]:
            raise ValueError("text_reference_features must have the text features' dimension")

    def _codes(self, R: np.ndarray, stats=None, out=None, norm: float = 1.0) -> np.ndarray:
        return ssr_codes(R, self.measure, self.sparse_top_k, self.sparse_power, stats, out=out, norm=norm)

    def _set_stats(self, image_col_stats=None, text_col_stats=None) -> None:
        """The z-score statistics of the SSR columns (``standardize``): given, or computed."""
        if self.standardize:
            self.image_col_stats_ = column_stats(self.image_ssr_) if image_col_stats is None else image_col_stats
            self.text_col_stats_ = column_stats(self.text_ssr_) if text_col_stats is None else text_col_stats

    def _derive_codes(self) -> SSRIndex:
        self._set_stats()
        return self.derive_codes()

    def derive_codes(self, image_out: np.ndarray | None = None, text_out: np.ndarray | None = None,
                     norm: float = 1.0) -> SSRIndex:
        """The codes of the SSR matrices (``image_codes_``, ``text_codes_``), rows of norm ``norm``,
        written into ``*_out`` where given (the first columns of fused codes: no second copy)."""
        done = self.ssr_standardized_   # z-scored already: no second z-score pass
        self.image_codes_ = self._codes(self.image_ssr_, None if done else self.image_col_stats_, image_out, norm)
        self.text_codes_ = self._codes(self.text_ssr_, None if done else self.text_col_stats_, text_out, norm)
        return self

    # -- querying -------------------------------------------------------------------------
    @property
    def n_references(self) -> int:
        return len(self.pairs_)

    def transform_images(self, features: np.ndarray) -> np.ndarray:
        """Similarity codes of new image features (e.g. a query image not in the index)."""
        return self._codes(ssr(features, self.image_references_), self.image_col_stats_)

    def transform_texts(self, features: np.ndarray) -> np.ndarray:
        return self._codes(ssr(features, self.text_references_), self.text_col_stats_)

    def similarity(self) -> np.ndarray:
        """Full (n_images, n_texts) similarity matrix S."""
        return self.image_codes_ @ self.text_codes_.T

    def search_texts(self, image_codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k text rows (and scores) for each image code row."""
        return top_k(np.atleast_2d(image_codes) @ self.text_codes_.T, k)

    def search_images(self, text_codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        return top_k(np.atleast_2d(text_codes) @ self.image_codes_.T, k)
