"""`xmodal project create --from-label-studio`: data that already lives in a REAL Label Studio
1.23.2 (tests/ls_server.py) becomes an xmodal project, with the real Redis, `xmodal serve` and an
`xmodal worker`.

The source project: 60 small real photos (COCO-mini, shrunk to 320 px; generated PNGs when it is
absent) **uploaded through Label Studio's import API** (multipart files, so their tasks hold
``/data/upload/...`` URLs; Label Studio takes them only while the config has one data key, so the
caption's <Text> is added after); 40 of those tasks get their caption in the task, 20 captions come as
tasks of their own (texts that belong with images but are not paired). Two hostile tasks: one
whose image URL points to another host (a listener that records every connection) and one
uploaded image over ``XMODAL_MAX_IMAGE_BYTES``.

Asserted: the command (as a user runs it) fetches the 60 photos through Label Studio, leaves the
two hostile ones out with the reason, the listener sees no connection; the linked labelling
project gets the medoid tasks, whose images are the source's upload URLs, which Label Studio
serves; the workspace records the source project; a second run fetches nothing (its own count,
and Label Studio's request log shows no new upload GET).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ls_server import ls_server_fixture
from test_hardening import Listener

pytestmark = pytest.mark.growth

COCO = Path(os.environ.get("XMODAL_COCO_MINI")
            or Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini")
N_IMAGES, N_PAIRED, K = 60, 40, 8
SOURCE_CONFIG = """<View>
  <Image name="photo" value="$image"/>
  <Text name="caption" value="$caption"/>
  <Choices name="ok" toName="photo"><Choice value="yes"/><Choice value="no"/></Choices>
</View>"""

ls_server = ls_server_fixture()


def photos(n: int = N_IMAGES, start: int = 0) -> list[tuple[str, bytes, str]]:
    """(file name, JPEG bytes, caption) x n from the ``start``-th: COCO-mini shrunk to 320 px, else
    generated."""
    from PIL import Image

    out = []
    if (COCO / "pairs.json").is_file():
        for rec in json.loads((COCO / "pairs.json").read_text())[start:start + n]:
            with Image.open(COCO / rec["file"]) as im:
                im = im.convert("RGB")
                im.thumbnail((320, 320))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=85)
            out.append((Path(rec["file"]).name, buf.getvalue(), rec["captions"][0]))
        return out
    rng = np.random.default_rng(start)
    for i in range(start, start + n):   # no photos here: shapes of a few colours, still decodable
        arr = np.full((96, 128, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        arr[20:70, 30 + i % 40:80 + i % 40] = rng.integers(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG")
        out.append((f"gen{i:03d}.jpg", buf.getvalue(), f"a block of colour number {i}"))
    return out


def noise_png(side: int = 700) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def upload_gets(ls_server) -> int:
    """GET requests for the uploaded photos in Label Studio's own request log (the oversize one is
    asked again on every run, and refused again at the limit: no cache keeps a refusal)."""
    lines = Path(ls_server.log_path).read_text(errors="replace").splitlines()
    # set: Label Studio 1.23 writes each request line twice (two handlers of django.server)
    return len({line for line in lines if '"GET /data/upload/' in line and "big.png" not in line})


def xmodal(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmodal.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def test_a_label_studio_project_becomes_an_xmodal_project(ls_server, xenv, services, tmp_path):
    from xmodal.labelstudio.client import connect
    from xmodal.project.workspace import Workspace

    ls = connect(ls_server.url, ls_server.token)
    listener = Listener()
    # a direct upload takes a config with one data key: photos first, captions added to it after
    photo_config = re.sub(r"\s*<Text [^>]*/>", "", SOURCE_CONFIG)
    source = int(ls.api("POST", "/api/projects/", json={"title": f"photos {xenv.tag}",
                                                         "label_config": photo_config})["id"])
    try:
        items = photos()
        big = noise_png()
        for start in range(0, len(items), 20):       # multipart upload, as Label Studio's import page
            files = [(f"file{i}", (name, data, "image/jpeg"))     # one form key per file (else one)
                     for i, (name, data, _) in enumerate(items[start:start + 20])]
            ls.api("POST", f"/api/projects/{source}/import", files=files,
                   params={"commit_to_project": "true"})
        ls.api("POST", f"/api/projects/{source}/import", files=[("file", ("big.png", big, "image/png"))],
               params={"commit_to_project": "true"})
        ls.api("PATCH", f"/api/projects/{source}/", json={"label_config": SOURCE_CONFIG})
        tasks = ls.list_tasks(source)
        assert len(tasks) == N_IMAGES + 1
        url_of = {}
        for t in tasks:
            (key, url), = t["data"].items()
            assert key in ("image", "$undefined$") and url.startswith("/data/upload/"), t["data"]
            url_of[t["id"]] = url
        by_name = {name: caption for name, _, caption in items}
        paired, alone = [], []
        for t in sorted(tasks, key=lambda t: t["id"]):
            name = url_of[t["id"]].rsplit("/", 1)[1].split("-", 1)[1]
            if name in by_name and len(paired) < N_PAIRED:
                ls.update_task_data(t["id"], {**t["data"], "caption": by_name[name]})
                paired.append(t["id"])
            elif name in by_name:
                alone.append(by_name[name])
        ls.api("POST", f"/api/projects/{source}/import", params={"commit_to_project": "true"},
               json=[{"image": "", "caption": c} for c in alone]   # every key of the config, else 400
               + [{"image": f"{listener.url}/steal.jpg", "caption": "a photo on another host"}])

        env = dict(os.environ, XMODAL_MAX_IMAGE_BYTES=str(len(big) - 1), LABEL_STUDIO_URL=ls_server.url,
                   LABEL_STUDIO_API_KEY=ls_server.token, XMODAL_CACHE_DIR=str(tmp_path / "cache"),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        assert len(big) - 1 > max(len(d) for _, d, _ in items)
        name = f"fromls-{xenv.tag}"
        # the labelling project never takes the source project's title (it would be rewritten)
        clash = xmodal("project", "create", "--from-label-studio", str(source), "--name", name,
                       "--title", f"photos {xenv.tag}", env=env)
        assert clash.returncode == 1 and "another --title" in clash.stderr, clash.stderr[-2000:]
        assert not Workspace.for_project(name).root.exists()
        other = Workspace.for_project(f"folder-{xenv.tag}")   # a project made from a data folder
        other.save_config({"data": {"path": str(tmp_path)}})
        taken = xmodal("project", "create", "--from-label-studio", str(source), "--name", other.name, env=env)
        assert taken.returncode == 1 and "made from a data folder" in taken.stderr, taken.stderr[-2000:]
        assert not (other.root / "source").exists()
        gets_before = upload_gets(ls_server)
        run = xmodal("project", "create", "--from-label-studio", str(source), "--name", name,
                     "--k", str(K), "--backend-url", services["url"], "--json", env=env)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out = json.loads(run.stdout)
        src = out["source"]
        assert src["tasks"] == N_IMAGES + 1 + len(alone) + 1
        assert src["images"] == N_IMAGES and src["fetched"] == N_IMAGES
        assert src["texts"] == N_IMAGES + 1        # 40 in image tasks, 20 alone, 1 in the hostile task
        left_out = " ".join(src["left_out"])
        assert len(src["left_out"]) == 2, src["left_out"]
        assert "not on the configured Label Studio" in left_out and "XMODAL_MAX_IMAGE_BYTES" in left_out
        assert listener.connections == 0 and listener.received == b""
        assert upload_gets(ls_server) - gets_before == N_IMAGES     # Label Studio saw each photo asked once
        print(f"fetch: {src['fetched']} images in {src['fetch_s']} s")

        # the linked project: the medoid tasks, their images the source's uploads
        pid = out["label_studio_project"]
        assert pid != source and out["k"] == K and out["images"] == "source"
        linked = ls.list_tasks(pid)
        ws = Workspace.for_project(name)
        assert sorted(t["data"]["item_id"] for t in linked) == sorted(ws.medoid_ids())
        assert len(ws.ids("image")) == N_IMAGES and len(ws.ids("text")) == N_IMAGES + 1
        for t in linked:
            item = t["data"]["item_id"]
            task_id = int(item.split("-")[1])
            assert t["data"]["image"] == url_of[task_id], (item, t["data"]["image"])
        first = linked[0]["data"]["image"]
        assert ls.download(first, 10**7).content[:2] == b"\xff\xd8"     # Label Studio serves it
        assert ls.api("GET", "/api/predictions/", params={"project": pid})      # the loop is on
        assert ws.config["source"]["label_studio_project_id"] == source
        assert ws.config["show_ids"] == "no"       # texts in the images' tasks would give ids away
        assert ls.list_tasks(source) and len(ls.list_tasks(source)) == len(tasks) + len(alone) + 1

        # the loop runs on these ids: a label in the linked project becomes a pair, then an index
        from conftest import poll

        from xmodal.index.store import IndexStore
        from xmodal.project.pairs import PairStore

        task = next(t for t in linked if t["data"]["options"])
        answer = task["data"]["options"][0]["alias"]
        version = IndexStore(xenv.redis, ws).current_version()
        ls.create_annotation(task["id"], [{"from_name": "caption", "to_name": "image", "type": "choices",
                                           "value": {"choices": [answer]}}])
        pairs = PairStore(xenv.redis, name)
        poll("the label as a pair", lambda: pairs.count() == 1, timeout=60, procs=services["procs"])
        assert pairs.all_pairs()[0]["text_id"] == answer
        poll("a rebuilt index", lambda: IndexStore(xenv.redis, ws).current_version() > version, timeout=120,
             procs=services["procs"])

        # a second run fetches nothing: its own count and Label Studio's log agree
        gets_before = upload_gets(ls_server)
        again = xmodal("project", "create", "--from-label-studio", str(source), "--name", name,
                       "--k", str(K), "--backend-url", services["url"], "--json", env=env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        src2 = json.loads(again.stdout)["source"]
        assert src2["fetched"] == 0 and src2["images"] == N_IMAGES
        assert upload_gets(ls_server) == gets_before
        assert json.loads(again.stdout)["new_tasks"] == 0

        # a first run that fails late (no backend at that URL) leaves a workspace a rerun completes
        late = f"fromls2-{xenv.tag}"
        dead = xmodal("project", "create", "--from-label-studio", str(source), "--name", late, "--k", str(K),
                      "--backend-url", "http://127.0.0.1:9", env=env)
        assert dead.returncode == 1 and "everything else is in place" in dead.stderr, dead.stderr[-2000:]
        fixed = xmodal("project", "create", "--from-label-studio", str(source), "--name", late, "--k", str(K),
                       "--backend-url", services["url"], "--json", env=env)
        assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
        assert Workspace.for_project(late).config["source"]["label_studio_project_id"] == source
        # every run registered the same webhook on the source project: one, for the two task events
        (hook,) = ls.api("GET", "/api/webhooks/", params={"project": source})
        assert sorted(hook["actions"]) == ["TASKS_CREATED", "TASKS_DELETED"]
        assert hook["url"] == services["url"] + "/webhook"
        assert ls.api("GET", "/api/ml/", params={"project": source}) == []
        # a backend behind basic auth: the same webhook carries the header (still one webhook)
        from xmodal.labelstudio.source import ensure_webhook

        auth = {"Authorization": "Basic eGFtOnNlY3JldA=="}
        assert ensure_webhook(ls, source, services["url"] + "/webhook", headers=auth) == hook["id"]
        (hook,) = ls.api("GET", "/api/webhooks/", params={"project": source})
        assert hook["headers"] == auth
        assert json.loads(fixed.stdout)["source"]["fetched"] == 0
        assert listener.connections == 0
    finally:
        listener.close()
        ls.close()



def test_local_files_storage_tasks_are_fetched_through_label_studio(ls_server, xenv, tmp_path):
    """A local-files storage synced by Label Studio: its tasks hold
    ``/data/local-files/?d=<quoted path>`` (file names with spaces and of any script)."""
    from PIL import Image

    from xmodal.labelstudio.client import connect
    from xmodal.labelstudio.source import read_source

    folder = tmp_path / "shots dir"
    folder.mkdir()
    names = ["a b.png", "猫.png", "c.jpg"]
    for i, n in enumerate(names):
        Image.new("RGB", (16 + i, 12), (40 * i, 90, 200)).save(folder / n)
    ls = connect(ls_server.url, ls_server.token)
    try:
        pid = int(ls.api("POST", "/api/projects/", json={"title": f"shots {xenv.tag}",
                                                         "label_config": SOURCE_CONFIG})["id"])
        sid = ls.ensure_local_storage(pid, str(folder))
        ls.api("POST", f"/api/storages/localfiles/{sid}/sync")
        ls.api("POST", f"/api/projects/{pid}/import", params={"commit_to_project": "true"},
               json=[{"image": "", "caption": "three small colour fields"}])
        tasks = ls.list_tasks(pid)
        # Label Studio names the field after the config's <Image> when it has one
        assert sum("/data/local-files/?d=" in str(t["data"].get("image")) for t in tasks) == 3, \
            json.dumps([t["data"] for t in tasks])[:1500]
        items = read_source(ls, pid, cache_dir=tmp_path / "cache")
        assert items.refused == [] and items.fetched == 3 and len(items.texts) == 1
        got = {Image.open(p).size for p in items.images.values()}
        assert got == {(16, 12), (17, 12), (18, 12)}
        assert any("猫" in i for i in items.images) and any("a_b" in i for i in items.images)
        again = read_source(ls, pid, cache_dir=tmp_path / "cache")
        assert again.fetched == 0 and again.images == items.images
    finally:
        ls.close()

# -- without a server: which fields, which names -------------------------------------------------
def test_the_fields_come_from_the_source_config_or_the_flags():
    from xmodal.errors import ConfigError
    from xmodal.labelstudio.source import _file_name, choose_fields

    assert choose_fields(SOURCE_CONFIG) == ("image", ["caption"])
    two = SOURCE_CONFIG.replace("</View>", '<Image name="b" value="$back"/><Text name="t" value="$title"/></View>')
    with pytest.raises(ConfigError, match="--image-field"):
        choose_fields(two)
    with pytest.raises(ConfigError, match="--text-field"):
        choose_fields(two, "back")
    assert choose_fields(two, "back", ["title", "caption", "title"]) == ("back", ["title", "caption"])
    for config in ("<View><Image name='i' value='$image'/></View>", "not xml <", None):
        with pytest.raises(ConfigError, match="--"):
            choose_fields(config)
    with pytest.raises(ConfigError, match="a name like"):
        choose_fields(SOURCE_CONFIG, "image;rm -rf", None)
    assert _file_name("/data/upload/3/5f1e2d3c-dog on grass.jpg") == "5f1e2d3c-dog_on_grass"
    assert _file_name("/data/local-files/?d=photos/cats/001.png") == "001"
    assert _file_name("/tasks/9/resolve/?fileuri=czM6Ly9idWNrZXQvYS9jYXQuanBn") == "cat"   # s3://bucket/a/cat.jpg
    assert _file_name("data:image/png;base64,AAAA") == "inline"
    assert _file_name("/data/upload/1/../../..") == "image"


def test_later_tasks_get_the_ids_project_create_gives():
    """A task the source project's TASKS_CREATED brings is read by the same functions as
    ``read_source``: the same fields, the same ids (the image's extension once fetched)."""
    from xmodal.labelstudio.source import FETCHED, fetched_image_id, task_entry, task_image_id, task_item_ids

    entry = task_entry({"id": 71, "data": {"$undefined$": "/data/upload/3/5f1e-dog.jpg", "caption": " a dog "}},
                       "image", ["caption"])
    assert entry.url == "/data/upload/3/5f1e-dog.jpg" and entry.texts == [("ls-71", "a dog")]
    pending = task_image_id(71, entry.url)
    assert pending == "ls-71-5f1e-dog" + FETCHED
    assert fetched_image_id(pending, "/cache/ab/abcdef.jpg") == "ls-71-5f1e-dog.jpg" == \
        task_image_id(71, entry.url, ".jpg")
    assert fetched_image_id("photos/a.png", "/cache/x.jpg") == "photos/a.png"
    two = task_entry({"id": 8, "data": {"image": 5, "title": "t", "body": "b"}}, "image", ["title", "body"])
    assert two.url is None and "not a URL" in two.refused and [i for i, _ in two.texts] == ["ls-8-title", "ls-8-body"]
    assert task_entry({"id": True, "data": {}}, "image", ["caption"]) is None
    ids = ["ls-7", "ls-7-a.jpg", "ls-71", "ls-71-dog.jpg", "ls-8-title", "ls-77", "x/ls-7.png"]
    assert task_item_ids([7, 8], ids) == ["ls-7", "ls-7-a.jpg", "ls-8-title"]
