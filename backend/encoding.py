"""Embedding a /search query (free text, or an image) the way the workspace's items were embedded.

Texts go through the workspace's own fitted encoder (:func:`xmodal.project.features.
workspace_text_encoder`, shared with the rebuild's written references); a workspace that cannot
embed text is a 503 that says why.
"""

from __future__ import annotations

import threading

from xmodal.errors import ApiError, DataError
from xmodal.project.text_encoder import workspace_text_encoder
from xmodal.project.workspace import Workspace

_images: dict[tuple, object] = {}
_lock = threading.Lock()


def text_encoder(ws: Workspace, loader=None):
    """The workspace's text encoder, cached; ``loader(ws)`` overrides how it is loaded."""
    try:
        return workspace_text_encoder(ws, loader)
    except DataError as exc:
        raise ApiError(503, f"text search is unavailable: {exc}") from None
    except ImportError as exc:
        raise ApiError(503, f"text search is unavailable: the encoders cannot be imported ({exc})") from None


def load_image_encoder(ws: Workspace):
    """The workspace's image encoder (an object with ``features(list[path])``; NaN rows = failed)."""
    name = ws.config["encoders"].get("image")
    if not name:
        raise ApiError(503, f"image search is unavailable: workspace {ws.name!r} names no image encoder")
    from xmodal.encoders import get_image_encoder

    return get_image_encoder(name, progress=False)


def image_encoder(ws: Workspace, loader=None):
    """Cached per workspace and loader; ``loader`` overrides ``load_image_encoder``."""
    key = (str(ws.root), loader)
    with _lock:
        enc = _images.get(key)
    if enc is None:
        enc = (loader or load_image_encoder)(ws)
        with _lock:
            _images[key] = enc
    return enc
