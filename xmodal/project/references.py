"""Reference texts an annotator wrote, embedded once with the project's text encoder.

When none of a medoid image's candidates fits, the annotator describes the image in a few words.
That description is a valid reference text: a reference only has to match its medoid's meaning
(eq. 10 needs only its feature vector), it need not be an item that was coupled in the data. It is
stored with its pair (:class:`~xmodal.project.pairs.PairStore`, ``description``) and embedded here,
by the rebuild, with the workspace's own text encoder (SIF with the corpus' fitted state, or the
encoder the project was created with), so that it lives in the same space as the project's texts.

It does **not** become a searchable text item: it is an annotator's note about one image, not a
document of the team's collection (a search user would get notes among their texts); adding items
would change the workspace's item set, which every index version, task option and feature file is
aligned to; and the description would be its own image's perfect match, which would inflate every
retrieval figure measured on the collection.

Vectors are cached in the workspace (``references/<encoder digest>/<sha256 of the text>.npy``,
written atomically), so the encoder is loaded only when a new description arrives and every later
rebuild, in any worker process, reads the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from xmodal.errors import DataError
from xmodal.project.text_encoder import workspace_text_encoder
from xmodal.project.workspace import Workspace

MAX_DESCRIPTION_CHARS = 1000   # longer is a problem for the team, not a silent truncation


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def cache_dir(ws: Workspace) -> Path:
    """Where this workspace keeps written references for its current text encoder."""
    try:
        encoder = ws.features_info("text").get("encoder_id") or ws.config["encoders"].get("text")
    except DataError:
        encoder = ws.config["encoders"].get("text")
    digest = hashlib.sha256(str(encoder).encode()).hexdigest()[:16]
    return ws.root / "references" / digest


def description_features(ws: Workspace, texts: list[str], loader=None) -> np.ndarray:
    """(len(texts), d) float32 features of written reference texts, embedded once (see the module
    doc); ``loader(ws)`` overrides how the workspace's text encoder is loaded."""
    if not texts:
        return np.zeros((0, 0), np.float32)
    folder = cache_dir(ws)
    out: list[np.ndarray | None] = []
    missing: list[int] = []
    for i, text in enumerate(texts):
        path = folder / f"{_key(text)}.npy"
        try:
            out.append(np.load(path))
        except (OSError, ValueError):
            out.append(None)
            missing.append(i)
    if missing:
        enc = workspace_text_encoder(ws, loader)
        computed = np.asarray(enc.transform([texts[i] for i in missing]), dtype=np.float32)
        folder.mkdir(parents=True, exist_ok=True)
        for i, row in zip(missing, computed):
            out[i] = row
            path = folder / f"{_key(texts[i])}.npy"
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, row)
            os.replace(tmp, path)
    return np.stack(out).astype(np.float32)
