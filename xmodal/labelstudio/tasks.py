"""Label Studio tasks: what the labelling page of one medoid shows, and the registry of tasks.

A task asks about one item of the select modality (``data.item_id``) and offers items of the other
modality as choices (``data.options``, rendered by ``<Choices value="$options">`` and narrowed by
a ``<Filter>``, see ``label_config/``). What a person needs to answer it from the page alone:

- **image tasks** (SSM-AL_I): the project's texts, best first, up to ``page_texts`` (default
  1000: every text of a smaller project), so that typing a word in the filter searches them all;
  each shows its id, so "paste an id" is possible (unless the ids name the images: ``show_ids``,
  :func:`ids_shown`); under "None of these" a search box over
  every text of the project (:mod:`xmodal.labelstudio.page_search`) and a description to write
  when nothing fits;
- **text tasks** (SSM-AL_T): ``thumbnails`` images (default 200: every image of a smaller
  project; with 30 a person found the caption's image on 2 of 12 COCO-mini pages, with 60 on 5
  of 12), lazily loaded: the current ranking merged with the image medoids, which span the
  clusters, in a grid. Under each thumbnail its id and what the image encoder sees in it
  (``Workspace.image_words``: "dog puppy golden retriever …"), which the filter matches, so
  typing *dog* narrows the grid to the dogs;
- **before the index can rank** (Pearson needs 2 pairs): the diverse pool (k-medoids of the other
  modality, ``candidates`` of them, or ``thumbnails`` for text tasks) first, then the rest by the
  class bridge's label-free similarity where the project has one (else in file order); after,
  the ranking;
- ``data.model_note``: one line saying which index ranked the options (``index_version``).

Each option is ``{"value", "alias"}`` (plus ``html`` for a thumbnail): Label Studio's filter
matches ``value`` (the text and its id, or the image's id and words, so typing a word of either
finds it), the page shows it, the annotation stores ``alias`` (the item id). ``$`` is escaped in
``value`` (Label Studio would substitute ``$name`` with a task data field). The first nine
options get the keys 1–9; "None of these" has 0.

The registry: every task the backend sees (``/predict`` bodies, webhook payloads, TASKS_CREATED,
the import), by task id: its item, its options' ids and what the push keeps of its data (the
fields :func:`task_data` does not write anew: ``cluster``, ``problem``, ``index_version`` and a
team's own fields). The rebuild's push works from it instead of listing every task from Label
Studio, and re-ranks a task by rebuilding its data whole. It is bounded, because anyone who can
post /predict or a webhook writes to it (three /predict bodies of 10,000 tasks with a 2.5 KB field
each added 90 MiB that stayed):

- /predict records only tasks that name an item of the project; a deleted task is not recorded;
- a team's own fields over :data:`TEAM_DATA_MAX_BYTES` (512) are not kept (the record is ``partial``:
  the push reads that task's data from Label Studio before rewriting it, so nothing is lost);
  a record over :data:`RECORD_MAX_BYTES` (options included) is not kept at all;
- the records of a project hold at most ``$XMODAL_TASK_REGISTRY_MAX_BYTES`` (default 128 MiB) of
  values (``P:{p}:tasks:bytes`` counts them): beyond that, new tasks are not recorded (logged
  ``event=tasks.registry_full``; a recorded task is still updated if it does not grow).
"""

from __future__ import annotations

import html
import json
import logging
import re

import redis

from xmodal import settings
from xmodal.index.snapshot import IndexSnapshot
from xmodal.labelstudio.images import MEDOID_THUMB, OPTION_THUMB, ImageURLs, document_root
from xmodal.logfmt import kv
from xmodal.project.medoids import bridge_order
from xmodal.project.pairs import TASK_DELETED_LUA
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import pkey

log = logging.getLogger(__name__)

NONE_CHOICE = "__none__"
PAGE_TEXTS = 1000        # texts an image task carries at most (the page filters ~800 at ~0.1-0.4 s a key)
THUMBNAILS = 200         # images a text task carries (lazily loaded: the browser fetches what is in view)
HOTKEYS = "123456789"


# -- settings of a workspace ---------------------------------------------------------------------

def page_texts(ws: Workspace) -> int:
    return max(1, int(ws.config.get("page_texts") or PAGE_TEXTS))


SHOW_IDS = ("auto", "yes", "no")


def ids_shown(ws: Workspace) -> bool:
    """Whether an image task's options show each text's id (``show_ids`` in the workspace: yes, no,
    or auto, the default: not where the text ids name the images, :func:`ids_name_images`, since a
    person could then match ids instead of looking at the photo). Without ids the option still
    carries its id as its alias, which the annotation stores."""
    mode = str(ws.config.get("show_ids") or "auto")
    if mode != "auto":
        return mode == "yes"
    images, texts = ws.ids("image"), ws.ids("text")
    # ~0.5 s for 100k images, and every page search asks: kept while the id lists are the same
    # objects (a Workspace caches items.json until it changes)
    hit = _named_cache.get(id(images))
    if hit is None or hit[0] is not images or hit[1] is not texts:
        if len(_named_cache) >= 16:
            _named_cache.clear()
        # a sample is enough (a dataset names its texts one way), spread over the list
        hit = _named_cache[id(images)] = (
            images, texts, ids_name_images(images, texts[::max(1, len(texts) // ID_SAMPLE)]))
    return not hit[2]


_named_cache: dict[int, tuple[list, list, bool]] = {}   # id(image ids) -> (image ids, text ids, named)
ID_SAMPLE = 200
MIN_KEY = 3      # characters of a file name or stem, digits of a number: shorter ones match by chance
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_NUMBER = re.compile(r"[A-Za-z]*0*(\d+)")    # a token's number: the digits ending it, zeros stripped


def _numbers(name: str) -> set[str]:
    """The numbers of ``name``: of each token (a run of letters and digits) that is letters then
    digits (``000000535506``, ``img535506``; not a hash's ``693b08cb0e``), its digits, leading zeros
    stripped, if there are at least MIN_KEY of them."""
    out = set()
    for tok in _ALNUM.findall(name):
        m = _NUMBER.fullmatch(tok)
        if m and len(m.group(1)) >= MIN_KEY:
            out.add(m.group(1))
    return out


def ids_name_images(image_ids, text_ids) -> bool:
    """Whether a text id names an image, so that an annotator shown the photo, its name and the
    text ids could pick the right text by its id instead of by looking (``show_ids`` auto).

    A text id names an image when it holds, as a whole part (not inside a longer run of letters and
    digits), the image's file name (Flickr8k: ``1000268201_693b08cb0e.jpg#0``) or its stem
    (``img_0042#1`` for ``img_0042.png``), or when a token of it has the image's number (COCO:
    ``535506#0`` for ``train2017/000000535506.jpg``), see :func:`_numbers`. Names under MIN_KEY
    characters and numbers under MIN_KEY digits do not count (``42#1`` is no sign of
    ``img_0042.png``: short numbers are in every dataset's ids)."""
    parts, numbers = set(), set()
    for tid in text_ids:
        tid = str(tid)
        numbers |= _numbers(tid)
        seps = [i for i, c in enumerate(tid) if not (c.isascii() and c.isalnum())]
        parts.update(tid[a:b] for a in [0] + [i + 1 for i in seps] for b in seps + [len(tid)]
                     if b - a >= MIN_KEY)
    for iid in image_ids:
        name = str(iid).rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
        if (len(name) >= MIN_KEY and name in parts) or (len(stem) >= MIN_KEY and stem in parts) \
                or (numbers and not numbers.isdisjoint(_numbers(stem))):
            return True
    return False


def thumbnails(ws: Workspace) -> int:
    return max(1, int(ws.config.get("thumbnails") or THUMBNAILS))


def pool_size(ws: Workspace) -> int:
    """How many diverse items open the option list before the index can rank."""
    return thumbnails(ws) if ws.select == "text" else max(1, int(ws.config.get("candidates") or 10))


# -- options -------------------------------------------------------------------------------------

def ranked_candidates(ws: Workspace, snap: IndexSnapshot | None, item_id: str,
                      pool: list[str]) -> list[str]:
    """The ids a task about ``item_id`` offers, best first (see the module doc)."""
    tgt = "text" if ws.select == "image" else "image"
    ids = ws.ids(tgt)
    signal = snap is not None and snap.has_signal
    if ws.select == "image":
        n = min(page_texts(ws), len(ids))
        if signal:
            return [c for c, _ in snap.rank("image", item_id, None, n)]
        head = [c for c in pool if c in ws.row_of(tgt)]
        seen = set(head)
        return (head + [c for c in bridge_order(ws, item_id) or ids if c not in seen])[:n]
    n = min(thumbnails(ws), len(ids))
    if not signal:
        head = [c for c in pool if c in ws.row_of(tgt)][:n]
        seen = set(head)
        return head + [c for c in bridge_order(ws, item_id) or ids if c not in seen][:n - len(head)]
    # the ranking, with a third of the grid kept for medoids that span the image clusters
    ranked = [c for c, _ in snap.rank("text", item_id, None, n)]
    n_spread = n // 3
    out = ranked[:n - n_spread]
    taken = set(out)
    for c in pool + ranked[n - n_spread:]:
        if len(out) >= n:
            break
        if c not in taken and c in ws.row_of(tgt):
            out.append(c)
            taken.add(c)
    return out


def _filter_value(text: str) -> str:
    return text.replace("$", "\uff04")   # Label Studio substitutes $name in choice values


def text_option(text_id: str, text: str, show_id: bool = True) -> dict:
    # no "html": the value is shown as it is, the id at its end (unless hidden: ids_shown); an html
    # copy of every text would double what each task carries (~160 KB for COCO-mini's 795 texts)
    return {"value": _filter_value(f"{text}  {text_id}" if show_id else text), "alias": text_id}


def image_option(image_id: str, src: str, words: str = "") -> dict:
    """A thumbnail with its id and ``words`` (what the image encoder sees) under it; the filter
    matches both."""
    shown = f"<span class='xm-words'>{html.escape(words)}</span>" if words else ""
    return {"value": _filter_value(f"{image_id}  {words}" if words else image_id), "alias": image_id,
            "html": f"<img src='{html.escape(src)}' alt='{html.escape(image_id)}' class='xm-thumb' "
                    f"loading='lazy'><span class='xm-id'>{html.escape(image_id)}</span>{shown}"}


def task_options(ws: Workspace, candidates: list[str], urls: ImageURLs | None,
                 texts: dict | None = None, show_ids: bool | None = None) -> list[dict]:
    """``data.options`` for the candidate ids (texts for image tasks, thumbnails for text tasks).
    ``texts`` (id -> text) and ``show_ids``: if the caller has them already."""
    if ws.select == "image":
        texts = texts if texts is not None else dict(zip(ws.ids("text"), ws.contents("text")))
        show_id = ids_shown(ws) if show_ids is None else show_ids
        out = [text_option(c, texts[c], show_id) for c in candidates]
    else:
        words = ws.image_words()
        out = [image_option(c, urls(c, OPTION_THUMB), words.get(c, "")) for c in candidates]
    for o, key in zip(out, HOTKEYS):
        o["hotkey"] = key
    return out


def option_values(options) -> list[str] | None:
    """Item ids of ``data.options`` (each option's ``alias``, else its ``value``; plain strings
    too), without the "none of these" choice. None when the task has no option list."""
    if not isinstance(options, list):
        return None
    out = []
    for o in options:
        v = (o.get("alias") if o.get("alias") is not None else o.get("value")) if isinstance(o, dict) else o
        if isinstance(v, (str, int)) and str(v) != NONE_CHOICE:
            out.append(str(v))
    return out


def model_note(snap: IndexSnapshot | None, select: str, ids: bool = True) -> str:
    """One line: which index ordered the options and how many labels it holds (``ids``: whether
    the texts' ids are on the page, :func:`ids_shown`)."""
    what = "texts" if select == "image" else "images"
    # the filter matches an option's value: a text's words and id, an image's id (its file path)
    if select == "image":
        how = "Type a word to filter" + ("; the id at the end of each text can be pasted" if ids else "")
    else:
        how = ("Type a word (dog, pizza, bus) or part of a file name to narrow them; the id under "
               "each image can be pasted")
    if snap is None or not snap.has_signal:
        held = (f"model {snap.model_version} ({_labels(snap.n_pairs)}) is too new to rank"
                if snap is not None else "no labels yet")
        return f"{held.capitalize()}: a spread of the {what} comes first. {how}."
    return f"{what.capitalize()} ranked by model {snap.model_version} ({_labels(snap.n_pairs)}). {how}."


def _labels(n: int) -> str:
    return f"{n} label" if n == 1 else f"{n} labels"


# -- task data -----------------------------------------------------------------------------------

def task_data(ws: Workspace, item_id: str, cluster: int, candidates: list[str], urls: ImageURLs,
              snap: IndexSnapshot | None = None, texts: dict | None = None,
              show_ids: bool | None = None) -> dict:
    """``data`` of one Label Studio task (keys documented in label_config/README.md). ``texts``
    (id -> text) and ``show_ids`` (:func:`ids_shown`), if the caller has them already."""
    texts = texts if texts is not None else dict(zip(ws.ids("text"), ws.contents("text")))
    show_ids = ids_shown(ws) if show_ids is None else show_ids
    data = {"item_id": item_id, "options": task_options(ws, candidates, urls, texts, show_ids),
            # the page names the item only where it shows ids (a Flickr8k file name would
            # match the ids of its captions)
            "item_name": item_id if show_ids else "",
            "cluster": int(cluster), "model_note": model_note(snap, ws.select, show_ids),
            "index_version": 0 if snap is None else int(snap.version), "problem": ""}
    if ws.select == "image":
        data["image"] = urls(item_id, MEDOID_THUMB)
    else:
        data["text"] = texts[item_id]
    return data


def build_tasks(ws: Workspace, medoid_ids: list[str], pool: list[str], urls: ImageURLs,
                snap: IndexSnapshot | None = None) -> list[dict]:
    """One task per medoid, in anytime order; ``cluster`` = the medoid's position."""
    texts = dict(zip(ws.ids("text"), ws.contents("text")))
    show = ids_shown(ws)
    return [{"data": task_data(ws, m, j, ranked_candidates(ws, snap, m, pool), urls, snap, texts, show)}
            for j, m in enumerate(medoid_ids)]


def record_tasks(r: redis.Redis, ws: Workspace, task_ids: dict[str, int], tasks: list[dict]) -> None:
    """Remember imported tasks (``{item_id: task id}`` and their ``{"data"}``) in the registry."""
    by_item = {t["data"]["item_id"]: t for t in tasks}
    TaskRegistry(r, ws.name).record([{"id": tid, "data": by_item[item]["data"]}
                                     for item, tid in task_ids.items() if item in by_item])


class OptionRanker:
    """Task data re-ranked by an index with signal, for tasks of the workspace."""

    def __init__(self, ws: Workspace, snap: IndexSnapshot, pool: list[str] | None = None):
        self.ws, self.snap = ws, snap
        self.pool = list(pool or [])
        self._urls = None
        self._texts = dict(zip(ws.ids("text"), ws.contents("text")))
        self._show_ids = ids_shown(ws)

    def urls(self) -> ImageURLs:
        if self._urls is None:
            ls = self.ws.config["label_studio"]
            self._urls = ImageURLs(self.ws, ls.get("images") or "inline",
                                   document_root(ls.get("document_root")))
        return self._urls

    def new_data(self, task: dict) -> dict | None:
        """The task's whole data with its options ranked by the index, or None when they already
        are (same ids in the same order, same index version)."""
        data = task.get("data") or {}
        item = str(data["item_id"])
        if item not in self.ws.row_of(self.ws.select):
            return None
        ranked = ranked_candidates(self.ws, self.snap, item, self.pool)
        if not ranked or (option_values(data.get("options")) == ranked
                          and data.get("index_version") == self.snap.version):
            return None
        fresh = task_data(self.ws, item, int(data.get("cluster", 0)), ranked, self.urls(), self.snap,
                          self._texts, self._show_ids)
        keep = {k: v for k, v in data.items() if k not in fresh}   # a team's own fields stay
        fresh["problem"] = data.get("problem") or ""
        return {**keep, **fresh}


# -- the registry --------------------------------------------------------------------------------

# data fields task_data writes anew on every re-rank: not worth keeping (an inline image is ~30 KB)
REGENERATED = frozenset({"item_id", "item_name", "options", "image", "text", "model_note"})
KEPT = ("cluster", "index_version", "problem")   # what the push reads of the rest: always kept
TEAM_DATA_MAX_BYTES = 512
RECORD_MAX_BYTES = 256 * 1024
RECORD_BATCH = 200           # tasks per script call
REGISTRY_MAX_BYTES = 128 * 2**20


def registry_max_bytes() -> int:
    """``$XMODAL_TASK_REGISTRY_MAX_BYTES`` (default 128 MiB): a project's task records at most."""
    return settings.get("XMODAL_TASK_REGISTRY_MAX_BYTES")


# KEYS: 1 tasks, 2 bytes counter, 3 tasks:deleted, 4 (unused), 5 recent deletions (TASK_DELETED_LUA)
# ARGV: budget, then task id, record, task id, record...; returns {recorded, refused by the budget}
_RECORD = TASK_DELETED_LUA + """
local total = tonumber(redis.call('GET', KEYS[2]) or '-1')
if total < 0 then   -- a registry from before the counter: counted once
  total = 0
  for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do total = total + redis.call('HSTRLEN', KEYS[1], k) end
end
local budget, stored, refused = tonumber(ARGV[1]), 0, 0
for i = 2, #ARGV, 2 do
  local id, rec = ARGV[i], ARGV[i + 1]
  if not task_deleted(id) then
    local old = redis.call('HSTRLEN', KEYS[1], id)
    if total - old + #rec <= budget or #rec <= old then
      redis.call('HSET', KEYS[1], id, rec)
      total = total - old + #rec
      stored = stored + 1
    else
      refused = refused + 1
    end
  end
end
redis.call('SET', KEYS[2], total)
return {stored, refused}
"""

# KEYS: 1 tasks, 2 bytes counter ; ARGV: task ids
_FORGET = """
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 1, #ARGV do
  total = total - redis.call('HSTRLEN', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[1], ARGV[i])
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SET', KEYS[2], math.max(total, 0)) end
return 0
"""


def _record_value(task_id: int, data: dict) -> str | None:
    """The JSON kept for a task (see the module doc), or None when it is too large to keep."""
    kept = {k: data[k] for k in KEPT if k in data and len(json.dumps(data[k])) <= 1024}
    own = {k: v for k, v in data.items() if k not in REGENERATED and k not in KEPT}
    rec = {"item_id": str(data["item_id"]), "options": option_values(data.get("options")),
           "data": {**kept, **own}}
    if len(json.dumps(own)) > TEAM_DATA_MAX_BYTES or len(kept) < sum(k in data for k in KEPT):
        rec.update(data=kept, partial=True)
    value = json.dumps(rec)
    if len(value) > RECORD_MAX_BYTES:
        log.warning(kv("tasks.record_too_large", task=task_id, bytes=len(value)))
        return None
    return value


class TaskRegistry:
    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis = redis_client
        self.project = project
        self.key = pkey(project, "tasks")
        self.bytes_key = pkey(project, "tasks", "bytes")
        self._keys = [self.key, self.bytes_key, pkey(project, "tasks", "deleted"), self.key,
                      pkey(project, "deleted", "recent")]
        self._record = redis_client.register_script(_RECORD)
        self._forget = redis_client.register_script(_FORGET)

    def record(self, tasks, items=None) -> int:
        """Remember ``{"id", "data": {"item_id", "options", ...}}`` tasks (of ``items`` only, when
        given: the project's items of the select modality); returns how many were recorded."""
        mapping = {}
        for t in tasks or []:
            if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
                continue
            try:
                tid = int(t.get("id"))
            except (TypeError, ValueError, OverflowError):
                continue
            item = t["data"].get("item_id")
            if item is None or (items is not None and str(item) not in items):
                continue
            value = _record_value(tid, t["data"])
            if value is not None:
                mapping[str(tid)] = value
        if not mapping:
            return 0
        stored = refused = 0
        items = list(mapping.items())
        for start in range(0, len(items), RECORD_BATCH):   # short scripts: Redis never blocks long
            args = [str(registry_max_bytes())]
            for tid, value in items[start:start + RECORD_BATCH]:
                args += [tid, value]
            done, no = self._record(keys=self._keys, args=args)
            stored, refused = stored + int(done), refused + int(no)
        if refused:
            log.warning(kv("tasks.registry_full", project=self.project, refused=int(refused),
                           limit=registry_max_bytes(), fix="XMODAL_TASK_REGISTRY_MAX_BYTES"))
        return int(stored)

    def get(self, task_id) -> dict | None:
        raw = self.redis.hget(self.key, str(int(task_id)))
        return json.loads(raw) if raw else None

    def tasks(self) -> list[dict]:
        """As Label Studio-shaped tasks: ``{"id", "data": {"item_id", "options", ...}}``, the
        options as ``[{"value": id}]``; ``"partial": True`` when its own fields were not kept."""
        out = []
        for k, v in self.redis.hgetall(self.key).items():
            rec = json.loads(v)
            data = dict(rec.get("data") or {}, item_id=rec["item_id"])
            if rec.get("options") is not None:
                data["options"] = [{"value": o} for o in rec["options"]]
            out.append({"id": int(k), "data": data, **({"partial": True} if rec.get("partial") else {})})
        return sorted(out, key=lambda t: t["id"])

    def forget(self, task_ids) -> None:
        ids = [str(int(t)) for t in task_ids]
        for start in range(0, len(ids), 1000):
            self._forget(keys=[self.key, self.bytes_key], args=ids[start:start + 1000])
