"""The answer box checked before Submit (xmodal.labelstudio.page_check): Label Studio's interactive
/predict with an entry of the description box gets a line saying what it will count as, and an
entry that would be a problem is taken out of the box (the config's required check then refuses
the Submit). Real Redis, the real backend app; the same rules as the webhook's."""

from __future__ import annotations

import pytest
from conftest import image_id, task_body, text_id
from test_backend_api import post, predict_body

from xmodal.labelstudio.annotations import extract_answer


@pytest.fixture
def client(xenv, ws, fake_ls):
    from backend.app import create_app
    from xmodal.index.store import clear_cache

    clear_cache()
    return create_app({"TESTING": True}).test_client()


def entry(text, field="description"):
    return {"from_name": field, "to_name": "image", "type": "textarea", "value": {"text": [text]}}


def checked(client, *regions):
    body = predict_body([task_body(1000, image_id(0))])
    body["params"] = {"context": {"result": list(regions)}}
    resp = post(client, "/predict", body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return {r["from_name"]: r["value"] for r in resp.get_json()["results"][0]["result"]}


def test_an_id_that_is_no_id_is_refused_and_the_box_emptied(client):
    got = checked(client, entry("zz-9x#4"))
    assert got["description"] == {"text": []}, got   # out of the box: required refuses the Submit
    (line,) = got["check"]["text"]
    assert line.startswith("✗ Not taken:") and "'zz-9x#4' is not a text id of this project" in line


def test_what_counts_is_said_and_kept(client, ws):
    for typed, what in [(text_id(3), "the id of a text"), ("Caption 5.", "a text of this project"),
                        ("two dogs on a beach", "a description of the image")]:
        got = checked(client, entry(typed))
        assert "description" not in got, (typed, got)   # the entry stays as typed
        (line,) = got["check"]["text"]
        assert line.startswith("✓") and what in line, (typed, line)


def test_no_words_and_too_long_are_refused(client):
    assert checked(client, entry("!!! ???"))["description"] == {"text": []}
    got = checked(client, entry("a dog " * 400))
    assert got["description"] == {"text": []} and "limit" in got["check"]["text"][0]


def test_a_search_and_an_entry_in_one_context_get_both_answers(client):
    got = checked(client, {"from_name": "search", "to_name": "image", "type": "textarea",
                           "value": {"text": ["caption 17"]}}, entry("nope#1"))
    assert got["hits"]["text"][1].startswith("1. caption 17") and got["hit"] == {"choices": []}
    assert got["description"] == {"text": []} and got["check"]["text"][0].startswith("✗")


def test_the_check_line_is_not_the_answer():
    """The annotation carries the backend's check line as a region of its own: the webhook reads
    the person's entry, never the line."""
    result = [{"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": ["__none__"]}},
              {"from_name": "check", "to_name": "image", "type": "textarea", "value": {"text": ["✓ …"]}},
              entry("a red bus")]
    assert extract_answer(result, "caption") == ("__none__", "a red bus")


def test_an_image_id_on_a_text_task_is_checked(make_workspace):
    """A text task's box takes an image id: one of the project is kept, anything else refused."""
    from xmodal.labelstudio.page_check import check_result

    ws = make_workspace("tproj", select="text")
    (ok,) = check_result(ws, "match_id", image_id(2), "text")
    assert ok["from_name"] == "check" and ok["value"]["text"][0].startswith("✓")
    line, emptied = check_result(ws, "match_id", "img/none.jpg", "text")
    assert emptied == {"from_name": "match_id", "to_name": "text", "type": "textarea", "value": {"text": []}}
    assert "is not an image id of this project" in line["value"]["text"][0]
