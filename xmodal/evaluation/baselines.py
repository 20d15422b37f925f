"""Baselines for the SSM-AL evaluation (paper section 4.2).

- :func:`random_references` — N reference pairs drawn at random from the pool: the ablation of
  the active (k-medoids) selection; the SSR and similarity stay the paper's.
- :func:`cca_similarity` — canonical correlation analysis (Rasiwasia et al. 2010, the paper's
  CCA baseline) learned on the same N coupled pairs, cosine in the canonical space.
- "all-pairs" (every training pair a reference: the ceiling of the SSR) needs no function of its
  own: it is :class:`~xmodal.core.ssr.SSRIndex` fitted on all training pairs.
"""

from __future__ import annotations

import warnings

import numpy as np

from xmodal.core.ssr import l2_normalize


def random_references(pool_size: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct pool rows drawn uniformly at random (seeded)."""
    if n > pool_size:
        raise ValueError(f"cannot draw {n} references from a pool of {pool_size}")
    return np.sort(np.random.default_rng(seed).choice(pool_size, n, replace=False)).astype(np.int64)


def cca_components(n_pairs: int, image_dim: int, text_dim: int, max_components: int = 10) -> int:
    """How many canonical components N pairs support: at most N−1 (centring costs one rank), the
    smaller feature dimension and ``max_components``; 0 when N < 2 (CCA is then undefined)."""
    return max(0, min(n_pairs - 1, image_dim, text_dim, max_components))


def cca_similarity(ref_images: np.ndarray, ref_texts: np.ndarray, query_images: np.ndarray,
                   query_texts: np.ndarray, *, max_components: int = 10,
                   max_iter: int = 500) -> np.ndarray | None:
    """Image→text similarity (n_query_images, n_query_texts) of a CCA fitted on the reference
    pairs (rows of ``ref_images`` and ``ref_texts`` are coupled); cosine of the canonical variates.

    With fewer than 2 pairs there is no canonical direction: returns None (the caller reports the
    baseline as unavailable at that N, as the paper's tables do with "—").
    """
    codes = cca_codes(ref_images, ref_texts, query_images, query_texts,
                      max_components=max_components, max_iter=max_iter)
    return None if codes is None else codes[0] @ codes[1].T


def cca_codes(ref_images: np.ndarray, ref_texts: np.ndarray, query_images: np.ndarray,
              query_texts: np.ndarray, *, max_components: int = 10,
              max_iter: int = 500) -> tuple[np.ndarray, np.ndarray] | None:
    """The unit canonical variates ``(U, V)`` of :func:`cca_similarity` (its similarity is
    ``U @ V.T``), for callers that score a sample of queries rather than hold every score
    (6,000 × 30,000 is 1.4 GB)."""
    from sklearn.cross_decomposition import CCA

    Xr, Yr = np.asarray(ref_images, np.float64), np.asarray(ref_texts, np.float64)
    c = cca_components(len(Xr), Xr.shape[1], Yr.shape[1], max_components)
    if c < 1:
        return None
    model = CCA(n_components=c, scale=True, max_iter=max_iter)
    with warnings.catch_warnings():
        # tiny N: NIPALS may not converge / columns may be constant; the fit is still defined
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            model.fit(Xr, Yr)
            U, V = model.transform(np.asarray(query_images, np.float64), np.asarray(query_texts, np.float64))
    U = np.nan_to_num(U, nan=0.0, posinf=0.0, neginf=0.0)
    V = np.nan_to_num(V, nan=0.0, posinf=0.0, neginf=0.0)
    return l2_normalize(U), l2_normalize(V)

