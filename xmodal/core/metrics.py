"""Retrieval metrics of the paper's evaluation protocol (section 4.2)."""

from __future__ import annotations

import numpy as np


def _rank(similarity: np.ndarray) -> np.ndarray:
    # stable sort on -S: ties keep target order, so results are deterministic
    return np.argsort(-np.asarray(similarity, dtype=np.float64), axis=1, kind="stable")


def _positions(similarity: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Where target ``cols[i]`` stands in the ranking of query ``rows[i]`` (0 = first), as
    :func:`_rank` orders them (higher first, ties in target order, NaN last), without sorting:
    the targets scoring higher plus the earlier ones scoring the same. Recall@K needs only the
    relevant targets' places: sorting every row of 1,000 × 30,000 scores took ~4 s a call."""
    S = np.asarray(similarity)
    out = np.empty(len(rows), dtype=np.int64)
    n = S.shape[1]
    order = np.arange(n)
    for s in range(0, len(rows), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        block = S[r]
        v = block[np.arange(len(r)), c][:, None]
        before = (block > v).sum(axis=1) + ((block == v) & (order[None, :] < c[:, None])).sum(axis=1)
        out[s:s + chunk] = np.where(np.isnan(v[:, 0]), n - 1, before)
    return out


def average_precision(similarity: np.ndarray, query_labels, target_labels) -> np.ndarray:
    """Eq. 36 for every query: ``AP(i) = (1/L_i) Σ_j P(j) δ(j)`` over the ranking of ALL targets.

    Relevance is "same label". Queries without any relevant target get NaN.
    """
    query_labels = np.asarray(query_labels)
    target_labels = np.asarray(target_labels)
    S = np.asarray(similarity)
    if S.shape != (len(query_labels), len(target_labels)):
        raise ValueError(f"similarity is {S.shape}, labels are {len(query_labels)}x{len(target_labels)}")
    ranks = np.arange(1, S.shape[1] + 1)
    out = np.empty(S.shape[0])
    for start in range(0, S.shape[0], 1024):  # bounded memory for large query sets
        rel = target_labels[_rank(S[start:start + 1024])] == query_labels[start:start + 1024, None]
        hits = np.cumsum(rel, axis=1)
        L = rel.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + 1024] = ((hits / ranks) * rel).sum(axis=1) / L
    return out


def mean_average_precision(similarity: np.ndarray, query_labels, target_labels) -> float:
    """Eq. 35: mean of eq. 36 over the queries that have at least one relevant target."""
    ap = average_precision(similarity, query_labels, target_labels)
    return float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan")


def recall_at_k(similarity: np.ndarray, relevant, ks=(1, 5, 10)) -> dict[int, float]:
    """Eq. 37: ``(1/|Q|) Σ_i (1/L_i) Σ_{j≤K} φ(i, j)``.

    ``relevant`` is either an int array giving the one coupled target of each query (L_i = 1, the
    COCO protocol) or a boolean (n_queries, n_targets) relevance matrix.
    """
    S = np.asarray(similarity)
    relevant = np.asarray(relevant)
    if relevant.ndim == 1:
        if len(relevant) != S.shape[0]:
            raise ValueError("one relevant target per query is needed")
        matrix = np.zeros(S.shape, dtype=bool)
        matrix[np.arange(S.shape[0]), relevant] = True
        relevant = matrix
    if relevant.shape != S.shape:
        raise ValueError(f"relevance is {relevant.shape}, similarity is {S.shape}")
    L = relevant.sum(axis=1)
    if np.any(L == 0):
        raise ValueError("every query needs at least one relevant target")
    rows, cols = np.nonzero(relevant)
    place = _positions(S, rows, cols)
    return {int(k): float(np.mean(np.bincount(rows, weights=place < min(k, S.shape[1]),
                                              minlength=len(S)) / L)) for k in ks}


def recall_any_at_k(similarity: np.ndarray, owner, ks=(1, 5, 10)) -> dict[int, float]:
    """Recall@K of the standard image→text protocol (Karpathy & Fei-Fei 2015; Flickr/COCO):
    query i scores a hit when ANY of its relevant targets is among its top K, i.e. eq. 37 with
    ``φ`` counted once per query instead of divided by L_i.

    ``owner[j]`` is the query that target j belongs to (a caption's image), so query i's
    relevant targets are ``{j : owner[j] == i}``; every query needs at least one.
    """
    S = np.asarray(similarity)
    owner = np.asarray(owner)
    if owner.shape != (S.shape[1],):
        raise ValueError(f"one owner per target is needed: owner is {owner.shape}, similarity {S.shape}")
    if np.any(np.bincount(owner, minlength=S.shape[0])[:S.shape[0]] == 0):
        raise ValueError("every query needs at least one relevant target")
    cols = np.flatnonzero((owner >= 0) & (owner < S.shape[0]))
    rows = owner[cols]
    first_hit = np.full(S.shape[0], S.shape[1], dtype=np.int64)   # 0-based place of the best relevant
    np.minimum.at(first_hit, rows, _positions(S, rows, cols))
    return {int(k): float(np.mean(first_hit < min(k, S.shape[1]))) for k in ks}
