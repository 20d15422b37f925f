"""Word search over all texts of a project (BM25, ``bm25s``), for the labelling page.

An image task's page carries at most ``page_texts`` texts (Label Studio's ``<Filter>`` only
matches those); this searches every text of the workspace, so a person who typed a few words of
what they see finds the caption even when the index has not ranked it near the top. The words
are those of the SIF tokenizer (:func:`xmodal.encoders.sif.tokenize`: Chinese is segmented by
``jieba``, kana and Thai split into characters), stemmed so that a plural finds its singular.

One :class:`TextSearch` per items file is kept in the process (:func:`text_search`); building it
took 0.16 s for 5,793 texts and 1.6 s for 100k here (a query: 0.2 ms median at 100k), so the
backend starts building it when Label Studio first calls /setup (:func:`warm`).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from xmodal.encoders.sif import tokenize


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)


@functools.cache
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@functools.cache
def _stopwords() -> frozenset:
    from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | frozenset(STOPWORDS_CHINESE)


def search_words(text: str) -> list[str]:
    """The words BM25 matches: tokens but English and Chinese stop words (``kitty on a sofa``
    must not find every text "on" something), stemmed by Snowball's English stemmer (``dogs`` and
    ``dog``, ``skiing`` and ``skis`` match; applied to texts and queries alike; words of other
    scripts, e.g. Chinese, pass unchanged)."""
    stop = _stopwords()
    return [_stem(w) for w in tokenize(text) if w not in stop]


class TextSearch:
    """BM25 over ``texts`` (ids ``ids``, in the workspace's order)."""

    def __init__(self, ids: list[str], texts: list[str]):
        import bm25s

        self.ids = list(ids)
        self.texts = list(texts)
        self._row = {t: i for i, t in enumerate(self.ids)}
        self._bm25 = bm25s.BM25()
        docs = [search_words(t) or [""] for t in self.texts]
        self._vocab = {w for d in docs for w in d}
        self._bm25.index(docs, show_progress=False)

    def text(self, text_id: str) -> str:
        return self.texts[self._row[text_id]]

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """Up to ``k`` ``(id, score)`` of the texts that share a word with ``query``, best first
        (ties in the workspace's order). Empty when no word of the query is in any text."""
        words = [w for w in dict.fromkeys(search_words(query or "")) if w in self._vocab]
        if not words or not self.ids or k <= 0:
            return []
        scores = np.asarray(self._bm25.get_scores(words), dtype=np.float64)
        top = np.flatnonzero(scores > 0)
        top = top[np.lexsort((top, -scores[top]))][:k]
        return [(self.ids[i], float(scores[i])) for i in top]


_cache: dict[tuple, object] = {}   # (kind, workspace root, file mtime) -> what was built from it
_lock = threading.Lock()


def _key(ws, kind: str) -> tuple:
    path = ws.items_path if kind == "search" else ws.features_path("text")
    try:
        return kind, str(ws.root), path.stat().st_mtime_ns
    except OSError:
        return kind, str(ws.root), None


def _per_file(key: tuple, build):
    """What ``build()`` gives, once per file version (``key``); an older version is dropped."""
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = build()
            for old in [k for k in _cache if k[:2] == key[:2]]:
                del _cache[old]
            _cache[key] = found
    return found


def text_search(ws) -> TextSearch:
    """The workspace's :class:`TextSearch`, built once per items file (rebuilt when it changes)."""
    return _per_file(_key(ws, "search"), lambda: TextSearch(ws.ids("text"), ws.contents("text")))


def _unit_text_features(ws) -> np.ndarray:
    Y = np.asarray(ws.load_features("text"), dtype=np.float32)
    return Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)


def similar_texts(ws, vector: np.ndarray, k: int = 10) -> list[str]:
    """Ids of the ``k`` texts whose features are nearest (cosine) to ``vector``, a query embedded
    with the workspace's text encoder: texts of the same meaning in other words (*puppy* finds
    "a dog ..."). The unit features are kept in the process, one copy per features file."""
    key = _key(ws, "meaning")
    if key[2] is None:
        return []
    Y = _per_file(key, lambda: _unit_text_features(ws))
    v = np.asarray(vector, dtype=np.float32).ravel()
    if v.shape[0] != Y.shape[1] or not np.all(np.isfinite(v)) or not np.any(v):
        return []
    scores = Y @ (v / np.linalg.norm(v))
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    ids = ws.ids("text")
    return [ids[i] for i in top[np.argsort(-scores[top], kind="stable")]]


def warm(ws) -> None:
    """Build the workspace's search in a background thread unless it is built (the first search
    then does not wait for it)."""
    if _key(ws, "search") not in _cache:
        threading.Thread(target=text_search, args=(ws,), name="xmodal-text-search", daemon=True).start()
