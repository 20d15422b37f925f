"""Items added to a live project (xmodal/project/items.py, workers/growth.py, backend/items.py):
real workspaces on disk made by `project create` from generated images (EfficientNet-Lite0 and
MiniLM, the defaults), the real Redis, the real worker process for the job."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import poll

from xmodal.errors import DataError
from xmodal.project.items import ItemConflict, add_items, new_items
from xmodal.project.pairs import PairStore
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import pkey


def write_group(folder, n: int, kind: str = "stripes", start: int = 0):
    """A generic-format folder of images unlike the synthetic shapes (black and white stripes)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    lines = []
    for i in range(start, start + n):
        a = np.zeros((96, 96, 3), np.uint8)
        w = int(rng.integers(3, 9))
        for x in range(96):
            if (x // w) % 2 == 0:
                a[:, x] = (250, 250, 250)
        if i % 2:
            a = a.transpose(1, 0, 2).copy()
        Image.fromarray(a).save(folder / "images" / f"{kind}_{i:02d}.png")
        lines.append({"id": f"{kind}-{i:02d}", "image": f"{kind}_{i:02d}.png",
                      "text": f"black and white {'vertical' if i % 2 == 0 else 'horizontal'} stripes, "
                              f"a zebra pattern, sample {i}"})
    with open(folder / "texts.jsonl", "a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    return folder


def make_growth_data(root, n: int = 60, n_more: int = 28, n_new_kind: int = 12):
    """``(data, more)``: ``n`` synthetic shapes with their captions; ``n_more`` shapes of another
    seed (ids of their own) and ``n_new_kind`` stripes, a kind the first folder has none of."""
    from xmodal.datasets.synthetic import generate

    data = generate(root / "data", n=n, seed=0, image_size=96)
    more = generate(root / "more", n=n_more, seed=7, image_size=96)
    # the generated ids restart at img_0000: give the second batch ids of its own
    for p in sorted((more / "images").iterdir()):
        p.rename(p.with_name("more_" + p.name))
    rows = [json.loads(x) for x in (more / "texts.jsonl").read_text().splitlines() if x.strip()]
    (more / "texts.jsonl").write_text("".join(
        json.dumps(dict(r, id="more-" + str(r["id"]), image="more_" + r["image"])) + "\n" for r in rows))
    (more / "images.jsonl").unlink()
    write_group(more, n_new_kind)
    return data, more


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A project made once: 60 synthetic shapes and their captions, 5 medoids (no Label Studio);
    ``more``: 20 more shapes (another seed) and 12 stripes."""
    import os

    from xmodal.labelstudio.project import ProjectSpec, create_project

    root = tmp_path_factory.mktemp("items")
    data, more = make_growth_data(root, n_more=20)
    old = os.environ.get("MODEL_DIR")
    os.environ["MODEL_DIR"] = str(root / "models")
    try:
        create_project(ProjectSpec(name="grow", data=data, k=5))
    finally:
        if old is None:
            os.environ.pop("MODEL_DIR")
        else:
            os.environ["MODEL_DIR"] = old
    return {"root": root, "data": data, "more": more, "ws": root / "models" / "grow"}


@pytest.fixture
def project(base, xenv):
    dest = xenv.models / "grow"
    shutil.copytree(base["ws"], dest)
    return Workspace(dest)


def folder_items(path):
    from xmodal.datasets import load_data

    ds, _ = load_data(path, "all")
    return dict(zip(ds.image_ids, map(str, ds.image_paths))), dict(zip(ds.text_ids, ds.texts))


# -- the library ---------------------------------------------------------------------------------

def test_add_appends_only_what_is_new_and_keeps_every_row(project, base):
    X0, Y0 = project.load_features("image"), project.load_features("text")
    ids0 = {m: list(project.ids(m)) for m in ("image", "text")}
    images, texts = folder_items(base["more"])
    change = add_items(project, images, texts)
    assert len(change.added["image"]) == 32 and len(change.added["text"]) == 32 and not change.failed
    X, Y = project.load_features("image"), project.load_features("text")
    assert X.shape == (92, X0.shape[1]) and Y.shape == (92, Y0.shape[1])
    np.testing.assert_array_equal(X[:60], X0)       # earlier rows untouched, in place
    np.testing.assert_array_equal(Y[:60], Y0)
    assert project.ids("image")[:60] == ids0["image"] and project.ids("text")[:60] == ids0["text"]
    assert len(project.selection["labels"]) == 92   # every item has its cluster
    assert project.bridge() is not None and len(project.image_words()) == 92
    # the same again: nothing; the same ids with the same content from the original folder: nothing
    again = add_items(project, images, texts)
    assert not again.changed and again.unchanged == {"image": 32, "text": 32}
    data_images, data_texts = folder_items(base["data"])
    assert not add_items(project, data_images, data_texts).changed


def test_far_items_are_the_new_kind_and_get_a_medoid(project, base):
    images, texts = folder_items(base["more"])
    change = add_items(project, images, texts)
    stripes = {i for i in change.added["image"] if i.startswith("stripes")}
    far = set(change.far)
    # the threshold is the data's: the 95th percentile of the earlier items' distance to a medoid
    assert change.far_threshold is not None and 0 < change.far_threshold < 2
    assert stripes <= far, (sorted(far), change.far_threshold)
    assert len(far - stripes) <= 5, sorted(far - stripes)   # more of the same kind stay covered
    assert change.propose_medoids >= 1


def test_a_conflicting_id_refuses_the_whole_batch(project, base, tmp_path):
    before = project.items_path.read_bytes()
    texts = {"stripes-new": "a new text", project.ids("text")[0]: "another text under an old id"}
    with pytest.raises(ItemConflict, match="other content"):
        add_items(project, {}, texts)
    other = write_group(tmp_path / "other", 1)
    with pytest.raises(ItemConflict):   # an old image id pointing at another file
        add_items(project, {project.ids("image")[0]: str(other / "images" / "stripes_00.png")}, {})
    with pytest.raises(DataError, match="no readable file"):
        add_items(project, {"ghost": str(tmp_path / "missing.png")}, {})
    with pytest.raises(DataError, match="bad text"):
        new_items(project, {}, {"": "x", "ok": "\x00"})
    assert project.items_path.read_bytes() == before


def test_a_broken_image_is_reported_not_added(project, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    change = add_items(project, {"broken": str(bad)}, {"fine": "a red circle"})
    assert [i for i, _ in change.failed] == ["broken"]
    assert "broken" not in project.row_of("image") and "fine" in project.row_of("text")


def test_run_pending_rebuilds_and_proposes_medoid_tasks(project, base, r):
    from workers.growth import remove, run_pending
    from workers.rebuild import rebuild
    from xmodal.index.store import load_current
    from xmodal.project.pending import PendingItems, last_run

    medoids = project.medoid_ids()
    store = PairStore(r, project.name)
    texts0 = project.ids("text")
    for n, m in enumerate(medoids):   # 5 labels: medoid image i <-> its caption
        store.put(100 + n, 200 + n, m, texts0[project.row_of("image")[m]], 1.0)
    rebuild(project.name, redis_client=r)
    images, texts = folder_items(base["more"])
    pending = PendingItems(r, project.name)
    pending.put("image", images, "test")
    pending.put("text", texts, "test")
    assert pending.counts() == {"image": 32, "text": 32}
    out = run_pending(r, project)
    assert pending.counts() == {"image": 0, "text": 0}
    assert out["added"] == {"image": 32, "text": 32} and out["version"] >= 2
    snap = load_current(project, r)
    assert snap.n_pairs == 5 and "stripes-03" in set(snap.text_ids) and "stripes_03.png" in set(snap.image_ids)
    assert len(snap.rank("image", "stripes_03.png", None, 10)) == 10   # rankable at once
    grown = project.medoid_ids()
    assert grown[:5] == medoids and len(grown) > 5 and out["new_medoids"] == grown[5:]
    new_kind = [m for m in grown[5:] if m.startswith("stripes")]
    assert new_kind, grown
    # its label (the new medoid's task answered) is what brings the new kind's texts up
    n = int(new_kind[0][len("stripes_"):-len(".png")])
    store.put(150, 250, new_kind[0], f"stripes-{n:02d}", 2.0)
    snap = load_current(project, r) if rebuild(project.name, redis_client=r) else None
    hits = [t for t, _ in snap.rank("image", "stripes_03.png" if n != 3 else "stripes_05.png", None, 10)]
    assert sum(h.startswith("stripes-") for h in hits) >= 5, hits
    tasks = json.loads((project.root / "tasks.json").read_text())
    assert {t["data"]["item_id"] for t in tasks} == set(grown)   # not linked: tasks.json rewritten
    assert last_run(r, project.name)["status"] == "added"
    # removal: the pair on a removed image stays, as a problem the team sees
    victim = medoids[0]
    gone = remove(r, project, [victim], [])
    assert gone["pairs_now_problems"] == 1 and victim not in project.row_of("image")
    rec = store.get(100)
    assert rec["state"] == "problem" and rec["problem"] == "item_removed" and victim in rec["given"]
    assert victim not in project.medoid_ids() and len(store.all_pairs()) == 5


# -- the backend's door --------------------------------------------------------------------------

@pytest.fixture
def app(project, base, monkeypatch):
    from backend.app import create_app
    from xmodal.index.store import clear_cache

    monkeypatch.setenv("XMODAL_IMAGE_ROOTS", str(base["root"]))
    project.link_label_studio(7)   # TASKS_CREATED comes from its Label Studio project
    clear_cache()
    return create_app({"TESTING": True})


def post(client, body, **kw):
    return client.post("/items", data=body if isinstance(body, str) else json.dumps(body),
                       content_type="application/json", **kw)


def test_post_items_queues_new_items(app, project, base, r, xenv):
    from rq import Queue

    client = app.test_client()
    img = str(base["more"] / "images" / "stripes_00.png")
    resp = post(client, {"project": "grow", "images": {"s0": img}, "texts": {"t-new": "a zebra"}})
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["pending"] == {"image": 1, "text": 1} and body["job_id"]
    assert Queue(f"{xenv.tag}-embed", connection=r).job_ids == [body["job_id"]]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'xmodal_items_pending{project="grow",modality="image"} 1' in metrics
    from xmodal.cli.status import collect

    assert collect(r, xenv.models, xenv.tag)["projects"]["grow"]["items_pending"] == {"image": 1, "text": 1}
    # what the project has already: 200, nothing queued
    same = post(client, {"project": "grow", "texts": {project.ids("text")[0]: project.contents("text")[0]}})
    assert same.status_code == 200 and same.get_json()["status"] == "unchanged"


@pytest.mark.parametrize("body, status, words", [
    ({"project": "grow"}, 400, "give 'images'"),
    ({"project": "grow", "texts": ["a", "b"]}, 400, "must be an object"),
    ({"project": "grow", "texts": {"x": 5}}, 400, "non-empty string"),
    ({"project": "grow", "texts": {"x\u0000": "a"}}, 400, "NUL"),
    ({"project": "grow", "texts": {"t": "y" * 100_001}}, 400, "longer than"),
    ({"project": "grow", "images": {"a": "http://169.254.169.254/latest/x.png"}}, 400, "not fetched"),
    ({"project": "grow", "images": {"a": "/etc/passwd"}}, 403, "outside the allowed"),
    ({"project": "grow", "images": {"a": "data:image/png;base64,AAAA"}}, 400, "inline"),
    ({"project": "grow", "texts": {str(i): "t" for i in range(10_001)}}, 413, "at most"),
    ({"project": "nope", "texts": {"a": "b"}}, 404, "no xmodal project"),
])
def test_post_items_refuses_bad_input_and_records_nothing(app, r, body, status, words):
    from xmodal.project.pending import PendingItems

    resp = post(app.test_client(), body)
    assert resp.status_code == status, resp.get_json()
    assert words in resp.get_json()["error"]
    assert PendingItems(r, "grow").counts() == {"image": 0, "text": 0}


def test_post_items_conflict_hostile_json_and_auth(app, project, r):
    client = app.test_client()
    resp = post(client, {"project": "grow", "texts": {project.ids("text")[0]: "other words"}})
    assert resp.status_code == 409 and "other content" in resp.get_json()["error"]
    assert post(client, '{"project": "grow", "texts": ' + "[" * 5000 + "]" * 5000 + "}").status_code == 400
    assert post(client, '{"project": "grow", "texts": {"a": NaN}}').status_code == 400
    from backend.app import create_app

    locked = create_app({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "s3cret"}).test_client()
    assert post(locked, {"project": "grow", "texts": {"a": "b"}}).status_code == 401


def test_tasks_created_with_new_items_queues_them(app, project, base, r):
    from xmodal.project.pending import PendingItems

    img = str(base["more"] / "images" / "stripes_01.png")
    body = {"action": "TASKS_CREATED", "project": {"id": 7},
            "tasks": [{"id": 901, "data": {"image": img, "text": "horizontal stripes"}},
                      {"id": 902, "data": {"image": "/data/upload/1/abc.png"}},   # an upload: skipped
                      {"id": 903, "data": {"item_id": project.medoid_ids()[0]}}]}   # a medoid task
    resp = app.test_client().post("/webhook", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    items = resp.get_json()["items"]
    assert items["pending"] == {"image": 1, "text": 1} and items["skipped_images"] == 1
    images, texts, _ = PendingItems(r, "grow").snapshot()
    assert list(texts) == ["ls-901"] and list(images) == [str(base["more"].name + "/images/stripes_01.png")]


# -- a real worker -------------------------------------------------------------------------------

@pytest.fixture
def image_roots(base, monkeypatch):
    """The test images' folder allowed for POST /items, set before `services` starts the processes
    (request it before `services`: same-scope fixtures are set up in the order requested)."""
    monkeypatch.setenv("XMODAL_IMAGE_ROOTS", str(base["root"]))


def test_the_worker_embeds_posted_items_and_search_finds_them(project, base, xenv, image_roots, services,
                                                              tmp_path):
    import httpx

    url, worker, backend = services["url"], services["worker"], services["backend"]
    more = base["more"]
    images = {f"stripes_{i:02d}.png": str(more / "images" / f"stripes_{i:02d}.png") for i in range(6)}
    texts = {i: t for i, t in folder_items(more)[1].items() if i in {f"stripes-{n:02d}" for n in range(6)}}
    resp = httpx.post(f"{url}/items", json={"project": "grow", "images": images, "texts": texts})
    assert resp.status_code == 202, resp.text

    def found():
        hits = httpx.get(f"{url}/search", params={"project": "grow", "image_id": "stripes_00.png",
                                                 "k": 5}, timeout=10)
        return hits.json() if hits.status_code == 200 else None
    out = poll("the posted items searchable", found, timeout=120, procs=[worker, backend])
    assert out["target"] == "text" and len(out["results"]) == 5
    assert "stripes-03" in Workspace(project.root).row_of("text")

    def none_pending():   # before the first index, /search reads the items themselves
        status = httpx.get(f"{url}/metrics").text
        pending = [x for x in status.splitlines() if x.startswith("xmodal_items_pending")]
        return len(pending) == 2 and all(x.endswith(" 0") for x in pending)
    poll("no item pending in /metrics", none_pending, timeout=60, procs=[worker, backend])
    last = poll("the growth run recorded", lambda: json.loads(
        xenv.redis.get(pkey("grow", "items", "last")) or b"null"), timeout=60, procs=[worker, backend])
    assert last["status"] == "added" and last["added"] == {"image": 6, "text": 6}
    print(f"\nPOST /items (6 images, 6 texts) -> searchable by an index: {last['searchable_s']} s")
    # the command line, its features computed by the worker as chunked embed jobs
    from xmodal.cli.main import main

    assert main(["items", "add", "--project", "grow", "--data", str(more), "--workers-embed",
                 "--cache-dir", str(tmp_path / "empty-cache")]) == 0   # nothing cached here
    ws = Workspace(project.root)
    assert len(ws.ids("image")) == 60 + 32 and len(ws.ids("text")) == 60 + 32
    worker_log = (tmp_path / "logs" / "worker.log").read_text()
    assert "embed 26 images with efficientnet-lite0" in worker_log, worker_log[-2000:]
    assert "embed 26 texts with minilm" in worker_log, worker_log[-2000:]


def test_a_linked_project_out_of_reach_keeps_the_proposal(project, base, r):
    from workers.growth import run_pending
    from xmodal.project.pending import PendingItems

    project.link_label_studio(7)   # no URL, no key here: Label Studio cannot be reached
    medoids = project.medoid_ids()
    images, texts = folder_items(base["more"])
    PendingItems(r, project.name).put("image", {i: p for i, p in images.items() if i.startswith("stripes")}, "test")
    out = run_pending(r, project)
    assert out["added"]["image"] == 12 and out["far"] == 12
    assert "xmodal project grow --name grow --k 6" in out["medoids_note"]
    assert project.medoid_ids() == medoids   # nothing half-done


def test_delete_items_keeps_the_pair_as_a_problem(app, project, r, xenv):
    from workers.growth import remove_job

    victim = project.ids("image")[3]
    PairStore(r, "grow").put(77, 88, victim, project.ids("text")[3], 1.0)
    client = app.test_client()
    bad = client.delete("/items", data=json.dumps({"project": "grow", "images": "x"}),
                        content_type="application/json")
    assert bad.status_code == 400
    resp = client.delete("/items", data=json.dumps({"project": "grow", "images": [victim, "nope"]}),
                         content_type="application/json")
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["removing"] == {"image": 1, "text": 0} and body["unknown"]["image"] == ["nope"]
    remove_job("grow", [victim], [], redis_client=r)   # the job the worker runs, here
    assert victim not in project.row_of("image")
    rec = PairStore(r, "grow").get(77)
    assert rec["state"] == "problem" and rec["problem"] == "item_removed"


def test_an_image_url_is_never_fetched(app, r):
    """POST /items and TASKS_CREATED with http URLs (a listener on loopback stands for the remote
    host): refused or skipped, and not one byte reaches the listener."""
    import time

    from test_hardening import Listener

    lst = Listener()
    try:
        client = app.test_client()
        resp = post(client, {"project": "grow", "images": {"remote": f"{lst.url}/cat.png"}})
        assert resp.status_code == 400 and "not fetched" in resp.get_json()["error"]
        body = {"action": "TASKS_CREATED", "project": {"id": 7},
                "tasks": [{"id": 905, "data": {"item_id": "remote.png", "image": f"{lst.url}/cat.png"}}]}
        resp = client.post("/webhook", data=json.dumps(body), content_type="application/json")
        assert resp.status_code == 200 and resp.get_json()["items"]["skipped_images"] == 1
        time.sleep(0.3)
        assert lst.received == b""
    finally:
        lst.close()
