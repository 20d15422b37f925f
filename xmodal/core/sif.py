"""Smooth inverse frequency (SIF) sentence embeddings, the numpy part (paper eq. 6–7).

Tokenisation and word-vector lookup live in :mod:`xmodal.encoders`; this module only does the
arithmetic so that it can be read against the paper and tested without any model.
"""

from __future__ import annotations

import numpy as np


def sif_weights(probabilities: np.ndarray, a: float = 1e-3) -> np.ndarray:
    """Per-word weight ``a / (a + p(w))`` of eq. 6; ``p(w)`` is the unigram probability."""
    p = np.asarray(probabilities, dtype=np.float64)
    if np.any(p < 0):
        raise ValueError("word probabilities must be non-negative")
    if a <= 0:
        raise ValueError("the SIF parameter a must be positive")
    return (a / (a + p)).astype(np.float32)


def weighted_average(
    token_indices: list[np.ndarray], vectors: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Eq. 6: ``v'_s = (1/|s|) Σ_{w∈s} weight(w) · v_w`` for every sentence.

    ``token_indices[i]`` holds the vocabulary rows of sentence i's in-vocabulary words (repeats
    count). ``|s|`` is the number of those words; a sentence without any gets a zero row.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    out = np.zeros((len(token_indices), vectors.shape[1]), dtype=np.float32)
    lengths = np.fromiter((len(t) for t in token_indices), dtype=np.int64, count=len(token_indices))
    if lengths.sum() == 0:
        return out
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_indices])
    sentence_of_token = np.repeat(np.arange(len(token_indices)), lengths)
    # one scatter-add over all tokens instead of a Python loop over sentences
    np.add.at(out, sentence_of_token, vectors[flat] * weights[flat, None])
    nonempty = lengths > 0
    out[nonempty] /= lengths[nonempty, None]
    return out


class CommonComponentRemoval:
    """Eq. 7: ``v_s = v'_s − u uᵀ v'_s`` with ``u`` the first singular vector of the corpus.

    ``fit`` learns ``u`` from the corpus's sentence vectors (uncentred SVD, as in the original SIF
    code); ``transform`` removes the projection on it. ``u`` belongs to the corpus: keep
    ``components_`` to embed later sentences the same way.
    """

    def __init__(self, n_components: int = 1):
        if n_components < 0:
            raise ValueError("n_components must be >= 0")
        self.n_components = n_components

    def fit(self, V: np.ndarray) -> CommonComponentRemoval:
        V = np.asarray(V, dtype=np.float64)
        if V.ndim != 2 or V.shape[0] == 0:
            raise ValueError("fit needs a non-empty (n_sentences, dim) matrix")
        rows = V[np.any(V != 0, axis=1)]  # empty sentences carry no direction
        if self.n_components == 0 or rows.shape[0] == 0:
            self.components_ = np.zeros((0, V.shape[1]), dtype=np.float32)
            return self
        _, _, vt = np.linalg.svd(rows, full_matrices=False)
        components = vt[: self.n_components]
        # fix the sign so that the stored state is deterministic
        signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
        self.components_ = (components * signs[:, None]).astype(np.float32)
        return self

    def transform(self, V: np.ndarray) -> np.ndarray:
        V = np.asarray(V, dtype=np.float32)
        u = self.components_
        if V.shape[1] != u.shape[1] and len(u):
            raise ValueError(f"vectors have dim {V.shape[1]}, the component has {u.shape[1]}")
        return V - (V @ u.T) @ u

    def fit_transform(self, V: np.ndarray) -> np.ndarray:
        return self.fit(V).transform(V)
