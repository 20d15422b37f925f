"""Pairs in Redis + features on disk -> an index snapshot (the heart of a rebuild).

- :func:`take_snapshot`, one Lua script, atomically: clear this job's coalescing flag, take the next version number and
   read every pair. A pair written after it re-enqueues (the flag is gone); a pair written before
   it is in this build. Because the version is taken in the same step as the pairs, a higher
   version always holds at least the pairs of a lower one, and the forward-only current pointer
   ends on the newest data whatever order racing workers finish in;
- :func:`build_snapshot`: map annotation ids to feature rows (pairs naming items no longer in the workspace are skipped
   with a warning), drop duplicate (image, text) pairs, build the SSR index over the workspace
   features (``SSRIndex``); with fewer pairs than the measure needs the index is "unlabelled":
   zero-width codes, every score 0 (see :mod:`xmodal.labelstudio.predictions` for what Label Studio gets);
   a written description is a reference text of its own (:mod:`xmodal.project.references`); with
   signal, the index is also calibrated (:func:`calibrate`: how often its top candidate is right).

:func:`publish_initial_index` builds version 1 when a project has none (``project create``);
:func:`unlabelled_snapshot` is version 0, what the backend answers before the first rebuild.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import redis

from xmodal.core.bridge import BRIDGE_DIMS, centred, choose_weight, fuse_codes, principal_basis, project
from xmodal.core.calibration import PlattCalibrator, leave_one_out, loo_scores
from xmodal.core.pseudomap import (
    IMAGE_SPACE_SAMPLE,
    PCA_DIMS,
    choose_map_weight,
    image_map_codes,
    image_space,
    self_trained_map,
    text_map_codes,
    with_bridge,
)
from xmodal.core.ssr import SSRIndex, l2_normalize
from xmodal.errors import DataError, XmodalError
from xmodal.fileio import file_key
from xmodal.index.ann import build_for as build_ann
from xmodal.index.columns import open_columns
from xmodal.index.files import versions_on_disk
from xmodal.index.kept import keep_arrays, key_dir, read_arrays
from xmodal.index.neighbours import hub_terms, source_key
from xmodal.index.snapshot import IndexSnapshot
from xmodal.logfmt import kv
from xmodal.project.pairs import pairs_from_records
from xmodal.project.workspace import Workspace, parse_enhance
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)


def publish_initial_index(r, ws):
    """The current index, building version 1 (or the next) when the project has none yet."""
    from xmodal.index.store import IndexStore, load_current

    store = IndexStore(r, ws)
    if store.current_version() is not None:
        snap = load_current(ws, r)
        if snap is not None:
            return snap, False
    version, changes, pairs, snapshot_at = take_snapshot(r, ws, None)
    snap, _ = build_snapshot(ws, version, pairs, meta={"job_id": "bootstrap", "changes": changes,
                                                       "snapshot_at": snapshot_at})
    store.publish(snap)
    return load_current(ws, r), True

# KEYS: flag, seq, pairs, changes ; ARGV: job id, version floor
_SNAPSHOT = """
local f = redis.call('GET', KEYS[1])
if f and ARGV[1] ~= '' and string.sub(f, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then redis.call('SET', KEYS[2], floor) end
local v = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
return {v, redis.call('GET', KEYS[4]) or '0', redis.call('HGETALL', KEYS[3]), t[1], t[2]}
"""


def take_snapshot(redis_client: redis.Redis, ws: Workspace, job_id: str | None):
    """(version, changes counter, live pair records, snapshot time) — atomically."""
    project = ws.name
    disk = versions_on_disk(ws)
    script = redis_client.register_script(_SNAPSHOT)
    v, changes, flat, sec, usec = script(
        keys=[pkey(project, "rebuild", "queued"), pkey(project, "index", "seq"),
              pkey(project, "pairs"), pkey(project, "pairs", "changes")],
        args=[job_id or "", disk[-1] if disk else 0])
    raw = dict(zip(flat[0::2], flat[1::2]))
    return int(v), int(changes), pairs_from_records(raw), int(sec) + int(usec) / 1e6


def build_snapshot(ws: Workspace, version: int, pairs: list[dict], meta: dict | None = None,
                   text_encoder_loader=None):
    """The index of ``pairs`` over the workspace features. Returns (IndexSnapshot, skipped).

    A pair whose text is a written description (``text_id`` None) is a reference of its own: its
    features come from :func:`xmodal.project.references.description_features` (text row -1 in
    ``pair_rows``, the text in ``meta["written_references"]`` by annotation id)."""
    cfg = ws.config
    select = cfg["select"]
    enhance = parse_enhance(cfg.get("enhance"))
    with ws.items_lock(shared=True):   # items, features and bridge of one item set (items.py adds)
        image_ids, text_ids = ws.ids("image"), ws.ids("text")
        # memory-mapped: they stay the files of these ids after the lock (items.py writes new ones)
        columns = {m: open_columns(ws, m) for m in ("image", "text")}
        img_row, txt_row = ws.row_of("image"), ws.row_of("text")
        saved_bridge = ws.bridge(image=False) if "bridge" in enhance else None
        # the file X is a mapping of (the map's image space is kept under its key)
        image_key = file_key(ws.features_path("image")) if "map" in enhance else None
    X, Y = columns["image"].features, columns["text"].features
    rows, ann_ids, seen, skipped, written = [], [], set(), [], {}
    for p in pairs:
        i = img_row.get(str(p.get("image_id")))
        desc = p.get("description") if p.get("text_id") is None else None
        t = -1 if desc else txt_row.get(str(p.get("text_id")))
        if i is None or t is None:
            skipped.append(p["annotation_id"])
            continue
        key = (i, t if t >= 0 else "written:" + desc)
        if key in seen:
            continue
        seen.add(key)
        rows.append((i, t))
        ann_ids.append(p["annotation_id"])
        if desc:
            written[int(p["annotation_id"])] = desc
    pair_rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    extra = None
    if written:
        from xmodal.project.references import description_features

        try:
            extra = description_features(ws, list(written.values()), text_encoder_loader)
        except (XmodalError, ImportError, OSError, ValueError) as exc:
            # the other pairs must not wait for the text encoder: build without the written ones
            log.error(kv("rebuild.written_references_failed", project=ws.name, n=len(written),
                         error=f"{type(exc).__name__}: {exc}"))
            keep = pair_rows[:, 1] >= 0
            skipped += [a for a, k in zip(ann_ids, keep) if not k]
            ann_ids = [a for a, k in zip(ann_ids, keep) if k]
            pair_rows, written = pair_rows[keep], {}
    measure = cfg["measure"]
    csls_k = int(cfg.get("csls_k") or 10) if "csls" in enhance else None
    needed = 2 if measure == "pearson" else 1
    col_stats = {"image": None, "text": None}
    hub = {"image": None, "text": None}
    timings, ann, calibration, bridge, fitted = {}, {}, None, None, None
    if len(pair_rows) >= needed:
        index = SSRIndex(measure=measure, sparse_top_k=cfg.get("sparse_top_k"),
                         sparse_power=float(cfg.get("sparse_power") or 1.0),
                         standardize="zscore" in enhance)
        t0 = time.perf_counter()
        image_ssr, text_ssr, image_refs, text_refs, image_stats, text_stats = _ssr(
            columns, pair_rows, extra, z_scored=index.standardize)
        timings["ssr_s"] = round(time.perf_counter() - t0, 4)
        # the codes wait for the bridge's weight: then they are written once, into the fused codes
        index.fit_ssr(image_ssr, text_ssr, pair_rows, image_refs, text_refs, image_stats, text_stats, codes=False,
                      standardized=index.standardize)
        image_refs, text_refs = index.image_references_, index.text_references_
        if index.standardize:
            col_stats = {"image": np.stack(index.image_col_stats_), "text": np.stack(index.text_col_stats_)}
        bridge = saved_bridge
        # leave-one-out over the references, once: the bridge's weight and the calibration
        t0 = time.perf_counter()
        query_ssr, target_ssr, loo_pairs, options = _task_view(index, select)
        scored = list(loo_scores(query_ssr, target_ssr, loo_pairs, **options))
        timings["leave_one_out_s"] = round(time.perf_counter() - t0, 4)
        if bridge is not None:
            t0 = time.perf_counter()
            bridge = _bridge(index, select, bridge, bridge_space(ws, bridge, Y, len(X)), scored)
            timings["bridge_s"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        if bridge is not None and bridge["weight"] > 0:
            image_codes, text_codes = _fused_codes(index, bridge)
        else:
            index.derive_codes()
            image_codes, text_codes = index.image_codes_, index.text_codes_
        timings["codes_s"] = round(time.perf_counter() - t0, 4)
        if "map" in enhance and bridge is not None and bridge["weight"] > 0:
            # the self-trained map (pseudomap), fitted on the codes above; only where the bridge
            # is on: on the shapes (bridge off) it lowered MAP by up to 9% (docs/results.md)
            t0 = time.perf_counter()
            X, Y = np.array(X, np.float32), np.array(Y, np.float32)   # the map reads them all
            fitted = self_trained_map(X, Y, image_codes, text_codes, pair_rows, space=map_space(ws, X, image_key))
            if fitted is not None:
                loo = with_bridge(scored, loo_pairs, bridge["query_bridge"], bridge["target_bridge"],
                                  bridge["weight"])
                map_weight, evidence = choose_map_weight(fitted, X, Y, loo_pairs, loo, select)
                logs = {str(b): round(v, 4) for b, v in evidence["log_rank"].items()}
                meta = dict(meta or {}, map={"weight": map_weight, "references": evidence["references"],
                                             "log_rank": logs})
                fitted = fitted if map_weight > 0 else None
            if fitted is not None:
                image_codes = fuse_codes(image_codes, image_map_codes(X, fitted), map_weight)
                text_codes = fuse_codes(text_codes, text_map_codes(Y, fitted), map_weight)
            timings["map_s"] = round(time.perf_counter() - t0, 4)
        if csls_k:
            t0 = time.perf_counter()
            hub["image"], hub["text"], how = hub_terms(
                ws, source_key(ws, columns.values()), image_codes, text_codes, csls_k, pair_rows, version)
            meta = dict(meta or {}, csls=how)
            timings["hubness_s"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        calibration = calibrate(index, select, bridge, scored)
        timings["calibration_s"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()   # ANN over the codes of a modality above ann_threshold items
        ann = build_ann({"image": image_codes, "text": text_codes}, cfg)
        if ann:
            timings["ann_s"] = round(time.perf_counter() - t0, 4)
    else:  # unlabelled: no cross-modal signal yet, every score is 0
        image_codes = np.zeros((len(X), 0), np.float32)
        text_codes = np.zeros((len(Y), 0), np.float32)
        image_refs = l2_normalize(X[pair_rows[:, 0]]) if len(pair_rows) else np.zeros((0, X.shape[1]), np.float32)
        text_refs = np.zeros((len(pair_rows), Y.shape[1]), np.float32)
        indexed = pair_rows[:, 1] >= 0
        if indexed.any():
            text_refs[indexed] = l2_normalize(Y[pair_rows[indexed, 1]])
        if extra is not None:
            text_refs[~indexed] = l2_normalize(extra)
    if written:
        meta = dict(meta or {}, written_references={str(a): d for a, d in written.items()})
    if calibration is not None:
        meta = dict(meta or {}, calibration=calibration)
    fused = bridge is not None and bridge["weight"] > 0
    if bridge is not None:
        meta = dict(meta or {}, bridge={"weight": bridge["weight"], **bridge["evidence"]})
    snap = IndexSnapshot(
        project=ws.name, version=version, measure=measure, select=select,
        sparse_top_k=cfg.get("sparse_top_k"), sparse_power=float(cfg.get("sparse_power") or 1.0),
        image_ids=np.asarray(image_ids, dtype=str), text_ids=np.asarray(text_ids, dtype=str),
        image_codes=np.ascontiguousarray(image_codes, np.float32),
        text_codes=np.ascontiguousarray(text_codes, np.float32),
        image_refs=np.asarray(image_refs, np.float32), text_refs=np.asarray(text_refs, np.float32),
        pair_rows=pair_rows, annotation_ids=np.asarray(ann_ids, dtype=np.int64),
        medoid_ids=np.asarray(ws.medoid_ids(), dtype=str),
        image_col_stats=col_stats["image"], text_col_stats=col_stats["text"],
        image_hub=hub["image"], text_hub=hub["text"], csls_k=csls_k, ann=ann,
        bridge_weight=bridge["weight"] if fused else 0.0,
        bridge_means=np.stack(bridge["means"]) if fused else None,
        bridge_classes=bridge["classes"] if fused else None,
        bridge_class_emb=bridge["class_embeddings"] if fused else None,
        bridge_basis=bridge["basis"] if fused else None,
        map_weight=map_weight if fitted is not None else 0.0,
        map_image_mean=None if fitted is None else fitted["image_mean"],
        map_text_mean=None if fitted is None else fitted["text_mean"],
        map_matrix=None if fitted is None else fitted["matrix"],
        map_text_matrix=None if fitted is None else fitted.get("text_matrix"),
        meta=dict(meta or {}, built_at=time.time(), skipped_pairs=len(skipped), enhance=enhance,
                  encoders={m: _encoder_id(ws, m) for m in ("image", "text")}, **timings))
    return snap, skipped


def _ssr(columns: dict, pair_rows: np.ndarray, extra: np.ndarray | None, z_scored: bool):
    """Eq. 10 for every item: ``(image SSR, text SSR, image reference features, text reference
    features, image column stats, text column stats)``, the columns of item references kept
    between rebuilds with their z-score statistics (:mod:`xmodal.index.columns`: one more label
    computes one column per modality), those of written descriptions (text row -1, features
    ``extra`` in order) computed now; ``z_scored``: the SSR z-scored with those statistics (as
    kept), else the cosines."""
    cols_img, cols_txt = columns["image"], columns["text"]
    image_ssr, image_stats = cols_img.get(pair_rows[:, 0], z_scored)
    indexed = pair_rows[:, 1] >= 0
    if indexed.all():
        text_ssr, text_stats = cols_txt.get(pair_rows[:, 1], z_scored)
    else:
        text_ssr = np.empty((len(cols_txt.features), len(pair_rows)), np.float32, order="F")
        text_stats = (np.empty(len(pair_rows), np.float32), np.empty(len(pair_rows), np.float32))
        for part, (cols, stats) in ((indexed, cols_txt.get(pair_rows[indexed, 1], z_scored)),
                                    (~indexed, cols_txt.of_vectors(extra, z_scored))):
            text_ssr[:, part] = cols
            text_stats[0][part], text_stats[1][part] = stats
    text_refs = np.empty((len(pair_rows), cols_txt.features.shape[1]), np.float32)
    text_refs[indexed] = cols_txt.features[pair_rows[indexed, 1]]
    if (~indexed).any():
        text_refs[~indexed] = extra
    return image_ssr, text_ssr, cols_img.features[pair_rows[:, 0]], text_refs, image_stats, text_stats


def _fused_codes(index: SSRIndex, bridge: dict) -> tuple[np.ndarray, np.ndarray]:
    """``fuse_codes(codes, bridge, w)`` of both modalities (:func:`xmodal.core.bridge.fuse_codes`)
    written once: the SSR codes go straight into the first columns at norm sqrt(1 − w) (a separate
    code array copied into the fused one was 0.1–0.3 s of a 100k rebuild, most of it first-touch
    page faults)."""
    w, k = float(bridge["weight"]), len(index.pairs_)
    out = {}
    for m, n in (("image", len(index.image_ssr_)), ("text", len(index.text_ssr_))):
        out[m] = np.empty((n, k + bridge[m].shape[1]), np.float32)
        np.multiply(bridge[m], np.float32(np.sqrt(w)), out=out[m][:, k:])
    index.derive_codes(out["image"][:, :k], out["text"][:, :k], norm=float(np.sqrt(1.0 - w)))
    return out["image"], out["text"]


def _task_view(index: SSRIndex, select: str):
    """``(query SSR, target SSR, pairs as (query row, target row), loo options)`` for tasks about
    ``select`` items: the orientation leave-one-out scores them in."""
    if select == "image":
        q, t, pairs = index.image_ssr_, index.text_ssr_, index.pairs_
        qs, ts = index.image_col_stats_, index.text_col_stats_
    else:
        q, t, pairs = index.text_ssr_, index.image_ssr_, index.pairs_[:, ::-1]
        qs, ts = index.text_col_stats_, index.image_col_stats_
    if index.ssr_standardized_:   # the SSR are z-scores already (kept columns)
        qs = ts = None
    return q, t, pairs, dict(measure=index.measure, query_stats=qs, target_stats=ts,
                             sparse_top_k=index.sparse_top_k, sparse_power=index.sparse_power)


BRIDGE_SPACE_ARRAYS = ("image", "text", "mean_image", "mean_text", "basis")


def bridge_space(ws: Workspace, saved: dict, text_features: np.ndarray, n_images: int) -> dict:
    """The part of the class bridge that no label changes: both modalities' centred bridge embeddings on their
    principal basis (``xmodal.core.bridge``). It depends on the workspace's features only, so it is
    computed once and kept beside them (``features/bridge-space/<key>/``, :mod:`xmodal.index.kept`),
    keyed by the files it was made of: recomputed each rebuild, its SVD was most of a COCO-mini
    rebuild (0.12 of 0.17 s) and grows with the collection."""
    # each source is written anew (a new inode) by an atomic replace
    here = key_dir(ws.bridge_space_path, ";".join(file_key(p) for p in (ws.bridge_path, ws.features_path("text")))
                   + f";{BRIDGE_DIMS}")
    z = read_arrays(here, BRIDGE_SPACE_ARRAYS)
    if z is not None:
        return {"image": z["image"], "text": z["text"], "means": (z["mean_image"], z["mean_text"]),
                "basis": z["basis"] if z["basis"].size else None}
    image_rows = saved["image"] if saved["image"] is not None else (ws.bridge() or {}).get("image")
    if image_rows is None or len(image_rows) != n_images:
        # read after the rebuild's item lock: items were added meanwhile; the next rebuild has them
        raise DataError(f"workspace {ws.name!r}: the class bridge changed during this rebuild; "
                        "the next rebuild builds on the new items")
    B_img, mean_img = centred(image_rows)
    B_txt, mean_txt = centred(text_features)
    basis = principal_basis(B_img, B_txt)   # the bridge part of the codes: its top directions
    space = {"image": project(B_img, basis), "text": project(B_txt, basis), "means": (mean_img, mean_txt),
             "basis": basis}
    keep_arrays(here, {"image": space["image"], "text": space["text"], "mean_image": mean_img,
                       "mean_text": mean_txt, "basis": np.zeros(0, np.float32) if basis is None else basis})
    try:
        (ws.root / "features" / "bridge_space.npz").unlink(missing_ok=True)   # where earlier versions kept it
    except OSError:
        pass
    return space


def map_space(ws: Workspace, image_features: np.ndarray, image_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The self-trained map's image space (:func:`xmodal.core.pseudomap.image_space`: the mean and
    principal directions of the image features), kept beside the features as the bridge space is
    (``features/map-space/<key>/``): it needs no label, and its eigendecomposition was 0.35-0.55 s
    of every rebuild with the map at Flickr8k size (6,000 images). ``image_key``: the
    :func:`xmodal.fileio.file_key` of the features file ``image_features`` were read from (taken
    under the items lock: a file replaced since is another key)."""
    here = key_dir(ws.root / "features" / "map-space", f"{image_key};{PCA_DIMS};{IMAGE_SPACE_SAMPLE}")
    z = read_arrays(here, ("mean", "basis"))
    if z is not None and len(z["mean"]) == image_features.shape[1]:
        return z["mean"], z["basis"]
    mean, basis = image_space(image_features)
    keep_arrays(here, {"mean": mean, "basis": basis})
    return mean, basis


def _bridge(index: SSRIndex, select: str, saved: dict, space: dict, scored=None) -> dict:
    """The class bridge of this index (``xmodal.core.bridge``): the workspace's bridge ``space``
    (:func:`bridge_space`) and the weight the labels support (0: SSR alone ranks better)."""
    B_img, B_txt = space["image"], space["text"]
    q, t, pairs, options = _task_view(index, select)
    qb, tb = (B_img, B_txt) if select == "image" else (B_txt, B_img)
    weight, evidence = choose_weight(q, t, qb, tb, pairs, scored=scored, **options)
    return {"weight": weight, "evidence": {
                "bridge_percentile": evidence["bridge_percentile"], "references": evidence["references"],
                **{k: {str(w): round(v, 4) for w, v in evidence[k].items()} for k in ("mrr", "log_rank")}},
            "image": B_img, "text": B_txt, "query_bridge": qb, "target_bridge": tb,
            "means": space["means"], "basis": space["basis"],
            "classes": saved["classes"], "class_embeddings": saved["class_embeddings"]}


def calibrate(index: SSRIndex, select: str, bridge: dict | None = None, scored=None) -> dict:
    """Platt parameters of "the top candidate is right" for tasks about ``select`` items, from
    leave-one-out over the references (:mod:`xmodal.core.calibration`; ``scored``: its scores
    already computed), scored as the index scores: fused with the class bridge (:func:`_bridge`)
    when it has a weight."""
    q, t, pairs, options = _task_view(index, select)
    fuse = None if not bridge or not bridge["weight"] else \
        (bridge["query_bridge"], bridge["target_bridge"], bridge["weight"])
    z, hit = leave_one_out(q, t, pairs, fuse=fuse, scored=scored, **options)
    return PlattCalibrator().fit(z, hit).to_dict()


def _encoder_id(ws: Workspace, modality: str) -> str | None:
    try:
        return ws.features_info(modality).get("encoder_id")
    except DataError:
        return None


def unlabelled_snapshot(ws: Workspace) -> IndexSnapshot:
    """Version 0: what the backend answers before the first rebuild finished (no signal)."""
    cfg = ws.config
    ids_i, ids_t = ws.ids("image"), ws.ids("text")
    return IndexSnapshot(
        project=ws.name, version=0, measure=cfg["measure"], select=cfg["select"],
        image_ids=np.asarray(ids_i, dtype=str), text_ids=np.asarray(ids_t, dtype=str),
        image_codes=np.zeros((len(ids_i), 0), np.float32), text_codes=np.zeros((len(ids_t), 0), np.float32),
        image_refs=np.zeros((0, 0), np.float32), text_refs=np.zeros((0, 0), np.float32),
        pair_rows=np.zeros((0, 2), np.int64), annotation_ids=np.zeros(0, np.int64),
        medoid_ids=np.asarray(ws.medoid_ids(), dtype=str), meta={"built_at": 0.0})
