"""The labelling configs in label_config/: structure (offline) and validity on a real Label Studio."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ls_server import ls_server_fixture

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"
# (config, Choices name, toName, object tag, data key of the medoid)
SPECS = [("image_to_text.xml", "caption", "image", "Image", "image"),
         ("text_to_image.xml", "image", "text", "Text", "text")]

AREAS = {"image_to_text.xml": "description", "text_to_image.xml": "match_id"}  # what is typed

ls_server = ls_server_fixture()


@pytest.mark.parametrize("name,choices,to_name,obj_tag,key", SPECS)
def test_config_structure(name, choices, to_name, obj_tag, key):
    root = ET.fromstring((CONFIGS / name).read_text())
    obj = [e for e in root.iter(obj_tag) if e.get("name") == to_name]
    assert obj and obj[0].get("value") == f"${key}"
    group = [e for e in root.iter("Choices") if e.get("name") == choices]
    assert len(group) == 1
    assert group[0].get("toName") == to_name and group[0].get("value") == "$options"
    assert group[0].get("choice") in ("single", "single-radio")  # one match per medoid
    # "None of these" is the one static choice; it stores __none__, its value lets the filter find it
    assert [c.get("alias") for c in group[0].iter("Choice")] == ["__none__"]
    area = [e for e in root.iter("TextArea") if e.get("name") == AREAS[name]]
    assert area and area[0].get("toName") == to_name
    # None of these with nothing typed is refused on the page: the box is required, with a message
    # saying what to do, and only while None of these is picked. Label Studio's required check
    # skips a box whose own View (its parent, not any ancestor) is hidden, so that View must have a
    # visibleWhen that hides it while an option is picked
    assert area[0].get("required") == "true" and len(area[0].get("requiredMessage", "")) > 40
    parent = next(v for v in root.iter("View") if area[0] in list(v))
    assert parent.get("visibleWhen") in ("choice-selected", "choice-unselected"), parent.attrib
    # a person can search the options and the page stays on screen
    assert [e.get("toName") for e in root.iter("Filter")] == [choices]
    # the first Choices tag is what xmodal.labelstudio.config.choices_fields() picks up
    assert next(root.iter("Choices")).get("name") == choices


def _sample_task(name: str) -> dict:
    from xmodal.labelstudio.tasks import image_option, text_option

    page = {"cluster": 0, "model_note": "Texts ranked by model v2 (2 labels).", "index_version": 2,
            "problem": ""}
    if name == "text_to_image.xml":
        return dict(page, item_id="t1", text="a dog on a couch",
                    options=[image_option("img/1.jpg", "/data/local-files/?d=x/img/1.jpg")])
    return dict(page, item_id="img/1.jpg", image="/data/local-files/?d=x/img/1.jpg",
                options=[text_option("t1", "a dog on a couch"), text_option("t2", "two $cats")])


@pytest.mark.e2e
@pytest.mark.parametrize("name,choices,to_name,obj_tag,key", SPECS)
def test_config_is_accepted_by_label_studio(ls_server, name, choices, to_name, obj_tag, key):
    from xmodal.labelstudio.client import LabelStudioError, connect

    ls = connect(ls_server.url, ls_server.token)
    pid = ls.api("POST", "/api/projects/", json={"title": f"cfg {name} {uuid.uuid4().hex[:6]}",
                                                "label_config": (CONFIGS / name).read_text()})["id"]
    try:
        # LS derives the required data keys from the config: the documented ones satisfy it ...
        ls.import_tasks(pid, [{"data": _sample_task(name)}])
        task = ls.list_tasks(pid)[0]
        ls.create_annotation(task["id"], [
            {"from_name": choices, "to_name": to_name, "type": "choices", "value": {"choices": ["__none__"]}},
            {"from_name": AREAS[name], "to_name": to_name, "type": "textarea", "value": {"text": ["t9"]}}])
        # ... and a task without the candidates is refused
        bad = {k: v for k, v in _sample_task(name).items() if k != "options"}
        bad["item_id"] += "-bad"
        with pytest.raises(LabelStudioError) as err:
            ls.import_tasks(pid, [{"data": bad}])
        assert err.value.status_code == 400
    finally:
        ls.delete_project(pid)


@pytest.mark.e2e
def test_label_studio_rejects_an_invalid_config(ls_server):
    """Guards the test above: project creation really validates the config."""
    from xmodal.labelstudio.client import LabelStudioError, connect

    ls = connect(ls_server.url, ls_server.token)
    with pytest.raises(LabelStudioError) as err:
        ls.api("POST", "/api/projects/", json={"title": "invalid", "label_config": (
            '<View><Image name="image" value="$image"/>'
            '<Choices name="caption" toName="nowhere" value="$options"/></View>')})
    assert err.value.status_code == 400
