"""The shape every encoder shares, and small helpers they all use.

An encoder is scikit-learn-like: ``fit(items) -> self``, ``transform(items) -> (n, dim) float32``.
Internally ``transform`` is split in two stages so that the expensive, per-item part can be cached
on disk (:mod:`xmodal.encoders.cache`) while the corpus-level part stays in the encoder:

- ``features(items)``: per-item vectors that depend only on the item's content and on
  :attr:`Encoder.cache_id` (CNN features, SIF weighted averages, MiniLM embeddings);
- ``finish(F)``: corpus-level post-processing fitted by ``fit_finish`` (SIF's common-component
  removal, eq. 7); identity for the other encoders.

``fit_features(items)`` fits what the per-item features themselves depend on (only the
self-trained SIF needs it: word vectors and word counts come from the corpus).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from xmodal import settings
from xmodal.errors import DataError

# (item, reason): the image path or the text that could not be embedded, and why
Failure = tuple[str, str]


class NotFittedError(RuntimeError):
    """``transform`` (or ``save``) was called on an encoder that needs ``fit`` first."""


class Encoder:
    """Base class; subclasses implement :meth:`features` and the two ids."""

    modality: str = ""
    name: str = ""

    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress  # show a tqdm bar in features()
        self.failures_: list[Failure] = []

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def cache_id(self) -> str:
        """Identifies the output of :meth:`features`; the feature cache is keyed by it."""
        raise NotImplementedError

    @property
    def encoder_id(self) -> str:
        """Identifies the output of :meth:`transform`: it changes whenever that output would."""
        return self.cache_id

    def compatible_with(self, encoder_id: str) -> bool:
        """Whether features recorded under ``encoder_id`` (a workspace's) are interchangeable with
        this encoder's output, e.g. when its new written references join them: the same id, unless
        the encoder knows better (the same weights run by another runtime)."""
        return encoder_id == self.encoder_id

    def fit_features(self, items: Sequence[str]) -> None:
        """Fit what :meth:`features` depends on (nothing, for pretrained encoders)."""

    def features(self, items: Sequence[str]) -> np.ndarray:
        """Per-item vectors; failures get a NaN (images) or zero (texts) row and a ``failures_``
        entry."""
        raise NotImplementedError

    def fit_finish(self, F: np.ndarray) -> None:
        """Fit the corpus-level post-processing on the corpus's features (nothing by default)."""

    def finish(self, F: np.ndarray) -> np.ndarray:
        """Apply the corpus-level post-processing (identity by default)."""
        return F

    def fit(self, items: Sequence[str]) -> Encoder:
        self.fit_transform(items)
        return self

    def transform(self, items: Sequence[str]) -> np.ndarray:
        return self.finish(self.features(items))

    def fit_transform(self, items: Sequence[str]) -> np.ndarray:
        self.fit_features(items)
        F = self.features(items)
        self.fit_finish(F[valid_rows(F)])
        return self.finish(F)

    def __repr__(self) -> str:
        try:
            ident = self.encoder_id
        except NotFittedError:
            ident = "unfitted"
        return f"{type(self).__name__}({ident!r})"


# more than this share of a corpus failing to embed is a wrong encoder, not a few bad items
MAX_FAILED_SHARE = 0.5


def check_failures(n_items: int, failures: Sequence[Failure], modality: str, encoder: str) -> None:
    """Stop (DataError) when most of ``n_items`` could not be embedded by ``encoder``: evaluating
    or serving the few that could would look like a result and mean nothing."""
    if n_items and len(failures) > MAX_FAILED_SHARE * n_items:
        reasons = Counter(why for _, why in failures).most_common(2)
        hint = (" — texts in a language the word vectors do not cover? Try --text-encoder e5 "
                "(multilingual) or auto" if modality == "text" else "")
        raise DataError(
            f"{len(failures)} of {n_items} {modality}s could not be embedded with {encoder} "
            f"({', '.join(f'{n}× {why}' for why, n in reasons)}){hint}")


def embed_nonempty_texts(encoder: Encoder, items: Sequence[str], embed_batch, lengths=None, *,
                         pool=None, batch_size: int | None = None) -> np.ndarray:
    """The ``features`` of a sentence encoder: empty texts get a zero row and a ``failures_``
    entry; the others go to ``embed_batch(list_of_texts) -> (n, dim)`` in ``encoder.batch_size``
    chunks, under a progress bar.

    ``lengths(list_of_texts) -> one number per text`` (e.g. token counts): when the texts fill
    more than one batch, they are batched shortest first, so that each batch is padded only to
    texts of about its own length (a transformer's cost grows with the padded length); the rows
    still come back in input order.

    ``pool`` (a ``concurrent.futures`` executor; ``embed_batch`` then must be picklable) embeds the
    batches in its processes, in order; ``batch_size`` overrides the encoder's (smaller batches
    keep every process busy)."""
    texts = list(items)
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    encoder.failures_ = [(t, "empty text") for t in texts if not t.strip()]
    todo = [i for i, t in enumerate(texts) if t.strip()]
    size = batch_size or encoder.batch_size
    if lengths is not None and len(todo) > size:
        todo = [todo[j] for j in np.argsort(lengths([texts[i] for i in todo]), kind="stable")]
    chunks = [todo[c] for c in batches(len(todo), size)]
    work = [[texts[i] for i in rows] for rows in chunks]
    done = pool.map(embed_batch, work) if pool is not None else map(embed_batch, work)
    with progress_bar(len(todo), encoder.name, "text", encoder.progress and bool(todo)) as bar:
        for rows, vectors in zip(chunks, done):
            out[rows] = vectors
            bar.update(len(rows))
    return out


def valid_rows(X: np.ndarray) -> np.ndarray:
    """Boolean mask of rows that hold a real embedding (not a NaN or all-zero failure row)."""
    X = np.asarray(X)
    return ~np.isnan(X).any(axis=1) & (X != 0).any(axis=1)


def default_cache_dir() -> Path:
    """``$XMODAL_CACHE_DIR`` or ``~/.cache/xmodal``: features, ONNX exports, word vectors."""
    return Path(settings.get("XMODAL_CACHE_DIR") or Path.home() / ".cache" / "xmodal")


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 of a file's bytes (hex, truncated): weights and vector files enter encoder ids."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def array_digest(*arrays: np.ndarray, length: int = 16) -> str:
    """sha256 of arrays' bytes: fitted state (components, trained vectors) enters encoder ids."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar on stderr: none for nothing to do; on a terminal it vanishes when done, in a log
    or pipe it stays as a finished line, so that the next message (an error...) starts a line of
    its own instead of being glued to the bar's carriage returns."""
    import sys

    from tqdm.auto import tqdm

    live = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total == 0, leave=not live)
