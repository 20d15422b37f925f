"""``xmodal project create``: a data folder -> a workspace -> a Label Studio project ready to label.

Steps (each one idempotent: a rerun with the same arguments adds nothing twice)

1. **Label Studio check** (when a URL is given): connect with the API key *before* any heavy work,
   so a wrong key or an unreachable server fails in a second with a message saying what to fix.
2. **Data**: a COCO-mini folder (``pairs.json``) or the generic folder format
   (:func:`xmodal.datasets.load_folder`).
3. **Features**: both modalities embedded through the on-disk feature cache
   (:func:`xmodal.encoders.cache.embed_with_cache`); the fitted text encoder's state is saved in
   the workspace (``SIFEncoder.save``) so ``/search`` embeds free text the same way. A rerun on the
   same items and encoders reuses the workspace's features and loads no encoder.
4. **Selection**: k-medoids (cosine) on the selected modality, medoids in anytime order; ``k="auto"``
   uses the canopy method. A rerun keeps the medoids (their pairs may already be annotated); a
   larger k *extends* them (``KMedoidsSelector.extend``), a smaller one is ignored with a note.
5. **Candidates**: each task offers ``candidates`` items of the other modality, best first by the
   current index. Before the index can rank (Pearson needs 2 pairs) there is no cross-modal signal
   at all, so every task offers the same *diverse* set: the k-medoids of the other modality, which
   span its clusters. When the true match is not among them the annotator picks
   "None of these" and pastes its id (the label configs' ``match_id`` field); the backend stores
   that as a pair. Rerunning ``create`` (or ``grow``) re-ranks the options of the unlabelled tasks
   with the current index (:func:`refresh_task_options`).
6. **Label Studio** (when a URL is given): the project (``label_config/image_to_text.xml`` for
   ``select=image``, ``text_to_image.xml`` for ``select=text``, "Uncertainty sampling"), image access,
   the medoids imported as tasks in anytime order (``data.item_id``, ``data.cluster``,
   ``data.options``), the workspace linked (``label_studio.project_id``), the first index version
   published, the ML backend connected (``ml.create``, which registers ``<backend>/webhook`` itself),
   the initial predictions pushed (empty ``result`` and a score that orders tasks in anytime order
   until 2 pairs exist) and the project's ``model_version`` set to the index version, so that
   "Uncertainty sampling" serves tasks by those scores.

Images reach Label Studio in one of three ways (``images``):

- ``local``: a local-files import storage on the images folder; tasks carry
  ``/data/local-files/?d=<path relative to the document root>``. Label Studio must run with
  ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT`` a parent of the images
  (``document_root`` here, default ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` or ``/``, Label
  Studio's own default). The first URL is fetched once through Label Studio to prove it works.
- ``inline``: JPEG thumbnails as ``data:`` URLs inside the task data (works with any Label Studio;
  tasks get bigger: ~40 KB per image-to-text task, ~60 KB per text-to-image task).
- a URL prefix (``http(s)://…/``): the image id is appended (a web server or bucket you run).
- ``auto`` (default): ``local`` when Label Studio accepts it, else ``inline``, with a note.

Without a Label Studio URL only steps 2–5 run and ``tasks.json`` (Label Studio's import format)
is written to the workspace.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from xmodal.errors import ConfigError, DataError, XmodalError

log = logging.getLogger(__name__)

LABEL_CONFIGS = {"image": "image_to_text.xml", "text": "text_to_image.xml"}
BACKEND_TITLE = "xmodal"
TASKS_FILE = "tasks.json"
CANDIDATES_FILE = "candidates.json"
IMAGE_MODES = ("auto", "local", "inline")
MEDOID_THUMB = 512
OPTION_THUMB = 160


def label_config_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "label_config"


# -- options and result -----------------------------------------------------------------------

@dataclass
class ProjectSpec:
    """What ``xmodal project create`` was asked for."""

    name: str
    data: str | os.PathLike
    select: str = "image"
    k: int | str = "auto"                  # an int, or "auto" (canopy)
    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "sif"
    measure: str = "pearson"
    # index enhancements beyond the paper ("zscore", "csls"; list or "zscore,csls"):
    # None keeps the workspace's setting (new workspace: none = faithful SSM-AL)
    enhance: list[str] | str | None = None
    captions: str = "first"                # COCO-mini: first caption per image, or all 5
    candidates: int = 10
    label_studio_url: str | None = None
    api_key: str | None = None
    backend_url: str | None = None
    title: str | None = None               # Label Studio project title (default: name)
    images: str = "auto"                   # auto | local | inline | http(s) URL prefix
    document_root: str | None = None       # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    label_config: str | os.PathLike | None = None
    model_dir: str | os.PathLike | None = None
    feature_cache: str | os.PathLike | None = None
    # image (and MiniLM) features computed by `xmodal worker`s as chunked RQ jobs (workers.embed);
    # SIF texts stay in-process (10k+ texts/s here, less than a chunk's round trip)
    workers_embed: bool = False
    seed: int = 0


@dataclass
class BootstrapResult:
    ws: object                             # xmodal.workspace.Workspace
    k: int
    medoid_ids: list[str]
    candidate_pool: list[str]
    reused_features: bool = False
    new_medoids: int = 0
    ls_project_id: int | None = None
    ls_url: str | None = None
    task_ids: dict[str, int] = field(default_factory=dict)
    new_tasks: int = 0
    index_version: int | None = None
    model_version: str | None = None
    predictions_pushed: int = 0
    images: str | None = None
    ml_backend_id: int | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"project": self.ws.name, "workspace": str(self.ws.root), "k": self.k,
                "medoids": self.medoid_ids, "new_medoids": self.new_medoids,
                "reused_features": self.reused_features, "label_studio_project": self.ls_project_id,
                "label_studio_url": self.ls_url, "tasks": len(self.task_ids), "new_tasks": self.new_tasks,
                "index_version": self.index_version, "model_version": self.model_version,
                "predictions_pushed": self.predictions_pushed, "images": self.images,
                "ml_backend_id": self.ml_backend_id, "notes": self.notes, "timings": self.timings}


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class _Timer:
    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 3)


# -- data -------------------------------------------------------------------------------------

def load_data(path, captions: str = "first"):
    """A COCO-mini folder (``pairs.json``) or the generic folder format; DataError otherwise."""
    from xmodal import datasets

    if path in (None, ""):
        raise DataError("no data folder: pass --data PATH (a folder with images/ and texts.jsonl, "
                        "or a COCO-mini folder with pairs.json)")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"--data {path}: no such folder. Pass a folder in the generic format "
                        "(images/ + texts.jsonl, see `xmodal project create --help`) or a COCO-mini "
                        "folder (pairs.json)")
    if not root.is_dir():
        raise DataError(f"--data {path} is a file, not a folder")
    if (root / "pairs.json").is_file() and not (root / "texts.jsonl").is_file() \
            and not (root / "texts.csv").is_file():
        ds = datasets.load_coco_mini(root, captions=captions)
        fmt = "coco-mini"
    else:
        ds = datasets.load_folder(root)
        fmt = "folder"
    if ds.image_paths is None or ds.texts is None:
        raise DataError(f"--data {path}: raw images and texts are needed to embed")
    return ds, fmt


# -- features ---------------------------------------------------------------------------------

def _embed(modality: str, name: str, items: list[str], cache_root, fit: bool, say: Say):
    return _embed_with(modality, name, items, cache_root, fit, say, workers=False)


def _embed_on_workers(modality: str, name: str, items: list[str], cache_root, fit: bool, say: Say):
    return _embed_with(modality, name, items, cache_root, fit, say, workers=True)


def _embed_with(modality: str, name: str, items: list[str], cache_root, fit: bool, say: Say,
                workers: bool):
    from xmodal.encoders import get_encoder
    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    t0 = time.perf_counter()
    enc = get_encoder(modality, name, progress=False)
    if workers and not name.startswith("sif"):
        from workers.embed import embed_distributed

        F, failures = embed_distributed(enc, items, FeatureCache(cache_root), fit=fit,
                                        progress=False, say=say)
    else:
        F, failures = embed_with_cache(enc, items, FeatureCache(cache_root), fit=fit, progress=False)
    F = np.asarray(F, dtype=np.float32)
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


def ensure_features(ws, ds, spec: ProjectSpec, say: Say = _quiet):
    """Items and features of both modalities in the workspace; returns (X, Y, reused)."""
    cfg = ws.config
    reuse = (_same_items(ws, ds) and cfg["encoders"].get("image") == spec.image_encoder
             and cfg["encoders"].get("text") == spec.text_encoder
             and _features_ok(ws, "image", ds.n_images) and _features_ok(ws, "text", ds.n_texts)
             and (not spec.text_encoder.startswith("sif") or ws.text_encoder_state_path.exists()))
    if reuse:
        say(f"reusing the features in {ws.root} (same items and encoders)")
        return ws.load_features("image"), ws.load_features("text"), True
    ws.save_items(ds.image_ids, [str(p) for p in ds.image_paths], ds.text_ids, ds.texts)
    embed = _embed_on_workers if spec.workers_embed else _embed
    i_enc, X = embed("image", spec.image_encoder, [str(p) for p in ds.image_paths],
                     spec.feature_cache, False, say)
    t_enc, Y = embed("text", spec.text_encoder, list(ds.texts), spec.feature_cache, True, say)
    ws.save_features("image", X, i_enc.encoder_id)
    ws.save_features("text", Y, t_enc.encoder_id)
    if hasattr(t_enc, "save"):
        state = ws.text_encoder_state_path
        tmp = state.with_name(f".{state.stem}.{os.getpid()}.tmp{state.suffix}")
        t_enc.save(tmp)
        os.replace(tmp, state)
    return X, Y, False


# -- selection --------------------------------------------------------------------------------

def resolve_k(k, F: np.ndarray, seed: int = 0) -> int:
    """An int k (checked against the pool) or ``"auto"`` (canopy method, at least 2)."""
    n = len(F)
    if isinstance(k, str):
        if k.strip().lower() != "auto":
            try:
                k = int(k)
            except ValueError:
                raise ConfigError(f"--k must be a number or 'auto', not {k!r}") from None
        else:
            from xmodal.core.medoids import canopy_k

            return int(min(max(canopy_k(F, random_state=seed), 2), n))
    k = int(k)
    if k < 1:
        raise ConfigError(f"--k must be at least 1 (got {k}); the Pearson similarity needs 2 pairs")
    if k > n:
        raise ConfigError(f"--k {k} is more than the {n} items to choose medoids from")
    return k


def _selector(k: int, seed: int):
    from xmodal.core.medoids import KMedoidsSelector

    return KMedoidsSelector(k, random_state=seed)


def ensure_selection(ws, F: np.ndarray, select: str, k: int, seed: int = 0,
                     say: Say = _quiet) -> tuple[list[str], int]:
    """Medoids of ``select`` in anytime order, keeping any existing ones. Returns (ids, added)."""
    ids = ws.ids(select)
    sel = ws.selection
    if sel and sel.get("modality") == select and sel.get("medoid_ids"):
        current = list(sel["medoid_ids"])
        rows = ws.row_of(select)
        if all(m in rows for m in current):
            if k <= len(current):
                if k < len(current):
                    say(f"note: the project already has {len(current)} medoids; a smaller k ({k}) "
                        "discards none (their pairs may be annotated)")
                return current, 0
            return extend_selection(ws, F, select, k - len(current), seed), k - len(current)
    selector = _selector(k, seed).fit(F)
    medoids = [ids[r] for r in selector.medoid_indices_]
    ws.save_selection(medoids, selector.labels_, modality=select)
    return medoids, len(medoids)


def extend_selection(ws, F: np.ndarray, select: str, n_new: int, seed: int = 0) -> list[str]:
    """Append ``n_new`` medoids (greedy coverage, ``KMedoidsSelector.extend``); old ones stay first."""
    ids = ws.ids(select)
    rows = ws.row_of(select)
    current = ws.medoid_ids()
    free = len(ids) - len(current)
    if n_new > free:
        raise ConfigError(f"cannot add {n_new} medoids: only {free} {select}s are not medoids yet")
    selector = _selector(max(len(current), 1), seed)
    selector.medoid_indices_ = np.asarray([rows[m] for m in current], dtype=np.int64)
    selector.extend(F, n_new)
    medoids = [ids[r] for r in selector.medoid_indices_]
    assert medoids[:len(current)] == current
    ws.save_selection(medoids, selector.labels_, modality=select)
    return medoids


def ensure_candidate_pool(ws, F_other: np.ndarray, other: str, n: int, seed: int = 0) -> list[str]:
    """The cold-start options: ``n`` k-medoids of the other modality (kept in candidates.json)."""
    from xmodal.workspace import atomic_write_json

    path = ws.root / CANDIDATES_FILE
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(path.read_text())
        if saved.get("modality") == other and len(saved.get("pool", [])) == min(n, len(F_other)) \
                and all(c in ws.row_of(other) for c in saved["pool"]):
            return list(saved["pool"])
    ids = ws.ids(other)
    n = min(n, len(ids))
    if n <= 0:
        return []
    pool = [ids[r] for r in _selector(n, seed).fit(F_other).medoid_indices_]
    atomic_write_json(path, {"modality": other, "pool": pool,
                             "why": "no cross-modal signal before 2 pairs: a diverse sample "
                                    "(k-medoids of this modality) is offered to every task"})
    return pool


# -- image URLs -------------------------------------------------------------------------------

def document_root(explicit: str | None = None) -> Path:
    root = explicit or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or os.sep
    return Path(root).expanduser().resolve()


def images_folder(paths) -> Path:
    """The deepest folder holding every image (the local storage to register)."""
    parents = {str(Path(p).resolve().parent) for p in paths}
    return Path(os.path.commonpath(sorted(parents))) if parents else Path(os.sep)


def local_files_url(path, root: Path) -> str:
    p = Path(path).resolve()
    try:
        rel = p.relative_to(root)
    except ValueError:
        raise ConfigError(f"image {p} is not under Label Studio's local-files document root {root}; "
                          "pass --document-root (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) "
                          "or --images inline") from None
    return "/data/local-files/?d=" + urllib.parse.quote(rel.as_posix(), safe="/")


def inline_url(path, max_side: int) -> str:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=80)
    except OSError as exc:
        log.warning("cannot read image %s for an inline thumbnail: %s", path, exc)
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ImageURLs:
    """image id -> what Label Studio's browser loads, in one of the modes of the module doc."""

    def __init__(self, ws, mode: str, root: Path | None = None):
        self.ws, self.mode, self.root = ws, mode, root
        self._paths = dict(zip(ws.ids("image"), ws.contents("image")))
        self._cache: dict[tuple[str, int], str] = {}

    def __call__(self, image_id: str, max_side: int = MEDOID_THUMB) -> str:
        key = (image_id, max_side if self.mode == "inline" else 0)
        if key not in self._cache:
            path = self._paths[image_id]
            if self.mode == "inline":
                self._cache[key] = inline_url(path, max_side)
            elif self.mode == "local":
                self._cache[key] = local_files_url(path, self.root)
            else:  # URL prefix
                self._cache[key] = self.mode.rstrip("/") + "/" + urllib.parse.quote(image_id, safe="/")
        return self._cache[key]


# -- tasks ------------------------------------------------------------------------------------

def ranked_candidates(snap, select: str, item_id: str, pool: list[str], n: int) -> list[str]:
    """Top ``n`` of the other modality for ``item_id`` by the index, or the diverse pool."""
    if snap is not None and snap.has_signal:
        return [cid for cid, _ in snap.rank(select, item_id, None, n)]
    return list(pool[:n])


def task_options(ws, candidates: list[str], urls: ImageURLs, texts: dict | None = None) -> list[dict]:
    """``data.options`` of a task: one ``{"value": id, "html": ...}`` per candidate (captions for
    image tasks, thumbnails for text tasks). ``texts``: id -> text, if the caller has it already."""
    if ws.select == "image":
        texts = texts if texts is not None else dict(zip(ws.ids("text"), ws.contents("text")))
        return [{"value": c, "html": html.escape(texts[c], quote=False)} for c in candidates]
    return [{"value": c, "html": f"<img src='{urls(c, OPTION_THUMB)}' style='max-height:120px' "
                                 f"title='{html.escape(c)}'>"} for c in candidates]


def task_data(ws, item_id: str, cluster: int, candidates: list[str], urls: ImageURLs) -> dict:
    """``data`` of one Label Studio task (keys documented in label_config/README.md)."""
    texts = dict(zip(ws.ids("text"), ws.contents("text")))
    options = task_options(ws, candidates, urls, texts)
    if ws.select == "image":
        return {"item_id": item_id, "image": urls(item_id, MEDOID_THUMB), "options": options,
                "cluster": int(cluster)}
    return {"item_id": item_id, "text": texts[item_id], "options": options, "cluster": int(cluster)}


def build_tasks(ws, medoid_ids: list[str], pool: list[str], n_candidates: int, urls: ImageURLs,
                snap=None) -> list[dict]:
    """One task per medoid, in anytime order; ``cluster`` = the medoid's position."""
    select = ws.select
    return [{"data": task_data(ws, m, j, ranked_candidates(snap, select, m, pool, n_candidates), urls)}
            for j, m in enumerate(medoid_ids)]


# -- Label Studio -----------------------------------------------------------------------------

def read_label_config(select: str, path=None) -> tuple[str, str]:
    """(xml, template name) for the select modality, or the file given."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"--label-config {path}: no such file")
        return p.read_text(), p.name
    p = label_config_dir() / LABEL_CONFIGS[select]
    if not p.is_file():
        raise ConfigError(f"the labelling config {p} is missing (run from a source checkout, or pass "
                          "--label-config FILE)")
    return p.read_text(), p.name


def _check_local_url(client, url: str) -> bool:
    try:
        r = client._get(url.split("?", 1)[0], **dict(urllib.parse.parse_qsl(url.split("?", 1)[1])))
    except Exception as exc:  # noqa: BLE001 - any failure means "not served"
        log.info("local-files check of %s failed: %s", url, exc)
        return False
    return r.status_code == 200 and len(r.content) > 0


def setup_images(client, pid: int, ws, spec: ProjectSpec, say: Say) -> ImageURLs:
    """Decide how Label Studio shows images (see the module doc) and prepare it."""
    mode = spec.images or "auto"
    if mode.startswith(("http://", "https://")):
        return ImageURLs(ws, mode)
    if mode not in IMAGE_MODES:
        raise ConfigError(f"--images must be auto, local, inline or an http(s):// URL prefix, not {mode!r}")
    if mode == "inline":
        return ImageURLs(ws, "inline")
    root = document_root(spec.document_root)
    folder = images_folder(ws.contents("image"))
    problem = None
    try:
        if folder == root or root not in folder.parents:
            raise ConfigError(f"the images folder {folder} is not strictly under Label Studio's local-files "
                              f"document root {root}; pass --document-root")
        client.ensure_local_storage(pid, str(folder), title=f"xmodal images ({ws.name})")
        urls = ImageURLs(ws, "local", root)
        first = ws.ids("image")[0]
        if not _check_local_url(client, urls(first)):
            raise ConfigError(f"Label Studio does not serve {urls(first)}: is its "
                              f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT {root}? (pass --document-root)")
        return urls
    except ConfigError as exc:
        if mode == "local":
            raise
        problem = str(exc)
    say(f"note: images are sent inline as thumbnails (local files not usable: {problem[:300]})")
    return ImageURLs(ws, "inline")


def _record_tasks(r, ws, task_ids: dict[str, int], tasks: list[dict]) -> None:
    from workers.task_registry import TaskRegistry

    by_item = {t["data"]["item_id"]: t for t in tasks}
    TaskRegistry(r, ws.name).record([{"id": tid, "data": by_item[item]["data"]}
                                     for item, tid in task_ids.items() if item in by_item])


def publish_initial_index(r, ws):
    """The current index, building version 1 (or the next) when the project has none yet."""
    from workers.rebuild import build_snapshot, take_snapshot
    from xmodal.index_store import IndexStore, load_current

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


def push_current_predictions(client, r, ws, pid: int) -> tuple[str | None, int]:
    """Predictions of the current index for every unlabelled task, then the project's
    model_version = the index's version. Under the same Redis lock as the workers' push, so a
    rebuild finishing meanwhile cannot be overwritten by an older version."""
    from workers.predictions import UnknownItem, label_fields, task_prediction
    from xmodal.index_store import load_current
    from xmodal.pairs import PairStore
    from xmodal.redis_conn import pkey

    with r.lock(pkey(ws.name, "ls", "lock"), timeout=600, blocking_timeout=600):
        snap = load_current(ws, r)
        if snap is None:
            return None, 0
        annotated = PairStore(r, ws.name).annotated_task_ids()
        from_name, to_name = label_fields(r, ws)
        preds = {}
        for task in client.list_tasks(pid):
            if task.get("is_labeled") or int(task["id"]) in annotated:
                continue
            with contextlib.suppress(UnknownItem, ValueError):
                preds[int(task["id"])] = task_prediction(snap, task, from_name, to_name)
        pushed = client.push_predictions(pid, preds, snap.model_version) if preds else 0
        client.set_model_version(pid, snap.model_version)
        return snap.model_version, pushed


def refresh_task_options(client, r, ws, pid: int, n_candidates: int, urls: ImageURLs | None = None,
                         snap=None) -> int:
    """Re-rank the options of unlabelled tasks with the current index (PATCH their data) and drop
    their predictions of that version (the caller pushes them again: they named old options).

    One request per changed task, so the rebuild job should call it only for the next few tasks;
    ``xmodal project create``/``grow`` call it for all. Returns how many tasks changed."""
    from xmodal.index_store import load_current
    from xmodal.pairs import PairStore

    snap = snap if snap is not None else load_current(ws, r)
    if snap is None or not snap.has_signal:
        return 0
    annotated = PairStore(r, ws.name).annotated_task_ids()
    mode = ws.config["label_studio"].get("images") or "inline"
    urls = urls or ImageURLs(ws, mode, document_root(ws.config["label_studio"].get("document_root")))
    stale: dict[int, list[int]] = {}
    for p in client.sdk.predictions.list(project=pid):
        if p.model_version == snap.model_version:
            stale.setdefault(int(p.task), []).append(int(p.id))
    changed = 0
    for task in client.list_tasks(pid):
        data = task.get("data") or {}
        if task.get("is_labeled") or int(task["id"]) in annotated or data.get("item_id") is None:
            continue
        item = str(data["item_id"])
        if item not in snap.rows(ws.select):
            continue
        ranked = ranked_candidates(snap, ws.select, item, [], n_candidates)
        old = [o.get("value") for o in data.get("options") or [] if isinstance(o, dict)]
        if old == ranked:
            continue
        new = task_data(ws, item, int(data.get("cluster", 0)), ranked, urls)
        client.sdk.tasks.update(id=int(task["id"]), data=dict(data, **new))
        # its prediction of this version named an option of the old list: push it again
        for prediction_id in stale.get(int(task["id"]), []):
            client.sdk.predictions.delete(id=prediction_id)
        changed += 1
    return changed


# -- the whole thing --------------------------------------------------------------------------

def _check_spec(spec: ProjectSpec) -> None:
    from xmodal.redis_conn import check_project_name
    from xmodal.workspace import parse_enhance

    try:
        check_project_name(spec.name)
    except ValueError as exc:
        raise ConfigError(f"--name: {exc}") from None
    if spec.select not in ("image", "text"):
        raise ConfigError(f"--select must be 'image' or 'text', not {spec.select!r}")
    if spec.measure not in ("pearson", "cosine"):
        raise ConfigError(f"--measure must be 'pearson' or 'cosine', not {spec.measure!r}")
    if spec.enhance is not None:
        try:
            parse_enhance(spec.enhance)
        except ConfigError as exc:
            raise ConfigError(f"--enhance: {exc}") from None
    if int(spec.candidates) < 1:
        raise ConfigError("--candidates must be at least 1")
    if spec.label_studio_url and not spec.api_key:
        raise ConfigError("a Label Studio URL needs an API key: pass --api-key or set "
                          "LABEL_STUDIO_API_KEY (Label Studio: Account & Settings > Access Token)")
    if spec.backend_url and not spec.label_studio_url:
        raise ConfigError("--backend-url connects the ML backend to a Label Studio project: pass "
                          "--label-studio-url too")


def _check_existing(ws, spec: ProjectSpec, select: str) -> None:
    if not ws.exists():
        return
    cfg = ws.config
    diffs = []
    if cfg.get("select") != select:
        diffs.append(f"select {cfg.get('select')} (asked: {select})")
    for m, want in (("image", spec.image_encoder), ("text", spec.text_encoder)):
        have = cfg["encoders"].get(m)
        if have and have != want:
            diffs.append(f"{m} encoder {have} (asked: {want})")
    data = (cfg.get("data") or {}).get("path")
    if data and Path(data) != Path(spec.data).expanduser().resolve():
        diffs.append(f"data {data} (asked: {Path(spec.data).expanduser().resolve()})")
    if diffs:
        raise ConfigError(f"project {ws.name!r} already exists at {ws.root} with " + ", ".join(diffs)
                          + "; use another --name, or remove that folder to start over")


def create_project(spec: ProjectSpec, say: Say = _quiet, redis_client=None) -> BootstrapResult:
    """Run every step of the module doc; see :class:`ProjectSpec` for the options."""
    from xmodal.workspace import Workspace, other, parse_enhance

    _check_spec(spec)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    select, tgt = spec.select, other(spec.select)

    client = None
    if spec.label_studio_url:
        from xmodal.labelstudio import connect

        with _Timer(timings, "label_studio_connect_s"):
            client = connect(spec.label_studio_url, spec.api_key)
    label_xml = template = None
    if client is not None:
        label_xml, template = read_label_config(select, spec.label_config)

    with _Timer(timings, "load_data_s"):
        ds, fmt = load_data(spec.data, spec.captions)
    say(f"data: {ds.describe()}")
    ws = Workspace.for_project(spec.name, spec.model_dir)
    _check_existing(ws, spec, select)
    ws.root.mkdir(parents=True, exist_ok=True)
    cfg_update = {"select": select, "measure": spec.measure,
                  "encoders": {"image": spec.image_encoder, "text": spec.text_encoder},
                  "candidates": int(spec.candidates),
                  "data": {"path": str(Path(spec.data).expanduser().resolve()), "format": fmt,
                           "captions": spec.captions if fmt == "coco-mini" else None}}
    if spec.enhance is not None:
        cfg_update["enhance"] = parse_enhance(spec.enhance)
    if not ws.exists():
        ws.save_config(dict(cfg_update, encoders={"image": None, "text": None}))

    with _Timer(timings, "embed_s"):
        X, Y, reused = ensure_features(ws, ds, spec, say)
    ws.update_config(**cfg_update)
    F, F_other = (X, Y) if select == "image" else (Y, X)
    with _Timer(timings, "select_s"):
        k = resolve_k(spec.k, F, spec.seed)
        medoids, added = ensure_selection(ws, F, select, k, spec.seed, say)
        pool = ensure_candidate_pool(ws, F_other, tgt, int(spec.candidates), spec.seed)
    if isinstance(spec.k, str) and spec.k.strip().lower() == "auto":
        say(f"k = {k} (canopy method on the {select}s)")
    say(f"{len(medoids)} medoids ({select}s, anytime order)"
        + (f", {added} new" if added and added != len(medoids) else ""))
    result = BootstrapResult(ws=ws, k=len(medoids), medoid_ids=medoids, candidate_pool=pool,
                             reused_features=reused, new_medoids=added, timings=timings)

    if client is None:
        from xmodal.workspace import atomic_write_json

        with _Timer(timings, "tasks_s"):
            urls = _offline_urls(ws, spec)
            tasks = build_tasks(ws, medoids, pool, int(spec.candidates), urls)
            atomic_write_json(ws.root / TASKS_FILE, tasks)
        result.images = urls.mode
        result.notes.append(f"no Label Studio URL: tasks written to {ws.root / TASKS_FILE} "
                            "(Label Studio's import format); pass --label-studio-url to create the project")
        timings["total_s"] = round(time.perf_counter() - t_all, 3)
        return result

    with _Timer(timings, "label_studio_s"):
        _label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result, say,
                            redis_client)
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    return result


def _offline_urls(ws, spec: ProjectSpec) -> ImageURLs:
    mode = spec.images or "auto"
    if mode.startswith(("http://", "https://")) or mode == "inline":
        return ImageURLs(ws, mode)
    try:
        urls = ImageURLs(ws, "local", document_root(spec.document_root))
        urls(ws.ids("image")[0])
        return urls
    except ConfigError:
        if mode == "local":
            raise
        return ImageURLs(ws, "inline")


def _redis(redis_client):
    import redis

    from xmodal.redis_conn import get_redis, redact

    try:
        r = redis_client or get_redis()
        r.ping()
        return r
    except (redis.RedisError, OSError) as exc:
        where = redact(os.environ.get("REDIS_URL", "")) or "the embedded server"
        raise ConfigError(f"cannot reach Redis at {where} ({exc}); the backend and workers share it: "
                          "start it or fix REDIS_URL") from None


def _label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result, say,
                        redis_client) -> None:
    r = _redis(redis_client)
    title = spec.title or spec.name
    pid = client.ensure_project(title, label_xml)
    result.ls_project_id, result.ls_url = pid, client.url
    from workers.predictions import choices_fields

    from_name, to_name = choices_fields(label_xml) or (None, None)
    linked = ws.config["label_studio"].get("project_id")
    if linked is not None and int(linked) != pid:
        raise ConfigError(f"project {ws.name!r} is linked to Label Studio project {linked}, but "
                          f"{client.url} has project {pid} titled {title!r}; pass --title, or "
                          "remove the workspace to start over")
    urls = setup_images(client, pid, ws, spec, say)
    result.images = urls.mode if urls.mode in ("local", "inline") else "url-prefix"
    ws.update_config(label_studio={
        "project_id": pid, "url": client.url, "label_config": template, "from_name": from_name,
        "to_name": to_name, "title": title, "images": urls.mode,
        "document_root": str(urls.root) if urls.root else None,
        "backend_url": spec.backend_url})
    say(f"Label Studio project {pid} ({title!r}) at {client.url}; images: {result.images}")

    # tasks: only the medoids Label Studio does not have yet (by data.item_id)
    from xmodal.index_store import load_current

    snap = load_current(ws, r)
    have = {str((t.get("data") or {}).get("item_id")) for t in client.list_tasks(pid)}
    missing = [m for m in medoids if m not in have]
    tasks = build_tasks(ws, missing, pool, int(spec.candidates), urls, snap)
    for t, m in zip(tasks, missing):  # cluster = position among all medoids
        t["data"]["cluster"] = medoids.index(m)
    task_ids = client.import_tasks(pid, tasks) if tasks else {}
    all_ids = {str((t.get("data") or {}).get("item_id")): int(t["id"]) for t in client.list_tasks(pid)}
    result.task_ids = {m: all_ids[m] for m in medoids if m in all_ids}
    result.new_tasks = len(task_ids)
    _record_tasks(r, ws, result.task_ids,
                  [{"data": t["data"]} for t in client.list_tasks(pid) if "data" in t])
    say(f"tasks: {len(result.task_ids)} in Label Studio ({result.new_tasks} imported now)")

    snap, built = publish_initial_index(r, ws)
    result.index_version = snap.version
    if built:
        say(f"index {snap.model_version} published ({snap.n_pairs} pairs)")
    elif snap.has_signal:
        n = refresh_task_options(client, r, ws, pid, int(spec.candidates), urls, snap)
        if n:
            say(f"re-ranked the options of {n} unlabelled tasks with index {snap.model_version}")

    backend_error = None
    if spec.backend_url:
        try:
            result.ml_backend_id = client.ensure_ml_backend(pid, spec.backend_url, BACKEND_TITLE)
            say(f"ML backend {spec.backend_url} connected (id {result.ml_backend_id}; Label Studio "
                "registered its /webhook)")
        except ConfigError as exc:
            backend_error = exc
    else:
        result.notes.append("no --backend-url: connect the ML backend in Label Studio (Settings > "
                            "Model) or rerun with --backend-url; until then labels reach no backend")
    version, pushed = push_current_predictions(client, r, ws, pid)
    result.model_version, result.predictions_pushed = version, pushed
    cur = load_current(ws, r)
    result.index_version = cur.version if cur is not None else result.index_version
    say(f"predictions: {pushed} pushed for {version}; project model_version = {version}")
    if backend_error is not None:
        raise ConfigError(f"{backend_error} — everything else is in place (workspace, project, "
                          "tasks, predictions); start the backend (`xmodal serve`, with the same "
                          "MODEL_DIR and REDIS_URL) and rerun this command") from backend_error


# -- grow -------------------------------------------------------------------------------------

def grow_project(name: str, k: int, *, label_studio_url: str | None = None, api_key: str | None = None,
                 model_dir=None, seed: int = 0, say: Say = _quiet, redis_client=None) -> BootstrapResult:
    """Raise the number of medoids to ``k`` without discarding any (nor their pairs); import the new
    ones as tasks with options ranked by the current index, and push their predictions."""
    from xmodal.workspace import Workspace, other

    t_all = time.perf_counter()
    ws = Workspace.for_project(name, model_dir)
    if not ws.exists():
        raise ConfigError(f"no project {name!r} under {ws.root.parent}; create it with "
                          "`xmodal project create`")
    cfg = ws.config
    select = cfg["select"]
    current = ws.medoid_ids()
    F = ws.load_features(select)
    k = resolve_k(k, F, seed)
    if k <= len(current):
        raise ConfigError(f"project {name!r} already has {len(current)} medoids; --k must be larger "
                          "to grow it (medoids are never removed: their pairs may be annotated)")
    medoids = extend_selection(ws, F, select, k - len(current), seed)
    say(f"{k - len(current)} new medoids; {len(medoids)} in all")
    pool = ensure_candidate_pool(ws, ws.load_features(other(select)), other(select),
                                 int(cfg.get("candidates") or 10), seed)
    result = BootstrapResult(ws=ws, k=len(medoids), medoid_ids=medoids, candidate_pool=pool,
                             new_medoids=k - len(current))
    ls = cfg["label_studio"]
    url = label_studio_url or os.environ.get("LABEL_STUDIO_URL") or ls.get("url")
    key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
    if ls.get("project_id") is None or not url:
        from xmodal.workspace import atomic_write_json

        urls = _offline_urls(ws, ProjectSpec(name=name, data=""))
        atomic_write_json(ws.root / TASKS_FILE, build_tasks(ws, medoids, pool, int(cfg.get("candidates") or 10), urls))
        result.notes.append(f"not linked to Label Studio: tasks rewritten to {ws.root / TASKS_FILE}")
        result.timings["total_s"] = round(time.perf_counter() - t_all, 3)
        return result
    from xmodal.labelstudio import connect

    client = connect(url, key)
    spec = ProjectSpec(name=name, data=(cfg.get("data") or {}).get("path") or "", select=select,
                       k=len(medoids), image_encoder=cfg["encoders"]["image"],
                       text_encoder=cfg["encoders"]["text"], measure=cfg["measure"],
                       candidates=int(cfg.get("candidates") or 10), label_studio_url=url, api_key=key,
                       backend_url=None, title=ls.get("title"), images=ls.get("images") or "auto",
                       document_root=ls.get("document_root"), model_dir=model_dir, seed=seed)
    label_xml, template = read_label_config(select, None) if ls.get("label_config") in LABEL_CONFIGS.values() \
        else (client.sdk.projects.get(int(ls["project_id"])).label_config, ls.get("label_config"))
    spec.title = ls.get("title") or client.sdk.projects.get(int(ls["project_id"])).title
    _label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result, say, redis_client)
    result.notes = [n for n in result.notes if not n.startswith("no --backend-url")]
    result.timings["total_s"] = round(time.perf_counter() - t_all, 3)
    return result


# -- list -------------------------------------------------------------------------------------

def list_projects(model_dir=None, redis_client=None) -> list[dict]:
    """One row per workspace: items, medoids, Label Studio link, current index (when Redis is
    known: ``$REDIS_URL`` or a client given; the embedded server is not started for this)."""
    from xmodal.index_store import IndexStore
    from xmodal.pairs import PairStore
    from xmodal.workspace import list_workspaces

    r = redis_client
    if r is None and os.environ.get("REDIS_URL"):
        with contextlib.suppress(Exception):
            from xmodal.redis_conn import get_redis

            r = get_redis()
            r.ping()
    rows = []
    for ws in list_workspaces(model_dir):
        row = {"name": ws.name, "path": str(ws.root)}
        try:
            cfg = ws.config
            items = ws.items
            row.update(select=cfg["select"], images=len(items["image_ids"]), texts=len(items["text_ids"]),
                       medoids=len(ws.medoid_ids()), label_studio_project=cfg["label_studio"].get("project_id"),
                       label_studio_url=cfg["label_studio"].get("url"))
        except XmodalError as exc:
            row["error"] = str(exc)
        if r is not None:
            with contextlib.suppress(Exception):
                row["index_version"] = IndexStore(r, ws).current_version()
                row["pairs"] = PairStore(r, ws.name).count()
        rows.append(row)
    return rows


__all__ = ["ProjectSpec", "BootstrapResult", "create_project", "grow_project", "list_projects",
           "load_data", "build_tasks", "task_data", "refresh_task_options", "push_current_predictions",
           "publish_initial_index", "ImageURLs", "resolve_k"]
