"""SIF sentence embeddings (paper eq. 6–7) over word vectors.

- eq. 6 (:meth:`SIFEncoder.features`, cacheable per text):
  ``v'_s = (1/|s|) Σ_{w∈s} a/(a + p(w)) · v_w``, ``a = 1e-3``; ``|s|`` counts the words that
  have a vector, and a word without a known frequency gets ``p(w) = 0`` (weight 1), as in the
  original SIF code.
- eq. 7 (:meth:`SIFEncoder.finish`): ``v_s = v'_s − u uᵀ v'_s``, ``u`` the first singular vector
  of the (uncentred) matrix of the corpus's ``v'_s``. ``u`` is fitted in ``fit`` and saved with
  :meth:`SIFEncoder.save`, so a sentence embedded after :meth:`SIFEncoder.load` gets the same
  vector.

Word vectors: GloVe 6B 50-d (default), a user file, or ``"self"``: gensim Word2Vec trained on the
project's own texts in ``fit`` (for languages without pretrained vectors). ``p(w)``: ``wordfreq``
for the given language, or ``"corpus"``: counts over the texts passed to ``fit``.

Tokenisation (:func:`tokenize`): NFC-normalised and lowercased, then maximal runs of Unicode
letters, digits and combining marks (the vowel signs of Devanagari, Tamil, Thai…: "हिन्दी" is one
word, not three letters; a decomposed "café" is the precomposed one; Arabic harakat and Hebrew
niqqud, optional in writing, are dropped: "مَرْحَبًا" is "مرحبا"); punctuation, apostrophes,
underscores and spaces separate words, so "Don't stop!" gives ``["don", "t", "stop"]``. Scripts
written without spaces would make a whole sentence one "word", so such a run is cut where the
script changes: Chinese characters (kanji) are segmented by ``jieba`` ("一只猫坐在桌子上" gives
``["一只", "猫", "坐在", "桌子", "上"]``), a run of katakana is one word (Japanese writes loanwords
and names in it: "コバルトブルー", "マゼンタ"), hiragana, Thai, Lao, Khmer and Myanmar (no segmenter
shipped) are split into their characters (each with its combining marks), and letters of other
scripts or digits inside such a run stay whole ("iPhone手机" gives ``["iphone", "手机"]``).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from xmodal.core.sif import CommonComponentRemoval, sif_weights, weighted_average
from xmodal.encoders.base import Encoder, NotFittedError, array_digest, batches, default_cache_dir, progress_bar
from xmodal.encoders.wordvectors import GLOVE, load_word_vectors, source_id
from xmodal.errors import ConfigError, DataError


def _mark_ranges() -> str:
    """A regex class body of the combining marks (Unicode Mn, Mc, Me) of the Basic Multilingual
    Plane, where every living script's are: ``re``'s ``\\w`` leaves them out."""
    marks = [c for c in range(0x10000) if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me")]
    ranges, start = [], marks[0]
    for prev, c in zip(marks, marks[1:] + [-1]):
        if c != prev + 1:
            ranges.append(f"\\u{start:04x}-\\u{prev:04x}" if prev > start else f"\\u{start:04x}")
            start = c
    return "".join(ranges)


_MARKS = _mark_ranges()
# Arabic harakat and Hebrew niqqud: optional vowel signs, mostly left out in writing, so a word
# with them is the same word without them (what search engines for these languages do)
_OPTIONAL_VOWELS = dict.fromkeys(
    [*range(0x064B, 0x0660), 0x0670, *range(0x0591, 0x05BE), 0x05BF, 0x05C1, 0x05C2, 0x05C4,
     0x05C5, 0x05C7])
_WORD = re.compile(f"[\\w{_MARKS}]+")   # underscores are replaced by spaces first: they separate
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KATAKANA = "\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
# hiragana, Thai, Lao, Myanmar, Khmer: written without spaces between words, no segmenter here
_CHARACTERS = "\u3040-\u309f\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"
# a character of a script written without spaces (what cuts a run into pieces below)
UNSPACED_SCRIPT = re.compile(f"[{_HAN}{_KATAKANA}{_CHARACTERS}]")
# the pieces of a run with unspaced script: Han (to jieba), katakana, one character with its
# marks, the rest
_PIECE = re.compile(f"([{_HAN}]+)|((?:[{_KATAKANA}][{_MARKS}]*)+)|([{_CHARACTERS}][{_MARKS}]*)"
                    f"|([^{_HAN}{_KATAKANA}{_CHARACTERS}]+)")
# bump when tokenize() changes: it is part of the encoder id
TOKENIZER_VERSION = "re5-marks-harakat-jieba-katakana"
SELF = "self"
FREQUENCY_SOURCES = ("wordfreq", "corpus")
SAVE_FORMAT = "xmodal-sif/1"
# constructor parameters that change the output: saved with the fitted state
_CONFIG_KEYS = "a frequencies lang n_components vector_size window min_count epochs seed".split()


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens: maximal runs of letters/digits, segmented where a script has no
    spaces (see the module docstring)."""
    if not text.isascii():   # nothing to compose or drop in ASCII (most English text)
        text = unicodedata.normalize("NFC", text).translate(_OPTIONAL_VOWELS)
    words = []
    for run in _WORD.findall(text.lower().replace("_", " ")):
        if not UNSPACED_SCRIPT.search(run):
            words.append(run)
            continue
        for han, *whole in _PIECE.findall(run):
            if han:
                words.extend(w for w in _jieba().lcut(han) if w.strip())
            else:
                words.append("".join(whole))
    return words


_segmenter = None


def _jieba():
    """jieba's default segmenter, loaded once and quietly (it logs its dictionary build)."""
    global _segmenter
    if _segmenter is None:
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        tk = jieba.Tokenizer()
        tk.initialize()
        _segmenter = tk
    return _segmenter


class SIFEncoder(Encoder):
    """Smooth-inverse-frequency sentence embedding (paper eq. 6–7).

    Parameters: ``vectors`` is ``"glove-6b-50d"``, a word-vector file, or ``"self"``;
    ``frequencies`` is ``"wordfreq"`` (default for pretrained vectors) or ``"corpus"`` (default
    for ``"self"``); ``lang`` is the wordfreq language; ``a`` the SIF parameter;
    ``n_components`` how many common components eq. 7 removes (the paper: 1). ``vector_size``,
    ``window``, ``min_count``, ``epochs``, ``seed`` only apply to ``"self"`` (single-threaded
    Word2Vec, so that training is reproducible).
    """

    modality = "text"

    def __init__(
        self,
        vectors: str = GLOVE,
        *,
        a: float = 1e-3,
        frequencies: str | None = None,
        lang: str = "en",
        n_components: int = 1,
        vector_size: int = 100,
        window: int = 5,
        min_count: int = 1,
        epochs: int = 20,
        seed: int = 0,
        batch_size: int = 4096,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(progress=progress)
        if not a > 0:
            raise ConfigError(f"the SIF parameter a must be positive, got {a}")
        frequencies = frequencies or ("corpus" if vectors == SELF else "wordfreq")
        if frequencies not in FREQUENCY_SOURCES:
            raise ConfigError(
                f"unknown word frequency source {frequencies!r}; valid: "
                f"{', '.join(FREQUENCY_SOURCES)}"
            )
        if frequencies == "wordfreq":
            import wordfreq

            languages = sorted(wordfreq.available_languages())
            if lang not in languages:
                raise ConfigError(
                    f"wordfreq has no word frequencies for language {lang!r}; pass "
                    f"frequencies='corpus' or one of: {', '.join(languages)}"
                )
        self.vectors = os.fspath(vectors)
        self.name = {GLOVE: "sif", SELF: "sif-self"}.get(self.vectors, f"sif:{self.vectors}")
        self.a = float(a)
        self.frequencies = frequencies
        self.lang = lang
        self.n_components = int(n_components)
        self.vector_size = int(vector_size)
        self.window = int(window)
        self.min_count = int(min_count)
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        # a pretrained source is identified now, so that a wrong path fails before any work
        self._vectors_id = None if self.vectors == SELF else source_id(self.vectors)
        self._kv = None
        self._counts: dict[str, int] | None = None
        self._total = 1
        self._pw: dict[str, float] = {}
        self.components_: np.ndarray | None = None

    # -- identity -------------------------------------------------------------------------------

    @property
    def cache_id(self) -> str:
        if self._vectors_id is None or (self.frequencies == "corpus" and self._counts is None):
            raise NotFittedError("this SIF encoder learns from its corpus: call fit first")
        if self.frequencies == "wordfreq":
            freq = f"wordfreq=={version('wordfreq')}:{self.lang}"
        else:
            words = sorted(self._counts)
            freq = "corpus@" + array_digest(
                np.array(words, dtype=str), np.array([self._counts[w] for w in words])
            )
        return f"sif|vectors={self._vectors_id}|freq={freq}|a={self.a!r}|tok={TOKENIZER_VERSION}"

    @property
    def encoder_id(self) -> str:
        u = "unfitted" if self.components_ is None else array_digest(self.components_)
        return f"{self.cache_id}|u={u}"

    @property
    def dim(self) -> int:
        return self.vector_size if self.vectors == SELF else self._word_vectors().vector_size

    def _word_vectors(self):
        if self._kv is None:
            if self.vectors == SELF:
                raise NotFittedError("sif-self trains its word vectors in fit: call fit first")
            self._kv, _ = load_word_vectors(self.vectors, self.cache_dir, sid=self._vectors_id)
        return self._kv

    # -- eq. 6 ----------------------------------------------------------------------------------

    def fit_features(self, items: Sequence[str]) -> None:
        """Corpus word counts (``frequencies="corpus"``) and Word2Vec (``vectors="self"``)."""
        sentences = [tokenize(t) for t in items]
        if self.frequencies == "corpus":
            self._set_counts(Counter(w for s in sentences for w in s))
        if self.vectors == SELF:
            self._train_word2vec(sentences)

    def _train_word2vec(self, sentences: list[list[str]]) -> None:
        from gensim.models import Word2Vec

        sentences = [s for s in sentences if s]
        if not sentences:
            raise DataError("sif-self needs texts with words to train its word vectors")
        model = Word2Vec(
            sentences,
            vector_size=self.vector_size,
            window=self.window,
            min_count=self.min_count,
            epochs=self.epochs,
            seed=self.seed,
            workers=1,
        )
        self._set_self_vectors(list(model.wv.index_to_key), model.wv.vectors)

    def _set_self_vectors(self, words: list[str], vectors: np.ndarray) -> None:
        from gensim.models import KeyedVectors

        vectors = np.asarray(vectors, dtype=np.float32)
        kv = KeyedVectors(vector_size=vectors.shape[1], count=0, dtype=np.float32)
        kv.index_to_key = words
        kv.key_to_index = {w: i for i, w in enumerate(words)}
        kv.vectors = vectors
        self._kv = kv
        self._vectors_id = "self@" + array_digest(np.array(words, dtype=str), vectors)

    def _set_counts(self, counts: dict[str, int]) -> None:
        self._counts = dict(counts)
        self._total = max(1, sum(self._counts.values()))
        self._pw = {}

    def probability(self, word: str) -> float:
        """Unigram probability ``p(w)`` of a (lowercase) word; 0 when unknown."""
        p = self._pw.get(word)
        if p is None:
            if self.frequencies == "wordfreq":
                import wordfreq

                p = wordfreq.word_frequency(word, self.lang)
            else:
                if self._counts is None:
                    raise NotFittedError("corpus word frequencies are computed in fit")
                p = self._counts.get(word, 0) / self._total
            self._pw[word] = p
        return p

    def features(self, items: Sequence[str]) -> np.ndarray:
        """Eq. 6 weighted averages ``v'_s`` (before the common-component removal)."""
        kv = self._word_vectors()
        texts = list(items)
        out = np.zeros((len(texts), kv.vector_size), dtype=np.float32)
        self.failures_ = []
        with progress_bar(len(texts), self.name, "text", self.progress) as bar:
            for chunk in batches(len(texts), self.batch_size):
                out[chunk] = self._average(texts[chunk], kv)
                bar.update(chunk.stop - chunk.start)
        return out

    def _average(self, texts: list[str], kv) -> np.ndarray:
        # a local vocabulary per batch: only the words in use need p(w) and their vectors
        local: dict[str, int] = {}
        token_indices = []
        for text in texts:
            tokens = tokenize(text)
            known = [w for w in tokens if w in kv.key_to_index]
            token_indices.append(np.array([local.setdefault(w, len(local)) for w in known], int))
            if not known:
                self.failures_.append((text, "no known words" if tokens else "empty text"))
        words = list(local)
        rows = np.array([kv.key_to_index[w] for w in words], dtype=np.int64)
        vectors = np.asarray(kv.vectors[rows])
        weights = sif_weights(np.array([self.probability(w) for w in words]), self.a)
        return weighted_average(token_indices, vectors, weights)

    # -- eq. 7 ----------------------------------------------------------------------------------

    def fit_finish(self, F: np.ndarray) -> None:
        """Fit ``u`` (eq. 7) on the corpus's weighted averages (failure rows excluded)."""
        if len(F) == 0:
            raise DataError("no text has a word with a vector: cannot fit the SIF encoder")
        self.components_ = CommonComponentRemoval(self.n_components).fit(F).components_

    def finish(self, F: np.ndarray) -> np.ndarray:
        """Eq. 7: ``v_s = v'_s − u uᵀ v'_s``."""
        if self.components_ is None:
            raise NotFittedError("the SIF common component is fitted on the corpus: call fit first")
        remover = CommonComponentRemoval(self.n_components)
        remover.components_ = self.components_
        return remover.transform(F)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted encoder to one ``.npz`` (arrays + a JSON config; no pickle)."""
        if self.components_ is None:
            raise NotFittedError("nothing to save: call fit first")
        config = {
            "format": SAVE_FORMAT,
            "vectors": self.vectors,
            "vectors_id": self._vectors_id,
            **{k: getattr(self, k) for k in _CONFIG_KEYS},
        }
        arrays = {"config": np.array(json.dumps(config)), "components": self.components_}
        if self._counts is not None:
            arrays["count_words"] = np.array(list(self._counts), dtype=str)
            arrays["counts"] = np.array(list(self._counts.values()), dtype=np.int64)
        if self.vectors == SELF:
            arrays["self_words"] = np.array(self._kv.index_to_key, dtype=str)
            arrays["self_vectors"] = np.asarray(self._kv.vectors)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a str
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, **options) -> SIFEncoder:
        """Read an encoder written by :meth:`save`; ``options`` may set ``batch_size``,
        ``cache_dir``, ``progress``. Raises DataError if the word vectors changed since."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            config = json.loads(str(arrays["config"]))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path} is not a saved SIF encoder: {exc}") from exc
        if config.get("format") != SAVE_FORMAT:
            raise DataError(f"{path} is not a saved SIF encoder (format {config.get('format')!r})")
        encoder = cls(config["vectors"], **{k: config[k] for k in _CONFIG_KEYS}, **options)
        if encoder.vectors == SELF:
            encoder._set_self_vectors(arrays["self_words"].tolist(), arrays["self_vectors"])
        if encoder._vectors_id != config["vectors_id"]:
            raise DataError(
                f"the word vectors changed since {path} was saved "
                f"({config['vectors_id']} -> {encoder._vectors_id}); fit the encoder again"
            )
        if "counts" in arrays:
            encoder._set_counts(
                dict(zip(arrays["count_words"].tolist(), arrays["counts"].tolist()))
            )
        encoder.components_ = arrays["components"].astype(np.float32)
        return encoder
