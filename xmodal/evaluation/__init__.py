"""Evaluation helpers that go beyond the paper.

- :mod:`xmodal.evaluation.enhance` — reusable improvements of SSM-AL's similarity that use the
  uncoupled data (z-scored SSR columns, feature centring, CSLS hubness correction, inverted
  softmax, mutual-NN pseudo-pairs, caption averaging, query expansion), measured in
  ``docs/results.md``.

The paper's protocol itself lives in :mod:`xmodal.evaluation.protocol`; baselines in :mod:`xmodal.evaluation.baselines`.
"""

from xmodal.evaluation.enhance import (  # noqa: F401
    Enhancements,
    average_groups,
    csls,
    enhanced_similarity,
    inverted_softmax,
    mutual_nn_pairs,
    query_expansion,
    standardize_columns,
)
