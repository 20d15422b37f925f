"""xmodal.labelstudio.client against a real Label Studio 1.23.2 server (see tests/ls_server.py)."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ls_server import ls_server_fixture

from xmodal.errors import ConfigError

pytestmark = pytest.mark.e2e
CONFIG = (Path(__file__).resolve().parents[1] / "label_config" / "image_to_text.xml").read_text()

ls_server = ls_server_fixture()


@pytest.fixture
def ls(ls_server):
    from xmodal.labelstudio.client import connect

    return connect(ls_server.url, ls_server.token)


@pytest.fixture
def project(ls):
    pid = ls.ensure_project(f"client {uuid.uuid4().hex[:8]}", CONFIG)
    yield pid
    ls.delete_project(pid)


def tasks(n: int) -> list[dict]:
    options = [{"value": f"t{j}", "html": f"caption {j}"} for j in range(4)]
    return [{"data": {"item_id": f"img/{i}.jpg", "image": f"/data/local-files/?d=x/img/{i}.jpg",
                      "options": options, "cluster": i}} for i in range(n)]


def choice(text_id: str) -> list[dict]:
    return [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": [text_id]}}]


def test_ensure_project_is_idempotent(ls):
    title = f"twice {uuid.uuid4().hex[:8]}"
    first = ls.ensure_project(title, CONFIG)
    try:
        assert ls.ensure_project(title, CONFIG) == first
        listed = ls.api("GET", "/api/projects/", params={"page_size": 100})["results"]
        assert [p["id"] for p in listed if p["title"] == title] == [first]
        assert ls.get_project(first)["sampling"] == "Uncertainty sampling"
    finally:
        ls.delete_project(first)


def test_ensure_project_reports_what_label_studio_rejects(ls):
    with pytest.raises(ConfigError, match="rejected project .*label_config"):
        ls.ensure_project(f"bad {uuid.uuid4().hex[:8]}",
                          '<View><Image name="image" value="$image"/><Choices name="c" toName="x"/></View>')


def test_import_tasks_skips_items_already_there(ls, project):
    first = ls.import_tasks(project, tasks(3))
    assert sorted(first) == ["img/0.jpg", "img/1.jpg", "img/2.jpg"]
    again = ls.import_tasks(project, tasks(5))           # 3 known + 2 new, flat data dicts work too
    assert {k: again[k] for k in first} == first
    assert ls.import_tasks(project, [t["data"] for t in tasks(5)]) == again
    listed = ls.list_tasks(project)
    assert len(listed) == 5
    assert sorted(t["data"]["item_id"] for t in listed) == sorted(again)
    with pytest.raises(ValueError):
        ls.import_tasks(project, [{"data": {"image": "x"}}])


def test_lists_are_read_page_after_page(ls, project, monkeypatch):
    """Tasks and projects come a page at a time; every page is read, and nothing past the last."""
    import xmodal.labelstudio.client as client_module

    monkeypatch.setattr(client_module, "PAGE_SIZE", 2)
    ids = ls.import_tasks(project, tasks(5))
    assert sorted(t["id"] for t in ls.list_tasks(project)) == sorted(ids.values())
    title = f"paged {uuid.uuid4().hex[:8]}"
    made = [ls.api("POST", "/api/projects/", json={"title": title + suffix})["id"]
            for suffix in ("", " b", " c")]
    try:
        assert ls.find_project(title) == made[0]          # the title filter matches all three
        assert ls.find_project(title + " c") == made[2]
    finally:
        for pid in made:
            ls.delete_project(pid)


def test_uncertainty_order_follows_pushed_scores(ls, project):
    ids = ls.import_tasks(project, tasks(4))
    scores = {"img/0.jpg": 0.9, "img/1.jpg": 0.2, "img/2.jpg": 0.05, "img/3.jpg": 0.6}
    preds = {ids[item]: {"result": choice("t1"), "score": s, "model_version": "v7"} for item, s in scores.items()}
    assert len(ls.push_predictions(project, preds, "v7")) == 4
    assert ls.push_predictions(project, preds, "v7") == {}          # a retry adds nothing
    assert len(ls.api("GET", "/api/predictions/", params={"project": project})) == 4
    ls.set_model_version(project, "v7")
    assert ls.get_project(project)["model_version"] == "v7"
    nxt = ls.next_task(project)
    assert nxt["id"] == ids["img/2.jpg"]                          # lowest score first
    # label it: the next one is the next-lowest score
    ls.create_annotation(nxt["id"], choice("t2"))
    assert ls.next_task(project)["id"] == ids["img/1.jpg"]
    # empty results (the "no signal yet" predictions) are accepted too
    assert len(ls.push_predictions(project, {ids["img/0.jpg"]: {"result": [], "score": 0.5}}, "v8")) == 1


def test_next_task_none_when_everything_is_labelled(ls, project):
    ids = ls.import_tasks(project, tasks(1))
    ls.create_annotation(ids["img/0.jpg"], choice("t0"))
    assert ls.next_task(project) is None


def test_list_annotations(ls, project):
    ids = ls.import_tasks(project, tasks(3))
    a = ls.create_annotation(ids["img/0.jpg"], choice("t3"))
    b = ls.create_annotation(ids["img/1.jpg"], [], was_cancelled=True)
    got = sorted(ls.list_annotations(project), key=lambda r: r.annotation_id)
    assert [(r.task_id, r.annotation_id, r.was_cancelled) for r in got] == [
        (ids["img/0.jpg"], a["id"], False), (ids["img/1.jpg"], b["id"], True)]
    assert got[0].result[0]["value"] == {"choices": ["t3"]}
    task_id, annotation_id, result, was_cancelled = got[1]          # a plain 4-tuple
    assert result == [] and was_cancelled is True


class _Backend:
    """The smallest ML backend Label Studio accepts (GET /health, POST /setup); POST /predict with
    a context answers the words of its search box back in a ``hits`` region."""

    def __init__(self):
        self.paths: list[str] = []
        self.contexts: list = []
        seen, contexts = self.paths, self.contexts

        class Handler(BaseHTTPRequestHandler):
            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                seen.append(self.path)
                answer = {"status": "UP", "model_version": "m0"}
                if self.path == "/predict":
                    contexts.append((body.get("params") or {}).get("context"))
                    words = [r["value"]["text"][-1] for r in (contexts[-1] or {}).get("result", [])]
                    answer = {"results": [{"result": [{"from_name": "hits", "to_name": "image", "type": "textarea",
                                                       "value": {"text": [f"1. {w}  t1" for w in words]}}]}]}
                out = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _do

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_ensure_ml_backend_once_and_one_webhook(ls, project):
    backend = _Backend()
    try:
        first = ls.ensure_ml_backend(project, backend.url, "xmodal")
        assert ls.ensure_ml_backend(project, backend.url + "/", "xmodal") == first
        assert [b["id"] for b in ls.api("GET", "/api/ml/", params={"project": project})] == [first]
        assert "/setup" in backend.paths
        hooks = [h for h in ls.api("GET", "/api/webhooks/", params={"project": project})
                 if h["url"] == backend.url + "/webhook"]
        assert len(hooks) == 1                                 # registered by the connection itself
        assert ls.get_project(project)["model_version"] == "xmodal"  # the pitfall: title as version
    finally:
        backend.server.shutdown()
    with pytest.raises(ConfigError, match="ML backend"):
        ls.ensure_ml_backend(project, "http://127.0.0.1:9", "nobody")


def test_the_backend_is_connected_for_the_page_search(ls, project):
    """Connected for interactive pre-annotation (an older non-interactive connection is switched),
    so the page's search box reaches the backend: ``interactive`` makes the call the page makes."""
    from xmodal.labelstudio.page_search import lines_of, search_context

    backend = _Backend()
    try:
        old = ls.api("POST", "/api/ml/", json={"project": project, "url": backend.url, "title": "old",
                                                "is_interactive": False})["id"]
        assert ls.ensure_ml_backend(project, backend.url, "xmodal") == old
        assert ls.api("GET", f"/api/ml/{old}")["is_interactive"] is True
        task = ls.import_tasks(project, tasks(1))["img/0.jpg"]
        got = ls.interactive(project, task, search_context("frisbee forest", "image"))
        assert lines_of(got) == ["1. frisbee forest  t1"]
        assert backend.contexts[-1]["result"][0]["from_name"] == "search"
    finally:
        backend.server.shutdown()


def test_ensure_local_storage_once(ls, project, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    first = ls.ensure_local_storage(project, str(images))
    assert ls.ensure_local_storage(project, str(images) + "/") == first
    assert len(ls.api("GET", "/api/storages/localfiles/", params={"project": project})) == 1
    with pytest.raises(ConfigError, match="local storage"):
        ls.ensure_local_storage(project, str(tmp_path / "missing"))


def test_wrong_api_key_is_a_config_error(ls_server):
    from xmodal.labelstudio.client import connect

    with pytest.raises(ConfigError, match="rejected the API key"):
        connect(ls_server.url, "not-the-token-0123456789")


def test_a_personal_access_token_is_exchanged_for_access_tokens(ls, ls_server, monkeypatch):
    """A personal access token is a JWT refresh token: the client trades it at /api/token/refresh/
    for a short-lived access token (Bearer), once, and again when that one nears its expiry."""
    import xmodal.labelstudio.client as client_module
    from xmodal.labelstudio.client import connect

    token = ls.api("POST", "/api/token/")["token"]        # created with the legacy token
    pat = connect(ls_server.url, token)
    refreshes = []
    pat._http.event_hooks["request"].append(
        lambda request: refreshes.append(request) if request.url.path == "/api/token/refresh/" else None)
    pid = pat.ensure_project(f"pat {uuid.uuid4().hex[:8]}", CONFIG)     # writes work too
    try:
        assert refreshes == []                            # the access token of connect() still serves
        monkeypatch.setattr(client_module, "RENEW_BEFORE", 10 ** 6)      # as if it expired now
        assert pat.get_project(pid)["id"] == pid
        assert len(refreshes) == 1
    finally:
        pat.delete_project(pid)
    with pytest.raises(ConfigError, match="rejected the API key"):
        connect(ls_server.url, token[:-6] + "AAAAAA")     # a refresh token whose signature is wrong


def test_unreachable_server_is_a_config_error():
    from ls_server import free_port

    from xmodal.labelstudio.client import connect

    with pytest.raises(ConfigError, match="cannot reach Label Studio"):
        connect(f"http://127.0.0.1:{free_port()}", "whatever-token", timeout=5)


def test_next_task_retries_a_database_is_locked_500():
    """Label Studio on SQLite answered /next/ with 500 "database is locked" once, under a
    concurrent prediction push (e2e run); the client retries the GET."""
    from xmodal.labelstudio.client import LabelStudioClient

    answers = [(500, {"detail": "database is locked"}), (200, {"id": 5, "data": {"item_id": "a"}})]
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            status, body = answers[min(len(seen), len(answers)) - 1]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = LabelStudioClient(f"http://127.0.0.1:{server.server_port}", "token")
        assert client.next_task(1)["id"] == 5
        assert seen == ["/api/projects/1/next/"] * 2
    finally:
        server.shutdown()
