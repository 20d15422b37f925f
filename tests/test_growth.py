"""A project that grows while the team labels, end to end: a REAL Label Studio 1.23.2
(tests/ls_server.py), the real Redis, `xmodal serve` and an `xmodal worker` (the `services`
fixture), and the `xmodal items add` command line.

60 synthetic shapes and their captions -> `project create` (8 medoid tasks, images served by Label
Studio's local files) -> 5 labels through Label Studio's API -> `xmodal items add` with 40 more
images and texts, 12 of them a kind the project had none of (stripes) -> the new items are
embedded, searchable through /search, ranked in the options and predictions Label Studio holds,
a new medoid task of the new kind is in Label Studio, and every earlier pair is still stored.
Then the same through Label Studio: tasks imported into the linked project (TASKS_CREATED) with a
new image and text become items.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import poll
from ls_server import ls_server_fixture
from test_items import make_growth_data, write_group

pytestmark = pytest.mark.growth

ls_server = ls_server_fixture()
LABELS = 5
K = 8          # medoid tasks: 3 stay open, so Label Studio's predictions matter


@pytest.fixture
def growth_data(tmp_path, monkeypatch):
    """The data, and the operator's image roots set before the services start (the backend reads
    new items' images only there)."""
    data, more = make_growth_data(tmp_path / "growth")
    monkeypatch.setenv("XMODAL_IMAGE_ROOTS", str(tmp_path / "growth"))
    return data, more



def _index_waiter(store, ls, pid, procs):
    """``wait_index(n_pairs, at_least=0)``: the version of the first published index with
    ``n_pairs`` pairs (and at least version ``at_least``) that Label Studio serves."""
    def wait_index(n_pairs: int, at_least: int = 0) -> int:
        def ready():
            info = store.info()
            if int(info.get("n_pairs", -1)) != n_pairs or int(info.get("version", 0)) < at_least:
                return None
            v = int(info["version"])
            return v if ls.get_project(pid)["model_version"] == f"v{v}" else None
        return poll(f"an index with {n_pairs} pairs served by Label Studio", ready, procs=procs, timeout=120)
    return wait_index


def test_items_added_while_labelling(growth_data, ls_server, xenv, services, tmp_path):
    from xmodal.datasets import load_data
    from xmodal.index.store import IndexStore
    from xmodal.labelstudio.client import connect
    from xmodal.labelstudio.project import ProjectSpec, create_project
    from xmodal.project.pairs import PairStore
    from xmodal.project.workspace import Workspace

    data, more = growth_data
    r, procs, url = xenv.redis, services["procs"], services["url"]
    name = f"grow-{xenv.tag}"
    boot = create_project(ProjectSpec(name=name, data=data, k=K, label_studio_url=ls_server.url,
                                      api_key=ls_server.token, backend_url=url, images="local",
                                      document_root=str(ls_server.document_root)), redis_client=r)
    ls, pid = connect(ls_server.url, ls_server.token), boot.ls_project_id
    ws = Workspace.for_project(name)
    store, pairs = IndexStore(r, ws), PairStore(r, name)
    ds, _ = load_data(data, "first")
    truth = {ds.image_ids[i]: ds.text_ids[t] for i, t in ds.pairs}

    wait_index = _index_waiter(store, ls, pid, procs)

    # -- 5 labels, through Label Studio ------------------------------------------------------
    annotations = {}
    for task in ls.list_tasks(pid)[:LABELS]:
        item = task["data"]["item_id"]
        answer = truth[item]
        values = [o["alias"] for o in task["data"]["options"]]
        result = [{"from_name": "caption", "to_name": "image", "type": "choices",
                   "value": {"choices": [answer]}}] if answer in values else \
            [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": ["__none__"]}},
             {"from_name": "description", "to_name": "image", "type": "textarea", "value": {"text": [answer]}}]
        annotations[ls.create_annotation(task["id"], result)["id"]] = (item, answer)
    v5 = wait_index(LABELS)
    before = {a: pairs.get(a) for a in annotations}
    assert all(rec and rec["state"] == "pair" for rec in before.values()), before

    # -- xmodal items add ---------------------------------------------------------------------
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "xmodal.cli", "items", "add", "--project", name,
                          "--data", str(more), "--cache-dir", str(tmp_path / "features")],   # embedded now
                         env=dict(os.environ), capture_output=True, text=True,
                         timeout=600)
    add_s = time.perf_counter() - t0
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "40 new images, 40 new texts" in cli.stdout and "embedded 40 new images" in cli.stdout, cli.stdout
    more_ds, _ = load_data(more, "all")
    new_images, new_texts = list(more_ds.image_ids), list(more_ds.text_ids)
    assert set(new_images) <= set(ws.ids("image")) and set(new_texts) <= set(ws.ids("text"))
    assert len(ws.ids("image")) == 100 and len(ws.ids("text")) == 100
    v_add = wait_index(LABELS, at_least=v5 + 1)   # rebuilt by the command, pushed to Label Studio
    snap = store.load(v_add)
    assert set(new_images) <= set(snap.image_ids) and set(new_texts) <= set(snap.text_ids)

    # searchable through /search: a new image finds texts, a new text finds images, words find the new kind
    hits = httpx.get(f"{url}/search", params={"project": name, "image_id": "stripes_00.png", "k": 10}).json()
    assert hits["model_version"] == f"v{v_add}" and len(hits["results"]) == 10
    by_text = httpx.get(f"{url}/search", params={"project": name, "text_id": "stripes-01", "k": 10}).json()
    assert len(by_text["results"]) == 10

    # a new medoid task for the new kind, in Label Studio, with options ranked by the new index
    tasks = {t["id"]: t for t in ls.list_tasks(pid)}
    items = [t["data"]["item_id"] for t in tasks.values()]
    new_kind = [i for i in items if i.startswith("stripes_")]
    assert new_kind, items
    assert ws.medoid_ids()[:K] == boot.medoid_ids and len(ws.medoid_ids()) == len(tasks)

    # the next predictions: every open task, old and new, has one of the current version, and
    # the pages offer the new texts
    labelled = {item for item, _ in annotations.values()}

    def current_predictions():
        preds = {p["task"]: p for p in ls.api("GET", "/api/predictions/", params={"project": pid})
                 if p["model_version"] == f"v{store.current_version()}"}
        open_tasks = [t for t, task in tasks.items() if task["data"]["item_id"] not in labelled]
        return preds if all(t in preds for t in open_tasks) else None
    preds = poll("predictions of the grown index for every open task", current_predictions, procs=procs,
                 timeout=60, interval=0.5)
    new_task_ids = [t for t, task in tasks.items() if task["data"]["item_id"] in new_kind]
    assert all(t in preds for t in new_task_ids)
    fresh = {t["id"]: t for t in ls.list_tasks(pid)}
    offered = {o["alias"] for t in new_task_ids for o in fresh[t]["data"]["options"]}
    assert set(new_texts) & offered, "the new medoid task offers none of the new texts"

    # nothing stored was lost
    after = {a: pairs.get(a) for a in annotations}
    assert {a: (x["image_id"], x["text_id"], x["state"]) for a, x in after.items()} == \
        {a: (x["image_id"], x["text_id"], x["state"]) for a, x in before.items()}
    assert store.load(v5).n_pairs == LABELS and snap.n_pairs == LABELS
    # the new kind's medoid labelled: words now find the new kind
    task = next(t for t in fresh.values() if t["data"]["item_id"] == new_kind[0])
    answer = "stripes-" + new_kind[0][len("stripes_"):-len(".png")]
    values = [o["alias"] for o in task["data"]["options"]]
    result = [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": [answer]}}] \
        if answer in values else \
        [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": ["__none__"]}},
         {"from_name": "description", "to_name": "image", "type": "textarea", "value": {"text": [answer]}}]
    ls.create_annotation(task["id"], result)
    wait_index(LABELS + 1)
    words = httpx.get(f"{url}/search", params={"project": name, "text": "black and white stripes",
                                              "k": 10}).json()
    stripes = [h["id"] for h in words["results"] if h["id"].startswith("stripes_")]
    assert len(stripes) >= 3, words["results"]
    print(f"\nxmodal items add: 40 images + 40 texts (12 of a new kind) searchable and pushed in "
          f"{add_s:.1f} s (the command, embedding included); new medoid tasks: {new_kind}")

    # -- the same through Label Studio: tasks imported into the linked project ---------------------
    extra = write_group(tmp_path / "growth" / "imported", 2, kind="checks", start=40)
    t0 = time.perf_counter()
    docroot = str(ls_server.document_root)
    # the fields the project's labelling config names: a new item_id, the image, no options yet
    imported = [{"data": {"item_id": f"imported/checks_{i}.png", "options": [],
                          "image": "/data/local-files/?d=" + os.path.relpath(extra / "images" / f"checks_{i}.png",
                                                                             docroot),
                          "text": f"an imported caption of stripes number {i}"}} for i in (40, 41)]
    ls.api("POST", f"/api/projects/{pid}/import", json=imported)   # as a team imports them

    def grown():
        return len(ws.ids("image")) == 102 and len(ws.ids("text")) == 102 and \
            all(t in (store.load(store.current_version()).text_ids.tolist()) for t in ws.ids("text")[-2:])
    poll("the imported tasks' items indexed", grown, procs=procs, timeout=120, interval=0.5)
    imported_s = time.perf_counter() - t0
    # pending items are added in no promised order (the same batch, one append)
    assert set(ws.ids("image")[-2:]) == {"imported/checks_40.png", "imported/checks_41.png"}
    assert all(t.startswith("ls-") for t in ws.ids("text")[-2:])
    new_id = "imported/checks_41.png"
    hits = httpx.get(f"{url}/search", params={"project": name, "image_id": new_id, "k": 5})
    assert hits.status_code == 200 and len(hits.json()["results"]) == 5
    assert all(pairs.get(a)["state"] == "pair" for a in annotations)
    print(f"TASKS_CREATED: 2 imported tasks' images and texts searchable {imported_s:.1f} s after the import")

    # an image uploaded to Label Studio (not a local file): fetched through Label Studio by the job
    scratch = int(ls.api("POST", "/api/projects/", json={
        "title": f"uploads {xenv.tag}",
        "label_config": '<View><Image name="image" value="$image"/></View>'})["id"])
    png = (extra / "images" / "checks_40.png").read_bytes()
    ls.api("POST", f"/api/projects/{scratch}/import", files=[("file", ("uploaded-checks.png", png, "image/png"))],
           params={"commit_to_project": "true"})
    (upload,) = [t["data"]["image"] for t in ls.list_tasks(scratch)]
    assert upload.startswith("/data/upload/")
    t0 = time.perf_counter()
    ls.api("POST", f"/api/projects/{pid}/import", json=[{"item_id": "uploaded/checks.png", "options": [],
                                                          "image": upload, "text": "an uploaded caption"}])
    poll("the uploaded image fetched and indexed", lambda: "uploaded/checks.png" in
         set(store.load(store.current_version()).image_ids.tolist()), procs=procs, timeout=120, interval=0.5)
    print(f"TASKS_CREATED with an upload: fetched through Label Studio and searchable "
          f"{time.perf_counter() - t0:.1f} s after the import")
    hits = httpx.get(f"{url}/search", params={"project": name, "image_id": "uploaded/checks.png", "k": 5})
    assert hits.status_code == 200


# -- the same for a project made from a Label Studio project: tasks imported into the SOURCE ---------
def _upload(ls, project: int, files: list[tuple[str, bytes]], mime: str) -> None:
    """Multipart upload through Label Studio's import API, 20 files a request."""
    for start in range(0, len(files), 20):
        ls.api("POST", f"/api/projects/{project}/import", params={"commit_to_project": "true"},
               files=[(f"file{i}", (name, data, mime)) for i, (name, data) in enumerate(files[start:start + 20])])


def _label(ls, task: dict, answer: str) -> int:
    values = [o["alias"] for o in task["data"]["options"]]
    result = [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": [answer]}}] \
        if answer in values else \
        [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": ["__none__"]}},
         {"from_name": "description", "to_name": "image", "type": "textarea", "value": {"text": [answer]}}]
    return ls.create_annotation(task["id"], result)["id"]


def test_tasks_imported_into_the_source_project_become_items(ls_server, xenv, services, tmp_path):
    """Issue 24's Done-when for data that lives in Label Studio: 60 photos uploaded through Label
    Studio's API with their captions -> `project create --from-label-studio` (which registers a
    TASKS_CREATED/TASKS_DELETED webhook on the source project) -> 5 labels in the linked project ->
    40 more photos and captions imported into the SOURCE project (28 photos, 12 stripes: a kind it
    had none of; uploaded through Label Studio's API, imported as tasks with their captions) -> they
    are items with the ids project create gives, embedded, searchable through /search, in the
    next predictions, a new medoid task of the stripes is in the linked project, every earlier pair
    is stored. Then source tasks deleted: their items go, a pair on one stays as a problem."""
    import json
    import re

    from test_from_label_studio import SOURCE_CONFIG, photos
    from test_items import write_group

    from xmodal.index.store import IndexStore
    from xmodal.labelstudio.client import connect
    from xmodal.project.pairs import PairStore
    from xmodal.project.workspace import Workspace

    procs, url = services["procs"], services["url"]
    ls = connect(ls_server.url, ls_server.token)
    one_key = re.sub(r"\s*<Text [^>]*/>", "", SOURCE_CONFIG)   # a direct upload takes one data key
    source = int(ls.api("POST", "/api/projects/", json={"title": f"source {xenv.tag}", "label_config": one_key})["id"])
    first = photos(60)
    _upload(ls, source, [(n, d) for n, d, _ in first], "image/jpeg")
    ls.api("PATCH", f"/api/projects/{source}/", json={"label_config": SOURCE_CONFIG})
    caption_of = {n: c for n, _, c in first}
    for t in ls.list_tasks(source):
        (url_,) = [v for v in t["data"].values() if isinstance(v, str) and v.startswith("/data/upload/")]
        ls.update_task_data(t["id"], {**t["data"], "caption": caption_of[url_.rsplit("/", 1)[1].split("-", 1)[1]]})
    source_config = ls.get_project(source)["label_config"]

    name = f"fromls-grow-{xenv.tag}"
    env = dict(os.environ, LABEL_STUDIO_URL=ls_server.url, LABEL_STUDIO_API_KEY=ls_server.token,
               XMODAL_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "xmodal.cli", "project", "create", "--from-label-studio",
                          str(source), "--name", name, "--k", str(K), "--backend-url", url, "--json"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(run.stdout)
    pid, hook = out["label_studio_project"], out["source"]["webhook"]
    # the source project: one webhook, for the two task events only; its config and ML backends as they were
    (registered,) = ls.api("GET", "/api/webhooks/", params={"project": source})
    assert registered["id"] == hook and registered["url"] == f"{url}/webhook"
    assert sorted(registered["actions"]) == ["TASKS_CREATED", "TASKS_DELETED"]
    assert not registered["send_for_all_actions"] and registered["send_payload"]
    assert ls.api("GET", "/api/ml/", params={"project": source}) == []
    assert ls.get_project(source)["label_config"] == source_config

    ws = Workspace.for_project(name)
    r = xenv.redis
    store, pairs = IndexStore(r, ws), PairStore(r, name)

    wait_index = _index_waiter(store, ls, pid, procs)

    # -- 5 labels in the linked project: the caption of the medoid's own source task --------------
    linked = ls.list_tasks(pid)
    annotations = {}
    for task in linked[:LABELS]:
        item = task["data"]["item_id"]
        answer = "ls-" + item.split("-")[1]
        annotations[_label(ls, task, answer)] = (item, answer)
    v5 = wait_index(LABELS)
    before = {a: pairs.get(a) for a in annotations}
    assert all(rec and rec["state"] == "pair" for rec in before.values()), before

    # -- 40 more into the SOURCE project: uploaded through Label Studio's API, imported as tasks ----
    more = [(n, d, c) for n, d, c in photos(28, start=60)]
    stripes = write_group(tmp_path / "stripes", 12)
    lines = [json.loads(x) for x in (stripes / "texts.jsonl").read_text().splitlines()]
    uploads = int(ls.api("POST", "/api/projects/", json={"title": f"uploads {xenv.tag}",
                                                          "label_config": one_key})["id"])
    _upload(ls, uploads, [(n, d) for n, d, _ in more], "image/jpeg")
    _upload(ls, uploads, [(x["image"], (stripes / "images" / x["image"]).read_bytes()) for x in lines], "image/png")
    url_of = {t["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1]: t["data"]["image"] for t in ls.list_tasks(uploads)}
    captions = {n: c for n, _, c in more} | {x["image"]: x["text"] for x in lines}
    assert len(url_of) == 40
    t0 = time.perf_counter()
    ls.api("POST", f"/api/projects/{source}/import", params={"commit_to_project": "true"},
           json=[{"image": url_of[n], "caption": c} for n, c in captions.items()])
    new_tasks = {t["id"]: t for t in ls.list_tasks(source) if t["data"]["image"] in set(url_of.values())}
    assert len(new_tasks) == 40

    def grown():
        if len(ws.ids("image")) != 100 or len(ws.ids("text")) != 100:
            return None
        snap = store.load(store.current_version())
        return snap if set(ws.ids("image")) <= set(snap.image_ids.tolist()) and \
            set(ws.ids("text")) <= set(snap.text_ids.tolist()) else None
    snap = poll("the source's new tasks embedded and indexed", grown, procs=procs, timeout=300, interval=0.5)
    searchable_s = time.perf_counter() - t0
    # the ids project create gives: ls-<task>-<file name>.<ext> and ls-<task>
    new_images = [i for i in ws.ids("image") if int(i.split("-")[1]) in new_tasks]
    new_texts = [i for i in ws.ids("text") if int(i.split("-")[1]) in new_tasks]
    assert sorted(new_texts) == sorted(f"ls-{t}" for t in new_tasks) and len(new_images) == 40
    for item in new_images:
        task = new_tasks[int(item.split("-")[1])]
        stem = task["data"]["image"].rsplit("/", 1)[1].rsplit(".", 1)[0]
        assert re.fullmatch(rf"ls-{task['id']}-{re.escape(stem)}\.(jpg|png)", item), item
    stripe_ids = [i for i in new_images if "stripes_" in i]
    assert len(stripe_ids) == 12

    # searchable through /search: a new image finds texts, a new text finds images
    hits = httpx.get(f"{url}/search", params={"project": name, "image_id": stripe_ids[0], "k": 10}).json()
    assert len(hits["results"]) == 10
    hits = httpx.get(f"{url}/search", params={"project": name, "text_id": new_texts[0], "k": 10}).json()
    assert len(hits["results"]) == 10

    # a new medoid task of the stripes in the linked project, showing the source's upload URL
    # (the growth job pushes the index first, then extends the medoids)
    new_kind = poll("a new medoid task of the stripes in the linked project", lambda: [
        t for t in ls.list_tasks(pid) if t["data"]["item_id"] in stripe_ids], procs=procs, timeout=120, interval=0.5)
    tasks = {t["id"]: t for t in ls.list_tasks(pid)}
    assert len(tasks) > K and ws.medoid_ids()[:K] == out["medoids"]
    assert all(t["data"]["image"] in url_of.values() for t in new_kind)
    assert ls.download(new_kind[0]["data"]["image"], 10**7).content[:4] == b"\x89PNG"

    # the next predictions: every open task has one of the grown index; the pages offer new texts
    labelled = {item for item, _ in annotations.values()}

    def current_predictions():
        version = f"v{store.current_version()}"
        preds = {p["task"]: p for p in ls.api("GET", "/api/predictions/", params={"project": pid})
                 if p["model_version"] == version}
        return preds if all(t in preds for t, task in tasks.items()
                            if task["data"]["item_id"] not in labelled) else None
    poll("predictions of the grown index for every open task", current_predictions, procs=procs,
         timeout=120, interval=0.5)
    offered = {o["alias"] for t in ls.list_tasks(pid) for o in t["data"]["options"]}
    assert set(new_texts) & offered, "no page offers a new text"

    # every earlier pair is still stored
    after = {a: pairs.get(a) for a in annotations}
    assert {a: (x["image_id"], x["text_id"], x["state"]) for a, x in after.items()} == \
        {a: (x["image_id"], x["text_id"], x["state"]) for a, x in before.items()}
    assert store.load(v5).n_pairs == LABELS and snap.n_pairs == LABELS
    print(f"\nsource TASKS_CREATED: 40 photos and captions (12 stripes) searchable {searchable_s:.1f} s after "
          f"the import; new medoid tasks: {[t['data']['item_id'] for t in new_kind]}")

    # -- source tasks deleted: their items go; a pair on one stays, as a problem ------------------
    gone_item, gone_text = next(iter(annotations.values()))
    doomed = [int(gone_item.split("-")[1]), next(iter(new_tasks))]
    ls.api("POST", "/api/dm/actions", params={"id": "delete_tasks", "project": source},
           json={"selectedItems": {"all": False, "included": doomed}})
    poll("the deleted tasks' items removed", lambda: len(ws.ids("image")) == 98 and len(ws.ids("text")) == 98,
         procs=procs, timeout=120, interval=0.5)
    assert gone_item not in ws.ids("image") and gone_text not in ws.ids("text")
    problem = next(a for a, (item, _) in annotations.items() if item == gone_item)
    poll("the pair on a removed item kept as a problem", lambda: (pairs.get(problem) or {}).get("state") == "problem",
         procs=procs, timeout=60, interval=0.5)
    assert sum(1 for a in annotations if pairs.get(a)["state"] == "pair") == LABELS - 1
    ls.close()
