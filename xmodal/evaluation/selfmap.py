"""The self-trained map (:mod:`xmodal.core.pseudomap`) in ``xmodal eval``, as the index makes it.

The map is fitted on the references and the uncoupled items of the run (the pool without the
references under the split protocol), ranked by the same fused codes the index has: z-scored SSR
codes (column statistics over those items), the class bridge on its principal basis with the
weight chosen for the run; the evaluated items are never its pseudo-pairs under a split.
"""

from __future__ import annotations

import numpy as np

from xmodal.core.bridge import centred, fuse_codes, principal_basis, project
from xmodal.core.calibration import loo_scores
from xmodal.core.pseudomap import choose_map_weight, image_map_codes, self_trained_map, text_map_codes, with_bridge
from xmodal.core.ssr import column_stats, ssr, ssr_codes


def map_codes(run, cfg, bridge_weight: float):
    """``(map codes of the evaluated images, of the evaluated texts, the weight the references
    support)`` (:func:`xmodal.core.pseudomap.choose_map_weight`), or None."""
    d = run.data
    rows = np.concatenate([run.refs, np.setdiff1d(run.uncoupled, run.refs)])
    X, Y = d.image_features[rows], d.text_features[rows]
    RX, RY = ssr(X, d.image_features[run.refs]), ssr(Y, d.text_features[run.refs])
    stats = (column_stats(RX), column_stats(RY)) if cfg.standardize else (None, None)
    CX = ssr_codes(RX, cfg.measure, cfg.sparse_top_k, cfg.sparse_power, stats[0])
    CY = ssr_codes(RY, cfg.measure, cfg.sparse_top_k, cfg.sparse_power, stats[1])
    Bi = Bt = None
    if bridge_weight > 0 and d.image_bridge is not None:
        Bi, _ = centred(d.image_bridge[rows])
        Bt, _ = centred(Y)
        basis = principal_basis(Bi, Bt)
        Bi, Bt = project(Bi, basis), project(Bt, basis)
        CX = fuse_codes(CX, Bi, bridge_weight)
        CY = fuse_codes(CY, Bt, bridge_weight)
    pairs = np.stack([np.arange(len(run.refs))] * 2, axis=1)
    fitted = self_trained_map(X, Y, CX, CY, pairs)
    if fitted is None:
        return None
    scored = loo_scores(RX, RY, pairs, measure=cfg.measure, query_stats=stats[0], target_stats=stats[1],
                        sparse_top_k=cfg.sparse_top_k, sparse_power=cfg.sparse_power)
    weight, _ = choose_map_weight(fitted, X, Y, pairs, with_bridge(scored, pairs, Bi, Bt, bridge_weight))
    return (image_map_codes(d.image_features[run.eval_rows], fitted),
            text_map_codes(run.texts, fitted), weight)
