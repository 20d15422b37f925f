"""CSLS hubness correction (Conneau et al. 2018, "Word translation without parallel data").

In a high-dimensional cross-modal space some targets ("hubs") are close to almost every query and
crowd the top of every ranking. CSLS rescales a similarity by the density of both neighbourhoods::

    score'(q, t) = 2·S(q, t) − r_T(q) − r_Q(t)

with ``r_T(q)`` the mean similarity of q to its k nearest targets and ``r_Q(t)`` the mean
similarity of t to its k nearest queries. Between images and texts both terms are per item: an
image's ``r`` is its mean top-k similarity to the texts, a text's ``r`` its mean top-k similarity
to the images, the same numbers in both retrieval directions.

:func:`hubness_terms` computes the two vectors over two code matrices in row chunks (memory
``chunk × m + k × m``, never the full n × m matrix), which is what an index stores at build time.
Its cost grows with n·m (6.2 s at 20k × 20k on this 2-core machine, 178.6 s at 100k × 100k, hours
at 1M per rebuild, with CSLS in the default index): above ``MAX_EXACT_SCORES`` scores per
direction, a fixed sample of ``MAX_EXACT_SCORES / n`` targets stands in for them all, and each
term is the mean of its top ``k·sample/m`` (at least 1) among them, the same quantile of the
neighbourhood (the largest score when that is 1). On 20k × 20k synthetic clustered codes the
sampled terms correlate .71 (1,000 targets, top 1), .76 (2,000) and .88 (5,000, top 2) with the
exact ones, in 0.1-0.7 s; the budget is chosen below (4·10^7 scores: exact up to 6,300 × 6,300);
100k × 100k takes about 0.5 s;
:func:`knn_mean` gives a new query its own term on the fly; :func:`csls` applies everything to a
full similarity matrix (the evaluation's form). Measured in ``docs/results.md`` ("Beyond the
paper"): +15.5 % / +4.9 % Recall@10 at N=20 on COCO-mini alone, +31 % / +16 % with z-scored SSR
columns (``ssm-al++``).
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 10
CHUNK_SCORES = 1 << 24          # scores per chunk of hubness_terms (64 MiB of float32)
# scores per direction of hubness_terms computed exactly; above, a sample of MAX_EXACT_SCORES / n
# targets. Text->image Recall@10 with CSLS over 10k x 10k clustered codes (xmodal.benchmarks.scale,
# every query): exact .338 (16.3 s at load ~8), a budget of 4e7 / 2e7 / 1e7 / 5e6 scores .332 /
# .326 / .323 / .318 (2.5 / 1.6 / 0.3 / 0.1 s), no CSLS .295; at 30k x 30k 1e8 / 4e7 / 2e7 gave
# .157 / .163 / .157 (exact .165). 4e7 keeps nearly all of the gain at a sixth of the exact cost
# (it was 1e8: 10k x 10k exactly, most of a default rebuild at that size); the evaluation's
# test sets (Flickr8k 1,000 x 5,000) stay exact.
MAX_EXACT_SCORES = 4 * 10 ** 7


# values per block of largest(): its block maxima are one pass, and the k best blocks of a row hold
# its k largest values (each of those blocks has a maximum at least as large as any value outside them)
BLOCK = 64


def largest(S: np.ndarray, k: int, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, values)`` of the ``k`` largest values of every row (``axis=1``) or column
    (``axis=0``) of the 2-D ``S``, in no particular order (``k`` at most that axis's length).

    The same values as ``np.argpartition`` (which of equal values is taken may differ), found
    among the ``k`` blocks of :data:`BLOCK` values with the largest maxima: one pass for the
    maxima and a partition of ``k · BLOCK`` candidates per row instead of all of them. A top-10
    of 4,000 × 8,000 scores: 0.35-0.44 s with ``argpartition``, a tenth of that here."""
    S = np.asarray(S)
    if axis == 0:   # S.T's rows (its reshape below copies them in blocks: faster than gathers down columns)
        pos, vals = largest(S.T, k, axis=1)
        return pos.T, vals.T
    n, rows = S.shape[1], S.shape[0]
    if k * BLOCK * 4 > n or rows == 0:       # short rows: partition them whole
        pos = np.argpartition(S, n - k, axis=1)[:, n - k:]
        return pos, np.take_along_axis(S, pos, axis=1)
    full = n // BLOCK * BLOCK
    maxima = S[:, :full].reshape(rows, -1, BLOCK).max(axis=2)
    if full < n:                             # the last, shorter block
        maxima = np.concatenate([maxima, S[:, full:].max(axis=1, keepdims=True)], axis=1)
    nb = maxima.shape[1]
    blocks = np.argpartition(maxima, nb - k, axis=1)[:, nb - k:]
    cand = (blocks[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(rows, -1)
    past = cand >= n                          # the last block's missing places
    vals = np.take_along_axis(S, np.minimum(cand, n - 1), axis=1)
    if past.any():
        vals[past] = -np.inf
    best = np.argpartition(vals, vals.shape[1] - k, axis=1)[:, vals.shape[1] - k:]
    return np.take_along_axis(cand, best, axis=1), np.take_along_axis(vals, best, axis=1)


def knn_mean(S: np.ndarray, k: int = DEFAULT_K, axis: int = 1) -> np.ndarray:
    """Mean of the ``k`` largest values of every row (``axis=1``) or column (``axis=0``) of S,
    float32 (k is capped at the length of that axis; an empty axis gives zeros)."""
    S = np.atleast_2d(np.asarray(S, dtype=np.float32))
    n = S.shape[axis]
    if n == 0:
        return np.zeros(S.shape[1 - axis], np.float32)
    k = max(1, min(int(k), n))
    if k == 1:                                         # the sampled terms' usual case at scale
        return S.max(axis=axis)
    return largest(S, k, axis=axis)[1].mean(axis=axis)


def hubness_terms(A: np.ndarray, B: np.ndarray, k: int = DEFAULT_K,
                  chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(r_A, r_B)`` for the similarity ``S = A @ B.T`` without holding S: ``r_A[i]`` is the mean
    of the k largest ``S[i, :]``, ``r_B[j]`` that of the k largest ``S[:, j]``.

    Two passes, ``chunk`` rows of A against all of B, then ``chunk`` rows of B against all of A
    (``chunk`` rows of scores at a time, by default as many as fit in ``CHUNK_SCORES`` = 64 MiB of
    float32, so peak memory is about twice that whatever n and m; recomputing the small product is cheaper than a
    column-wise partition). Cost: 2·n·m·d flops plus a partition of 2·n·m scores, so it grows with
    n·m: about 1.5–2 s at 10k × 10k on two cores, whatever the number of pairs.
    """
    r_a, r_b, _, _ = hubness_neighbours(A, B, k, chunk, indices=False)
    return r_a, r_b


def hubness_neighbours(A: np.ndarray, B: np.ndarray, k: int = DEFAULT_K, chunk: int | None = None,
                       indices: bool = True):
    """:func:`hubness_terms` and the neighbourhoods they are means over: ``(r_A, r_B, nn_A, nn_B)``,
    ``nn_A[i]`` the rows of B whose scores make ``r_A[i]`` (k of them, fewer when sampled), and
    the same for B. :func:`neighbour_terms` rescores the same neighbourhoods under new codes."""
    A = np.asarray(A, dtype=np.float32)
    B = np.asarray(B, dtype=np.float32)
    r_a, nn_a = _row_knn_means(A, B, k, chunk, indices)
    r_b, nn_b = _row_knn_means(B, A, k, chunk, indices)
    return r_a, r_b, nn_a, nn_b


def neighbour_terms(A: np.ndarray, B: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """``r_A[i]`` = the mean score of A's row i against B's rows ``nn[i]``: the hubness terms of new
    codes over neighbourhoods found earlier (:func:`hubness_neighbours`), O(n·k·d) instead of
    O(n·m·d). After one more reference pair, a neighbourhood is nearly the same set of items, so
    this is the exact term's close lower bound (what a one-pair update of the index uses)."""
    A = np.asarray(A, dtype=np.float32)
    B = np.asarray(B, dtype=np.float32)
    out = np.zeros(len(A), np.float32)
    if len(A) == 0 or nn.shape[1] == 0:
        return out
    step = max(1, min(8192, CHUNK_SCORES // max(1, nn.shape[1] * B.shape[1])))   # gathers in cache
    for s in range(0, len(A), step):
        a = A[s:s + step]
        for j in range(nn.shape[1]):
            out[s:s + step] += np.einsum("id,id->i", a, B[nn[s:s + step, j]])
    return out / nn.shape[1]


def _row_knn_means(A: np.ndarray, B: np.ndarray, k: int, chunk: int | None, indices: bool = False):
    out = np.zeros(len(A), np.float32)
    sample = None
    if len(A) * len(B) > MAX_EXACT_SCORES and len(A):   # a sample of B stands in for it (module doc)
        size = max(k, MAX_EXACT_SCORES // len(A))
        if size < len(B):
            k = max(1, round(k * size / len(B)))
            sample = np.sort(np.random.default_rng(0).choice(len(B), size, replace=False))
            B = B[sample]
    k = max(1, min(int(k), len(B)))
    nn = np.zeros((len(A), k if indices and len(B) else 0), np.int64)
    if len(A) == 0 or len(B) == 0:
        return out, nn
    chunk = max(1, int(chunk) if chunk else CHUNK_SCORES // len(B))
    for s in range(0, len(A), chunk):
        S = A[s:s + chunk] @ B.T
        if not indices:
            out[s:s + chunk] = knn_mean(S, k, axis=1)
            continue
        if k == 1:
            top = S.argmax(axis=1)[:, None]
            out[s:s + chunk] = np.take_along_axis(S, top, axis=1)[:, 0]
        else:
            top, vals = largest(S, k, axis=1)
            out[s:s + chunk] = vals.mean(axis=1)
        nn[s:s + chunk] = top if sample is None else sample[top]
    return out, nn


def apply_csls(S: np.ndarray, r_rows: np.ndarray, r_cols: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``2·S − r_rows[:, None] − r_cols[None, :]``, written into ``out`` if given (e.g. ``S``)."""
    S = np.asarray(S, dtype=np.float32)
    out = np.multiply(S, np.float32(2.0), out=out)
    out -= np.asarray(r_rows, np.float32)[:, None]
    out -= np.asarray(r_cols, np.float32)[None, :]
    return out


def csls(S: np.ndarray, k: int = DEFAULT_K, in_place: bool = False) -> np.ndarray:
    """Cross-domain similarity local scaling of a full matrix:
    ``2·S − r_rows[:, None] − r_cols[None, :]`` with ``r_rows[i]`` the mean of the k largest scores
    of row i (query i's neighbourhood density) and ``r_cols[j]`` the same for column j. The result
    is a similarity usable in both directions. ``in_place``: a float32 ``S`` is the caller's to
    overwrite (no second matrix of its size)."""
    S = np.asarray(S, dtype=np.float32)
    if S.shape[0] < 1 or S.shape[1] < 1 or k < 1:
        return S if in_place else S.copy()
    return apply_csls(S, knn_mean(S, k, axis=1), knn_mean(S, k, axis=0), out=S if in_place else None)
