"""The workspace's text encoder, fitted state included: how /search, the page's search box and
the rebuild's written references embed a text exactly as the project's own texts were embedded."""

from __future__ import annotations

import logging
import threading

from xmodal.errors import DataError
from xmodal.logfmt import kv

log = logging.getLogger(__name__)

_encoders: dict[tuple, object] = {}
_encoders_lock = threading.Lock()


def load_text_encoder(ws):
    """The fitted text encoder of a workspace (an object with ``transform(list[str])``): SIF's
    corpus-level state (word weights, common component ``u``) belongs to the corpus, so it is
    loaded from the workspace (``Workspace.text_encoder_state_path``) rather than refit.
    DataError when the workspace cannot say how its texts were embedded."""
    name = ws.config["encoders"].get("text")
    state = ws.text_encoder_state_path
    if state.exists() and (name or "sif").startswith("sif"):
        from xmodal.encoders.sif import SIFEncoder

        return SIFEncoder.load(state)
    if (name or "").startswith("sif"):
        raise DataError(f"workspace {ws.name!r} has no fitted SIF state at {state} (the project's "
                        "embedding step writes it): texts cannot be embedded like its own")
    if not name:
        raise DataError(f"workspace {ws.name!r} names no text encoder")
    from xmodal.encoders import get_text_encoder

    return get_text_encoder(name, progress=False)


def workspace_text_encoder(ws, loader=None):
    """:func:`load_text_encoder` (or ``loader(ws)``), cached per process, workspace and state-file
    mtime, so /search and the rebuild's written references load it once."""
    state = ws.text_encoder_state_path
    mtime = state.stat().st_mtime_ns if state.exists() else None
    key = (str(ws.root), mtime, loader)
    with _encoders_lock:
        enc = _encoders.get(key)
    if enc is None:
        enc = (loader or load_text_encoder)(ws)
        try:
            want = ws.features_info("text").get("encoder_id")
        except DataError:
            want = None
        got = getattr(enc, "encoder_id", None)
        # a loader may return any object with transform(); only an Encoder knows its equivalents
        same = getattr(enc, "compatible_with", lambda encoder_id: encoder_id == got)
        if want and got and not same(want):
            log.warning(kv("text_encoder.mismatch", project=ws.name, features=want, encoder=got))
        with _encoders_lock:
            _encoders[key] = enc
    return enc
