"""The class bridge: a cross-modal similarity that needs no pairs (beyond the paper).

SSM-AL compares an image with a text only through their similarities to matched references
(eq. 10, 32). The frozen image encoder knows more: its ImageNet classifier says what is in the
picture, in words, and the frozen text encoder can embed those words. An image's **bridge
embedding** is the probability-weighted mean of the text embeddings of its top classes
("a photo of a golden retriever", ...), a point in the text encoder's space; a text's is its own
embedding. Both are centred on their collection's mean and scaled to unit length, so their dot
product acts like a correlation.

The index fuses the two by widening the codes (eq. 32's dot product of unit vectors):
``[sqrt(1 - w) · c, sqrt(w) · b]``, so the score is ``(1 - w) · ρ_SSR + w · cos_bridge`` and CSLS,
the ANN index and every search work unchanged. ``b`` is kept on the top :data:`BRIDGE_DIMS`
principal directions of both modalities' bridge embeddings (:func:`principal_basis`), not the
text encoder's full width.

The bridge is only as good as the classifier's classes are for the data: on COCO photos it ranks
well with no labels at all (the first caption of 159 images: Recall@10 .73), on synthetic
coloured shapes it is at chance. So ``w`` is chosen from the labels (:func:`choose_weight`) in two
steps:

1. **the bridge alone** needs no labels, so every reference pair tests it fairly: the median
   percentile rank of the references' true matches (0 = first, 0.5 = chance) sets a **ceiling**
   on the weight (:func:`prior_scale`): the largest candidate weight while the percentile is at
   most ``FULL_PRIOR_PERCENTILE``, falling linearly to 0 at ``NO_PRIOR_PERCENTILE``;
2. **leave-one-out** (:func:`xmodal.core.calibration.loo_scores`, from 3 references): each
   reference is scored by an index built without it, fused with the bridge at every candidate
   weight (and the ceiling), and the fused scores are compared by the mean log rank of the true
   matches. Under a ceiling above 0 the bridge takes its best weight up to the ceiling, a weight
   above it only when that beats the best below clearly, and goes off only if SSR alone beats the
   chosen weight clearly; with a ceiling of 0 it comes on (at its best weight among those) only if
   it beats SSR alone clearly. Clearly: a paired gain above two standard errors and
   ``MIN_LOG_GAIN``. Below 3 references the weight is ``PRIOR_WEIGHT`` scaled as the ceiling.

Why a ceiling that falls smoothly (issue 23): the start used to be all or nothing, ``PRIOR_WEIGHT``
when the percentile was at most 0.1, else 0 (SSR alone) unless leave-one-out showed a clear gain.
That was a cliff: on Flickr8k (held-out protocol, ``--split-seed 1``, seed 0, N=20) the bridge
ranked the 20 references' captions at a median percentile of 0.1054, leave-one-out's gain (mean
log rank 4.256 at w=0, 3.805 at .5) did not pass the two-standard-error test with 20 references,
the bridge was off and Recall@10 halved (.109 / .111 against .242 / .226 for seed 1). On that
data a bridge at percentile .10-.16 is worth a weight of .5-.85 (development split inside the
reference images, N=10: rsum .22-.28 at w=0 against .89-.92 at .85). Why not a ceiling that reaches 0 only
at chance (0.5): on the synthetic shapes, whose classes mean nothing, the bridge alone sits at
percentiles .17-.32 (English captions) and weights up to .4-.5 cost nothing there but .7-.85 cost
up to 15 % MAP; leave-one-out with 10 references would pick .85 if allowed. Leave-one-out is
trusted to lower the weight below the ceiling (it is biased *towards* the bridge, below), not to
raise it above without clear evidence. Measured in docs/results.md ("The class bridge").

Leave-one-out is pessimistic for SSR (a medoid loses the column that matched its own cluster),
so it must show a clear difference, not a bare maximum. Before the label-free start, the weight
had to beat SSR alone by leave-one-out from 3 references on: on COCO-mini it stayed 0 from 3 to 6
references (Recall@10 dropped from .52 at 2 labels to .09 at 3 in ``xmodal simulate``).
Ranks are compared as logs, not reciprocal ranks: a reciprocal-rank gain shrinks with the number
of targets (among 5,793 texts the true matches rank far below the top), a log-rank gain does not.
"""

from __future__ import annotations

import numpy as np

from xmodal.core.calibration import embedding_scores, loo_scores
from xmodal.core.ssr import l2_normalize

WEIGHTS = (0.0, 0.25, 0.5, 0.7, 0.85)
# the ceiling on the weight that the bridge alone supports (prior_scale) by the median percentile
# rank of the references' true matches (0 = first, 0.5 = chance; one reference it cannot place,
# e.g. a caption about what the classes do not name, does not move the median): no ceiling (the
# largest weight) up to FULL_PRIOR_PERCENTILE, 0 from NO_PRIOR_PERCENTILE, linear between.
# Flickr8k's references sit at .04-.16, COCO-mini's at .01-.03 (.03-.05 in Chinese), the English
# shapes' at .17-.32, the Chinese shapes' at .39-.69 (docs/results.md, "The class bridge")
FULL_PRIOR_PERCENTILE = 0.1
NO_PRIOR_PERCENTILE = 0.3
# the weight below 3 references (no leave-one-out), scaled by prior_scale
PRIOR_WEIGHT = 0.7
# the least mean gain in log rank (log(1 + rank)) that moves the weight away from its start
MIN_LOG_GAIN = 0.1
# principal directions of the bridge part kept in the codes (principal_basis): COCO-mini product
# Recall@10 at N=5/10/20/50 .786/.753, .792/.779, .833/.832, .870/.879 with 64 against .760/.760,
# .785/.779, .842/.833, .873/.884 with all 384 (32: .797/.801 at N=20); a 100k x 100k index
# 212 MiB instead of 456 MiB
BRIDGE_DIMS = 64


def bridge_embeddings(probs: np.ndarray, classes: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """Unit rows ``Σ_j probs[i, j] · class_embeddings[classes[i, j]]`` (the image's top classes,
    ``classes`` indexing the rows of ``class_embeddings``)."""
    probs = np.asarray(probs, dtype=np.float32)
    C = np.asarray(class_embeddings, dtype=np.float32)
    E = np.einsum("nk,nkd->nd", probs, C[np.asarray(classes, dtype=np.int64)])
    return l2_normalize(E)


def principal_basis(B_image: np.ndarray, B_text: np.ndarray, dims: int | None = None,
                    sample: int = 20_000, seed: int = 0) -> np.ndarray | None:
    """``(d, dims)`` orthonormal basis of the top principal directions of both modalities'
    centred bridge embeddings (at most ``sample`` rows of each), or None when ``d <= dims``.

    The bridge part of a code is as wide as the text encoder (384-d); projected on this basis the
    codes, the index and its rebuild shrink with it (a 100k × 100k index: see docs/scale.md)."""
    dims = BRIDGE_DIMS if dims is None else int(dims)
    d = B_image.shape[1]
    if dims <= 0 or d <= dims:
        return None
    rng = np.random.default_rng(seed)
    take = lambda B: B if len(B) <= sample else B[rng.choice(len(B), sample, replace=False)]  # noqa: E731
    M = np.vstack([take(np.asarray(B_image, np.float32)), take(np.asarray(B_text, np.float32))])
    _, _, vt = np.linalg.svd(M, full_matrices=False)
    return np.ascontiguousarray(vt[:dims].T, dtype=np.float32)


def project(B: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Unit rows of ``B`` on ``basis`` (:func:`principal_basis`); ``B`` itself without one."""
    return B if basis is None else l2_normalize(np.asarray(B, np.float32) @ basis)


def centred(B: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(unit rows of B - mean, mean)``; the mean defaults to B's own (the collection's)."""
    B = l2_normalize(np.asarray(B, dtype=np.float32))
    mean = B.mean(axis=0) if mean is None else np.asarray(mean, dtype=np.float32)
    return l2_normalize(B - mean), mean


def fuse_codes(codes: np.ndarray, bridge: np.ndarray, weight: float) -> np.ndarray:
    """``[sqrt(1 - w) · codes, sqrt(w) · bridge]``: dot products become ``(1 - w)`` times the
    codes' plus ``w`` times the bridge's. Written into one float32 array (a float64 scale made
    ``np.hstack`` build a float64 copy first: 0.7 s of a 100k rebuild)."""
    codes, bridge = np.asarray(codes, np.float32), np.asarray(bridge, np.float32)
    out = np.empty((len(codes), codes.shape[1] + bridge.shape[1]), np.float32)
    np.multiply(codes, np.float32(np.sqrt(1.0 - weight)), out=out[:, :codes.shape[1]])
    np.multiply(bridge, np.float32(np.sqrt(weight)), out=out[:, codes.shape[1]:])
    return out


def _clear_gain(diff: np.ndarray) -> bool:
    if len(diff) < 3:
        return False
    se = float(np.std(diff, ddof=1)) / np.sqrt(len(diff))
    return float(np.mean(diff)) > max(MIN_LOG_GAIN, 2 * se)


def prior_scale(percentile: float) -> float:
    """1 up to :data:`FULL_PRIOR_PERCENTILE`, 0 from :data:`NO_PRIOR_PERCENTILE`, linear between:
    how much weight the bridge alone's median percentile supports (see the module doc)."""
    span = NO_PRIOR_PERCENTILE - FULL_PRIOR_PERCENTILE
    return float(np.clip((NO_PRIOR_PERCENTILE - float(percentile)) / span, 0.0, 1.0))


def _rank(scores: np.ndarray, right: int) -> int:
    """How many targets score above the right one (0: it is first)."""
    return int(np.sum(scores > scores[right]))


def _percentiles(targets: np.ndarray, queries: np.ndarray, pairs: list[tuple[int, int]],
                 max_targets: int = 20_000, chunk: int = 256, seed: int = 0) -> np.ndarray:
    """:func:`_rank` / number of targets of every ``(query row, right target row)`` pair, by the
    dot products of the rows, a few queries per matrix product; above ``max_targets`` targets
    against a seeded sample of them (the percentile, not the rank, is what is compared)."""
    n = len(targets)
    sample = np.random.default_rng(seed).choice(n, max_targets, replace=False) if n > max_targets else None
    out = np.empty(len(pairs), np.float64)
    for s in range(0, len(pairs), chunk):
        q, t = np.asarray(pairs[s:s + chunk]).T
        right = np.einsum("ij,ij->i", queries[q], targets[t])
        S = queries[q] @ (targets if sample is None else targets[sample]).T
        out[s:s + chunk] = (S > right[:, None]).sum(axis=1) / S.shape[1]
    return out


def choose_weight(query_ssr: np.ndarray, target_ssr: np.ndarray, query_bridge: np.ndarray,
                  target_bridge: np.ndarray, pairs: np.ndarray, *, weights=WEIGHTS,
                  scored=None, **loo_options) -> tuple[float, dict]:
    """The bridge weight the labels support (see the module doc), and the evidence:
    ``{"bridge_percentile": the bridge alone's median percentile rank of the true matches,
    "ceiling": the weight it supports (:func:`prior_scale` times the largest weight),
    "log_rank": {w: mean log(1 + rank) by leave-one-out}, "mrr": {w: mean reciprocal rank},
    "references": n}``.

    ``query_*`` are the rows of the modality tasks ask about, ``target_*`` the other; ``pairs[j] =
    (query row, target row)``. ``loo_options`` go to :func:`~xmodal.core.calibration.loo_scores`
    (measure, column statistics, sparsification, sample sizes); ``scored`` is its output when
    already computed (the index calibrates on the same leave-one-out scores).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    Bq, Bt = np.asarray(query_bridge, np.float32), np.asarray(target_bridge, np.float32)
    usable = [(int(q), int(t)) for q, t in pairs if q >= 0 and t >= 0]
    if not usable:
        return 0.0, {"bridge_percentile": None, "log_rank": {}, "mrr": {}, "references": 0}
    percentile = float(np.median(_percentiles(Bt, Bq, usable)))
    scale = prior_scale(percentile)
    ceiling = round(scale * max(weights), 4)
    ranks = {float(w): [] for w in dict.fromkeys((*weights, ceiling))}
    if scored is None:
        scored = loo_scores(query_ssr, target_ssr, pairs, **loo_options)
    scored = list(scored)
    for (j, rows, s), b in zip(scored, embedding_scores(scored, pairs, Bq, Bt)):
        right = int(np.searchsorted(rows, pairs[j, 1]))
        for w in ranks:
            ranks[w].append(_rank((1 - w) * s + w * b, right))
    evidence = {"bridge_percentile": round(percentile, 4), "ceiling": ceiling, "references": len(usable),
                "log_rank": {w: float(np.mean(np.log1p(r))) for w, r in ranks.items() if r},
                "mrr": {w: float(np.mean(1.0 / (1.0 + np.asarray(r)))) for w, r in ranks.items() if r}}
    if not ranks[ceiling]:          # below 3 references: the bridge alone decides
        return round(scale * PRIOR_WEIGHT, 4), evidence
    logs = {w: np.log1p(np.asarray(r, dtype=np.float64)) for w, r in ranks.items()}
    best_of = lambda ws: min(ws, key=lambda w: (evidence["log_rank"][w], -w))  # noqa: E731
    if ceiling > 0:   # its best weight up to the ceiling; above only clearly; off if SSR alone is clearly better
        best = best_of([w for w in logs if 0 < w <= ceiling])
        above = [w for w in logs if w > ceiling and _clear_gain(logs[best] - logs[w])]
        best = best_of(above) if above else best
        return (0.0 if _clear_gain(logs[best] - logs[0.0]) else best), evidence
    gains = [w for w in logs if w > 0 and _clear_gain(logs[0.0] - logs[w])]   # the paper's method unless...
    return (best_of(gains) if gains else 0.0), evidence
