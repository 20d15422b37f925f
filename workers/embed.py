"""The feature-extraction job: one chunk of items through a frozen encoder on a worker.

Enqueued by :func:`xmodal.encoders.distributed.embed_distributed` as ``workers.embed.embed_chunk``
(the design, queue and failure handling are described there). The encoder is built once per
worker process and kept between chunks; each image is checked to have the content the
coordinator hashed before it is embedded.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

from xmodal import settings
from xmodal.encoders.base import Encoder
from xmodal.encoders.cache import FeatureCache, content_key
from xmodal.encoders.distributed import cached_features


class ContentMismatch(RuntimeError):
    """An item on this worker is not the content the coordinator hashed (the chunk is retried)."""


# -- the job ------------------------------------------------------------------------------------

# encoders kept between chunks: a SimpleWorker (``xmodal worker --simple``) builds the ONNX session
# once; a forking worker's work horse starts from the parent's state each time
_ENCODERS: dict[str, Encoder] = {}


def _worker_encoder(modality: str, name: str, options: dict) -> Encoder:
    from xmodal.encoders import get_encoder

    options = dict(options)
    threads = settings.get("XMODAL_EMBED_THREADS")
    if threads and (modality == "image" or name == "minilm"):   # both run on ONNX Runtime
        options.setdefault("num_threads", threads)
    key = json.dumps([modality, name, options], sort_keys=True, default=str)
    enc = _ENCODERS.get(key)
    if enc is None:
        # images and MiniLM run on ONNX Runtime (num_threads above); only the eager torch image
        # backend imports torch, whose own pool would otherwise take every core
        if threads and options.get("backend") == "torch":
            _cap_torch_threads(threads)
        enc = get_encoder(modality, name, progress=False, **options)
        _ENCODERS[key] = enc
    return enc


def _cap_torch_threads(threads: int) -> None:
    """torch sizes its intra-op pool to every core: cap it like ONNX Runtime's, where torch is
    installed at all."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def embed_chunk(modality: str, name: str, items: list[str], keys: list[str | None],
                options: dict | None = None, cache_root: str | None = None,
                expect_cache_id: str | None = None) -> dict:
    """RQ job: one chunk's per-item features.

    ``keys`` are the coordinator's content keys (checked here); ``cache_root`` is this worker's
    feature cache (default ``$XMODAL_CACHE_DIR/features``; "" = none); ``expect_cache_id`` must
    equal this worker's encoder id (same weights, preprocessing and package versions), else the
    rows would not be comparable and the chunk fails.
    """
    t0 = time.perf_counter()
    enc = _worker_encoder(modality, name, options or {})
    if expect_cache_id is not None and enc.cache_id != expect_cache_id:
        raise ContentMismatch(
            f"encoder differs on worker {socket.gethostname()}: {enc.cache_id} here, "
            f"{expect_cache_id} on the coordinator (install the same package versions and weights)")
    if len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    for item, key in zip(items, keys):
        if key is not None and content_key(item, modality) != key:
            what = f"image {item}" if modality == "image" else f"text {item[:60]!r}"
            raise ContentMismatch(
                f"{what} on worker {socket.gethostname()} is not the content the coordinator "
                "hashed (missing, changed, or another file at the same path on this machine)")
    cache = None if cache_root == "" else FeatureCache(cache_root)
    F, failures = cached_features(enc, items, cache, keys)
    return {"features": np.ascontiguousarray(F, dtype=np.float32).tobytes(),
            "shape": list(F.shape), "failures": [list(f) for f in failures],
            "cache_id": enc.cache_id, "worker": f"{socket.gethostname()}:{os.getpid()}",
            "seconds": round(time.perf_counter() - t0, 3)}
