"""CSLS neighbourhoods kept between rebuilds, so that one more label does not recompute them.

The CSLS terms (:mod:`xmodal.core.hubness`) are means over each item's nearest items of the other
modality; finding those neighbours costs O(n·m·d) (0.55 s of a 0.62 s default rebuild at 10k
items, about 1 s at 100k, profiled), rescoring known ones O(n·k·d). One more reference pair adds
one dimension to codes of a hundred or more: the neighbourhoods barely move. So a rebuild
rescores the neighbourhoods of an earlier version under its own codes
(:func:`xmodal.core.hubness.neighbour_terms`) and the rebuild job finds this version's own
neighbourhoods in a thread once Label Studio has flipped to it (:func:`refresh`,
``workers/rebuild.py``), off the label's path; the next label's rebuild uses those.

How close: on 20k × 20k synthetic clustered codes with the class bridge, terms rescored over
neighbourhoods one label old correlate .993 (8 pairs) and 1.000 (100 pairs) with the exact ones;
4 labels old at 8 pairs .95, 25 labels old at 100 pairs .9998.

They are found anew inside the rebuild when there are none for these items and settings, or when
they are older than ``max(MIN_STALE, n_pairs · STALE_SHARE)`` reference changes (a refresh that did
not happen: a killed worker, a burst of labels).

``index/csls-neighbours.npz`` holds them with the key of what they belong to (:func:`source_key`):
both features files (as :mod:`xmodal.index.columns` keys its columns), the enhancements and k.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from xmodal.core.hubness import hubness_neighbours, neighbour_terms
from xmodal.fileio import atomic_write_bytes
from xmodal.project.workspace import Workspace, parse_enhance

log = logging.getLogger(__name__)

MIN_STALE = 2          # reference changes neighbourhoods may lag behind, at least
STALE_SHARE = 0.25     # and this share of the references


def _path(ws: Workspace):
    return ws.index_dir / "csls-neighbours.npz"


def source_key(ws: Workspace, columns) -> str:
    """What neighbourhoods belong to: the features files of ``columns`` (image's, text's
    :class:`xmodal.index.columns.Columns`) and the enhancements that make the codes."""
    files = ";".join(c.directory.name for c in columns)
    return f"{files};{','.join(parse_enhance(ws.config.get('enhance')))}"


def _key(source: str, k: int) -> str:
    return f"{source};k={int(k)}"


def _pair_set(pair_rows: np.ndarray) -> set:
    return {tuple(p) for p in np.asarray(pair_rows).reshape(-1, 2).tolist()}


def hub_terms(ws: Workspace, source: str, image_codes: np.ndarray, text_codes: np.ndarray, k: int,
              pair_rows: np.ndarray, version: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(r_image, r_text, how)``: index ``version``'s CSLS terms, over the neighbourhoods kept for
    ``source`` (:func:`source_key`) when they are recent enough, else over neighbourhoods found now
    (and kept). ``how`` goes into the snapshot's meta: ``neighbours_of`` is the version whose
    neighbourhoods were rescored (this one's own when they were found now)."""
    key = _key(source, k)
    kept = _load(ws, key, len(image_codes), len(text_codes))
    if kept is not None:
        changes = len(_pair_set(kept["pair_rows"]) ^ _pair_set(pair_rows))
        if changes <= max(MIN_STALE, STALE_SHARE * len(pair_rows)):
            return (neighbour_terms(image_codes, text_codes, kept["image"]),
                    neighbour_terms(text_codes, image_codes, kept["text"]),
                    {"neighbours_of": kept["version"], "pair_changes": changes, "source": source})
    r_img, r_txt, nn_img, nn_txt = hubness_neighbours(image_codes, text_codes, k)
    _save(ws, key, nn_img, nn_txt, pair_rows, version)
    return r_img, r_txt, {"neighbours_of": version, "pair_changes": 0, "source": source}


def refresh(ws: Workspace, snap) -> bool:
    """Find the neighbourhoods of ``snap``'s own codes and keep them for the next rebuild, unless
    they are its own already. Returns whether it computed them."""
    csls = (snap.meta or {}).get("csls") or {}
    if snap.csls_k is None or not snap.has_signal or "source" not in csls \
            or csls.get("neighbours_of") == snap.version:
        return False
    _, _, nn_img, nn_txt = hubness_neighbours(snap.image_codes, snap.text_codes, snap.csls_k)
    _save(ws, _key(csls["source"], snap.csls_k), nn_img, nn_txt, snap.pair_rows, snap.version)
    return True


def _load(ws: Workspace, key: str, n_images: int, n_texts: int) -> dict | None:
    try:
        with np.load(_path(ws), allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            kept = {"image": z["image"], "text": z["text"], "pair_rows": z["pair_rows"],
                    "version": int(z["version"])}
    except (OSError, ValueError, KeyError):
        return None   # none yet, or unreadable: find them
    img, txt = kept["image"], kept["text"]
    if len(img) != n_images or len(txt) != n_texts or (img.size and img.max() >= n_texts) \
            or (txt.size and txt.max() >= n_images) or min(img.min(initial=0), txt.min(initial=0)) < 0:
        return None   # not these items (the key should have said so): find them
    return kept


def _save(ws: Workspace, key: str, nn_img: np.ndarray, nn_txt: np.ndarray, pair_rows: np.ndarray,
          version: int) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), image=nn_img.astype(np.int32), text=nn_txt.astype(np.int32),
             pair_rows=np.asarray(pair_rows, np.int64).reshape(-1, 2),
             version=np.int64(version))
    try:
        ws.index_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(_path(ws), buf.getvalue())
    except OSError as exc:
        log.warning("workspace %s: CSLS neighbourhoods not kept (%s)", ws.name, exc)


def forget(ws: Workspace) -> None:
    """Delete the kept neighbourhoods (the next rebuild finds its own)."""
    _path(ws).unlink(missing_ok=True)
