"""Both modalities of a data set embedded into a workspace, through the on-disk feature cache
(in-process, or on ``xmodal worker`` processes as chunked jobs); the fitted text encoder's state
is saved with them so that ``/search`` and written references embed text the same way
(:func:`workspace_text_encoder`). A rerun on the same items and encoders reuses the workspace's
features and loads no encoder.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from xmodal.errors import DataError, XmodalError
from xmodal.logfmt import Say, kv, quiet

log = logging.getLogger(__name__)


# -- features ---------------------------------------------------------------------------------

def _embed(modality: str, name: str, items: list[str], cache_root, fit: bool, say: Say):
    return _embed_with(modality, name, items, cache_root, fit, say, workers=False)


def _embed_on_workers(modality: str, name: str, items: list[str], cache_root, fit: bool, say: Say):
    return _embed_with(modality, name, items, cache_root, fit, say, workers=True)


def _embed_with(modality: str, name: str, items: list[str], cache_root, fit: bool, say: Say,
                workers: bool):
    from xmodal.encoders import get_encoder
    from xmodal.encoders.base import check_failures
    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    t0 = time.perf_counter()
    enc = get_encoder(modality, name, progress=False)
    if workers and not name.startswith("sif"):
        from xmodal.encoders.distributed import embed_distributed

        F, failures = embed_distributed(enc, items, FeatureCache(cache_root), fit=fit,
                                        progress=False, say=say)
    else:
        F, failures = embed_with_cache(enc, items, FeatureCache(cache_root), fit=fit, progress=False)
    F = np.asarray(F, dtype=np.float32)
    check_failures(len(items), failures, modality, name)
    if failures:
        bad = ", ".join(f"{item}: {why}" for item, why in failures[:3])
        say(f"warning: {len(failures)} {modality}(s) could not be embedded and will never rank "
            f"high ({bad}{' …' if len(failures) > 3 else ''})")
        F = np.nan_to_num(F, nan=0.0)
    say(f"embedded {len(items)} {modality}s with {name} ({time.perf_counter() - t0:.1f} s)")
    return enc, F


def _same_items(ws, ds) -> bool:
    try:
        items = ws.items
    except DataError:
        return False
    return (items.get("image_ids") == list(ds.image_ids) and items.get("text_ids") == list(ds.text_ids)
            and items.get("image_paths") == [str(p) for p in ds.image_paths]
            and items.get("texts") == list(ds.texts))


def _features_ok(ws, modality: str, n: int) -> bool:
    try:
        info = ws.features_info(modality)
    except DataError:
        return False
    return ws.features_path(modality).is_file() and list(info.get("shape", []))[:1] == [n]


def ensure_features(ws, ds, image_encoder: str, text_encoder: str, *, feature_cache=None,
                    workers_embed: bool = False, say: Say = quiet):
    """Items and features of both modalities in the workspace; returns (X, Y, reused).

    ``workers_embed``: image (and MiniLM) features computed by ``xmodal worker`` processes as chunked RQ
    jobs; SIF texts stay in-process (10k+ texts/s, less than a chunk's round trip)."""
    cfg = ws.config
    reuse = (_same_items(ws, ds) and cfg["encoders"].get("image") == image_encoder
             and cfg["encoders"].get("text") == text_encoder
             and _features_ok(ws, "image", ds.n_images) and _features_ok(ws, "text", ds.n_texts)
             and (not text_encoder.startswith("sif") or ws.text_encoder_state_path.exists()))
    if reuse:
        say(f"reusing the features in {ws.root} (same items and encoders)")
        X = ws.load_features("image")
        encoder_id = ws.features_info("image").get("encoder_id", "")
        if not ws.image_words_path.is_file():   # a workspace made before image words existed
            _save_image_words(ws, X, encoder_id)
        if not ws.bridge_path.is_file():         # ... or before the class bridge
            _save_bridge(ws, X, encoder_id, text_encoder, say, feature_cache=feature_cache)
        return X, ws.load_features("text"), True
    ws.save_items(ds.image_ids, [str(p) for p in ds.image_paths], ds.text_ids, ds.texts)
    embed = _embed_on_workers if workers_embed else _embed
    i_enc, X = embed("image", image_encoder, [str(p) for p in ds.image_paths],
                     feature_cache, False, say)
    t_enc, Y = embed("text", text_encoder, list(ds.texts), feature_cache, True, say)
    ws.save_features("image", X, i_enc.encoder_id)
    ws.save_features("text", Y, t_enc.encoder_id)
    _save_image_words(ws, X, i_enc.encoder_id)
    if hasattr(t_enc, "save"):
        state = ws.text_encoder_state_path
        tmp = state.with_name(f".{state.stem}.{os.getpid()}.tmp{state.suffix}")
        t_enc.save(tmp)
        os.replace(tmp, state)
    _save_bridge(ws, X, i_enc.encoder_id, text_encoder, say, lambda _ws: t_enc, feature_cache)
    return X, Y, False


def refresh_image_extras(ws, X, encoder_id: str, text_encoder: str, say: Say = quiet,
                         feature_cache=None) -> None:
    """What is derived from every image's features, made again for ``X`` (the workspace's image
    matrix after items were added or removed): the words under each thumbnail and the class
    bridge (the prompts come from the feature cache: no image is embedded again)."""
    _save_image_words(ws, X, encoder_id)
    _save_bridge(ws, X, encoder_id, text_encoder, say, feature_cache=feature_cache)


def _save_image_words(ws, X, encoder_id: str) -> None:
    from xmodal.encoders.image_words import image_words

    words = image_words(X, encoder_id)
    if words is None:
        ws.image_words_path.unlink(missing_ok=True)   # features of another encoder: no stale words
    else:
        ws.save_image_words(words)


def _prompt_features(ws, name: str, prompts: list[str], text_encoder_loader, feature_cache) -> np.ndarray:
    """The prompts embedded with the workspace's text encoder: through the feature cache for a
    pretrained one (the same ~400 prompts serve every project: a rerun loads no model), else by
    the fitted encoder (``text_encoder_loader(ws)`` when the caller holds it)."""
    if name.startswith("sif"):           # fitted on this project's texts: its own vectors
        from xmodal.project.references import description_features

        return description_features(ws, prompts, text_encoder_loader)
    from xmodal.encoders import get_encoder
    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    F, failures = embed_with_cache(get_encoder("text", name, progress=False), prompts,
                                   FeatureCache(feature_cache), progress=False)
    if failures:
        raise DataError(f"{len(failures)} class prompts could not be embedded")
    return np.asarray(F, np.float32)


def _save_bridge(ws, X, encoder_id: str, text_encoder: str, say: Say = quiet,
                 text_encoder_loader=None, feature_cache=None) -> None:
    """The class bridge of the images (``xmodal.core.bridge``): their top ImageNet classes, each
    class's prompt embedded with the workspace's text encoder (:func:`_prompt_features`)."""
    from xmodal.encoders.image_words import class_bridge

    t0 = time.perf_counter()
    try:
        found = class_bridge(X, encoder_id, lambda prompts: _prompt_features(
            ws, text_encoder, prompts, text_encoder_loader, feature_cache))
    except (XmodalError, ImportError, OSError, ValueError) as exc:   # the project works without it
        log.warning(kv("bridge.failed", project=ws.name, error=f"{type(exc).__name__}: {exc}"))
        found = None
    if found is None:
        ws.bridge_path.unlink(missing_ok=True)
        return
    bridge, used, C = found
    ws.save_bridge(bridge, used, C)
    say(f"class bridge: {len(used)} ImageNet classes seen in the images, embedded with the text "
        f"encoder ({time.perf_counter() - t0:.1f} s)")
