"""CSLS hubness correction (Conneau et al. 2018, "Word translation without parallel data").

In a high-dimensional cross-modal space some targets ("hubs") are close to almost every query and
crowd the top of every ranking. CSLS rescales a similarity by the density of both neighbourhoods::

    score'(q, t) = 2·S(q, t) − r_T(q) − r_Q(t)

with ``r_T(q)`` the mean similarity of q to its k nearest targets and ``r_Q(t)`` the mean
similarity of t to its k nearest queries. Between images and texts both terms are per item: an
image's ``r`` is its mean top-k similarity to the texts, a text's ``r`` its mean top-k similarity
to the images, the same numbers in both retrieval directions.

:func:`hubness_terms` computes the two vectors over two code matrices in row chunks (memory
``chunk × m + k × m``, never the full n × m matrix), which is what an index stores at build time;
:func:`knn_mean` gives a new query its own term on the fly; :func:`csls` applies everything to a
full similarity matrix (the evaluation's form). Measured in ``docs/results.md`` ("Beyond the
paper"): +15.5 % / +4.9 % Recall@10 at N=20 on COCO-mini alone, +31 % / +16 % with z-scored SSR
columns (``ssm-al++``).
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 10


def knn_mean(S: np.ndarray, k: int = DEFAULT_K, axis: int = 1) -> np.ndarray:
    """Mean of the ``k`` largest values of every row (``axis=1``) or column (``axis=0``) of S,
    float32 (k is capped at the length of that axis; an empty axis gives zeros)."""
    S = np.atleast_2d(np.asarray(S, dtype=np.float32))
    n = S.shape[axis]
    if n == 0:
        return np.zeros(S.shape[1 - axis], np.float32)
    k = max(1, min(int(k), n))
    part = -np.partition(-S, k - 1, axis=axis)
    return (part[:, :k] if axis == 1 else part[:k, :]).mean(axis=axis)


def hubness_terms(A: np.ndarray, B: np.ndarray, k: int = DEFAULT_K,
                  chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(r_A, r_B)`` for the similarity ``S = A @ B.T`` without holding S: ``r_A[i]`` is the mean
    of the k largest ``S[i, :]``, ``r_B[j]`` that of the k largest ``S[:, j]``.

    Rows of A are processed ``chunk`` at a time; the k best values of every column seen so far are
    kept in a (k, m) buffer. Cost: the full n·m·d product plus two partitions per chunk, so it grows
    with n·m (see ``docs/results.md`` for the timing at 10k × 10k).
    """
    A = np.asarray(A, dtype=np.float32)
    B = np.asarray(B, dtype=np.float32)
    n, m = len(A), len(B)
    r_A = np.zeros(n, np.float32)
    if n == 0 or m == 0:
        return r_A, np.zeros(m, np.float32)
    ka, kb = max(1, min(k, m)), max(1, min(k, n))
    best = None                                   # (≤kb, m): k best values of every column so far
    for s in range(0, n, max(1, int(chunk))):
        S = A[s:s + chunk] @ B.T
        r_A[s:s + chunk] = knn_mean(S, ka, axis=1)
        cand = S if best is None else np.vstack([best, S])
        if len(cand) > kb:
            cand = -np.partition(-cand, kb - 1, axis=0)[:kb]
        best = cand
    r_B = best.mean(axis=0)
    return r_A, r_B


def apply_csls(S: np.ndarray, r_rows: np.ndarray, r_cols: np.ndarray) -> np.ndarray:
    """``2·S − r_rows[:, None] − r_cols[None, :]``."""
    S = np.asarray(S, dtype=np.float32)
    return 2.0 * S - np.asarray(r_rows, np.float32)[:, None] - np.asarray(r_cols, np.float32)[None, :]


def csls(S: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Cross-domain similarity local scaling of a full matrix:
    ``2·S − r_rows[:, None] − r_cols[None, :]`` with ``r_rows[i]`` the mean of the k largest scores
    of row i (query i's neighbourhood density) and ``r_cols[j]`` the same for column j. The result
    is a similarity usable in both directions."""
    S = np.asarray(S, dtype=np.float32)
    if S.shape[0] < 1 or S.shape[1] < 1 or k < 1:
        return S.copy()
    return apply_csls(S, knn_mean(S, k, axis=1), knn_mean(S, k, axis=0))
