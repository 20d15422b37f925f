"""``xmodal project create`` / ``grow`` / ``list``: a data folder -> a workspace -> a Label Studio project ready to
label.

Steps (each one idempotent: a rerun with the same arguments adds nothing twice)

1. **Label Studio check** (when a URL is given): connect with the API key *before* any heavy work,
   so a wrong key or an unreachable server fails in a second with a message saying what to fix.
2. **Data**: a COCO-mini folder (``pairs.json``) or the generic folder format
   (:func:`xmodal.datasets.load_folder`).
3. **Features**: both modalities embedded through the on-disk feature cache
   (:func:`xmodal.encoders.cache.embed_with_cache`); the fitted text encoder's state is saved in
   the workspace (``SIFEncoder.save``) so ``/search`` embeds free text the same way. A rerun on the
   same items and encoders reuses the workspace's features and loads no encoder.
4. **Selection**: k-medoids (cosine) on the selected modality (of its z-scored features where the
   project's ``enhance`` has "zscore-medoids", the default), medoids in anytime order; ``k="auto"``
   uses the canopy method. A rerun keeps the medoids (their pairs may already be annotated); a
   larger k *extends* them (``KMedoidsSelector.extend``), a smaller one is ignored with a note.
5. **Candidates**: each task's page offers what a person needs to answer it
   (:mod:`xmodal.labelstudio.tasks`): an image task lists the project's texts best first (all of
   them up to ``page_texts``, default 1000), with their ids, a filter and a description box; a text
   task shows ``thumbnails`` images (the ranking merged with image medoids). Before the index can
   rank (Pearson needs 2 pairs) the *diverse* pool comes first: ``candidates`` k-medoids of the
   other modality, which span its clusters. Rerunning ``create`` (or ``grow``) re-ranks the options
   of the unlabelled tasks with the current index (:func:`refresh_task_options`).
6. **Label Studio** (when a URL is given): the project (``label_config/image_to_text.xml`` for
   ``select=image``, ``text_to_image.xml`` for ``select=text``, "Uncertainty sampling"), image access,
   the medoids imported as tasks in anytime order (``data.item_id``, ``data.cluster``,
   ``data.options``), the workspace linked (``label_studio.project_id``), the first index version
   published, the ML backend connected (``ml.create``, which registers ``<backend>/webhook`` itself),
   the initial predictions pushed (empty ``result`` and a score that orders tasks in anytime order
   until 2 pairs exist) and the project's ``model_version`` set to the index version, so that
   "Uncertainty sampling" serves tasks by those scores.

How images reach Label Studio: :mod:`xmodal.labelstudio.images`. Without a Label Studio URL only
steps 2–5 run and ``tasks.json`` (Label Studio's import format) is written to the workspace.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from xmodal import settings
from xmodal.datasets import load_data
from xmodal.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from xmodal.encoders.language import resolve_text_encoder
from xmodal.errors import ConfigError, XmodalError
from xmodal.index.build import publish_initial_index
from xmodal.labelstudio.config import LABEL_CONFIGS, read_label_config
from xmodal.labelstudio.images import ImageURLs, document_root, setup_images
from xmodal.labelstudio.push import push_current_predictions, refresh_task_options
from xmodal.labelstudio.tasks import SHOW_IDS, build_tasks, pool_size, record_tasks
from xmodal.logfmt import Say, quiet
from xmodal.project.features import ensure_features
from xmodal.project.medoids import (
    check_k,
    ensure_candidate_pool,
    ensure_selection,
    extend_selection,
    resolve_k,
    zscore_medoids,
)

BACKEND_TITLE = "xmodal"
TASKS_FILE = "tasks.json"


# -- options and result -----------------------------------------------------------------------

@dataclass
class ProjectSpec:
    """What ``xmodal project create`` was asked for."""

    name: str
    data: str | os.PathLike
    select: str = "image"
    k: int | str = "auto"                  # an int, or "auto" (canopy)
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_encoder: str = DEFAULT_TEXT_ENCODER  # "auto": chosen from the texts' language
    measure: str = "pearson"
    # enhancements beyond the paper ("zscore-medoids", "zscore", "csls", "bridge"; list or
    # "zscore,csls"): None keeps the workspace's setting (a new workspace: DEFAULT_CONFIG's, all four)
    enhance: list[str] | str | None = None
    captions: str = "first"                # COCO-mini: first caption per image, or all 5
    candidates: int = 10                   # the diverse cold-start pool (image tasks)
    page_texts: int | None = None          # texts an image task carries (None: the workspace's, 1000)
    show_ids: str | None = None            # auto | yes | no: text ids on the page (None: the workspace's, auto)
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
    ws: object                             # xmodal.project.workspace.Workspace
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


class _Timer:
    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 3)


# -- the whole thing --------------------------------------------------------------------------

def _check_spec(spec: ProjectSpec) -> None:
    from xmodal.project.workspace import parse_enhance
    from xmodal.redis_conn import check_project_name

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
    if spec.page_texts is not None and not 1 <= int(spec.page_texts) <= 10_000:
        raise ConfigError("--page-texts must be between 1 and 10000 (a page with more is slow to "
                          "filter; the search box under None of these reaches every text)")
    if spec.show_ids is not None and spec.show_ids not in SHOW_IDS:
        raise ConfigError(f"--show-ids must be one of {', '.join(SHOW_IDS)}, not {spec.show_ids!r}")
    if spec.label_studio_url and not spec.api_key:
        raise ConfigError("a Label Studio URL needs an API key: pass --api-key or set "
                          "LABEL_STUDIO_API_KEY (Label Studio: Account & Settings > Access Token)")
    title = spec.title or spec.name
    if spec.label_studio_url and not 3 <= len(title) <= 50:
        raise ConfigError(f"Label Studio needs a project title of 3 to 50 characters, not {title!r}: "
                          "pass --title (or a longer --name)")
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


def create_project(spec: ProjectSpec, say: Say = quiet, redis_client=None) -> BootstrapResult:
    """Run every step of the module doc; see :class:`ProjectSpec` for the options."""
    from xmodal.project.workspace import Workspace, other, parse_enhance

    _check_spec(spec)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    select, tgt = spec.select, other(spec.select)

    client = None
    if spec.label_studio_url:
        from xmodal.labelstudio.client import connect

        with _Timer(timings, "label_studio_connect_s"):
            client = connect(spec.label_studio_url, spec.api_key)
    label_xml = template = None
    if client is not None:
        label_xml, template = read_label_config(select, spec.label_config)

    with _Timer(timings, "load_data_s"):
        ds, fmt = load_data(spec.data, spec.captions)
    say(f"data: {ds.describe()}")
    check_k(spec.k, len(ds.image_ids) if select == "image" else len(ds.texts))   # before any embedding
    text_encoder, why = resolve_text_encoder(spec.text_encoder, ds.texts)
    spec = replace(spec, text_encoder=text_encoder)   # "auto" -> a name; the caller's spec is theirs
    say(f"text encoder: {text_encoder} ({why})")
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
    if spec.page_texts is not None:
        cfg_update["page_texts"] = int(spec.page_texts)
    if spec.show_ids is not None:
        cfg_update["show_ids"] = spec.show_ids
    if not ws.exists():
        ws.save_config(dict(cfg_update, encoders={"image": None, "text": None}))

    with _Timer(timings, "embed_s"):
        X, Y, reused = ensure_features(ws, ds, spec.image_encoder, spec.text_encoder,
                                       feature_cache=spec.feature_cache,
                                       workers_embed=spec.workers_embed, say=say)
    ws.update_config(**cfg_update)
    F, F_other = (X, Y) if select == "image" else (Y, X)
    with _Timer(timings, "select_s"):
        k = resolve_k(spec.k, F, spec.seed)
        medoids, added = ensure_selection(ws, F, select, k, spec.seed, say)
        pool = ensure_candidate_pool(ws, F_other, tgt, pool_size(ws), spec.seed)
    if isinstance(spec.k, str) and spec.k.strip().lower() == "auto":
        say(f"k = {k} (canopy method on the {select}s)")
    say(f"{len(medoids)} medoids ({select}s{', z-scored features' if zscore_medoids(ws) else ''}, "
        "anytime order)"
        + (f", {added} new" if added and added != len(medoids) else ""))
    result = BootstrapResult(ws=ws, k=len(medoids), medoid_ids=medoids, candidate_pool=pool,
                             reused_features=reused, new_medoids=added, timings=timings)

    if client is None:
        from xmodal.project.workspace import atomic_write_json

        with _Timer(timings, "tasks_s"):
            urls = _offline_urls(ws, spec)
            tasks = build_tasks(ws, medoids, pool, urls)
            atomic_write_json(ws.root / TASKS_FILE, tasks)
        result.images = urls.mode
        result.notes.append(f"no Label Studio URL: tasks written to {ws.root / TASKS_FILE} "
                            "(Label Studio's import format); pass --label-studio-url to create the project")
        timings["total_s"] = round(time.perf_counter() - t_all, 3)
        return result

    with _Timer(timings, "label_studio_s"):
        label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result, say,
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
        where = redact(settings.get("REDIS_URL") or "") or "the embedded server"
        raise ConfigError(f"cannot reach Redis at {where} ({exc}); the backend and workers share it: "
                          "start it or fix REDIS_URL") from None


def label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result, say,
                       redis_client) -> None:
    """Step 6 of the module doc for a workspace that has its features and medoids (also the loop
    benchmark's synthetic workspaces, :func:`xmodal.benchmarks.loop.synthetic_label_studio`)."""
    r = _redis(redis_client)
    title = spec.title or spec.name
    pid = client.ensure_project(title, label_xml)
    result.ls_project_id, result.ls_url = pid, client.url
    from xmodal.labelstudio.config import choices_fields

    from_name, to_name = choices_fields(label_xml) or (None, None)
    linked = ws.config["label_studio"].get("project_id")
    if linked is not None and int(linked) != pid:
        raise ConfigError(f"project {ws.name!r} is linked to Label Studio project {linked}, but "
                          f"{client.url} has project {pid} titled {title!r}; pass --title, or "
                          "remove the workspace to start over")
    urls = setup_images(client, pid, ws, spec.images, spec.document_root, say)
    result.images = urls.mode if urls.mode in ("local", "inline", "source") else "url-prefix"
    ws.update_config(label_studio={
        "project_id": pid, "url": client.url, "label_config": template, "from_name": from_name,
        "to_name": to_name, "title": title, "images": urls.mode,
        "document_root": str(urls.root) if urls.root else None,
        "backend_url": spec.backend_url})
    say(f"Label Studio project {pid} ({title!r}) at {client.url}; images: {result.images}")

    # tasks: only the medoids Label Studio does not have yet (by data.item_id)
    from xmodal.index.store import load_current

    snap = load_current(ws, r)
    have = {str((t.get("data") or {}).get("item_id")) for t in client.list_tasks(pid)}
    missing = [m for m in medoids if m not in have]
    tasks = build_tasks(ws, missing, pool, urls, snap)
    for t, m in zip(tasks, missing):  # cluster = position among all medoids
        t["data"]["cluster"] = medoids.index(m)
    task_ids = client.import_tasks(pid, tasks) if tasks else {}
    all_ids = {str((t.get("data") or {}).get("item_id")): int(t["id"]) for t in client.list_tasks(pid)}
    result.task_ids = {m: all_ids[m] for m in medoids if m in all_ids}
    result.new_tasks = len(task_ids)
    record_tasks(r, ws, result.task_ids,
                  [{"data": t["data"]} for t in client.list_tasks(pid) if "data" in t])
    say(f"tasks: {len(result.task_ids)} in Label Studio ({result.new_tasks} imported now)")

    snap, built = publish_initial_index(r, ws)
    result.index_version = snap.version
    if built:
        say(f"index {snap.model_version} published ({snap.n_pairs} pair{'' if snap.n_pairs == 1 else 's'})")
    elif snap.has_signal:
        n = refresh_task_options(client, r, ws, pid, snap)
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
                 model_dir=None, seed: int = 0, say: Say = quiet, redis_client=None) -> BootstrapResult:
    """Raise the number of medoids to ``k`` without discarding any (nor their pairs); import the new
    ones as tasks with options ranked by the current index, and push their predictions."""
    from xmodal.project.workspace import Workspace, other

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
    pool = ensure_candidate_pool(ws, ws.load_features(other(select)), other(select), pool_size(ws), seed)
    result = BootstrapResult(ws=ws, k=len(medoids), medoid_ids=medoids, candidate_pool=pool,
                             new_medoids=k - len(current))
    ls = cfg["label_studio"]
    url = label_studio_url or settings.get("LABEL_STUDIO_URL") or ls.get("url")
    key = api_key or settings.get("LABEL_STUDIO_API_KEY")
    if ls.get("project_id") is None or not url:
        from xmodal.project.workspace import atomic_write_json

        urls = _offline_urls(ws, ProjectSpec(name=name, data=""))
        atomic_write_json(ws.root / TASKS_FILE, build_tasks(ws, medoids, pool, urls))
        result.notes.append(f"not linked to Label Studio: tasks rewritten to {ws.root / TASKS_FILE}")
        result.timings["total_s"] = round(time.perf_counter() - t_all, 3)
        return result
    from xmodal.labelstudio.client import connect

    client = connect(url, key)
    spec = ProjectSpec(name=name, data=(cfg.get("data") or {}).get("path") or "", select=select,
                       k=len(medoids), image_encoder=cfg["encoders"]["image"],
                       text_encoder=cfg["encoders"]["text"], measure=cfg["measure"],
                       candidates=int(cfg.get("candidates") or 10), label_studio_url=url, api_key=key,
                       backend_url=None, title=ls.get("title"), images=ls.get("images") or "auto",
                       document_root=ls.get("document_root"), model_dir=model_dir, seed=seed)
    label_xml, template = read_label_config(select, None) if ls.get("label_config") in LABEL_CONFIGS.values() \
        else (client.get_project(int(ls["project_id"]))["label_config"], ls.get("label_config"))
    spec.title = ls.get("title") or client.get_project(int(ls["project_id"]))["title"]
    label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result, say, redis_client)
    result.notes = [n for n in result.notes if not n.startswith("no --backend-url")]
    result.timings["total_s"] = round(time.perf_counter() - t_all, 3)
    return result


# -- list -------------------------------------------------------------------------------------

def list_projects(model_dir=None, redis_client=None) -> list[dict]:
    """One row per workspace: items, medoids, Label Studio link, current index (when Redis is
    known: ``$REDIS_URL`` or a client given; the embedded server is not started for this)."""
    from xmodal.index.store import IndexStore
    from xmodal.project.pairs import PairStore
    from xmodal.project.workspace import list_workspaces

    r = redis_client
    if r is None and settings.get("REDIS_URL"):
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

