"""Reference selection: k-medoids on one modality (SSM-AL_I clusters images, SSM-AL_T texts).

The medoids are real items: each one becomes a question for the annotator ("which text matches
this image?"), and the answered pairs are the reference set of the SSR (paper section 3.4).

- FasterPAM (the ``kmedoids`` package) on the cosine distance matrix up to ``exact_max_n`` items
  (8,000: a 256 MB matrix, a few seconds); above that the n×n matrix alone costs more than the
  whole clustering may (at n=20,000: 1.6 GB and ~10 s of matrix product on 2 cores, then ~30 s of
  swaps), so CLARA-style sampling is used with the same API: FasterPAM on a sample started from
  k-means++ seeds, the sample with the lowest loss on ALL items wins. Measured against full
  FasterPAM in ``docs/scale.md`` (``xmodal bench`` prints both losses).
- The medoids come back in an *anytime order*: greedy coverage, so that every prefix of the list is
  a good reference set on its own and the first labels already help.
- ``extend`` adds medoids when the labelling budget grows, keeping the ones already annotated.
- ``canopy_k`` chooses k automatically with the canopy method the paper cites.
- ``standardize`` (beyond the paper) clusters the z-scored features: every feature dimension gets
  the same say in the cosine, instead of the few with the largest values (CNN activations, SIFT
  and topic histograms are all non-negative, so raw cosines are all high and dominated by them).
  Measured in ``docs/results.md`` ("Medoids of z-scored features").
"""

from __future__ import annotations

import numpy as np

from xmodal.core.ssr import l2_normalize


def cosine_distances(X: np.ndarray, Y: np.ndarray | None = None) -> np.ndarray:
    """``1 − cos`` between rows (float32, clipped to [0, 2]); inputs need not be normalised."""
    Xn = l2_normalize(X)
    Yn = Xn if Y is None else l2_normalize(Y)
    D = Xn @ Yn.T
    np.subtract(1.0, D, out=D)  # in place: at n=20k each extra copy is 1.6 GB
    return np.clip(D, 0.0, 2.0, out=D)


def anytime_order(distances: np.ndarray, max_rows: int = 5000, random_state=0) -> np.ndarray:
    """Order the columns (medoids) of an (n, k) item→medoid distance matrix greedily by coverage.

    Step t picks the medoid that most lowers ``Σ_i min_{chosen} d(i, m)``, so the first medoid is
    the most central one and each next one covers the largest mass not yet covered.
    """
    D = np.asarray(distances, dtype=np.float32)
    if len(D) > max_rows:  # a sample of rows estimates the coverage gain well enough
        D = D[np.random.default_rng(random_state).choice(len(D), max_rows, replace=False)]
    k = D.shape[1]
    covered = np.full(len(D), D.max() if D.size else 0.0, dtype=np.float32)
    remaining = list(range(k))
    order = []
    for _ in range(k):
        cost = np.minimum(covered[:, None], D[:, remaining]).sum(axis=0)
        best = remaining.pop(int(np.argmin(cost)))
        order.append(best)
        covered = np.minimum(covered, D[:, best])
    return np.asarray(order, dtype=np.int64)


def canopy_k(X: np.ndarray, t2: float | None = None, *, quantile: float = 0.05,
             max_items: int = 5000, random_state=0) -> int:
    """Number of clusters by canopy clustering (McCallum et al., 2000), cosine distance.

    A random remaining item opens a canopy and every item closer than ``t2`` leaves the pool; the
    number of canopies is k. (The loose threshold T1 only decides canopy membership, not k.) By
    default ``t2`` is the ``quantile`` of the pairwise distances of a sample of the data.
    """
    rng = np.random.default_rng(random_state)
    Xn = l2_normalize(X)
    if len(Xn) == 0:
        raise ValueError("canopy_k needs at least one item")
    if len(Xn) > max_items:
        Xn = Xn[rng.choice(len(Xn), max_items, replace=False)]
    if t2 is None:
        sample = Xn[rng.choice(len(Xn), min(len(Xn), 1000), replace=False)]
        d = cosine_distances(sample)
        t2 = float(np.quantile(d[np.triu_indices(len(d), 1)], quantile)) if len(d) > 1 else 0.0
    pool = np.arange(len(Xn))
    k = 0
    while len(pool):
        centre = pool[rng.integers(len(pool))]
        dist = 1.0 - Xn[pool] @ Xn[centre]
        pool = pool[dist >= t2]
        pool = pool[pool != centre]
        k += 1
    return k


def kmeanspp_init(distances: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct starting medoids by D² sampling (k-means++, Arthur & Vassilvitskii, 2007) on a
    square distance matrix: the most central item first, then each next one drawn with probability
    proportional to its squared distance to the nearest one chosen. O(n·k)."""
    D = distances
    chosen = [int(np.argmin(D.sum(axis=0, dtype=np.float64)))]
    covered = D[chosen[0]].astype(np.float64)
    for _ in range(k - 1):
        weight = covered ** 2
        total = weight.sum()
        if total <= 0:  # every item sits on a medoid already (duplicates): any unchosen item will do
            j = int(np.setdiff1d(np.arange(len(D)), chosen)[0])
        else:
            j = int(rng.choice(len(D), p=weight / total))
        chosen.append(j)
        np.minimum(covered, D[j], out=covered)
    return np.asarray(chosen, dtype=np.int64)


class KMedoidsSelector:
    """k-medoids reference selection with cosine distance.

    Parameters
    ----------
    n_references : k, the number of medoids (= pairs to ask for).
    max_iter : FasterPAM swap iterations.
    exact_max_n : above this many items, sample (CLARA) instead of a full n×n distance matrix.
    sample_size : CLARA sample size (default ``max(40 + 2k, 8000)``, capped at ``exact_max_n``).
    n_samplings : CLARA repetitions; the one with the lowest loss on ALL items wins. One by
        default: one sample of 8,000 (loss within 0.6% of full FasterPAM at n=20,000, k=200)
        beats several smaller ones (5 × 4,000: 1.2%) at a third of their time.
    random_state : seed; the same input and seed give the same medoids.
    standardize : cluster the z-scored features (each column centred on its mean and divided by
        its standard deviation over the X given to ``fit``/``extend``) instead of the raw ones;
        False is the paper's k-medoids.

    Attributes after ``fit``: ``medoid_indices_`` (row indices of X, in anytime order),
    ``labels_`` (cluster of each row = position of its medoid in ``medoid_indices_``),
    ``cluster_sizes_``, ``inertia_`` (sum of distances to the nearest medoid).
    """

    def __init__(self, n_references: int = 10, *, max_iter: int = 100, exact_max_n: int = 8000,
                 sample_size: int | None = None, n_samplings: int = 1, random_state: int = 0,
                 standardize: bool = False):
        self.n_references = n_references
        self.max_iter = max_iter
        self.exact_max_n = exact_max_n
        self.sample_size = sample_size
        self.n_samplings = n_samplings
        self.random_state = random_state
        self.standardize = standardize

    def _unit_rows(self, X: np.ndarray) -> np.ndarray:
        """The rows the cosine distances are taken between: X (z-scored with ``standardize``),
        unit-normalised. One float32 copy of X, whatever the option."""
        if not self.standardize:
            return l2_normalize(X)
        Z = np.array(X, dtype=np.float32)
        # a broken row (zeroed below) must not poison the stats; a row sum is non-finite exactly
        # when the row has a NaN or inf (in float64), without an n x d mask
        finite = np.isfinite(Z.sum(axis=1, dtype=np.float64))
        rows = Z if finite.all() else Z[finite] if finite.any() else np.zeros((1, Z.shape[1]), np.float32)
        mean = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = rows.std(axis=0, dtype=np.float64).astype(np.float32)
        Z -= mean
        Z /= np.where(std > 1e-6, std, 1.0)   # a constant column stays 0 instead of blowing up
        return l2_normalize(Z, copy=False)

    def fit(self, X: np.ndarray) -> KMedoidsSelector:
        X = np.asarray(X, dtype=np.float32)
        n, k = len(X), int(self.n_references)
        if k < 1:
            raise ValueError("n_references must be at least 1")
        if k > n:
            raise ValueError(f"cannot choose {k} references from a pool of {n} items")
        Xn = self._unit_rows(X)
        if n <= self.exact_max_n:
            import kmedoids  # here: it imports scikit-learn (seconds), which nearest/extend never need

            result = kmedoids.fasterpam(cosine_distances(Xn), k, max_iter=self.max_iter,
                                        init="random", random_state=self.random_state, n_cpu=1)
            medoids = np.asarray(result.medoids, dtype=np.int64)
        else:
            medoids = self._clara(Xn, k)
        D = cosine_distances(Xn, Xn[medoids])
        return self._set_medoids(medoids[anytime_order(D, random_state=self.random_state)], Xn)

    def _clara(self, Xn: np.ndarray, k: int) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        size = min(self.sample_size or max(40 + 2 * k, 8000), self.exact_max_n, len(Xn))
        best, best_loss = None, np.inf
        for _ in range(self.n_samplings):
            sample = np.sort(rng.choice(len(Xn), size, replace=False))
            D = cosine_distances(Xn[sample])
            # seeded starts take half the swap passes of random ones (4.3 s instead of 7.7 s at 8,000)
            import kmedoids

            result = kmedoids.fasterpam(D, kmeanspp_init(D, k, rng), max_iter=self.max_iter, n_cpu=1)
            del D
            medoids = sample[np.asarray(result.medoids, dtype=np.int64)]
            loss = self._nearest(Xn, medoids)[1].sum()
            if loss < best_loss:
                best, best_loss = medoids, loss
        return best

    @staticmethod
    def _nearest(Xn: np.ndarray, medoids: np.ndarray, chunk: int = 20000):
        labels = np.empty(len(Xn), dtype=np.int64)
        dist = np.empty(len(Xn), dtype=np.float32)
        M = Xn[medoids]
        for s in range(0, len(Xn), chunk):  # bounded memory at any n
            D = np.clip(1.0 - Xn[s:s + chunk] @ M.T, 0.0, 2.0)
            labels[s:s + chunk] = D.argmin(axis=1)
            dist[s:s + chunk] = D[np.arange(len(D)), labels[s:s + chunk]]
        return labels, dist

    def _set_medoids(self, medoids: np.ndarray, Xn: np.ndarray) -> KMedoidsSelector:
        self.medoid_indices_ = np.asarray(medoids, dtype=np.int64)
        self.labels_, dist = self._nearest(Xn, self.medoid_indices_)
        self.labels_[self.medoid_indices_] = np.arange(len(self.medoid_indices_))  # ties at 0
        self.cluster_sizes_ = np.bincount(self.labels_, minlength=len(self.medoid_indices_))
        self.inertia_ = float(dist.sum())
        return self

    def nearest(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position of the nearest medoid, cosine distance to it) for every row of ``X``, in the
        space the medoids were chosen in (z-scored over ``X`` with ``standardize``); the medoids
        are ``medoid_indices_``, rows of ``X``."""
        Xn = self._unit_rows(np.asarray(X, dtype=np.float32))
        return self._nearest(Xn, np.asarray(self.medoid_indices_, dtype=np.int64))

    def extend(self, X: np.ndarray, n_new: int, *, max_candidates: int = 5000) -> KMedoidsSelector:
        """Add ``n_new`` medoids, keeping the existing ones (their pairs are already annotated).

        Greedy PAM BUILD with the current medoids fixed: each new medoid is the candidate that most
        lowers the total distance to the nearest medoid. New medoids are appended in that order,
        which is itself an anytime order.
        """
        Xn = self._unit_rows(np.asarray(X, dtype=np.float32))
        current = list(self.medoid_indices_)
        free = np.setdiff1d(np.arange(len(Xn)), current)
        if n_new < 0 or n_new > len(free):
            raise ValueError(f"cannot add {n_new} references: {len(free)} items are not medoids yet")
        rng = np.random.default_rng(self.random_state)
        candidates = free if len(free) <= max_candidates else rng.choice(free, max_candidates, replace=False)
        covered = self._nearest(Xn, np.asarray(current))[1] if current else np.full(len(Xn), 2.0, np.float32)
        D = cosine_distances(Xn, Xn[candidates])
        chosen, taken = [], np.zeros(len(candidates), dtype=bool)
        for _ in range(n_new):
            gain = np.maximum(covered[:, None] - D, 0.0).sum(axis=0)
            gain[taken] = -1.0
            j = int(np.argmax(gain))
            taken[j] = True
            chosen.append(int(candidates[j]))
            covered = np.minimum(covered, D[:, j])
        return self._set_medoids(np.asarray(current + chosen, dtype=np.int64), Xn)
