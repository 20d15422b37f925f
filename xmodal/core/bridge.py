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
the ANN index and every search work unchanged.

The bridge is only as good as the classifier's classes are for the data: on COCO photos it ranks
well with no labels at all, on synthetic coloured shapes it is at chance. So ``w`` is chosen from
the labels (:func:`choose_weight`): each reference pair is scored leave-one-out
(:func:`xmodal.core.calibration.loo_scores`), fused with the bridge at every candidate weight, and
the weight whose fused scores rank the references' true matches best (mean reciprocal rank) wins,
if its gain over SSR alone stands clear of the noise of so few references (else ``w = 0``: the
paper's method). Leave-one-out is pessimistic for SSR (a medoid loses the column that matched
its own cluster), so the bar is a paired gain above two standard errors, not a bare maximum.
"""

from __future__ import annotations

import numpy as np

from xmodal.core.calibration import loo_scores
from xmodal.core.ssr import l2_normalize

WEIGHTS = (0.0, 0.25, 0.5, 0.7, 0.85)
# below 3 references leave-one-out cannot score SSR: the bridge is used alone as evidence, and
# only when it puts the true match of the references this high on average (1 = always first)
MIN_BRIDGE_RR = 0.1
# the least gain in mean reciprocal rank over SSR alone that makes the bridge worth its weight
MIN_GAIN = 0.02


def bridge_embeddings(probs: np.ndarray, classes: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """Unit rows ``Σ_j probs[i, j] · class_embeddings[classes[i, j]]`` (the image's top classes,
    ``classes`` indexing the rows of ``class_embeddings``)."""
    probs = np.asarray(probs, dtype=np.float32)
    C = np.asarray(class_embeddings, dtype=np.float32)
    E = np.einsum("nk,nkd->nd", probs, C[np.asarray(classes, dtype=np.int64)])
    return l2_normalize(E)


def centred(B: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(unit rows of B - mean, mean)``; the mean defaults to B's own (the collection's)."""
    B = l2_normalize(np.asarray(B, dtype=np.float32))
    mean = B.mean(axis=0) if mean is None else np.asarray(mean, dtype=np.float32)
    return l2_normalize(B - mean), mean


def fuse_codes(codes: np.ndarray, bridge: np.ndarray, weight: float) -> np.ndarray:
    """``[sqrt(1 - w) · codes, sqrt(w) · bridge]``: dot products become ``(1 - w)`` times the
    codes' plus ``w`` times the bridge's."""
    return np.ascontiguousarray(np.hstack([np.sqrt(1.0 - weight) * np.asarray(codes, np.float32),
                                           np.sqrt(weight) * np.asarray(bridge, np.float32)]),
                                dtype=np.float32)


def _clear_gain(diff: np.ndarray) -> bool:
    if len(diff) < 3:
        return False
    se = float(np.std(diff, ddof=1)) / np.sqrt(len(diff))
    return float(np.mean(diff)) > max(MIN_GAIN, 2 * se)


def _reciprocal_rank(scores: np.ndarray, right: int) -> float:
    return 1.0 / (1 + int(np.sum(scores > scores[right])))


def choose_weight(query_ssr: np.ndarray, target_ssr: np.ndarray, query_bridge: np.ndarray,
                  target_bridge: np.ndarray, pairs: np.ndarray, *, weights=WEIGHTS,
                  scored=None, **loo_options) -> tuple[float, dict]:
    """The bridge weight the labels support, and the evidence: ``{"mrr": {w: mean reciprocal
    rank}, "references": n}``.

    ``query_*`` are the rows of the modality tasks ask about, ``target_*`` the other; ``pairs[j] =
    (query row, target row)``. ``loo_options`` go to :func:`~xmodal.core.calibration.loo_scores`
    (measure, column statistics, sparsification, sample sizes); ``scored`` is its output when
    already computed (the index calibrates on the same leave-one-out scores).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    Bq, Bt = np.asarray(query_bridge, np.float32), np.asarray(target_bridge, np.float32)
    rr = {float(w): [] for w in weights}
    if scored is None:
        scored = loo_scores(query_ssr, target_ssr, pairs, **loo_options)
    for j, rows, s in scored:
        right = int(np.searchsorted(rows, pairs[j, 1]))
        b = Bt[rows] @ Bq[pairs[j, 0]]
        for w in rr:
            rr[w].append(_reciprocal_rank((1 - w) * s + w * b, right))
    base = rr[float(weights[0])]
    if base:
        mrr = {w: float(np.mean(v)) for w, v in rr.items()}
        # a weight counts only where it beats SSR alone beyond the noise of so few references
        # (paired over the references: mean gain above two standard errors and MIN_GAIN)
        ok = [w for w, v in rr.items() if w > 0 and _clear_gain(np.subtract(v, base))]
        weight = max(ok, key=lambda w: (mrr[w], -w)) if ok else float(weights[0])
        return weight, {"mrr": mrr, "references": len(base)}
    # too few references for leave-one-out: the bridge alone, on every pair
    usable = [(int(q), int(t)) for q, t in pairs if q >= 0 and t >= 0]
    if not usable:
        return 0.0, {"mrr": {}, "references": 0}
    alone = float(np.mean([_reciprocal_rank(Bt @ Bq[q], t) for q, t in usable]))
    weight = float(weights[-2]) if alone >= MIN_BRIDGE_RR else 0.0
    return weight, {"mrr": {1.0: alone}, "references": len(usable)}
