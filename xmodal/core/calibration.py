"""How sure the index is that its top candidate for an item is right (beyond the paper).

SSM-AL ranks the other modality by eq. 32/33 but does not say how far a ranking can be trusted.
A person reading a pre-selected answer, and "Uncertainty sampling" choosing the next task, both
need a probability. It is learnt from the labels themselves:

1. **leave-one-out over the reference pairs** (:func:`leave_one_out`): reference j is the item the
   annotator matched with its pair; dropping SSR column j (eq. 10) gives exactly the codes an index
   built without that pair would have, so ranking the other modality for the reference's query
   item with those codes says whether the index *would have* put its true match first;
2. **the feature** (:func:`top_z`): how far the best candidate stands out of the query's scores,
   ``z = (s_1 - mean(s)) / std(s)``;
3. **Platt scaling** (:class:`PlattCalibrator`): ``P(top-1 right) = sigmoid(a·z + b)``, fitted to the
   leave-one-out points by penalised maximum likelihood with a Gaussian prior on ``(a, b)``, so that
   a handful of labels gives a cautious answer instead of an over-fitted one.

The leave-one-out hit counts only the annotated match as right; when an item has several right
answers (five captions per COCO image) the probability is an underestimate, i.e. cautious.
"""

from __future__ import annotations

import numpy as np

from xmodal.core.ssr import ssr_codes


def top_z(scores: np.ndarray) -> np.ndarray:
    """``(s_1 - mean(s)) / std(s)`` of every row of ``scores`` (0 where a row is constant)."""
    S = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if S.shape[1] == 0:
        return np.zeros(len(S))
    sd = S.std(axis=1)
    z = (S.max(axis=1) - S.mean(axis=1)) / np.where(sd > 0, sd, 1.0)
    return np.where(sd > 0, z, 0.0)


def loo_scores(query_ssr: np.ndarray, target_ssr: np.ndarray, pairs: np.ndarray, *,
               measure: str = "pearson", query_stats=None, target_stats=None,
               sparse_top_k: int | None = None, sparse_power: float = 1.0,
               max_references: int = 40, max_targets: int = 20000, seed: int = 0):
    """Yield ``(j, rows, s)`` for up to ``max_references`` reference pairs (the most recent ones):
    ``s`` are the scores of query row ``pairs[j, 0]`` against the target ``rows`` by an index
    built without pair j.

    ``query_ssr`` (n_q, k) and ``target_ssr`` (n_t, k) are the raw SSR matrices (eq. 10) of the
    modality tasks ask about and of the one they offer; ``pairs[j] = (query row, target row)``
    (a row -1: a reference outside the indexed items, skipped; its SSR column stays). ``*_stats``
    are the column z-score statistics ``(mean, std)`` when the index standardises its columns.
    Reference j is scored with column j dropped; above ``max_targets`` targets a seeded sample
    (plus the true match) stands in for them all. Nothing is yielded below 3 references (2 for
    cosine): the k - 1 left must still rank (eq. 32 needs 2).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    k = len(pairs)
    needed = 3 if measure == "pearson" else 2
    usable = [j for j in range(k) if pairs[j, 0] >= 0 and pairs[j, 1] >= 0]
    if k < needed or not usable:
        return
    rng = np.random.default_rng(seed)
    n_t = len(target_ssr)
    sample = np.sort(rng.choice(n_t, max_targets, replace=False)) if n_t > max_targets else None
    chosen = usable[-max_references:]
    if sparse_top_k:   # sparsification depends on the columns kept: each reference on its own
        yield from _loo_each(query_ssr, target_ssr, pairs, chosen, sample, measure, query_stats,
                             target_stats, sparse_top_k, sparse_power)
        return
    yield from _loo_closed_form(query_ssr, target_ssr, pairs, chosen, sample, measure, query_stats,
                                target_stats)


def _loo_each(query_ssr, target_ssr, pairs, chosen, sample, measure, query_stats, target_stats,
              sparse_top_k, sparse_power):
    """:func:`loo_scores` the direct way: the codes of each reduced index built anew."""
    k, n_t = len(pairs), len(target_ssr)
    for j in chosen:
        keep = np.arange(k) != j
        q_row, t_row = int(pairs[j, 0]), int(pairs[j, 1])
        rows = np.arange(n_t) if sample is None else np.union1d(sample, [t_row])
        qs = None if query_stats is None else (query_stats[0][keep], query_stats[1][keep])
        ts = None if target_stats is None else (target_stats[0][keep], target_stats[1][keep])
        q = ssr_codes(query_ssr[q_row:q_row + 1, keep], measure, sparse_top_k, sparse_power, qs)
        T = ssr_codes(target_ssr[rows][:, keep], measure, sparse_top_k, sparse_power, ts)
        yield j, rows, (q @ T.T)[0]


def _loo_closed_form(query_ssr, target_ssr, pairs, chosen, sample, measure, query_stats, target_stats):
    """:func:`loo_scores` without building any reduced index: a code of eq. 32/33 is a function of
    a row's sums ``Σx``, ``Σx²`` and of the dot product, and dropping column j takes ``x_j`` out
    of each; the column z-scores of the other columns do not change. One product of all the chosen
    queries with the targets then serves every reference (at 100k targets 1.7 s -> ~0.05 s).
    Equal to building each reduced index (:func:`_loo_each`) up to float rounding."""
    n_t = len(target_ssr)
    t_rows = pairs[chosen, 1]
    rows = np.arange(n_t) if sample is None else np.union1d(sample, t_rows)
    Q = _standardized(query_ssr[pairs[chosen, 0]], query_stats)
    T = _standardized(target_ssr[rows], target_stats)
    cols = np.asarray(chosen)
    q_j, t_j = Q[np.arange(len(cols)), cols], T[:, cols].T          # (J,), (J, m): the dropped column
    dot = Q @ T.T - q_j[:, None] * t_j
    sq = lambda X: np.einsum("ij,ij->i", X, X)  # noqa: E731  (no squared copy of T)
    q1, q2 = (Q.sum(axis=1) - q_j)[:, None], (sq(Q) - q_j ** 2)[:, None]
    t1, t2 = T.sum(axis=1)[None, :] - t_j, sq(T)[None, :] - t_j ** 2
    if measure == "pearson":
        m = Q.shape[1] - 1
        dot, q2, t2 = dot - q1 * t1 / m, q2 - q1 ** 2 / m, t2 - t1 ** 2 / m
    # a constant row (nothing left after centring) has the zero code, as l2_normalize makes it
    flat = (q2 <= 1e-9 * (sq(Q)[:, None] + 1e-30)) | (t2 <= 1e-9 * (sq(T)[None, :] + 1e-30))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(flat, 0.0, dot / np.sqrt(np.maximum(q2, 1e-300) * np.maximum(t2, 1e-300)))
    scores = scores.astype(np.float32)
    in_sample = np.ones(len(rows), bool) if sample is None else np.isin(rows, sample)
    for i, j in enumerate(chosen):
        own = in_sample | (rows == t_rows[i])   # the sample plus this reference's true match
        yield j, rows[own], scores[i, own]


def _standardized(R: np.ndarray, stats) -> np.ndarray:
    """R z-scored with ``stats``, float64: one new array, then in place (at 20,000 sampled targets
    × 200 columns the two temporaries of ``(R - mean) / std`` were 40% of the leave-one-out)."""
    if stats is None:
        return np.asarray(R, dtype=np.float64)
    out = np.subtract(R, np.asarray(stats[0], np.float64), dtype=np.float64)
    out /= np.asarray(stats[1], np.float64)
    return out


def embedding_scores(scored, pairs: np.ndarray, query_emb: np.ndarray, target_emb: np.ndarray) -> list:
    """For each ``(j, rows, s)`` of :func:`loo_scores`, the dot products of query
    ``pairs[j, 0]``'s embedding with the embeddings of the target ``rows``: one matrix product
    over the rows of them all (they are one sample plus each reference's match) instead of a
    gather of the sampled targets per reference."""
    scored = list(scored)
    if not scored:
        return []
    target_emb = np.asarray(target_emb, np.float32)
    seen = np.zeros(len(target_emb), bool)
    for _, rows, _ in scored:
        seen[rows] = True
    union = np.flatnonzero(seen)
    column = np.empty(len(target_emb), np.int64)
    column[union] = np.arange(len(union))
    S = np.asarray(query_emb, np.float32)[[int(pairs[j, 0]) for j, _, _ in scored]] @ target_emb[union].T
    return [S[i, column[rows]] for i, (_, rows, _) in enumerate(scored)]


def leave_one_out(query_ssr: np.ndarray, target_ssr: np.ndarray, pairs: np.ndarray, *,
                  fuse=None, scored=None, **options) -> tuple[np.ndarray, np.ndarray]:
    """``(z, hit)`` of the reference pairs scored by :func:`loo_scores` (same ``options``; or
    ``scored``, its output already computed): how far each one's best candidate stands out, and
    whether it is the true match. ``fuse = (query embeddings, target embeddings, w)`` scores as
    an index fused with them does: ``(1 - w) · s + w · cos`` (the class bridge,
    :mod:`xmodal.core.bridge`)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    z, hit = [], []
    scored = list(loo_scores(query_ssr, target_ssr, pairs, **options) if scored is None else scored)
    if fuse is not None:
        scored = [(j, rows, (1 - fuse[2]) * s + fuse[2] * b)
                  for (j, rows, s), b in zip(scored, embedding_scores(scored, pairs, fuse[0], fuse[1]))]
    for j, rows, s in scored:
        z.append(float(top_z(s)[0]))
        hit.append(bool(rows[int(np.argmax(s))] == pairs[j, 1]))
    return np.asarray(z), np.asarray(hit, dtype=bool)


class PlattCalibrator:
    """``P(right) = sigmoid(a·z + b)``, fitted by penalised maximum likelihood.

    Parameters
    ----------
    prior : (a, b) before any evidence; the default says "right half of the time when the top
        candidate stands 4 standard deviations out", a cautious start.
    prior_strength : inverse variance of the Gaussian prior on (a, b); about that many points of
        evidence weigh as much as the prior.
    """

    def __init__(self, prior: tuple[float, float] = (1.0, -4.0), prior_strength: float = 4.0):
        self.prior = (float(prior[0]), float(prior[1]))
        self.prior_strength = float(prior_strength)
        self.coef_ = np.asarray(self.prior)
        self.n_, self.hits_ = 0, 0

    def fit(self, z: np.ndarray, hit: np.ndarray, iterations: int = 25) -> PlattCalibrator:
        z = np.asarray(z, dtype=np.float64).ravel()
        y = np.asarray(hit, dtype=np.float64).ravel()
        w0 = np.asarray(self.prior)
        w = w0.copy()
        A = np.column_stack([z, np.ones_like(z)])
        lam = self.prior_strength
        for _ in range(iterations):           # Newton steps on the penalised log-likelihood
            p = _sigmoid(A @ w)
            grad = A.T @ (p - y) + lam * (w - w0)
            hess = (A * (p * (1 - p))[:, None]).T @ A + lam * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.coef_ = w
        self.n_, self.hits_ = int(len(y)), int(y.sum())
        return self

    def predict(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        return _sigmoid(self.coef_[0] * z + self.coef_[1])

    def to_dict(self) -> dict:
        return {"a": float(self.coef_[0]), "b": float(self.coef_[1]), "n": self.n_, "hits": self.hits_}

    @classmethod
    def from_dict(cls, d: dict | None) -> PlattCalibrator:
        cal = cls()
        if d:
            cal.coef_ = np.asarray([float(d["a"]), float(d["b"])])
            cal.n_, cal.hits_ = int(d.get("n", 0)), int(d.get("hits", 0))
        return cal


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))
