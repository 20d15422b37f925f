"""Text ids on an image task's page: shown, hidden, or (auto) hidden where they name the images."""

from xmodal.labelstudio.tasks import ids_name_images, ids_shown, text_option


class _Ids:
    """The two things ids_shown reads of a workspace: its config and its ids."""

    def __init__(self, images, texts, show_ids=None):
        self.config = {"show_ids": show_ids} if show_ids else {}
        self._ids = {"image": images, "text": texts}

    def ids(self, modality):
        return self._ids[modality]


FLICKR = _Ids(["Flicker8k_Dataset/1000268201_693b08cb0e.jpg"], ["1000268201_693b08cb0e.jpg#0"])
COCO = _Ids(["train2017/000000408805.jpg"], ["408805#4"])
UNRELATED = _Ids(["train2017/000000408805.jpg"], ["t17#0"])


def test_auto_hides_ids_that_name_the_image():
    assert not ids_shown(FLICKR)         # the file name
    assert not ids_shown(COCO)           # the file's number, zeros stripped
    assert ids_shown(UNRELATED)


def test_the_project_setting_wins_over_auto():
    assert ids_shown(_Ids(FLICKR.ids("image"), FLICKR.ids("text"), "yes"))
    assert not ids_shown(_Ids(UNRELATED.ids("image"), UNRELATED.ids("text"), "no"))


def test_an_id_names_an_image_by_its_file_name_stem_or_number():
    flickr = ["Flicker8k_Dataset/1000268201_693b08cb0e.jpg", "Flicker8k_Dataset/997722733_0cb5439472.jpg"]
    assert ids_name_images(flickr, ["997722733_0cb5439472.jpg#3"])
    assert ids_name_images(flickr, ["1000268201_693b08cb0e#0"])                 # the stem
    assert ids_name_images(flickr, ["1000268201#0"])                            # its number
    coco = ["train2017/000000535506.jpg", "val2017/000000000139.jpg"]
    assert ids_name_images(coco, ["535506#0"])
    assert ids_name_images(coco, ["139#2"])
    assert ids_name_images(coco, ["train2017/000000535506.jpg#0"])
    assert ids_name_images(coco, ["000000535506-cap1"])
    assert ids_name_images(["img_0042.png"], ["img_0042#1"])
    assert ids_name_images(["img_0042.png"], ["captions/img_0042.png:1"])
    assert ids_name_images(["img_0123.png"], ["123#1"])
    assert ids_name_images(["frames/f000535506.jpg"], ["c535506"])             # letters, then the number


def test_unrelated_or_short_numbers_name_no_image():
    coco = ["train2017/000000535506.jpg", "val2017/000000000139.jpg", "val2017/000000000009.jpg"]
    assert not ids_name_images(coco, ["1#0", "9#0", "77#4", "535507#0", "408805#1"])
    assert not ids_name_images(coco, ["1535506#0", "5355060#0", "1390#2"])     # inside a longer number
    assert not ids_name_images(["img_0042.png"], ["42#1", "0042#1", "t42"])      # 42: too short to tell
    assert not ids_name_images(["img_0042.png"], ["img_00421#1", "ximg_0042#1"])  # part of another name
    # a hash's digits are no number: 693b08cb0e has none
    assert not ids_name_images(["Flicker8k_Dataset/1000268201_693b08cb0e.jpg"], ["693#0", "08#1"])
    assert not ids_name_images(["a/x.jpg", "b/ab.png"], ["x#0", "ab#1"])        # names too short
    assert not ids_name_images(["train2017/000000535506.jpg"], [])


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
