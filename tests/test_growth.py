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

    def wait_index(n_pairs: int, at_least: int = 0) -> int:
        def ready():
            info = store.info()
            if int(info.get("n_pairs", -1)) != n_pairs or int(info.get("version", 0)) < at_least:
                return None
            v = int(info["version"])
            return v if ls.get_project(pid)["model_version"] == f"v{v}" else None
        return poll(f"an index with {n_pairs} pairs served by Label Studio", ready, procs=procs, timeout=120)

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
    new_id = ws.ids("image")[-1]
    assert new_id == "imported/checks_41.png" and ws.ids("text")[-1].startswith("ls-")
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
