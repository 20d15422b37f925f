"""Data set loaders: the generic folder format (and each bad-input error), the real data sets."""

import json
from pathlib import Path

import numpy as np
import pytest

from xmodal import datasets
from xmodal.datasets import DEFAULT_DATA_ROOT
from xmodal.datasets.dataset import CrossModalDataset
from xmodal.datasets.folder import load_folder
from xmodal.errors import DataError

PNG = bytes.fromhex(  # a valid 1x1 PNG; the loader never decodes images anyway
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


def make_folder(root: Path, texts, images=("a.png", "b.png", "sub/c.png"), image_labels=None,
                csv: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        p = root / "images" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(PNG)
    if csv:
        import csv as csvmod

        with (root / "texts.csv").open("w", newline="") as fh:
            w = csvmod.DictWriter(fh, fieldnames=["id", "text", "image", "label"])
            w.writeheader()
            for t in texts:
                w.writerow(t)
    else:
        (root / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    if image_labels is not None:
        (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in image_labels))
    return root


TEXTS = [
    {"id": "t1", "text": "a red square", "image": "a.png", "label": "square"},
    {"id": "t2", "text": "another red square", "image": "a.png", "label": "square"},
    {"id": "t3", "text": "a blue circle", "image": "b.png", "label": "circle"},
    {"id": "t4", "text": "a nested green star", "image": "sub/c.png", "label": "star"},
    {"id": "t5", "text": "a caption with no image"},
]


# -- the generic folder format ----------------------------------------------------------------

def test_folder_loads_pairs_labels_and_nested_ids(tmp_path):
    ds = load_folder(make_folder(tmp_path, TEXTS))
    assert ds.image_ids == ["a.png", "b.png", "sub/c.png"]  # POSIX ids, relative to images/
    assert ds.text_ids == ["t1", "t2", "t3", "t4", "t5"]
    assert ds.pairs.tolist() == [[0, 0], [0, 1], [1, 2], [2, 3]]
    assert all(p.is_file() for p in ds.image_paths)
    assert ds.texts[3] == "a nested green star"
    # image labels inherited from the texts that describe them; t5 has none
    assert list(ds.image_labels) == ["square", "circle", "star"]
    assert list(ds.text_labels[:4]) == ["square", "square", "circle", "star"]
    assert ds.text_labels[4] == ""
    assert ds.text_of_image().tolist() == [0, 2, 3]
    assert ds.image_split is None


def test_folder_csv_equals_jsonl(tmp_path):
    a = load_folder(make_folder(tmp_path / "a", TEXTS))
    b = load_folder(make_folder(tmp_path / "b", [{**t, **{k: t.get(k, "") for k in ("image", "label")}}
                                                 for t in TEXTS], csv=True))
    assert a.text_ids == b.text_ids and a.texts == b.texts
    assert np.array_equal(a.pairs, b.pairs)
    assert list(a.text_labels) == list(b.text_labels)


def test_images_jsonl_labels_win_and_splits(tmp_path):
    texts = [{**t, "split": "test"} if t["id"] == "t3" else t for t in TEXTS]
    ds = load_folder(make_folder(tmp_path, texts, image_labels=[{"id": "a.png", "label": "box"}]))
    assert list(ds.image_labels) == ["box", "circle", "star"]
    assert list(ds.image_split) == ["train", "test", "train"]  # b.png inherits t3's split
    test = ds.split("test")
    assert test.image_ids == ["b.png"] and test.text_ids == ["t3"] and test.pairs.tolist() == [[0, 0]]


def test_subset_reindexes_pairs(tmp_path):
    ds = load_folder(make_folder(tmp_path, TEXTS))
    sub = ds.subset([2, 0], [3, 0, 4])
    assert sub.image_ids == ["sub/c.png", "a.png"]
    assert sub.pairs.tolist() == [[1, 1], [0, 0]]


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_folder(tmp_path, TEXTS)
    (root / "images" / "notes.txt").write_text("x")
    (root / "images" / ".thumbs").mkdir()
    (root / "images" / ".thumbs" / "a.png").write_bytes(PNG)
    assert load_folder(root).image_ids == ["a.png", "b.png", "sub/c.png"]


def test_links_leaving_the_folder_and_unreadable_files_are_skipped_and_listed(tmp_path):
    import os

    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG)
    root = make_folder(tmp_path / "data", TEXTS)
    (root / "images" / "passwd.png").symlink_to("/etc/passwd")
    (root / "images" / "elsewhere.png").symlink_to(outside)
    (root / "images" / "gone.png").symlink_to(root / "images" / "nothing-here.png")
    (root / "images" / "inside.png").symlink_to(root / "images" / "a.png")   # stays: inside the folder
    locked = root / "images" / "locked.png"
    locked.write_bytes(PNG)
    locked.chmod(0)
    texts = TEXTS + [{"id": "t6", "text": "the passwd file", "image": "passwd.png"}]
    (root / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    ds = load_folder(root)
    readable = os.access(locked, os.R_OK)  # root reads anything
    assert ds.image_ids == ["a.png", "b.png", "inside.png"] + (["locked.png"] if readable else []) + ["sub/c.png"]
    skipped = ds.meta["skipped_images"]
    assert "passwd.png (a link that leaves the data folder)" in skipped
    assert "elsewhere.png (a link that leaves the data folder)" in skipped
    assert "gone.png (a broken link)" in skipped
    assert readable or "locked.png (not readable)" in skipped
    assert "skipped: " in ds.describe() and "passwd.png" in ds.describe()
    # the text that named a skipped image stays, without a pair
    t6 = ds.text_ids.index("t6")
    assert t6 not in set(ds.pairs[:, 1].tolist())


@pytest.mark.parametrize("case, fragment", [
    ("missing_folder", "does not exist"),
    ("no_images_dir", "images/"),
    ("no_texts", "texts.jsonl"),
    ("empty_texts", "'t2', 't3'"),
    ("duplicate_ids", "duplicate text ids"),
    ("unknown_image", "mismatched pair ids"),
    ("bad_json", "line(s) 2"),
    ("no_images", "no image files"),
    ("images_jsonl_unknown", "not under images/"),
    ("bad_split", "split must be"),
])
def test_folder_bad_input_says_what_to_fix(tmp_path, case, fragment):
    root = tmp_path / "data"
    if case == "missing_folder":
        pass
    elif case == "no_images_dir":
        root.mkdir()
        (root / "texts.jsonl").write_text(json.dumps(TEXTS[0]) + "\n")
    elif case == "no_texts":
        make_folder(root, TEXTS)
        (root / "texts.jsonl").unlink()
    elif case == "empty_texts":
        make_folder(root, [TEXTS[0], {"id": "t2", "text": "  "}, {"id": "t3", "image": "a.png"}])
    elif case == "duplicate_ids":
        make_folder(root, TEXTS + [TEXTS[0]])
    elif case == "unknown_image":
        make_folder(root, TEXTS + [{"id": "t9", "text": "x", "image": "cats/1.png"}])
    elif case == "bad_json":
        make_folder(root, TEXTS)
        lines = (root / "texts.jsonl").read_text().splitlines()
        lines[1] = "{not json"
        (root / "texts.jsonl").write_text("\n".join(lines))
    elif case == "no_images":
        make_folder(root, [{"id": "t1", "text": "x"}], images=())
        (root / "images").mkdir(exist_ok=True)
    elif case == "images_jsonl_unknown":
        make_folder(root, TEXTS, image_labels=[{"id": "zzz.png", "label": "x"}])
    elif case == "bad_split":
        make_folder(root, [{**TEXTS[0], "split": "validation"}])
    with pytest.raises(DataError) as err:
        load_folder(root)
    assert fragment in str(err.value)
    if case == "unknown_image":
        assert "t9 -> cats/1.png" in str(err.value)


def test_dataset_checks_row_counts():
    with pytest.raises(DataError, match="image_features has 2 rows"):
        CrossModalDataset("x", ["a"], ["t"], pairs=[[0, 0]], image_features=np.zeros((2, 3)))
    with pytest.raises(DataError, match="outside"):
        CrossModalDataset("x", ["a"], ["t"], pairs=[[0, 1]])


def test_unknown_dataset_name_is_a_config_error():
    from xmodal.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown data set"):
        datasets.load("imagenet", "/nowhere")


# -- the real data sets (skipped when ../shared/data is absent) ---------------------------------

def _need(sub: str) -> Path:
    path = DEFAULT_DATA_ROOT / sub
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (the shared data sets live next to the repository "
                    "in ../shared/data; see its README)")
    return path


def test_wikipedia_official_split():
    ds = datasets.load_wikipedia(_need("wikipedia_rasiwasia"))
    assert (ds.n_images, ds.n_texts, len(ds.pairs)) == (2866, 2866, 2866)
    assert ds.image_features.shape == (2866, 128) and ds.text_features.shape == (2866, 10)
    assert (ds.image_split == "train").sum() == 2173 and (ds.image_split == "test").sum() == 693
    assert set(np.unique(ds.image_labels)) == set(range(10))
    test = ds.split("test")
    assert test.n_images == 693 and np.array_equal(test.image_labels, test.text_labels)


def test_coco_mini_captions():
    path = _need("coco_mini")
    first = datasets.load_coco_mini(path)
    every = datasets.load_coco_mini(path, captions="all")
    assert first.n_images == every.n_images == 159
    assert first.n_texts == 159 and every.n_texts == 795
    assert every.text_of_image()[:3].tolist() == [0, 5, 10]
    assert first.texts[1] == every.texts[5]
    assert all(p.is_file() for p in first.image_paths)
    assert len(first.meta["image_categories"]) == 159 and first.image_labels is None


def test_pascal_dscmr_features():
    ds = datasets.load_pascal_dscmr(_need("pascal_sentences"))
    assert ds.image_features.shape == (100, 4096) and ds.text_features.shape == (100, 300)
    assert np.bincount(ds.image_labels).tolist() == [5] * 20
    assert not ds.has_split


def test_coco_mini_zh_is_a_folder_data_set_of_real_photos_with_chinese_captions(tmp_path):
    """scripts/coco_mini_zh: every COCO-mini image, its first caption in Chinese, as a folder
    data set (hard links or copies: the folder format refuses links that leave it)."""
    import importlib.util
    import re

    coco = DEFAULT_DATA_ROOT / "coco_mini"
    if not coco.is_dir():
        pytest.skip(f"real data not found at {coco} (../shared/data; see its README)")
    script = Path(__file__).parents[1] / "scripts" / "coco_mini_zh" / "build.py"
    spec = importlib.util.spec_from_file_location("coco_mini_zh", script)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.build(coco, tmp_path / "zh") == 159
    ds = load_folder(tmp_path / "zh")
    assert len(ds.image_ids) == len(ds.texts) == 159
    assert all(re.search(r"[\u4e00-\u9fff]", t) and " " not in t for t in ds.texts)
    assert sorted(e["file"] for e in json.loads((coco / "pairs.json").read_text())) == sorted(ds.image_ids)


def test_coco_mini_large_hides_the_captions_among_thousands_of_texts(tmp_path):
    """scripts/coco_mini_large: the 159 images, their 795 captions and the 4,998 Pascal Sentences
    (texts of no image of the set), shuffled: more texts than an image task's page carries."""
    import importlib.util

    coco, pascal = DEFAULT_DATA_ROOT / "coco_mini", DEFAULT_DATA_ROOT / "pascal_sentences"
    if not (coco.is_dir() and (pascal / "pascal_sentences.json").is_file()):
        pytest.skip(f"real data not found at {DEFAULT_DATA_ROOT} (../shared/data; see its README)")
    script = Path(__file__).parents[1] / "scripts" / "coco_mini_large" / "build.py"
    spec = importlib.util.spec_from_file_location("coco_mini_large", script)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.build(coco, pascal, tmp_path / "large") == (795, 4998)
    ds = load_folder(tmp_path / "large")
    assert len(ds.image_ids) == 159 and len(ds.texts) == 5793
    first_thousand = ds.text_ids[:1000]
    assert 50 < sum(not t.startswith("pascal:") for t in first_thousand) < 400   # not the captions first
