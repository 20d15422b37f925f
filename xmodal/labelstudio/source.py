"""``xmodal project create --from-label-studio ID``: a project whose items are the tasks of an
existing Label Studio project.

1. **Fields**: the image field and the text field(s) of the tasks' ``data``; by default the
   ``<Image value="$x">`` and the ``<Text>``/``<HyperText>`` tags of the source project's labelling
   config when it has exactly one of each kind (else ``--image-field`` / ``--text-field`` say which).
   A task without the image field but with Label Studio's ``$undefined$`` (what an upload or a
   storage sync writes when the config has not named its field yet) has its image there.
2. **Items**, from every task (paginated): its image (if it has one) and each of its texts (a
   non-empty string). Ids say where they came from and stay the same on every run:
   ``ls-<task id>-<file name>.<ext>`` for the image (the file name, sanitised, is what an annotator
   can type into a filter) and ``ls-<task id>`` for its text (``ls-<task id>-<field>`` with several
   text fields). A task holding both an image and a text makes a known pair: kept as the text's
   ``image`` (for ``xmodal eval`` only), and the text ids are not shown on the labelling pages
   (``show_ids no``, unless ``--show-ids`` says otherwise), since the two ids would give the
   answer away.
3. **Images**: each fetched through the configured Label Studio by
   :func:`xmodal.labelstudio.fetch.fetch_image` (its limits, its cache), ``$XMODAL_LS_PARALLEL`` at a
   time. An image refused or failed is left out, with the task and the reason listed; no usable
   image or no text at all is an error.
4. **The folder**: ``<workspace>/source/`` in the generic format (``images/`` hard-linked from the
   cache, ``texts.jsonl``), rewritten each run, with ``tasks.json`` (``{task id: {"image": id,
   "texts": [ids]}}``) and ``urls.json`` (image id -> the task's URL, which the linked project's
   pages use: ``--images source``, what ``auto`` means here, so Label Studio serves the images it
   has).
5. **Then** :func:`xmodal.labelstudio.project.create_project` on that folder: embeddings, medoids,
   the linked labelling project and the loop, as for ``--data``. The workspace config records the
   source (``source``: ``label_studio_project_id``, ``url``, ``image_field``, ``text_fields``) so that
   the backend can map the source project's webhooks to this workspace.
6. **Later tasks**: with ``--backend-url``, a webhook ``<backend>/webhook`` for ``TASKS_CREATED`` and
   ``TASKS_DELETED`` only is registered on the source project (its config, tasks and ML backends are
   never changed). Tasks imported into it later become items through the same path as ``POST
   /items`` (``backend.items.items_from_source_tasks``: pending, then the growth job, which fetches
   their images through Label Studio), with the ids of step 2 (:func:`task_entry`,
   :func:`task_image_id`); deleted tasks' items are removed (a pair on one stays as a problem).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from xmodal import settings
from xmodal.datasets.folder import write_folder
from xmodal.errors import ConfigError, DataError
from xmodal.labelstudio.client import LabelStudioClient, LabelStudioError, connect
from xmodal.labelstudio.config import data_fields
from xmodal.labelstudio.fetch import ImageFetchError, fetch_images
from xmodal.labelstudio.images import SOURCE_DIR, SOURCE_URLS
from xmodal.labelstudio.project import BootstrapResult, ProjectSpec, create_project
from xmodal.logfmt import Say, quiet
from xmodal.project.workspace import Workspace, atomic_write_json

UNDEFINED = "$undefined$"     # Label Studio's data key for a file not yet named by a config


@dataclass
class SourceItems:
    """What a source project's tasks gave: images (id -> cached file), texts (``texts.jsonl``
    records), the task map, and what was left out."""

    project_id: int
    image_field: str | None
    text_fields: list[str]
    images: dict[str, Path] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    texts: list[dict] = field(default_factory=list)
    tasks: dict[int, dict] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    n_tasks: int = 0
    fetched: int = 0            # images fetched through Label Studio by this run (the rest: cache, inline)
    fetch_s: float = 0.0
    webhook_id: int | None = None   # the source project's webhook to the backend (step 6)

    @property
    def pairs(self) -> int:
        return sum(1 for t in self.texts if t.get("image"))


def choose_fields(label_config: str | None, image_field: str | None = None,
                  text_fields: list[str] | None = None) -> tuple[str | None, list[str]]:
    """(image field, text fields): the ones given, else the config's single tag of each kind."""
    found = data_fields(label_config)
    for name in [image_field or "", *(text_fields or [])]:
        if name and not (name.isidentifier() or name == UNDEFINED):
            raise ConfigError(f"a task data field is a name like 'image' or 'caption', not {name!r}")
    if image_field is None:
        if len(found["image"]) > 1:
            raise ConfigError(f"the source project's labelling config shows several images "
                              f"({', '.join(found['image'])}): pass --image-field")
        image_field = found["image"][0] if found["image"] else None
    if not text_fields:
        if len(found["text"]) > 1:
            raise ConfigError(f"the source project's labelling config shows several texts "
                              f"({', '.join(found['text'])}): pass --text-field (one or more)")
        text_fields = found["text"][:1]
    if image_field is None:
        raise ConfigError("the source project's labelling config has no <Image value=\"$field\"> tag: "
                          "pass --image-field (the task data field holding the image URL)")
    if not text_fields:
        raise ConfigError("the source project's labelling config has no <Text value=\"$field\"> tag: "
                          "pass --text-field (the task data field holding the text)")
    return image_field, list(dict.fromkeys(text_fields))


def _file_name(url: str) -> str:
    """A short name for an image id: the file name in its URL (local files: ``d=``; cloud: the
    decoded ``fileuri``), sanitised, without its extension."""
    if url.startswith("data:"):
        return "inline"
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    name = parts.path
    if query.get("d"):
        name = query["d"][0]
    elif query.get("fileuri"):
        try:
            name = base64.urlsafe_b64decode(query["fileuri"][0] + "==").decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            pass
    stem = name.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^\w-]+", "_", stem)[:60].strip("_-") or "image"     # letters of any script


def _text_id(task_id: int, name: str, fields: list[str]) -> str:
    return f"ls-{task_id}" if len(fields) == 1 else f"ls-{task_id}-{name}"


FETCHED = ".{fetched}"   # an image id's extension until the file is fetched (the image format's)


def task_image_id(task_id: int, url: str, suffix: str = FETCHED) -> str:
    """The id of a source task's image: ``ls-<task id>-<file name><suffix>``, the suffix that of
    the fetched file; before the fetch (a webhook's task) :data:`FETCHED` stands for it and
    :func:`fetched_image_id` puts the real one in."""
    return f"ls-{task_id}-{_file_name(url)}{suffix}"


def fetched_image_id(item_id: str, path: Path | str) -> str:
    """``item_id`` with :data:`FETCHED` replaced by the fetched file's suffix (others unchanged)."""
    return item_id[:-len(FETCHED)] + Path(path).suffix if item_id.endswith(FETCHED) else item_id


def task_item_ids(task_ids, item_ids) -> list[str]:
    """Those of ``item_ids`` that the source tasks ``task_ids`` gave (their ids start with
    ``ls-<task id>``, as :func:`task_image_id` and :func:`task_entry` name them)."""
    wanted = {str(int(t)) for t in task_ids}
    pattern = re.compile(r"ls-(\d+)(?:-|$)")
    return [i for i in item_ids if (m := pattern.match(i)) and m.group(1) in wanted]


@dataclass
class TaskEntry:
    """One source task: its image URL (None without one), its texts ``[(id, text)]``, and why its
    image field was not used (None when it was, or was empty)."""

    task_id: int
    url: str | None
    texts: list[tuple[str, str]]
    refused: str | None = None


def task_entry(task, image_field: str | None, text_fields: list[str]) -> TaskEntry | None:
    """What one task of the source project holds (module doc, step 2); None for a task without an
    integer id or a data object. Used by :func:`read_source` and for the tasks the source project's
    ``TASKS_CREATED`` webhook brings later (``backend.items``)."""
    data = task.get("data") if isinstance(task, dict) else None
    tid = task.get("id") if isinstance(task, dict) else None
    if not isinstance(data, dict) or not isinstance(tid, int) or isinstance(tid, bool):
        return None
    entry = TaskEntry(task_id=tid, url=None, texts=[])
    url = data.get(image_field, data.get(UNDEFINED) if image_field != UNDEFINED else None)
    if isinstance(url, str) and url.strip():
        entry.url = url.strip()
    elif url not in (None, ""):
        entry.refused = f"task {tid}: the image field holds a {type(url).__name__}, not a URL"
    for name in text_fields:
        text = data.get(name)
        if isinstance(text, str) and text.strip():
            entry.texts.append((_text_id(tid, name, text_fields), text.strip()))
    return entry


def remember_urls(ws_root: Path, urls: dict[str, str]) -> None:
    """Add image id -> source task URL to ``source/urls.json`` (what the linked project's pages
    show for an image): the images the source project's tasks brought after ``project create``."""
    path = Path(ws_root) / SOURCE_URLS
    if not urls or not path.parent.is_dir():
        return
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if any(known.get(i) != u for i, u in urls.items()):
        atomic_write_json(path, {**known, **urls})


def _source_project(client: LabelStudioClient, project_id: int) -> dict:
    try:
        return client.get_project(project_id)
    except LabelStudioError as exc:
        if exc.status_code in (403, 404):
            raise ConfigError(f"Label Studio at {client.url} has no project {project_id} this API key "
                              f"can read (HTTP {exc.status_code})") from None
        raise


def read_source(client: LabelStudioClient, project_id: int, image_field: str | None = None,
                text_fields: list[str] | None = None, *, cache_dir=None, say: Say = quiet) -> SourceItems:
    """Every task of Label Studio project ``project_id`` -> :class:`SourceItems` (module doc,
    steps 1-3)."""
    project = _source_project(client, project_id)
    image_field, text_fields = choose_fields(project.get("label_config"), image_field, text_fields)
    items = SourceItems(project_id=int(project_id), image_field=image_field, text_fields=text_fields)
    tasks = client.list_tasks(project_id)
    items.n_tasks = len(tasks)
    say(f"Label Studio project {project_id} ({project.get('title')!r}): {len(tasks)} tasks; image field "
        f"{image_field!r}, text field(s) {', '.join(map(repr, text_fields))}")
    wanted: dict[int, str] = {}
    task_of: dict[str, int] = {}       # text id -> its task
    for task in tasks:
        entry = task_entry(task, image_field, text_fields)
        if entry is None:
            continue
        if entry.url:
            wanted[entry.task_id] = entry.url
        elif entry.refused:
            items.refused.append(entry.refused)
        for text_id, text in entry.texts:
            items.texts.append({"id": text_id, "text": text})
            task_of[text_id] = entry.task_id
        items.tasks[entry.task_id] = {"texts": [text_id for text_id, _ in entry.texts]}

    t0 = time.time()
    paths, failed, counts = fetch_images(client, wanted, cache_dir=cache_dir, failures=(
        ImageFetchError, httpx.HTTPError, LabelStudioError, OSError))
    items.fetch_s = round(time.time() - t0, 3)
    items.fetched += counts["fetched"]
    items.refused += [f"task {tid}: {why}" for tid, why in failed.items()]
    for tid, path in paths.items():
        url = wanted[tid]
        image_id = task_image_id(tid, url, path.suffix)
        items.images[image_id] = path
        items.urls[image_id] = url
        items.tasks[tid]["image"] = image_id
    for record in items.texts:   # a text in the same task as an image: a known pair
        image_id = items.tasks[task_of[record["id"]]].get("image")
        if image_id:
            record["image"] = image_id
    items.tasks = {tid: t for tid, t in items.tasks.items() if t.get("image") or t["texts"]}
    if not items.images:
        raise DataError(f"no image of Label Studio project {project_id} could be used"
                        + (": " + "; ".join(items.refused[:5]) if items.refused else
                           f" (no task has a URL in {image_field!r}; pass --image-field)"))
    if not items.texts:
        raise DataError(f"no task of Label Studio project {project_id} has a text in "
                        f"{', '.join(map(repr, text_fields))}; pass --text-field")
    return items


def write_source(folder: Path, items: SourceItems) -> Path:
    """The generic-format folder of the items, written anew (module doc, step 4)."""
    shutil.rmtree(folder / "images", ignore_errors=True)
    write_folder(folder, items.images, items.texts)
    atomic_write_json(folder / "tasks.json", {str(k): v for k, v in sorted(items.tasks.items())})
    atomic_write_json(folder.parent / SOURCE_URLS, items.urls)
    return folder


def _check_workspace(ws: Workspace, source_project: int) -> None:
    """A rerun on the workspace this source made is fine (a first run that failed late, before it
    recorded the source, too: its data is the workspace's source folder); any other is refused."""
    if not ws.exists():
        return
    cfg = ws.config
    made_from = (cfg.get("source") or {}).get("label_studio_project_id")
    data = (cfg.get("data") or {}).get("path")
    ours = data in (None, str((ws.root / SOURCE_DIR).resolve()))
    if made_from not in (None, source_project) or not ours:
        raise ConfigError(f"project {ws.name!r} already exists at {ws.root}, made from "
                          + (f"Label Studio project {made_from}" if made_from is not None else "a data folder")
                          + "; use another --name, or remove that folder to start over")


SOURCE_ACTIONS = ("TASKS_CREATED", "TASKS_DELETED")


def ensure_webhook(client: LabelStudioClient, project_id: int, url: str, actions=SOURCE_ACTIONS,
                   headers: dict | None = None) -> int:
    """A project webhook to ``url`` for ``actions`` only, with full payloads (Label Studio 1.23's
    ``/api/webhooks/``), registered once (matched by URL; set again if it differs); its id. For the
    source project only: where ``ensure_ml_backend`` connected the backend (the linked project),
    Label Studio registered a webhook for all actions itself. ``headers``: sent with each call
    (the backend's basic auth)."""
    want = {"url": url, "actions": sorted(set(actions)), "send_for_all_actions": False,
            "send_payload": True, "is_active": True, **({"headers": headers} if headers else {})}
    for hook in client.api("GET", "/api/webhooks/", params={"project": int(project_id)}) or []:
        if hook.get("project") == int(project_id) and (hook.get("url") or "").rstrip("/") == url.rstrip("/"):
            if any(sorted(hook.get(k) or []) != v if k == "actions" else hook.get(k) != v
                   for k, v in want.items()):
                client.api("PATCH", f"/api/webhooks/{int(hook['id'])}/", json=want)
            return int(hook["id"])
    return int(client.api("POST", "/api/webhooks/", json={"project": int(project_id), **want})["id"])


def _source_webhook(spec: ProjectSpec, source_project: int, say: Say) -> int:
    """The source project's webhook to the backend (module doc, step 6), registered once."""
    user, password = settings.get("BASIC_AUTH_USER"), settings.get("BASIC_AUTH_PASS")
    # the backend's own basic auth, when set where the project is created: to the backend URL only
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} \
        if user and password else None
    client = connect(spec.label_studio_url, spec.api_key)
    try:
        hook = ensure_webhook(client, source_project, spec.backend_url.rstrip("/") + "/webhook",
                              headers=headers)
    finally:
        client.close()
    say(f"source project {source_project}: webhook {hook} sends {' and '.join(SOURCE_ACTIONS)} to the "
        "backend (tasks imported there later become items)")
    return hook


def create_from_label_studio(spec: ProjectSpec, source_project: int, *, image_field: str | None = None,
                             text_fields: list[str] | None = None, cache_dir=None, say: Say = quiet,
                             redis_client=None) -> tuple[BootstrapResult, SourceItems]:
    """The whole command (module doc): ``spec`` as for ``--data``, its ``data`` ignored."""
    if not spec.label_studio_url or not spec.api_key:
        raise ConfigError("--from-label-studio needs the Label Studio URL and API key: pass "
                          "--label-studio-url and --api-key, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    client = connect(spec.label_studio_url, spec.api_key)
    try:
        title = spec.title or spec.name
        source_title = _source_project(client, int(source_project)).get("title")
        if source_title == title:
            raise ConfigError(f"Label Studio project {source_project} is titled {title!r}, the title "
                              "the labelling project would get: pass another --title (the source "
                              "project is only read, never changed)")
        ws = Workspace.for_project(spec.name, spec.model_dir)
        _check_workspace(ws, int(source_project))
        items = read_source(client, int(source_project), image_field, text_fields, cache_dir=cache_dir,
                            say=say)
    finally:
        client.close()
    rate = f", {items.fetched / items.fetch_s:.1f}/s" if items.fetched and items.fetch_s else ""
    say(f"images: {len(items.images)} ({items.fetched} fetched through Label Studio, "
        f"{len(items.images) - items.fetched} from the cache or inline; {items.fetch_s:.1f} s{rate}); "
        f"texts: {len(items.texts)}" + (f"; {items.pairs} known pairs" if items.pairs else ""))
    for line in items.refused[:20]:
        say(f"left out: {line}")
    if len(items.refused) > 20:
        say(f"left out: ... and {len(items.refused) - 20} more")
    folder = write_source(ws.root / SOURCE_DIR, items)
    show_ids = spec.show_ids or ("no" if items.pairs else None)
    images = "source" if spec.images in (None, "", "auto") else spec.images
    result = create_project(replace(spec, data=folder, show_ids=show_ids, images=images), say=say,
                            redis_client=redis_client)
    ws.update_config(source={"label_studio_project_id": items.project_id, "url": client.url,
                             "image_field": items.image_field, "text_fields": items.text_fields})
    if spec.backend_url:
        items.webhook_id = _source_webhook(spec, items.project_id, say)
    if items.refused:
        result.notes.append(f"{len(items.refused)} task image(s) left out (see above): "
                            + "; ".join(items.refused[:3]))
    result.timings["fetch_s"] = items.fetch_s
    return result, items


__all__ = ["FETCHED", "SourceItems", "TaskEntry", "choose_fields", "create_from_label_studio", "ensure_webhook",
           "fetched_image_id",
           "read_source", "remember_urls", "task_entry", "task_image_id", "task_item_ids", "write_source"]
