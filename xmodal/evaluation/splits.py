"""A seeded held-out split inside a data set that has none (a folder of photos and captions).

``xmodal eval --holdout 1000 --split-seed 0`` holds 1,000 images (with all their texts) out: the
references are chosen among the other images and retrieval runs over the held-out ones only (the
split protocol of :mod:`xmodal.evaluation.protocol`), so that nothing tuned on them is scored on
them, as the Flickr8k / COCO test splits of the literature are used.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from xmodal.errors import ConfigError
from xmodal.evaluation.data import EvalData


def holdout_mask(n: int, holdout: int, seed: int = 0) -> np.ndarray:
    """Boolean ``train`` mask over ``n`` coupled images: ``holdout`` of them, drawn uniformly
    without replacement with ``numpy.random.default_rng(seed)``, are False (held out)."""
    if not 1 <= holdout <= n - 1:
        raise ConfigError(f"--holdout must be between 1 and {n - 1} (the data has {n} coupled images), "
                          f"not {holdout}")
    train = np.ones(n, dtype=bool)
    train[np.random.default_rng(seed).choice(n, holdout, replace=False)] = False
    return train


def hold_out(data: EvalData, holdout: int, seed: int = 0) -> EvalData:
    """``data`` with a seeded split: ``holdout`` images held out for retrieval, the rest the pool
    the references are chosen from. A data set with its own split keeps it: ConfigError."""
    if data.train is not None:
        raise ConfigError(f"{data.name} has its own train/test split; --holdout is for data without one")
    meta = {**data.meta, "holdout": int(holdout), "split_seed": int(seed)}
    return replace(data, train=holdout_mask(data.n, holdout, seed), meta=meta)
