"""Improvements of SSM-AL that use what the uncoupled data offers (beyond the paper).

Each is a small pure-numpy function that an index can call on its own arrays, plus
:func:`enhanced_similarity`, which strings the enabled ones together from an :class:`Enhancements`
config. What helps and what does not is measured in ``docs/results.md``. In short: on COCO-mini
(EfficientNet-Lite0 + MiniLM) z-scoring, centring, CSLS and caption averaging each help, and
z-scores + CSLS + caption averaging (``ssm-al++`` in :mod:`xmodal.evaluation.protocol`) gives about +30 % /
+15 % Recall@10 (i2t / t2i) at N=20 while never lowering MAP on Wikipedia; the mutual-NN
pseudo-pairs, query expansion and ASIF sparsification are not reliable (they hurt on Wikipedia,
where the mutual-NN pairs have chance-level label precision).

Statistics that these functions take "from the collection" (means, column z-scores, CSLS
neighbourhoods) are computed over the items being searched: in an index, all of its items.

- **centring** (``center``): subtract the mean feature of the collection (all items of that
  modality, coupled or not) before the cosine of eq. 10. CNN features are non-negative, so raw
  cosines are all high and the SSR vectors of different items look alike; centring spreads them.
- **CSLS** (:func:`xmodal.core.hubness.csls`, Conneau et al. 2018, shared with the product
  index): ``2·S(i,j) − r_T(i) − r_S(j)`` with ``r`` the mean of the k largest similarities of a
  row / column: demotes "hub" targets that are close to every query.
- **inverted softmax** (:func:`inverted_softmax`, Smith et al. 2017): another hubness correction,
  normalising every target's scores over the queries.
- **pseudo-pairs** (:func:`mutual_nn_pairs`): self-training. Uncoupled items that are mutual
  nearest neighbours across modalities in SSR space become extra references.
- **caption averaging** (:func:`average_groups`): when a reference image has several texts (COCO's
  5 captions), its reference text vector is their mean.
- **z-scored SSR columns** (``standardize``, :func:`xmodal.core.ssr.standardize_columns`, shared
  with the product index: ``SSRIndex(standardize=True)``): every reference dimension is z-scored
  over the collection before eq. 32, so "more similar to reference j than usual" means the same
  in both modalities, whatever the scale of each encoder's cosines.
- **query expansion** (:func:`query_expansion`): the query code is averaged with the codes of its
  top-m targets (both live in the same k-dimensional reference space).
- **ASIF sparsification**: :func:`xmodal.core.ssr.sparsify` (``sparse_top_k``/``sparse_power``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xmodal.core.hubness import csls  # noqa: F401  (shared with the product index)
from xmodal.core.ssr import column_stats, l2_normalize, ssr, ssr_codes, standardize_columns  # noqa: F401  (standardize_columns re-exported)


@dataclass(frozen=True)
class Enhancements:
    """Which improvements :func:`enhanced_similarity` applies (all off = the paper's SSM-AL)."""

    measure: str = "pearson"
    # the selection, not the index: the references are the k-medoids of the z-scored features
    # (KMedoidsSelector standardize), as a new project's ("zscore-medoids")
    zscore_medoids: bool = False
    center: bool = False
    csls_k: int | None = None
    inverted_softmax_beta: float | None = None
    pseudo_rounds: int = 0
    pseudo_max: int | None = None      # pairs added per round; None = as many as real references
    average_captions: bool = False
    standardize: bool = False          # z-score every SSR column over the collection
    sparse_top_k: int | None = None
    sparse_power: float = 1.0
    qe_top_m: int = 0
    qe_weight: float = 0.5
    # -- transductive matching of the searched items (beyond the paper, issue 10) --
    # entropic OT (Sinkhorn, uniform marginals) on the final similarity: ranking by the log plan
    # is the similarity plus per-item dual potentials (a converged, two-sided hubness correction)
    sinkhorn_eps: float | None = None
    sinkhorn_iters: int = 100
    sinkhorn_weight: float = 1.0       # scale of the potentials added (1 = rank by the log plan)
    sinkhorn_plan_weight: float = 0.0  # > 0: add weight · n · P (the plan itself) instead
    # Wasserstein-Procrustes self-training: an orthogonal map of the image codes onto the text
    # codes, fitted on the reference pairs plus the Sinkhorn plan's soft pseudo-pairs
    procrustes_rounds: int = 0
    procrustes_reg: float = 1.0        # pull towards the identity (in units of the pair mass)
    procrustes_eps: float = 0.05
    # fused Gromov-Wasserstein: intra-modal structure (centred feature cosines) aligned by the plan
    gw_alpha: float | None = None
    gw_rounds: int = 5
    gw_eps: float = 0.05
    gw_knn: int | None = None          # keep each item's gw_knn most similar items in its structure
    # the class bridge (xmodal.core.bridge): fused with the weight the references support
    bridge: bool = False
    # the self-trained image→text map (xmodal.core.pseudomap), fused after the bridge
    self_map: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def inverted_softmax(S: np.ndarray, beta: float = 10.0) -> np.ndarray:
    """Scores for ranking the columns of every row: each column (target) is normalised by a
    softmax over the rows (queries), so a target close to every query loses its advantage."""
    Z = beta * np.asarray(S, dtype=np.float64)
    Z -= Z.max(axis=0, keepdims=True)
    E = np.exp(Z)
    return (E / E.sum(axis=0, keepdims=True)).astype(np.float32)


def mutual_nn_pairs(S: np.ndarray, max_pairs: int | None = None, min_score: float | None = None):
    """Mutual nearest neighbours of a (n_images, n_texts) similarity: pairs ``(i, j)`` where j is
    i's best text and i is j's best image, best score first, at most ``max_pairs``.

    Returns an (p, 2) int64 array of (row, column) and their scores.
    """
    S = np.asarray(S)
    if S.size == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=S.dtype)
    best_col = S.argmax(axis=1)
    best_row = S.argmax(axis=0)
    rows = np.flatnonzero(best_row[best_col] == np.arange(S.shape[0]))
    cols = best_col[rows]
    scores = S[rows, cols]
    order = np.argsort(-scores, kind="stable")
    rows, cols, scores = rows[order], cols[order], scores[order]
    if min_score is not None:
        keep = scores >= min_score
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
    if max_pairs is not None:
        rows, cols, scores = rows[:max_pairs], cols[:max_pairs], scores[:max_pairs]
    return np.stack([rows, cols], axis=1).astype(np.int64), scores


def average_groups(features: np.ndarray, groups, normalize: bool = False) -> np.ndarray:
    """One row per group: the mean of the feature rows listed in that group (e.g. the 5 captions
    of a reference image); ``normalize`` unit-normalises the rows first."""
    F = l2_normalize(features) if normalize else np.asarray(features, dtype=np.float32)
    out = np.zeros((len(groups), F.shape[1]), dtype=np.float32)
    for g, rows in enumerate(groups):
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows):
            out[g] = F[rows].mean(axis=0)
    return out


def query_expansion(query_codes: np.ndarray, target_codes: np.ndarray, top_m: int = 3,
                    weight: float = 0.5) -> np.ndarray:
    """Scores after one round of cross-modal query expansion: every query code becomes
    ``normalise(q + weight · mean(codes of its top_m targets))`` and is compared again."""
    Q = np.asarray(query_codes, dtype=np.float32)
    T = np.asarray(target_codes, dtype=np.float32)
    S = Q @ T.T
    if top_m < 1 or T.shape[0] == 0:
        return S
    m = min(top_m, T.shape[0])
    top = np.argpartition(-S, m - 1, axis=1)[:, :m]
    Q2 = l2_normalize(Q + weight * T[top].mean(axis=1))
    return Q2 @ T.T


def _logsumexp(Z: np.ndarray, axis: int) -> np.ndarray:
    m = Z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(Z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn_potentials(S: np.ndarray, eps: float = 0.05, iters: int = 100, tol: float = 1e-6):
    """Log-domain Sinkhorn for the plan ``P ∝ exp(S / eps)`` with uniform marginals (rows 1/n,
    columns 1/m). Returns ``(f, g)`` with ``log P = S/eps + f[:, None] + g[None, :]``.

    Ranking a row of P is ranking ``S[i, :] + eps·g`` (and a column, ``S[:, j] + eps·f``): the
    potentials are per-item scores, like CSLS terms, that an index can store (O(n·m) per
    iteration, chunkable)."""
    K = np.asarray(S, dtype=np.float64) / eps
    n, m = K.shape
    f, g = np.zeros(n), np.zeros(m)
    la, lb = -np.log(n), -np.log(m)
    for _ in range(iters):
        f = la - _logsumexp(K + g[None, :], axis=1)
        g_new = lb - _logsumexp(K + f[:, None], axis=0)
        done = np.max(np.abs(g_new - g)) < tol
        g = g_new
        if done:
            break
    return f, g


def sinkhorn_plan(S: np.ndarray, eps: float = 0.05, iters: int = 100) -> np.ndarray:
    """The entropic OT plan of :func:`sinkhorn_potentials` (rows sum to 1/n, columns to 1/m)."""
    f, g = sinkhorn_potentials(S, eps, iters)
    return np.exp(np.asarray(S, np.float64) / eps + f[:, None] + g[None, :])


def sinkhorn_rescore(S: np.ndarray, eps: float, iters: int = 100, weight: float = 1.0,
                     plan_weight: float = 0.0) -> np.ndarray:
    """``S + weight·eps·(f_i + g_j)`` (``weight`` 1: the log plan times eps), or, with
    ``plan_weight``, ``S + plan_weight · n · P``."""
    S = np.asarray(S, np.float32)
    f, g = sinkhorn_potentials(S, eps, iters)
    if plan_weight:
        P = np.exp(S.astype(np.float64) / eps + f[:, None] + g[None, :])
        return (S + plan_weight * S.shape[0] * P).astype(np.float32)
    return (S + weight * eps * (f[:, None] + g[None, :])).astype(np.float32)


def _polar(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    return U @ Vt


def procrustes_self_training(CX: np.ndarray, CY: np.ndarray, ref_cx: np.ndarray, ref_cy: np.ndarray,
                             rounds: int = 2, reg: float = 1.0, eps: float = 0.05,
                             csls_k: int | None = None, iters: int = 100) -> np.ndarray:
    """Orthogonal W (k×k) with ``CX @ W ≈ CY``, fitted on the reference pairs' codes plus, in each
    round, the soft pseudo-pairs of the Sinkhorn plan over the searched items (each pair weighted
    by its plan mass; the pseudo-pairs have total mass 1, every reference pair mass 1/N·…, i.e.
    references and pseudo-pairs count alike), pulled towards the identity by ``reg``."""
    k = CX.shape[1]
    M_ref = ref_cx.T @ ref_cy / max(len(ref_cx), 1)
    W = np.eye(k, dtype=np.float32)
    for _ in range(rounds):
        S = (CX @ W) @ CY.T
        if csls_k:
            S = csls(S, csls_k)
        P = sinkhorn_plan(S, eps, iters).astype(np.float32)
        M = CX.T @ P @ CY + M_ref + reg * np.eye(k, dtype=np.float32) / k
        W = _polar(M).astype(np.float32)
    return W


def _structure(F: np.ndarray, knn: int | None = None) -> np.ndarray:
    """Intra-modal structure for GW: cosine of mean-centred features, z-scored over all entries,
    self-similarity zeroed (it would only reinforce the current plan); with ``knn``, every row
    keeps its knn largest entries (symmetrised), the rest 0."""
    F = l2_normalize(np.asarray(F, np.float32) - np.asarray(F, np.float32).mean(axis=0))
    C = F @ F.T
    C = (C - C.mean()) / (C.std() + 1e-6)
    np.fill_diagonal(C, 0.0)
    if knn and knn < len(C) - 1:
        drop = np.argpartition(-C, knn, axis=1)[:, knn:]
        M = np.ones_like(C, dtype=bool)
        np.put_along_axis(M, drop, False, axis=1)
        C = np.where(M | M.T, C, 0.0).astype(np.float32)
    return C


def fused_gw_scores(S: np.ndarray, X: np.ndarray, Y: np.ndarray, alpha: float = 0.3,
                    rounds: int = 5, eps: float = 0.05, iters: int = 100,
                    knn: int | None = None) -> np.ndarray:
    """Entropic fused Gromov–Wasserstein (square loss, mirror descent as in Peyré et al. 2016)
    between the searched images X and texts Y: the linear term is the SSR similarity S (itself the
    GW cross term of the labelled pairs), the quadratic term aligns the intra-modal structures.
    Returns the final fused similarity ``(1-α)·S + α·n·C_X P C_Yᵀ`` (rank rows/columns)."""
    S = np.asarray(S, np.float32)
    CXs, CYs = _structure(X, knn), _structure(Y, knn)
    sd = S.std() + 1e-6
    P = sinkhorn_plan(S, eps, iters).astype(np.float32)
    G = S
    for _ in range(rounds):
        Q = CXs @ P @ CYs.T * S.shape[0]
        G = (1 - alpha) * S + alpha * Q * (sd / (Q.std() + 1e-6))
        P = sinkhorn_plan(G, eps, iters).astype(np.float32)
    return G.astype(np.float32)


def _codes(R: np.ndarray, cfg: Enhancements) -> np.ndarray:
    return ssr_codes(R, cfg.measure, cfg.sparse_top_k, cfg.sparse_power,
                     column_stats(R) if cfg.standardize else None)


def enhanced_similarity(ref_images: np.ndarray, ref_texts: np.ndarray,
                        query_images: np.ndarray, query_texts: np.ndarray,
                        cfg: Enhancements = Enhancements(), *,
                        uncoupled_images: np.ndarray | None = None,
                        uncoupled_texts: np.ndarray | None = None,
                        image_mean: np.ndarray | None = None,
                        text_mean: np.ndarray | None = None,
                        bridge: tuple[np.ndarray, np.ndarray, float] | None = None,
                        mapped: tuple[np.ndarray, np.ndarray, float] | None = None):
    """SSM-AL similarity between ``query_images`` and ``query_texts`` from matched references,
    with the improvements enabled in ``cfg``.

    ``ref_images[j]`` / ``ref_texts[j]`` are the features of reference pair j (for caption
    averaging, pass the averaged text features, :func:`average_groups`). ``uncoupled_*`` are the
    items pseudo-pairs may be mined from; ``image_mean``/``text_mean`` the collection means used by
    ``cfg.center`` (default: the mean of the query items). ``bridge``: (centred bridge embeddings
    of the query images, of the query texts, weight w), fused as the index does, before CSLS;
    ``mapped``: (map codes of the query images, of the query texts, weight b) of the self-trained
    map (:mod:`xmodal.core.pseudomap`), fused after the bridge, before CSLS.

    Returns ``(S_i2t, S_t2i, info)``: S_i2t is (n_query_images, n_query_texts), rank its rows for
    image→text; S_t2i is (n_query_texts, n_query_images); ``info`` holds the pseudo-pairs used.
    """
    Xr, Yr = np.asarray(ref_images, np.float32), np.asarray(ref_texts, np.float32)
    Xq, Yq = np.asarray(query_images, np.float32), np.asarray(query_texts, np.float32)
    Xu = None if uncoupled_images is None else np.asarray(uncoupled_images, np.float32)
    Yu = None if uncoupled_texts is None else np.asarray(uncoupled_texts, np.float32)
    if cfg.center:
        mx = Xq.mean(axis=0) if image_mean is None else np.asarray(image_mean, np.float32)
        my = Yq.mean(axis=0) if text_mean is None else np.asarray(text_mean, np.float32)
        Xr, Xq = Xr - mx, Xq - mx
        Yr, Yq = Yr - my, Yq - my
        Xu = None if Xu is None else Xu - mx
        Yu = None if Yu is None else Yu - my
    info: dict = {"pseudo_pairs": np.zeros((0, 2), dtype=np.int64)}
    if cfg.pseudo_rounds and Xu is not None and Yu is not None and len(Xu) and len(Yu):
        k0 = len(Xr)
        max_pairs = cfg.pseudo_max or k0
        Xref, Yref = Xr, Yr
        RXu0, RYu0 = ssr(Xu, Xr), ssr(Yu, Yr)
        pseudo = np.zeros((0, 2), dtype=np.int64)
        for _ in range(cfg.pseudo_rounds):
            if len(pseudo):
                RXu = np.hstack([RXu0, ssr(Xu, Xu[pseudo[:, 0]])])
                RYu = np.hstack([RYu0, ssr(Yu, Yu[pseudo[:, 1]])])
            else:
                RXu, RYu = RXu0, RYu0
            Su = _codes(RXu, cfg) @ _codes(RYu, cfg).T
            if cfg.csls_k:
                Su = csls(Su, cfg.csls_k)
            pseudo, _ = mutual_nn_pairs(Su, max_pairs)
            if not len(pseudo):
                break
        if len(pseudo):
            Xref = np.vstack([Xr, Xu[pseudo[:, 0]]])
            Yref = np.vstack([Yr, Yu[pseudo[:, 1]]])
        Xr, Yr = Xref, Yref
        info["pseudo_pairs"] = pseudo
    RXq, RYq = ssr(Xq, Xr), ssr(Yq, Yr)
    CX = _codes(RXq, cfg)
    CY = _codes(RYq, cfg)
    if cfg.procrustes_rounds:
        # the references' own codes, with the searched items' column statistics
        def ref_codes(F, R):
            st = column_stats(R) if cfg.standardize else None
            return ssr_codes(ssr(F, F), cfg.measure, cfg.sparse_top_k, cfg.sparse_power, st)
        W = procrustes_self_training(CX, CY, ref_codes(Xr, RXq), ref_codes(Yr, RYq),
                                     cfg.procrustes_rounds, cfg.procrustes_reg, cfg.procrustes_eps,
                                     cfg.csls_k, cfg.sinkhorn_iters)
        CX = CX @ W
        info["procrustes"] = W
    if cfg.qe_top_m:
        S_i2t = query_expansion(CX, CY, cfg.qe_top_m, cfg.qe_weight)
        S_t2i = query_expansion(CY, CX, cfg.qe_top_m, cfg.qe_weight)
    else:
        S_i2t = CX @ CY.T
        S_t2i = S_i2t.T
    if bridge is not None and bridge[2] > 0:
        S_i2t = (1 - bridge[2]) * S_i2t + bridge[2] * (bridge[0] @ bridge[1].T)
        S_t2i = S_i2t.T
    if mapped is not None and mapped[2] > 0:
        S_i2t = (1 - mapped[2]) * S_i2t + mapped[2] * (mapped[0] @ mapped[1].T)
        S_t2i = S_i2t.T
    if cfg.csls_k:
        S_i2t = csls(S_i2t, cfg.csls_k)
        S_t2i = csls(S_t2i, cfg.csls_k)
    if cfg.inverted_softmax_beta:
        S_i2t = inverted_softmax(S_i2t, cfg.inverted_softmax_beta)
        S_t2i = inverted_softmax(S_t2i, cfg.inverted_softmax_beta)
    if cfg.gw_alpha:
        S_i2t = fused_gw_scores(S_i2t, Xq, Yq, cfg.gw_alpha, cfg.gw_rounds, cfg.gw_eps, cfg.sinkhorn_iters, cfg.gw_knn)
        S_t2i = S_i2t.T
    if cfg.sinkhorn_eps:
        S_i2t = sinkhorn_rescore(S_i2t, cfg.sinkhorn_eps, cfg.sinkhorn_iters, cfg.sinkhorn_weight,
                                 cfg.sinkhorn_plan_weight)
        S_t2i = S_i2t.T
    return S_i2t, S_t2i, info
