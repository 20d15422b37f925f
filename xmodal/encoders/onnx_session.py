"""ONNX models built once per encoder id, kept in the cache folder, and the ONNX Runtime sessions
that run them (the image encoders' exports, MiniLM's graph).

    path = onnx_model_path(cache_dir, "minilm", encoder.cache_id)
    session = cached_session(path, build, num_threads=2)   # build(tmp) writes the model once

A model is published atomically: ``build`` writes a temporary file which is then renamed, so
processes and threads that build at once never read a half-written file, and the last rename wins
with an identical model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def onnx_model_path(cache_dir: str | os.PathLike, name: str, cache_id: str) -> Path:
    """``<cache_dir>/onnx/<name>-<digest of cache_id>.onnx``: a new id (weights, preprocessing,
    graph version) gets a new file, and the stale one is simply never read again."""
    key = hashlib.sha256(cache_id.encode()).hexdigest()[:20]
    return Path(cache_dir) / "onnx" / f"{name.replace(':', '-')}-{key}.onnx"


def cached_session(path: Path, build: Callable[[Path], None], *, num_threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on the model at ``path``, written first by
    ``build(temporary_path)`` when it does not exist yet (see the module doc). ``build`` raises
    to refuse a model; nothing is published then.

    No busy-waiting between ops: workers share their CPUs with the web server and each other.
    ``num_threads``: intra-op threads (default: ONNX Runtime's choice, one per core)."""
    import onnxruntime as ort

    if not path.exists():
        log.info("building %s", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # pid and thread: two threads of one process may build the same model at once
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            build(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if num_threads:
        options.intra_op_num_threads = num_threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
