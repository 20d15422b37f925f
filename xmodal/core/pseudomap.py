"""A self-trained linear map from image features to text features (beyond the paper).

SSM-AL compares an image with a text only through the N matched references (eq. 10, 32), and the
class bridge (:mod:`xmodal.core.bridge`) only through the classifier's words. Neither learns from
the thousands of uncoupled items what a *particular* image feature means in the text space. This
module does, by self-training a ridge regression on the index's own rankings:

1. **pseudo-targets**: every uncoupled image of a sample (at most :data:`MAX_IMAGES`) gets, as its
   target in the text space, the softmax-weighted mean of its :data:`TOP_TEXTS` best texts among a
   sample of the uncoupled texts (at most :data:`MAX_TEXTS`), ranked by the index (eq. 32's
   similarity of the codes, fused with the bridge, CSLS); temperature :data:`TEMPERATURE`;
2. **ridge regression** ``W = argmin Σ_u ‖x_u W − t_u‖² + a Σ_j ‖x'_j W − y'_j‖² + λ‖W‖²`` over
   those pseudo-pairs and the N reference pairs ``(x'_j, y'_j)`` (each counting ``a`` =
   :data:`PAIR_WEIGHT` times), with ``x`` the image features unit-normalised, centred on the
   collection and projected on its top :data:`PCA_DIMS` principal directions, ``y`` the text
   features unit-normalised and centred;
3. **fusion**: an image's map code is ``normalise((x − μ_x) W P)`` and a text's
   ``normalise((y − μ_y) P)``, ``P`` the top :data:`MAP_DIMS` principal directions of the texts'
   codes (:func:`text_directions`); the index widens its codes with them as with the bridge,
   ``[sqrt(1 − b)·c, sqrt(b)·m]``, so the score is ``(1 − b)·S + b·cos(x W P, y P)`` with ``b`` =
   :data:`MAP_WEIGHT`, before CSLS;
4. **when**: only where the class bridge is on (its weight > 0: the labels show that the index
   ranks beyond the pairs, so its pseudo-targets carry signal); on the synthetic shapes, where the
   bridge is off, the map lowered MAP by class by up to 9% (instance pseudo-targets, class
   metric). Its weight is then checked like the bridge's, by leave-one-out over the references
   (:func:`choose_map_weight`): on unless the index without it ranks the true matches clearly
   better.

The map averages the noisy pseudo-targets of thousands of images into one linear function of the
features, so an image is placed by what the images that *look like it* were matched with. On a
development split of Flickr8k (1,000 of the 5,000 reference images held out; docs/results.md,
"The self-trained map") it raised ``product``'s rsum from .92 to 1.19 with 20 labels and from 1.23
to 1.50 with 100; the parameters above were chosen there (a second round of pseudo-targets, the
temperature, ``k``, ``a``, ``λ`` and the PCA width moved rsum by at most ±.04).
"""

from __future__ import annotations

import numpy as np

from xmodal.core.hubness import csls, largest
from xmodal.core.ssr import l2_normalize

MAP_WEIGHT = 0.5        # b: the map's share of the fused score
TOP_TEXTS = 10          # texts averaged into an image's pseudo-target
TEMPERATURE = 0.05      # softmax temperature over their scores
PAIR_WEIGHT = 10.0      # a: how many pseudo-pairs a labelled pair counts for
RIDGE = 1.0             # λ
PCA_DIMS = 256          # image features' principal directions the map starts from
MAP_DIMS = 128          # principal directions of the texts' map codes the codes keep (all 384 of
                        # MiniLM's: rsum 1.188 / 1.495 at N=20 / 100 on Flickr8k's development
                        # split; 128: 1.198 / 1.495; 64: 1.188 / 1.483; docs/results.md)
IMAGE_SPACE_SAMPLE = 5000   # image rows those directions are computed from (a seeded sample above)
MAX_IMAGES = 4000       # uncoupled images given a pseudo-target (a seeded sample above)
MAX_TEXTS = 8000        # uncoupled texts they are matched with
CSLS_K = 10
MIN_PAIRS = 2
MIN_LOG_GAIN = 0.1      # as the bridge's (xmodal.core.bridge)
LOO_TARGETS = 2000      # targets ranked per reference by choose_map_weight


def image_space(X: np.ndarray, dims: int = PCA_DIMS, sample: int = IMAGE_SPACE_SAMPLE, seed: int = 0):
    """``(mean, basis)``: the mean of the unit-normalised image features and the ``(d, dims)``
    top principal directions of the centred ones (at most ``sample`` rows; the eigenvectors of
    their covariance: an SVD of 6,000 x 1,280 rows took 66 s on two busy cores, this 2 s)."""
    Xn = l2_normalize(np.asarray(X, np.float32))
    mean = Xn.mean(axis=0)
    rng = np.random.default_rng(seed)
    rows = Xn if len(Xn) <= sample else Xn[rng.choice(len(Xn), sample, replace=False)]
    return mean, _principal_directions(l2_normalize(rows - mean), dims)


def _principal_directions(C: np.ndarray, dims: int) -> np.ndarray:
    """The ``(d, dims)`` top principal directions of the rows of ``C`` (the eigenvectors of their
    covariance, float64)."""
    C = np.asarray(C, np.float64)
    C = C - C.mean(axis=0)
    values, vectors = np.linalg.eigh(C.T @ C)
    return np.ascontiguousarray(vectors[:, np.argsort(-values)[:dims]], dtype=np.float32)


def centred_rows(F: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Unit rows of ``normalise(F) − mean``."""
    return l2_normalize(l2_normalize(np.asarray(F, np.float32)) - np.asarray(mean, np.float32))


def soft_targets(S: np.ndarray, targets: np.ndarray, k: int = TOP_TEXTS,
                 tau: float = TEMPERATURE) -> np.ndarray:
    """Per row of ``S`` (queries × candidates): the softmax(score / tau)-weighted mean of the
    ``targets`` rows of its ``k`` best candidates."""
    k = min(k, S.shape[1])
    top, s = largest(S, k)
    s = s.astype(np.float64)
    p = np.exp((s - s.max(axis=1, keepdims=True)) / tau)
    p /= p.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", p, np.asarray(targets, np.float64)[top])


def ridge(A: np.ndarray, T: np.ndarray, lam: float = RIDGE, weights: np.ndarray | None = None) -> np.ndarray:
    """``argmin_W Σ_i weights_i ‖A_i W − T_i‖² + lam ‖W‖²`` (closed form)."""
    A = np.asarray(A, np.float64)
    Aw = A if weights is None else A * np.asarray(weights, np.float64)[:, None]
    return np.linalg.solve(A.T @ Aw + lam * np.eye(A.shape[1]), Aw.T @ np.asarray(T, np.float64))


def self_trained_map(X: np.ndarray, Y: np.ndarray, image_codes: np.ndarray, text_codes: np.ndarray,
                     pairs: np.ndarray, *, seed: int = 0, max_images: int = MAX_IMAGES,
                     max_texts: int = MAX_TEXTS, space: tuple | None = None) -> dict | None:
    """The map of the module doc, or None below :data:`MIN_PAIRS` pairs.

    ``X`` (n, d_image) and ``Y`` (m, d_text) are the collection's raw features, ``image_codes`` /
    ``text_codes`` the index's codes of the same rows (their dot product is its similarity, bridge
    included); ``pairs[j] = (image row, text row)`` the references (a row -1 is skipped).
    Returns ``{"image_mean", "text_mean", "matrix"}``: an image's map code is
    ``normalise((normalise(x) − image_mean) @ matrix)`` (:func:`image_map_codes`), a text's
    ``normalise(normalise(y) − text_mean)`` (:func:`text_map_codes`). ``space``: ``X``'s
    :func:`image_space` (with ``seed`` 0) if already known: it depends on ``X`` only.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]
    if len(pairs) < MIN_PAIRS:
        return None
    rng = np.random.default_rng(seed)
    free_i = np.setdiff1d(np.arange(len(X)), pairs[:, 0])
    free_t = np.setdiff1d(np.arange(len(Y)), pairs[:, 1])
    if len(free_i) > max_images:
        free_i = np.sort(rng.choice(free_i, max_images, replace=False))
    if len(free_t) > max_texts:
        free_t = np.sort(rng.choice(free_t, max_texts, replace=False))
    if len(free_i) < 1 or len(free_t) < TOP_TEXTS:
        return None
    image_mean, basis = image_space(X, seed=seed) if space is None else space
    text_mean = l2_normalize(np.asarray(Y, np.float32)).mean(axis=0)
    PX = lambda rows: l2_normalize(centred_rows(X[rows], image_mean) @ basis)  # noqa: E731
    Yc = lambda rows: centred_rows(Y[rows], text_mean)  # noqa: E731
    S = csls(np.asarray(image_codes, np.float32)[free_i] @ np.asarray(text_codes, np.float32)[free_t].T, CSLS_K,
             in_place=True)
    free_codes = Yc(free_t)
    targets = soft_targets(S, free_codes)
    A = np.vstack([PX(free_i), PX(pairs[:, 0])])
    T = np.vstack([targets, Yc(pairs[:, 1])])
    weights = np.concatenate([np.ones(len(free_i)), np.full(len(pairs), PAIR_WEIGHT)])
    W = ridge(A, T, RIDGE, weights)
    Aw = A * weights[:, None]
    P = text_directions(free_codes)
    fitted = {"image_mean": image_mean.astype(np.float32), "text_mean": text_mean.astype(np.float32),
              "matrix": np.ascontiguousarray(basis @ W if P is None else basis @ W @ P, dtype=np.float32),
              # what leave-one-out needs (choose_map_weight), not kept in an index file
              "normal": (A.T @ Aw + RIDGE * np.eye(A.shape[1]), Aw.T @ T), "basis": basis,
              "pair_inputs": dict(zip(map(tuple, pairs.tolist()), zip(A[len(free_i):], T[len(free_i):])))}
    if P is not None:
        fitted["text_matrix"] = P
    return fitted


def text_directions(codes: np.ndarray, dims: int = MAP_DIMS) -> np.ndarray | None:
    """The ``(d_text, dims)`` top principal directions of texts' map codes, which the map codes
    are kept on (both modalities', so their dot product stays a cosine in that subspace), or None
    when the text features have at most ``dims`` dimensions."""
    return None if codes.shape[1] <= dims else _principal_directions(codes, dims)


def _log_gain_is_clear(diff: np.ndarray) -> bool:
    if len(diff) < 3:
        return False
    se = float(np.std(diff, ddof=1)) / np.sqrt(len(diff))
    return float(np.mean(diff)) > max(MIN_LOG_GAIN, 2 * se)


def choose_map_weight(fitted: dict, X: np.ndarray, Y: np.ndarray, pairs: np.ndarray, scored,
                      select: str = "image", max_targets: int = LOO_TARGETS, seed: int = 0):
    """The map's weight the labels support, and the evidence ``{"log_rank": {b: mean log(1 +
    rank)}, "references": n}``.

    Each reference pair j is scored as an index built without it would score it: ``scored``
    yields ``(j, target rows, scores)`` of the index without the map (leave-one-out SSR fused with
    the bridge, :func:`xmodal.core.calibration.loo_scores`), in the orientation of the tasks
    (``select``: the modality of the query, ``pairs[j] = (query row, target row)``); the map is
    refitted without pair j (a rank-one downdate of the ridge's normal equations) and fused at
    ``b`` = :data:`MAP_WEIGHT`; at most ``max_targets`` targets (a seeded sample plus the true
    one) are ranked. The map stays on (``MAP_WEIGHT``) unless the index without it ranks the
    true matches clearly better (a mean gain in log rank above two standard errors and
    :data:`MIN_LOG_GAIN`), as the bridge's weight is chosen (:mod:`xmodal.core.bridge`)."""
    G, R = fitted["normal"]
    basis = fitted["basis"]
    P = fitted.get("text_matrix")
    kept = (lambda V: V) if P is None else (lambda V: V @ P)  # noqa: E731  (on the map codes' directions)
    # without pair j (input a, target y, weight w = PAIR_WEIGHT): W_j = (G − w a aᵀ)⁻¹ (R − w a yᵀ)
    # = W + (w / (1 − w aᵀu)) u (Rᵀu − y)ᵀ with u = G⁻¹a (Sherman–Morrison): one inverse for every
    # reference instead of a solve each
    G_inv = np.linalg.inv(G)
    W0 = G_inv @ R
    rng = np.random.default_rng(seed)
    todo = []
    for j, rows, s in scored:
        q, t = int(pairs[j, 0]), int(pairs[j, 1])
        i_row, t_row = (q, t) if select == "image" else (t, q)
        own = fitted["pair_inputs"].get((i_row, t_row))
        if own is None:
            continue
        keep = np.arange(len(rows))
        if len(rows) > max_targets:
            right = int(np.searchsorted(rows, t))
            keep = np.union1d(rng.choice(len(rows), max_targets, replace=False), [right])
        rows_k = np.asarray(rows)[keep]
        todo.append((q, t, own, rows_k, np.asarray(s, np.float64)[keep]))
    # the targets' map inputs once, for the rows any reference ranks (one sample plus the matches)
    union = np.unique(np.concatenate([x[3] for x in todo])) if todo else np.zeros(0, np.int64)
    if select == "image":
        targets = text_map_codes(Y[union], fitted).astype(np.float64)
    else:
        targets = l2_normalize(centred_rows(X[union], fitted["image_mean"]) @ basis).astype(np.float64)
    logs = {0.0: [], MAP_WEIGHT: []}
    for q, t, (a, y), rows_k, s_k in todo:
        u = G_inv @ a
        v = (PAIR_WEIGHT / (1.0 - PAIR_WEIGHT * (a @ u))) * (R.T @ u - y)   # W_j = W0 + u vᵀ
        T = targets[np.searchsorted(union, rows_k)]
        right = int(np.searchsorted(rows_k, t))
        if select == "image":
            mapped = kept(a @ W0 + (a @ u) * v)
            m = T @ (mapped / max(np.linalg.norm(mapped), 1e-12))
        else:
            Z = l2_normalize(kept(T @ W0 + np.outer(T @ u, v)).astype(np.float32))
            m = Z @ text_map_codes(Y[q:q + 1], fitted)[0]
        for b in logs:
            f = (1 - b) * s_k + b * m
            logs[b].append(np.log1p(np.sum(f > f[right])))
    evidence = {"log_rank": {b: float(np.mean(v)) for b, v in logs.items() if v},
                "references": len(logs[0.0])}
    if not logs[0.0]:
        return MAP_WEIGHT, evidence
    diff = np.asarray(logs[MAP_WEIGHT]) - np.asarray(logs[0.0])
    return (0.0 if _log_gain_is_clear(diff) else MAP_WEIGHT), evidence


def image_map_codes(X: np.ndarray, fitted: dict) -> np.ndarray:
    """Map codes of images (:func:`self_trained_map`): unit rows in the text space."""
    return l2_normalize((l2_normalize(np.asarray(X, np.float32)) - fitted["image_mean"]) @ fitted["matrix"])


def text_map_codes(Y: np.ndarray, fitted: dict) -> np.ndarray:
    """Map codes of texts: their centred unit features (on the map's text directions, if it has
    them: :func:`text_directions`)."""
    codes = centred_rows(Y, fitted["text_mean"])
    P = fitted.get("text_matrix")
    return codes if P is None else l2_normalize(codes @ P)


def with_bridge(scored, pairs: np.ndarray, query_bridge, target_bridge, weight: float):
    """Leave-one-out scores (:func:`xmodal.core.calibration.loo_scores`) fused with the class
    bridge as the index fuses it: ``(1 - w)·s + w·cos`` (:mod:`xmodal.core.bridge`)."""
    for j, rows, s in scored:
        if weight > 0 and query_bridge is not None:
            s = (1 - weight) * np.asarray(s) + weight * (target_bridge[rows] @ query_bridge[int(pairs[j, 0])])
        yield j, rows, s
