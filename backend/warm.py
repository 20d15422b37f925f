"""Warm-up at start: what the first ``/search`` of a project needs, loaded before anyone asks.

A team lead's first /search after a start took 6.0 s, the next ones 0.04 s: the first one loaded
the current index snapshot from disk (:func:`~xmodal.index.store.load_current`), the workspace's
text encoder and its weights (:func:`~xmodal.project.text_encoder.workspace_text_encoder`; the
model is built on its first ``transform``), the items' contents and, for image tasks, the page's
word search. All of these are cached per process, so loading them once at start in a background
thread (:func:`start`) leaves the first request nothing to load. A gunicorn worker that starts
serves at once; a request that comes before the warm-up is done loads what it needs itself, as
it did before.

The projects warmed are ``$XMODAL_PROJECT`` when set, else every workspace under ``MODEL_DIR``. A
project without an index yet, or whose encoder cannot load, is logged and skipped: the warm-up
never keeps the backend from starting (``XMODAL_WARM_START=0`` turns it off).
"""

from __future__ import annotations

import logging
import threading
import time

from backend.encoding import text_encoder
from xmodal.index.store import load_current
from xmodal.index.text_search import text_search
from xmodal.logfmt import kv
from xmodal.project.workspace import Workspace, list_workspaces

log = logging.getLogger(__name__)


def served_workspaces(backend) -> list[str]:
    if backend.default_project:
        return [backend.default_project]
    return [ws.name for ws in list_workspaces(backend.model_dir)]


def warm_project(backend, ws: Workspace) -> dict:
    """Load what a /search of ``ws`` needs; returns what was loaded (for the log and tests)."""
    done = {}
    snap = load_current(ws, backend.redis)
    done["index"] = None if snap is None else snap.version
    for modality in ("image", "text"):
        ws.contents(modality)
        ws.row_of(modality)
    if snap is not None and snap.has_signal:   # a text query is embedded only when there are codes
        enc = text_encoder(ws, backend.text_encoder_loader)
        enc.transform(["warm-up"])   # builds the model (weights, ONNX session) on first use
        done["text_encoder"] = type(enc).__name__
    if ws.select == "image":
        text_search(ws)
        done["text_search"] = True
    return done


def warm_all(backend) -> dict[str, dict]:
    """Warm every served project, one after the other; a failure is logged, never raised."""
    out = {}
    for name in served_workspaces(backend):
        t0 = time.perf_counter()
        try:
            # the resolver's own Workspace object: the items it caches are the ones requests read
            out[name] = warm_project(backend, backend.resolver.workspace(name))
        except Exception as exc:  # noqa: BLE001 - a project that cannot warm is served cold, as before
            out[name] = {"error": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"}
            log.warning(kv("warm.failed", project=name, error=out[name]["error"]))
            continue
        log.info(kv("warm.done", project=name, s=round(time.perf_counter() - t0, 3), **out[name]))
    return out


def start(backend) -> threading.Thread:
    """:func:`warm_all` in a daemon thread (joined by nobody but tests)."""
    thread = threading.Thread(target=warm_all, args=(backend,), name="xmodal-warm", daemon=True)
    thread.start()
    return thread
