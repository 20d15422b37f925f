"""The synthetic data set: deterministic, in the generic folder format, captions true to the pixels."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmodal.datasets import synthetic
from xmodal.errors import ConfigError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "data", n=36, seed=3, captions_per_image=2)


def test_same_seed_gives_identical_bytes(tmp_path, small_set):
    again = synthetic.generate(tmp_path / "again", n=36, seed=3, captions_per_image=2)
    assert _files(again) == _files(small_set)


def test_other_seed_gives_other_data(tmp_path, small_set):
    other = synthetic.generate(tmp_path / "other", n=36, seed=4, captions_per_image=2)
    a, b = _files(small_set), _files(other)
    assert a.keys() == b.keys()
    assert a["texts.jsonl"] != b["texts.jsonl"]
    assert sum(a[k] != b[k] for k in a if k.startswith("images/")) > 30


def test_prefix_of_a_larger_set_is_the_same_images(tmp_path, small_set):
    # every image has its own random stream, so n only adds images at the end
    bigger = synthetic.generate(tmp_path / "bigger", n=40, seed=3, captions_per_image=2)
    a, b = _files(small_set), _files(bigger)
    assert all(b[k] == v for k, v in a.items() if k.startswith("images/"))


def test_folder_format_loads(small_set):
    datasets = pytest.importorskip("xmodal.datasets")
    ds = datasets.load_folder(small_set)
    assert ds.n_images == 36 and ds.n_texts == 72
    assert len(ds.pairs) == 72
    assert sorted(ds.image_ids) == [f"img_{i:04d}.png" for i in range(36)]
    assert set(ds.image_labels) == set(synthetic.SHAPES)
    # every caption is paired with its own image and carries its label
    for image_row, text_row in ds.pairs:
        assert ds.text_labels[text_row] == ds.image_labels[image_row]
    # classes are balanced: shapes cycle
    counts = {label: int((ds.image_labels == label).sum()) for label in synthetic.SHAPES}
    assert set(counts.values()) == {6}


def test_jsonl_records(small_set):
    texts = [json.loads(line) for line in (small_set / "texts.jsonl").read_text().splitlines()]
    images = [json.loads(line) for line in (small_set / "images.jsonl").read_text().splitlines()]
    assert len(texts) == 72 and len(images) == 36
    assert all(set(r) == {"id", "text", "image", "label"} for r in texts)
    assert all(set(r) == {"id", "label"} for r in images)
    assert len({r["id"] for r in texts}) == 72
    assert all((small_set / "images" / r["id"]).is_file() for r in images)


def _mentions(text: str, synonyms) -> bool:
    t = " " + text.lower().replace(",", " ") + " "
    return any(f" {s} " in t for s in synonyms)


def test_captions_mention_the_rendered_attributes(small_set):
    meta = json.loads((small_set / "meta.json").read_text())
    scenes = {s["id"]: s for s in meta["scenes"]}
    texts = [json.loads(line) for line in (small_set / "texts.jsonl").read_text().splitlines()]
    for r in texts:
        s = scenes[r["image"]]
        assert _mentions(r["text"], synthetic.SHAPES[s["shape"]]), r
        assert _mentions(r["text"], synthetic.COLOURS[s["colour"]][1]), r
        assert _mentions(r["text"], synthetic.SIZES[s["size"]][1]), r
        assert _mentions(r["text"], [p.lower() for p in synthetic.POSITIONS[s["position"]][1]]), r
    # the wording varies: several templates and synonyms are used
    assert len({r["text"].split()[0] for r in texts}) >= 4


def test_captions_are_unambiguous():
    # a synonym never names two different values of the same attribute
    for table in (synthetic.SHAPES, {k: v[1] for k, v in synthetic.COLOURS.items()},
                  {k: v[1] for k, v in synthetic.SIZES.items()},
                  {k: v[1] for k, v in synthetic.POSITIONS.items()}):
        words = [w for synonyms in table.values() for w in synonyms]
        assert len(words) == len(set(words))


def _object_mask(img: np.ndarray) -> np.ndarray:
    # the background is pale and almost grey; every object colour is saturated
    return (img.max(axis=2).astype(int) - img.min(axis=2).astype(int)) > 60


def test_pixels_show_the_named_attributes(small_set):
    """The images differ in exactly the attributes the captions name: colour, size, position."""
    meta = json.loads((small_set / "meta.json").read_text())
    areas: dict[tuple[str, str], list[float]] = {}
    palette = {name: np.array(rgb, float) for name, (rgb, _) in synthetic.COLOURS.items()}
    for s in meta["scenes"]:
        img = np.asarray(Image.open(small_set / "images" / s["id"]).convert("RGB"))
        assert img.shape == (96, 96, 3)
        mask = _object_mask(img)
        assert mask.sum() > 20, s
        mean = img[mask].astype(float).mean(axis=0)
        nearest = min(palette, key=lambda c: np.linalg.norm(palette[c] - mean))
        assert nearest == s["colour"], (s, mean)
        areas.setdefault((s["shape"], s["size"]), []).append(mask.mean())
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean() / 96, ys.mean() / 96
        (px, py), _ = synthetic.POSITIONS[s["position"]]
        assert abs(cx - px) < 0.13 and abs(cy - py) < 0.13, (s, cx, cy)
    # for one shape, every small object is smaller than every medium one, and so on
    for shape in synthetic.SHAPES:
        by_size = [areas.get((shape, size), []) for size in synthetic.SIZES]
        present = [a for a in by_size if a]
        for smaller, larger in zip(present, present[1:]):
            assert max(smaller) < min(larger), shape


def test_refuses_to_overwrite_and_ensure_reuses(tmp_path):
    out = synthetic.generate(tmp_path / "d", n=6, seed=0)
    with pytest.raises(ConfigError, match="--overwrite"):
        synthetic.generate(out, n=6, seed=0)
    before = (out / "meta.json").stat().st_mtime_ns
    path, generated = synthetic.ensure(out, n=6, seed=0)
    assert path == out and not generated
    assert (out / "meta.json").stat().st_mtime_ns == before
    path, generated = synthetic.ensure(out, n=7, seed=0)  # other parameters: regenerated
    assert generated and len(list((out / "images").iterdir())) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_bad_parameters_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        synthetic.generate(tmp_path / "a", n=0)
    with pytest.raises(ConfigError):
        synthetic.generate(tmp_path / "b", n=3, label_by="size")


def test_generate_command(tmp_path, capsys):
    import argparse

    from xmodal.cli import generate as generate_cmd

    parser = argparse.ArgumentParser()
    generate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["generate", "--out", str(tmp_path / "g"), "--n", "8", "--seed", "1"])
    assert args.func(args) == 0
    assert "8 images" in capsys.readouterr().out
    assert len(list((tmp_path / "g" / "images").iterdir())) == 8


def test_chinese_and_japanese_captions_name_the_same_scenes():
    en = synthetic.make_scenes(30, seed=3, captions_per_image=2)
    for lang in ("zh", "ja"):
        other = synthetic.make_scenes(30, seed=3, captions_per_image=2, lang=lang)
        assert [(s.shape, s.colour, s.size, s.position) for s in en] == \
            [(s.shape, s.colour, s.size, s.position) for s in other]
        assert all(" " not in c and any("\u4e00" <= ch <= "\u9fff" for ch in c) for s in other for c in s.captions)
    ja = synthetic.make_scenes(30, seed=3, captions_per_image=2, lang="ja")
    assert all(any("\u3040" <= ch <= "\u30ff" for ch in c) for s in ja for c in s.captions)  # kana too
