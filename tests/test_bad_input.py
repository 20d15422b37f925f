"""Bad input, fuzzed: zero 5xx, a clear 4xx message, no pair lost; images outside the allowed
local roots are refused before they are read.

The fuzzers start from valid request bodies (Label Studio 1.23's captured shapes, with this test
project's ids) and break one place at a time — a value replaced by any JSON value, a key dropped —
which reaches the validation deep inside a body far more often than random JSON does
(test_backend_api.test_fuzzed_bodies_never_5xx covers that). Real Redis, Flask's test client.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os

import numpy as np
import pytest
from conftest import annotation_body, image_id, synthetic_features, task_body, text_id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_backend_api import LS_PID, build_index, post, predict_body, setup_body

from xmodal.index.store import clear_cache
from xmodal.project.pairs import PairStore

FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def client(xenv, ws, fake_ls):
    from backend.app import create_app

    clear_cache()
    return create_app({"TESTING": True}).test_client()


# -- mutation fuzzing ---------------------------------------------------------------------------
def valid_bodies() -> dict[str, list[dict]]:
    """Per route, bodies that the backend accepts as they are."""
    created = annotation_body("ANNOTATION_CREATED", 21, 1021, image_id(3), text_id(3), project=LS_PID)
    updated = annotation_body("ANNOTATION_UPDATED", 22, 1022, image_id(4), text_id(4), project=LS_PID)
    return {
        "/webhook": [created, updated,
                     {"action": "ANNOTATIONS_DELETED", "project": {"id": LS_PID}, "annotations": [{"id": 22}]},
                     {"action": "TASKS_DELETED", "project": {"id": LS_PID}, "tasks": [{"id": 1022}]},
                     {"action": "TASKS_CREATED", "project": {"id": LS_PID},
                      "tasks": [task_body(1030, image_id(5), n_options=5)]}],
        "/predict": [predict_body([task_body(1, image_id(1), n_options=6), task_body(2, image_id(2), n_options=6)])],
        "/setup": [setup_body()],
        "/search": [{"image_id": image_id(2), "k": 3}, {"text_id": text_id(2), "k": 3, "project": "proj"}],
    }


def paths_of(obj, prefix=()):
    """Every JSON path of ``obj`` (dict keys and list indices), the root included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths_of(v, prefix + (i,))


def mutate(body, path, action, value):
    """``body`` with the value at ``path`` replaced by ``value`` (or deleted)."""
    body = copy.deepcopy(body)
    if not path:
        return value
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["", "0", "-1", "../../etc/passwd", "__none__", "t0003",
                                             image_id(3), "ANNOTATION_CREATED", "9" * 30]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8)


@st.composite
def broken_requests(draw):
    route = draw(st.sampled_from(sorted(valid_bodies())))
    body = draw(st.sampled_from(valid_bodies()[route]))
    n_edits = draw(st.integers(1, 3))
    for _ in range(n_edits):
        paths = list(paths_of(body)) if isinstance(body, (dict, list)) else [()]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete"])) if path else "replace"
        body = mutate(body, path, action, draw(json_values))
    return route, body


def assert_clear_4xx_or_ok(resp, body):
    assert resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:500], body)
    data = resp.get_json(silent=True)
    assert isinstance(data, dict), resp.get_data(as_text=True)[:200]
    if resp.status_code >= 400:
        assert isinstance(data.get("error"), str) and len(data["error"]) >= 8, data


@settings(FUZZ, max_examples=250)
@given(req=broken_requests())
def test_broken_valid_bodies_are_4xx_with_a_message_and_lose_no_pair(client, r, req):
    route, body = req
    store = PairStore(r, "proj")
    store.put(1, 1000, image_id(0), text_id(0), 1.0)   # a pair that no bad request may touch
    resp = post(client, route, body)
    assert_clear_4xx_or_ok(resp, body)
    assert store.get(1)["state"] == "pair"


def test_the_unbroken_bodies_are_accepted(client, r):
    """The fuzzer's starting points are valid: a mutation is what makes a request fail."""
    build_index(r, n_pairs=4)
    for route, bodies in valid_bodies().items():
        for body in bodies:
            resp = post(client, route, body)
            assert resp.status_code == 200, (route, resp.get_json())


def test_search_project_that_cannot_be_a_workspace_name(client):
    """Found by the fuzzer: a dict or an over-long name was used as a path (500)."""
    assert post(client, "/search", {"image_id": image_id(2), "project": {"a": 1}}).status_code == 400
    assert post(client, "/search", {"image_id": image_id(2), "project": "x" * 5000}).status_code == 404
    assert post(client, "/search", {"image_id": image_id(2), "project": "../proj"}).status_code == 404


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["text", "image_id", "text_id", "k", "project", "image", "x"]),
                             st.text(max_size=20), max_size=4))
def test_fuzzed_search_query_strings(client, r, query):
    resp = client.get("/search", query_string=query)
    assert_clear_4xx_or_ok(resp, query)


@FUZZ
@given(data=st.binary(max_size=200),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=x", ""]))
def test_non_json_bodies(client, data, content_type):
    for route in ("/webhook", "/predict", "/setup", "/search"):
        resp = client.post(route, data=data, content_type=content_type)
        assert_clear_4xx_or_ok(resp, data)


# -- size limit and auth ------------------------------------------------------------------------
def test_oversized_bodies_are_refused_on_every_route(xenv, ws, r):
    from backend.app import create_app

    client = create_app({"MAX_CONTENT_LENGTH": 16384}).test_client()
    big = annotation_body("ANNOTATION_CREATED", 31, 1031, image_id(5), text_id(5), project=LS_PID)
    big["annotation"]["padding"] = "x" * 40_000
    for route in ("/webhook", "/predict", "/setup", "/search"):
        resp = post(client, route, big)
        assert resp.status_code == 413, route
        assert "16384 bytes" in resp.get_json()["error"]
    assert PairStore(r, "proj").get(31) is None   # refused, not half-processed
    small = annotation_body("ANNOTATION_CREATED", 32, 1032, image_id(5), text_id(5), project=LS_PID)
    assert post(client, "/webhook", small).status_code == 200


@FUZZ
@given(header=st.one_of(
    st.text(max_size=40),
    st.builds(lambda s: "Basic " + s, st.text(max_size=30)),
    st.builds(lambda b: "Basic " + base64.b64encode(b).decode(), st.binary(max_size=30)),
    st.sampled_from(["Basic", "Basic ", "Bearer s3cret", "basic bHM6czNjcmV0x", "Basic bHM6",
                     "Basic " + base64.b64encode(b"ls:s3cret ").decode(),
                     "Basic " + base64.b64encode(b"LS:s3cret").decode()])))
def test_wrong_or_malformed_basic_auth_is_401(xenv, ws, header):
    from backend.app import create_app

    client = create_app({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "s3cret"}).test_client()
    for route in ("/webhook", "/predict", "/setup", "/search", "/metrics"):
        try:
            resp = client.post(route, data="{}", content_type="application/json",
                               headers={"Authorization": header})
        except ValueError:   # a header value that HTTP cannot carry (newline...): never sent
            return
        assert resp.status_code in (401, 405), (route, header, resp.status_code)
    good = "Basic " + base64.b64encode(b"ls:s3cret").decode()
    assert client.get("/metrics", headers={"Authorization": good}).status_code == 200


# -- images outside the allowed roots -----------------------------------------------------------
class SpyImageEncoder:
    """Embeds any image as image 7's synthetic feature vector and records what it was asked to read."""

    def __init__(self):
        self.read: list[str] = []
        self.X = synthetic_features(40)[0]

    def features(self, paths):
        self.read += list(paths)
        for p in paths:
            with open(p, "rb") as fh:
                assert fh.read(4)   # a real, non-empty file
        return np.stack([self.X[7] for _ in paths])


@pytest.fixture
def image_env(xenv, make_workspace, tmp_path, monkeypatch, fake_ls):
    """A project whose images are real files under tmp/images, a secret file beside that folder,
    and a backend whose image encoder is a spy."""
    from PIL import Image

    from backend.app import create_app

    root = tmp_path / "images" / "img"   # the folder of the project's images: the default root
    root.mkdir(parents=True)
    ws = make_workspace("proj", n=40, n_medoids=12, ls_project_id=LS_PID)
    items = ws.items
    paths = [str(root.parent / i) for i in items["image_ids"]]
    for p in paths[:3]:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(p, format="JPEG")
    ws.save_items(items["image_ids"], paths, items["text_ids"], items["texts"])
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret, format="JPEG")   # not for the backend
    new_image = root / "new.jpg"
    Image.new("RGB", (8, 8), (0, 0, 200)).save(new_image, format="JPEG")
    (root / "escape.jpg").symlink_to(secret)
    monkeypatch.delenv("XMODAL_IMAGE_ROOTS", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path))
    clear_cache()
    spy = SpyImageEncoder()
    client = create_app({"IMAGE_ENCODER_LOADER": lambda w: spy}).test_client()
    build_index(xenv.redis, n_pairs=8)
    return type("Env", (), dict(client=client, spy=spy, root=root, secret=secret, new=new_image,
                                tmp=tmp_path, paths=paths))


@pytest.mark.parametrize("ref", [
    "{secret}",                                            # absolute path outside the roots
    "{root}/../secret.jpg",                                # '..' out of the root
    "../../secret.jpg",                                    # relative, escaping
    "{root}/escape.jpg",                                   # a symlink inside the root, pointing out
    "file://{secret}",
    "/data/local-files/?d=secret.jpg",                     # Label Studio's URL, outside the roots
    "http://127.0.0.1:8080/data/local-files/?d=images/../secret.jpg",
])
def test_images_outside_the_roots_are_refused_not_read(image_env, ref):
    ref = ref.format(secret=image_env.secret, root=image_env.root)
    resp = post(image_env.client, "/search", {"image": ref, "k": 3})
    assert resp.status_code == 403, resp.get_json()
    assert "outside the allowed local roots" in resp.get_json()["error"]
    assert image_env.spy.read == []


@pytest.mark.parametrize("ref,status", [
    ("http://example.invalid/cat.jpg", 400),               # never fetched on a request's behalf
    ("s3://bucket/cat.jpg", 400),
    ("data:text/html;base64,PGI+", 400),
    ("data:image/png;base64,@@@", 400),
    ("/tmp/\x00x.jpg", 400),
    ("{root}/missing.jpg", 404),
])
def test_unusable_image_references(image_env, ref, status):
    resp = post(image_env.client, "/search", {"image": ref.format(root=image_env.root), "k": 3})
    assert resp.status_code == status, resp.get_json()
    assert image_env.spy.read == []


def test_images_inside_the_roots_are_searched(image_env):
    known = post(image_env.client, "/search", {"image": image_env.paths[2], "k": 5}).get_json()
    assert known["target"] == "text" and len(known["results"]) == 5
    assert image_env.spy.read == []        # a project image: its stored codes, no embedding
    local = post(image_env.client, "/search",
                 {"image": "/data/local-files/?d=images/img/0002.jpg", "k": 5}).get_json()
    assert local["results"] == known["results"]
    new = post(image_env.client, "/search", {"image": str(image_env.new), "k": 5}).get_json()
    assert image_env.spy.read == [str(image_env.new)] and len(new["results"]) == 5
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    inline = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    resp = post(image_env.client, "/search", {"image": inline, "k": 2})
    assert resp.status_code == 200 and len(resp.get_json()["results"]) == 2
    assert len(image_env.spy.read) == 2 and not os.path.exists(image_env.spy.read[1])  # temp file gone


def test_predict_maps_task_images_and_refuses_outside_ones(image_env, monkeypatch):
    monkeypatch.setenv("XMODAL_PRESELECT_MIN", "0")   # a pre-selected answer whatever the confidence
    inside = task_body(1, image_id(2), n_options=6)
    del inside["data"]["item_id"]
    inside["data"]["image"] = "/data/local-files/?d=images/img/0002.jpg"
    outside = copy.deepcopy(inside)
    outside["id"] = 2
    outside["data"]["image"] = str(image_env.secret)
    out = post(image_env.client, "/predict", predict_body([inside, outside])).get_json()
    assert out["results"][0]["result"], out          # mapped to img/0002.jpg and predicted
    assert out["results"][1]["result"] == []
    assert out["errors"][0]["task"] == 2 and "outside the allowed local roots" in out["errors"][0]["error"]
    assert image_env.spy.read == []


def test_xmodal_image_roots_widens_the_allowed_roots(image_env, monkeypatch):
    monkeypatch.setenv("XMODAL_IMAGE_ROOTS", os.pathsep.join([str(image_env.root), str(image_env.tmp)]))
    resp = post(image_env.client, "/search", {"image": str(image_env.secret), "k": 2})
    assert resp.status_code == 200 and image_env.spy.read == [str(image_env.secret)]


# -- what error bodies say: no internals, no server paths ---------------------------------------
def _no_server_paths(resp, *paths):
    text = resp.get_data(as_text=True)
    for p in paths:
        assert str(p) not in text, (resp.status_code, text)


def test_an_unexpected_exception_is_a_json_500_without_internals(client, xenv, monkeypatch, caplog):
    def boom(self, params):
        raise RuntimeError(f"cannot open {xenv.models}/proj/index/v3.npz")

    monkeypatch.setattr("backend.model.XmodalModel.search", boom)
    resp = post(client, "/search", {"text_id": text_id(2), "k": 3, "project": "proj"})
    assert resp.status_code == 500
    body = resp.get_json()
    assert set(body) == {"error", "error_id"} and "RuntimeError" not in body["error"]
    _no_server_paths(resp, xenv.models, "v3.npz", "cannot open")
    # the details are in the log, under the id the caller got
    assert any(body["error_id"] in rec.getMessage() and "v3.npz" in rec.getMessage()
               for rec in caplog.records)


def test_a_503_names_files_relative_to_the_project(client, ws, xenv):
    ws.items_path.unlink()
    resp = post(client, "/predict", predict_body([task_body(1, image_id(1))]))
    assert resp.status_code == 503 and "proj/items.json" in resp.get_json()["error"]
    _no_server_paths(resp, xenv.models)


def test_404_bodies_name_no_server_path(client, xenv, monkeypatch):
    resp = post(client, "/search", {"text_id": text_id(2), "project": "nosuch"})
    assert resp.status_code == 404
    _no_server_paths(resp, xenv.models)
    monkeypatch.setenv("XMODAL_PROJECT", "gone")
    from backend.app import create_app

    resp = post(create_app().test_client(), "/setup", setup_body(project=99))
    assert resp.status_code == 404 and "gone" in resp.get_json()["error"]
    _no_server_paths(resp, xenv.models)


def test_403_and_404_of_images_name_no_root(image_env):
    resp = post(image_env.client, "/search", {"image": str(image_env.secret), "k": 3})
    assert resp.status_code == 403 and "allowed_roots" not in resp.get_json()
    _no_server_paths(resp, image_env.root)
    resp = post(image_env.client, "/search", {"image": f"{image_env.root}/sub/missing.jpg", "k": 3})
    assert resp.status_code == 404
    assert "'sub/missing.jpg'" in resp.get_json()["error"], resp.get_json()
    # the caller's own string is not echoed for a 404: only the root-relative name
    _no_server_paths(resp, image_env.root)


# -- hostile JSON: depth, non-finite numbers, huge integers, surrogates, NUL, long names --------
ROUTES = ("/webhook", "/predict", "/setup", "/search")
DIGITS_300 = "9" * 300


def raw_post(client, route, text: str, **kw):
    return client.post(route, data=text, content_type="application/json", **kw)


def hostile_bodies():
    """(route, raw body text, a word the 4xx message must contain): the cases of issue 11."""
    deleted_tasks = {"action": "TASKS_DELETED", "project": {"id": LS_PID}, "tasks": [1]}
    created_tasks = {"action": "TASKS_CREATED", "project": {"id": LS_PID},
                     "tasks": [task_body(1030, image_id(5), n_options=3)]}
    training = {"action": "START_TRAINING", "project": {"id": LS_PID}}
    ann = annotation_body("ANNOTATION_CREATED", 41, 1041, image_id(5), text_id(5), project=LS_PID)
    out = []
    for route in ROUTES:
        out.append((route, "[" * 1000 + "]" * 1000, "nested"))
        out.append((route, '{"a":' * 100 + "1" + "}" * 100, "nested"))
    out += [
        ("/search", '{"text": "a", "k": Infinity}', "Infinity"),
        ("/search", '{"text": "a", "k": NaN}', "NaN"),
        ("/search", '{"text": "a", "k": 1e999}', "finite"),
        ("/webhook", json.dumps(created_tasks).replace('"id": 1030', '"id": Infinity'), "Infinity"),
        ("/webhook", json.dumps(deleted_tasks).replace("[1]", "[Infinity]"), "Infinity"),
        ("/webhook", json.dumps(deleted_tasks).replace("[1]", "[1e300]"), "integer"),
        ("/predict", json.dumps(predict_body([task_body(1, image_id(1))])).replace('"id": 1,', '"id": -Infinity,'),
         "Infinity"),
        ("/webhook", json.dumps(training).replace(f'"id": {LS_PID}', f'"id": {DIGITS_300}'), "digits"),
        ("/setup", json.dumps(setup_body()).replace(f'"{LS_PID}.', f'"{DIGITS_300}.'), "project"),
        ("/predict", json.dumps(predict_body([task_body(1, image_id(1))])).replace(f'"{LS_PID}.', f'"{DIGITS_300}.'),
         "project"),
        ("/webhook", json.dumps(ann).replace('"updated_at": "', '"updated_at": ' + "9" * 400 + ', "x": "'),
         "digits"),
        ("/setup", json.dumps(dict(setup_body(), access_token="tok")).replace('"tok"', '"\\ud800"'), "surrogate"),
        ("/setup", json.dumps(dict(setup_body(), hostname="http://h")).replace('"http://h"', '"http://\\udfff"'),
         "surrogate"),
        ("/search", '{"image": "/x/\\ud800.jpg", "k": 2}', "surrogate"),
        ("/setup", json.dumps(dict(setup_body(), schema='<View><Choices name="N" toName="image"/></View>'))
         .replace('name=\\"N\\"', 'name=\\"\\ud800\\"'), "surrogate"),
    ]
    return out


@pytest.mark.parametrize("route,text,word", hostile_bodies(),
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(hostile_bodies())])
def test_hostile_json_is_a_clear_400(client, r, route, text, word):
    store = PairStore(r, "proj")
    store.put(1, 1000, image_id(0), text_id(0), 1.0)
    resp = raw_post(client, route, text)
    assert resp.status_code == 400, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert word.lower() in resp.get_json()["error"].lower(), resp.get_json()
    assert store.get(1)["state"] == "pair" and store.get(41) is None


def test_updated_at_as_a_huge_number_string_is_not_a_500(client, r):
    ann = annotation_body("ANNOTATION_CREATED", 42, 1042, image_id(5), text_id(5), project=LS_PID)
    ann["annotation"]["updated_at"] = "9" * 400
    resp = post(client, "/webhook", ann)
    assert resp.status_code == 200, resp.get_json()
    assert PairStore(r, "proj").get(42)["state"] == "pair"


@pytest.mark.parametrize("ref,word", [
    ("file:///etc/passwd%00.png", "NUL"),
    ("/data/local-files/?d=x%00", "NUL"),
    ("{root}/" + "a" * 300 + ".jpg", "255"),
    ("{root}/" + "é" * 200 + "/x.jpg", "255"),            # 400 bytes in UTF-8
    ("/data/local-files/?d=images/img/" + "b" * 256, "255"),
])
def test_nul_and_overlong_path_components_are_400(image_env, ref, word):
    resp = post(image_env.client, "/search", {"image": ref.format(root=image_env.root), "k": 3})
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    assert word in resp.get_json()["error"]
    _no_server_paths(resp, image_env.root)
    assert image_env.spy.read == []


def test_a_chunked_body_over_the_limit_is_413(xenv, ws):
    """gunicorn hands a chunked body to the app with no Content-Length and wsgi.input_terminated;
    werkzeug then stops reading at the limit and returned a truncated body (a 400)."""
    from backend.app import create_app

    client = create_app({"MAX_CONTENT_LENGTH": 16384}).test_client()
    chunked = {"wsgi.input_terminated": True}
    for route in ROUTES:
        big = io.BytesIO(b'{"text": "' + b"x" * 40_000 + b'"}')
        resp = client.post(route, input_stream=big, content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides=chunked)
        assert resp.status_code == 413, (route, resp.get_json())
    ok = io.BytesIO(b'{"action": "SOMETHING_ELSE", "project": {"id": 7}}')
    resp = client.post("/webhook", input_stream=ok, content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides=chunked)
    assert resp.status_code == 200, resp.get_json()


SENTINEL = "\x01hostile\x01"
hostile_snippets = st.one_of(
    st.integers(65, 3000).map(lambda d: "[" * d + "]" * d),                        # depth
    st.integers(65, 500).map(lambda d: '{"a":' * d + "0" + "}" * d),
    st.sampled_from(["Infinity", "-Infinity", "NaN", "1e999", "-1e400"]),           # non-finite
    st.integers(20, 400).map(lambda n: "9" * n),                                    # huge integers
    st.integers(20, 400).map(lambda n: "-" + "1" * n),
    st.integers(19, 300).map(lambda n: '"' + "7" * n + '.1764300000"'),           # huge id strings
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"img/\\udc80.jpg"',               # lone surrogates
                     '"<View><Choices name=\\"\\ud800\\" toName=\\"i\\"/></View>"']),
    st.sampled_from(['"\\u0000"', '"file:///etc/passwd%00.png"', '"/data/local-files/?d=x%00"',  # NUL
                     '"a\\u0000b"', '"/data/local-files/?d=%2500"']),
    st.integers(256, 5000).map(lambda n: '"' + "n" * n + '"'),                      # long names
    st.integers(256, 1000).map(lambda n: '"/tmp/' + "n" * n + '.jpg"'),
    st.integers(256, 1000).map(lambda n: '"/data/local-files/?d=' + "n" * n + '"'),
)


@st.composite
def hostile_requests(draw):
    """A valid body with one value (or the whole body) replaced by a hostile JSON snippet: raw text,
    since ``json.dumps`` cannot write most of them."""
    route = draw(st.sampled_from(sorted(valid_bodies())))
    body = draw(st.sampled_from(valid_bodies()[route]))
    path = draw(st.sampled_from(list(paths_of(body))))
    text = json.dumps(mutate(body, path, "replace", SENTINEL))
    return route, text.replace(json.dumps(SENTINEL), draw(hostile_snippets), 1)


@settings(FUZZ, max_examples=300)
@given(req=hostile_requests())
def test_hostile_values_anywhere_are_4xx_with_a_message_and_lose_no_pair(client, r, req):
    route, text = req
    store = PairStore(r, "proj")
    store.put(1, 1000, image_id(0), text_id(0), 1.0)
    resp = raw_post(client, route, text)
    assert_clear_4xx_or_ok(resp, text[:300])
    assert store.get(1)["state"] == "pair"


@settings(FUZZ, max_examples=40)
@given(route=st.sampled_from(ROUTES + ("/metrics", "/health", "/nosuch")),
       size=st.integers(16385, 200_000), declared=st.booleans())
def test_bodies_over_the_limit_are_413_chunked_or_not(xenv, ws, route, size, declared):
    from backend.app import create_app

    client = create_app({"MAX_CONTENT_LENGTH": 16384}).test_client()
    data = b'{"text": "' + b"x" * size + b'"}'
    if declared:
        resp = client.post(route, data=data, content_type="application/json")
    else:
        resp = client.post(route, input_stream=io.BytesIO(data), content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    if route in ROUTES:
        assert resp.status_code == 413, (route, declared, resp.get_json())
    else:   # routes that read no body: never a 5xx
        assert resp.status_code < 500, (route, resp.status_code)


# -- webhooks of unlinked projects, times from the future -------------------------------------
def test_a_webhook_of_an_unlinked_project_is_refused_not_stored_in_the_default(xenv, make_workspace, r):
    from backend.app import create_app

    make_workspace("solo", ls_project_id=None)
    client = create_app({"XMODAL_PROJECT": "solo"}).test_client()
    ann = annotation_body("ANNOTATION_CREATED", 51, 1051, image_id(3), text_id(3), project=55)
    resp = post(client, "/webhook", ann)
    assert resp.status_code == 404, resp.get_json()
    out = resp.get_json()
    assert "55" in out["error"] and "resync --name solo" in out["hint"], out
    assert PairStore(r, "solo").get(51) is None
    assert post(client, "/predict", predict_body([task_body(1, image_id(1))], project=55)).status_code == 404
    # the refusal was not cached: the Label Studio project's /setup still links the workspace
    assert post(client, "/setup", setup_body(project=55)).status_code == 200
    assert post(client, "/webhook", ann).status_code == 200
    assert PairStore(r, "solo").get(51)["state"] == "pair"
    # ...and now another Label Studio project is refused as before
    other = annotation_body("ANNOTATION_CREATED", 52, 1052, image_id(4), text_id(4), project=56)
    assert post(client, "/webhook", other).status_code == 404
    assert PairStore(r, "solo").get(52) is None


def test_an_updated_at_from_the_future_is_clamped_to_the_receive_time(client, r):
    import time

    ann = annotation_body("ANNOTATION_CREATED", 61, 1061, image_id(3), text_id(3), project=LS_PID)
    ann["annotation"]["updated_at"] = "9999-12-31T23:59:59Z"
    before = time.time()
    assert post(client, "/webhook", ann).get_json()["status"] == "stored"
    assert before <= PairStore(r, "proj").get(61)["updated_at"] <= time.time()
    edit = annotation_body("ANNOTATION_UPDATED", 61, 1061, image_id(3), text_id(4), project=LS_PID,
                           updated_at=time.time() + 1)
    out = post(client, "/webhook", edit).get_json()
    assert out["status"] == "stored", out          # a later real edit is not 'stale'
    assert PairStore(r, "proj").get(61)["text_id"] == text_id(4)


# -- a corrupt or missing current index -------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage", "wrong_shapes"])
def test_a_corrupt_current_index_falls_back_to_the_newest_valid_version(client, r, ws, damage):
    from workers.rebuild import rebuild
    from xmodal.index.files import index_path
    from xmodal.index.store import IndexStore
    from xmodal.jobs.queueing import get_queue

    build_index(r, n_pairs=4)                     # v1
    store = PairStore(r, "proj")
    store.put(900, 1900, image_id(9), text_id(9), 1.0)
    rebuild("proj", redis_client=r)               # v2, current
    assert IndexStore(r, ws).current_version() == 2
    path = index_path(ws, 2)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    else:
        with np.load(path) as z:
            arrays = dict(z)
        arrays["image_codes"] = arrays["image_codes"][:3]
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").replace(path)
    clear_cache()                                 # a fresh gunicorn worker
    get_queue(r).empty()
    for _ in range(10):
        for route, body in [("/predict", predict_body([task_body(1, image_id(1), n_options=6)])),
                            ("/search", {"image_id": image_id(2), "k": 3}), ("/setup", setup_body())]:
            resp = post(client, route, body)
            assert resp.status_code == 200, (route, resp.get_json())
            assert resp.get_json()["model_version"] == "v1"
    assert [j.func_name for j in get_queue(r).jobs] == ["workers.rebuild.rebuild"]   # one, coalesced
    rebuild("proj", redis_client=r)               # v3 replaces the broken one
    assert post(client, "/search", {"image_id": image_id(2), "k": 3}).get_json()["model_version"] == "v3"


def test_no_valid_index_at_all_serves_the_unlabelled_order(client, r, ws):
    from xmodal.index.files import index_path

    build_index(r, n_pairs=4)
    index_path(ws, 1).write_bytes(b"not a zip")
    clear_cache()
    resp = post(client, "/predict", predict_body([task_body(1, image_id(1), n_options=6)]))
    assert resp.status_code == 200 and resp.get_json()["model_version"] == "v0", resp.get_json()


# -- decode bombs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 13000 x 13000 PNG of about 20 KB: 169 MP, over 1 GB to decode as RGB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_decode_bomb_is_422_before_it_is_decoded(image_env, bomb_png):
    assert len(bomb_png) < 100_000
    bomb = image_env.root / "bomb.png"
    bomb.write_bytes(bomb_png)
    inline = "data:image/png;base64," + base64.b64encode(bomb_png).decode()
    for ref in (str(bomb), inline):
        resp = post(image_env.client, "/search", {"image": ref, "k": 3})
        assert resp.status_code == 422, resp.get_json()
        assert "13000x13000 pixels" in resp.get_json()["error"]
    assert image_env.spy.read == []


def test_image_byte_limit_and_non_images(image_env, monkeypatch):
    monkeypatch.setenv("XMODAL_MAX_IMAGE_BYTES", "100")
    resp = post(image_env.client, "/search", {"image": str(image_env.new), "k": 3})
    assert resp.status_code == 413 and "XMODAL_MAX_IMAGE_BYTES" in resp.get_json()["error"]
    monkeypatch.delenv("XMODAL_MAX_IMAGE_BYTES")
    (image_env.root / "fake.jpg").write_bytes(b"this is not a JPEG at all")
    resp = post(image_env.client, "/search", {"image": str(image_env.root / "fake.jpg"), "k": 3})
    assert resp.status_code == 422, resp.get_json()
    assert image_env.spy.read == []


def test_the_image_encoder_skips_images_over_the_pixel_limit(tmp_path, bomb_png):
    from xmodal.encoders.image import ImageEncoder

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png)
    enc = ImageEncoder.__new__(ImageEncoder)   # no weights needed: the check precedes the network
    enc.image_size = 224
    reason = enc._load(str(path))
    assert isinstance(reason, str) and "XMODAL_MAX_IMAGE_PIXELS" in reason
