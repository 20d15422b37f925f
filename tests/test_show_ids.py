"""Text ids on an image task's page: shown, hidden, or (auto) hidden where they name the image's file."""

from xmodal.labelstudio.tasks import ids_shown, text_option


class _Ids:
    """The two things ids_shown reads of a workspace: its config and its ids."""

    def __init__(self, images, texts, show_ids=None):
        self.config = {"show_ids": show_ids} if show_ids else {}
        self._ids = {"image": images, "text": texts}

    def ids(self, modality):
        return self._ids[modality]


FLICKR = _Ids(["Flicker8k_Dataset/1000268201_693b08cb0e.jpg"], ["1000268201_693b08cb0e.jpg#0"])
COCO = _Ids(["train2017/000000408805.jpg"], ["408805#4"])


def test_auto_hides_ids_that_contain_the_image_file_name():
    assert not ids_shown(FLICKR)
    assert ids_shown(COCO)


def test_the_project_setting_wins_over_auto():
    assert ids_shown(_Ids(FLICKR.ids("image"), FLICKR.ids("text"), "yes"))
    assert not ids_shown(_Ids(COCO.ids("image"), COCO.ids("text"), "no"))


def test_a_hidden_id_stays_the_alias_the_annotation_stores():
    shown, hidden = text_option("1000268201_693b08cb0e.jpg#0", "A child in pink"), \
        text_option("1000268201_693b08cb0e.jpg#0", "A child in pink", show_id=False)
    assert shown["value"].endswith("1000268201_693b08cb0e.jpg#0")
    assert hidden == {"value": "A child in pink", "alias": "1000268201_693b08cb0e.jpg#0"}


def test_a_search_line_shows_a_reference_in_place_of_a_hidden_id_and_the_pick_still_resolves():
    from xmodal.labelstudio.page_search import hit_line, picked_id

    tid = "1000268201_693b08cb0e.jpg#0"
    known = {tid: 0, "1000268201_693b08cb0e.jpg#1": 1, "t · odd": 2}
    line = hit_line(3, tid, "A child in pink", show_id=False)
    assert "1000268201" not in line and line.startswith("3. A child in pink · ref ")
    assert picked_id(["Texts with the words 'pink'", line], 3, known) == tid
    assert picked_id([line], 3, {"other": 0}) is None                 # a reference to no known text
    assert picked_id([hit_line(1, "t · odd", "x", show_id=True)], 1, known) == "t · odd"


def test_the_note_line_offers_pasting_ids_only_where_they_are_shown():
    from xmodal.labelstudio.tasks import model_note

    assert "pasted" in model_note(None, "image", True) and "pasted" not in model_note(None, "image", False)
