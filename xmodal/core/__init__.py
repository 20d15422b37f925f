"""The SSM-AL method core: pure numpy, arrays in, arrays out (no I/O, no Redis, no HTTP).

- :mod:`xmodal.core.sif` — SIF sentence embedding arithmetic (paper eq. 6–7).
- :mod:`xmodal.core.medoids` — reference selection with k-medoids, automatic k, anytime order.
- :mod:`xmodal.core.ssr` — semantic structure representation (eq. 10) and cross-modal similarity
  (eq. 32/33), and the :class:`~xmodal.core.ssr.SSRIndex` used for retrieval.
- :mod:`xmodal.core.metrics` — MAP (eq. 35–36) and Recall@K (eq. 37).
"""
