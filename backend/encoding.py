"""Embedding a /search query (free text, or an image) the way the workspace's items were embedded.

The one place that knows the encoder API (:mod:`xmodal.encoders`): adjust ``load_text_encoder`` /
``load_image_encoder`` if that API changes. SIF's corpus-level state (word weights, common
component ``u``) belongs to the corpus, so it is loaded from the workspace
(``Workspace.text_encoder_state_path``) rather than refit.
"""

from __future__ import annotations

import logging
import threading

from xmodal.errors import ApiError, DataError
from xmodal.index.workspace import Workspace
from xmodal.logfmt import kv

log = logging.getLogger(__name__)

_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def load_text_encoder(ws: Workspace):
    """The fitted text encoder of a workspace (an object with ``transform(list[str])``)."""
    name = ws.config["encoders"].get("text")
    state = ws.text_encoder_state_path
    try:
        from xmodal import encoders
    except ImportError as exc:
        raise ApiError(503, f"text search is unavailable: xmodal.encoders cannot be imported ({exc})")
    if state.exists() and (name or "sif").startswith("sif"):
        from xmodal.encoders.sif import SIFEncoder

        return SIFEncoder.load(state)
    if (name or "").startswith("sif"):
        raise ApiError(503, f"text search is unavailable: workspace {ws.name!r} has no fitted SIF "
                            f"state at {state} (the project's embedding step writes it)")
    get = getattr(encoders, "get_text_encoder", None)
    if not name or get is None:
        raise ApiError(503, f"text search is unavailable: workspace {ws.name!r} names no text "
                            "encoder or xmodal.encoders has no get_text_encoder")
    return get(name)


def _cached(key: tuple, load):
    with _lock:
        enc = _cache.get(key)
    if enc is None:
        enc = load()
        with _lock:
            _cache[key] = enc
    return enc


def text_encoder(ws: Workspace, loader=None):
    """Cached per workspace and state-file mtime; ``loader`` overrides ``load_text_encoder``."""
    state = ws.text_encoder_state_path
    mtime = state.stat().st_mtime_ns if state.exists() else None

    def load():
        enc = (loader or load_text_encoder)(ws)
        want = _features_encoder_id(ws)
        got = getattr(enc, "encoder_id", None)
        if want and got and want != got:
            log.warning(kv("search.encoder_mismatch", project=ws.name, features=want, encoder=got))
        return enc

    return _cached(("text", str(ws.root), mtime, loader), load)


def _features_encoder_id(ws: Workspace) -> str | None:
    try:
        return ws.features_info("text").get("encoder_id")
    except DataError:
        return None


def load_image_encoder(ws: Workspace):
    """The workspace's image encoder (an object with ``features(list[path])``; NaN rows = failed)."""
    name = ws.config["encoders"].get("image")
    if not name:
        raise ApiError(503, f"image search is unavailable: workspace {ws.name!r} names no image encoder")
    from xmodal.encoders import get_image_encoder

    return get_image_encoder(name, progress=False)


def image_encoder(ws: Workspace, loader=None):
    """Cached per workspace and loader; ``loader`` overrides ``load_image_encoder``."""
    return _cached(("image", str(ws.root), loader), lambda: (loader or load_image_encoder)(ws))
