"""Approximate nearest-neighbour search (xmodal.index.ann) through the rebuild, the index files and
IndexSnapshot: recall vs exact, the ANN files beside the index, exact fallback, old files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from conftest import image_id, text_id  # noqa: E402

from workers.rebuild import rebuild  # noqa: E402
from xmodal.benchmarks.scale import _snapshot, clustered_codes  # noqa: E402
from xmodal.index import ann  # noqa: E402
from xmodal.index.build import build_snapshot
from xmodal.index.files import index_path, read_snapshot, write_snapshot
from xmodal.index.store import IndexStore, clear_cache, load_current
from xmodal.project.pairs import PairStore  # noqa: E402

N = 20000


@pytest.fixture(scope="module")
def codes():
    return clustered_codes(N, k=200, d_image=128)


def recall(approx, exact):
    return float(np.mean([len({i for i, _ in a} & {i for i, _ in e}) / len(e)
                          for a, e in zip(approx, exact)]))


def exact_and_ann(snap, index, modality, Q, k):
    snap.ann[ann_target(modality)] = None
    exact = [snap.search(modality, Q[i:i + 1], k)[0] for i in range(len(Q))]
    snap.ann[ann_target(modality)] = index
    approx = [snap.search(modality, Q[i:i + 1], k)[0] for i in range(len(Q))]
    return exact, approx


def ann_target(modality):
    return "image" if modality == "text" else "text"


def test_recall_vs_exact_on_clustered_ssr_codes(codes):
    I, T = codes
    snap = _snapshot(I, T)
    index = ann.AnnIndex.build(I)
    assert index.n == N and index.dim == I.shape[1] and index.nlist == ann.default_nlist(N)
    Q = T[np.random.default_rng(3).choice(N, 60, replace=False)]
    exact, approx = exact_and_ann(snap, index, "text", Q, 10)
    assert recall(approx, exact) >= 0.85        # .92 measured (.96 at 100k items)
    # the shortlist is re-scored exactly: every returned score is the exact inner product
    rows = snap.rows("image")
    for q, hits in zip(Q, approx):
        got = np.array([s for _, s in hits])
        want = I[[rows[i] for i, _ in hits]] @ q
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(got) <= 1e-7)        # best first
    # k up to 1000 still works, with more lists probed
    assert index.nprobe_for(ann.shortlist(1000, N)) > index.nprobe_for(ann.shortlist(10, N))
    exact_big, approx_big = exact_and_ann(snap, index, "text", Q[:10], 1000)
    assert all(len(a) == 1000 for a in approx_big) and recall(approx_big, exact_big) >= 0.9


def test_csls_candidates_by_inner_product_rescored_exactly(codes):
    I, T = codes
    snap = _snapshot(I[:10000], T[:10000], csls_k=10)
    index = ann.AnnIndex.build(snap.image_codes)
    Q = snap.text_codes[:40]
    exact, approx = exact_and_ann(snap, index, "text", Q, 10)
    assert recall(approx, exact) >= 0.8         # .91 at 20k items (.92 without CSLS)
    # free-text queries: r(q) comes from the shortlist; for indexed items the stored term is used
    snap.ann["image"] = index
    ranked = snap.rank("text", snap.text_ids[0], None, 10)
    snap.ann["image"] = None
    full = snap.rank("text", snap.text_ids[0], None, 10)
    common = {i for i, _ in ranked} & {i for i, _ in full}
    assert len(common) >= 8
    by_id = dict(full)
    for i, s in ranked:
        if i in common:
            assert s == pytest.approx(by_id[i], abs=1e-5)


def test_threshold_config_and_env(monkeypatch):
    monkeypatch.delenv("XMODAL_ANN_THRESHOLD", raising=False)
    assert ann.threshold({}) == ann.DEFAULT_THRESHOLD == 100_000
    monkeypatch.setenv("XMODAL_ANN_THRESHOLD", "50")
    assert ann.threshold({}) == 50
    assert ann.threshold({"ann_threshold": 7}) == 7
    assert ann.wanted(51, 8, {}) and not ann.wanted(50, 8, {}) and not ann.wanted(51, 0, {})
    assert not ann.wanted(10**9, 8, {"ann_threshold": 0})     # 0 = never


def store_pairs(r, n_pairs=12, project="proj"):
    store = PairStore(r, project)
    for i in range(n_pairs):
        store.put(500 + i, 1000 + i, image_id(i), text_id(i), 1.0)


def test_rebuild_writes_ann_files_and_the_snapshot_uses_them(make_workspace, r, monkeypatch):
    clear_cache()
    ws = make_workspace("proj", n=600, n_medoids=12, ann_threshold=300)
    store_pairs(r)
    result = rebuild("proj", redis_client=r)
    npz = index_path(ws, result["version"])
    files = {p.name for p in npz.parent.iterdir()}
    assert {"v1.npz", "v1.image.faiss", "v1.text.faiss"} <= files
    snap = load_current("proj", r)
    assert snap.meta["ann"] == ["image", "text"] and snap.meta["ann_s"] >= 0
    assert snap.ann == {}                                   # loaded lazily, on the first search
    calls = []
    real = ann.AnnIndex.search
    monkeypatch.setattr(ann.AnnIndex, "search",
                        lambda self, q, k: calls.append(k) or real(self, q, k))
    hits = snap.search("text", snap.text_codes[:1], 5)[0]
    assert len(hits) == 5 and calls == [ann.shortlist(5, 600)]
    assert snap.ann_index("image") is not None
    ranked = snap.rank("image", image_id(3), None, 1000)     # k above n: every item, exact scores
    assert len(ranked) == 600 and len(calls) == 2
    # a candidate list (what /predict ranks) and a full ranking (k=None) stay exact
    snap.rank("image", image_id(3), [text_id(i) for i in range(20)], 5)
    snap.rank("image", image_id(3))
    assert len(calls) == 2


def test_backend_search_uses_ann_up_to_k_1000(make_workspace, r, xenv, monkeypatch):
    from backend.app import create_app

    clear_cache()
    make_workspace("proj", n=1200, n_medoids=12, ann_threshold=500)
    store_pairs(r)
    rebuild("proj", redis_client=r)
    calls = []
    real = ann.AnnIndex.search
    monkeypatch.setattr(ann.AnnIndex, "search",
                        lambda self, q, k: calls.append(k) or real(self, q, k))
    client = create_app({"TESTING": True}).test_client()
    for k in (1, 10, 1000):
        resp = client.get(f"/search?image_id={image_id(7)}&k={k}&project=proj")
        assert resp.status_code == 200, resp.get_json()
        results = resp.get_json()["results"]
        assert len(results) == k and all("text" in h for h in results)
    assert calls == [ann.shortlist(k, 1200) for k in (1, 10, 1000)]


def test_below_the_threshold_the_index_is_exact(make_workspace, r, monkeypatch):
    monkeypatch.delenv("XMODAL_ANN_THRESHOLD", raising=False)
    clear_cache()
    ws = make_workspace("proj", n=200, n_medoids=12)
    store_pairs(r)
    rebuild("proj", redis_client=r)
    assert not list(ws.index_dir.glob("*.faiss"))
    snap = load_current("proj", r)
    assert snap.meta["ann"] == [] and snap.ann_index("image") is None
    assert len(snap.search("text", snap.text_codes[:1], 5)[0]) == 5


def test_exact_fallback_when_the_ann_file_is_missing_or_broken(make_workspace, r, caplog):
    clear_cache()
    ws = make_workspace("proj", n=600, n_medoids=12, ann_threshold=300)
    store_pairs(r)
    rebuild("proj", redis_client=r)
    exact = load_current("proj", r)
    exact.ann.update(image=None, text=None)
    want = exact.search("text", exact.text_codes[:3], 7)
    (ws.index_dir / "v1.image.faiss").unlink()
    (ws.index_dir / "v1.text.faiss").write_bytes(b"not a faiss index")
    clear_cache()
    snap = load_current("proj", r)
    assert snap.search("text", snap.text_codes[:3], 7) == want
    assert snap.ann_index("image") is None and snap.ann_index("text") is None
    assert "exact search" in caplog.text
    assert len(snap.rank("image", image_id(2), None, 7)) == 7


def test_old_index_files_still_load(make_workspace, r):
    """A file written before the ANN fields existed (no "ann" in meta): loads, searches exactly."""
    ws = make_workspace("proj", n=600, n_medoids=12, ann_threshold=300)
    store_pairs(r)
    pairs = PairStore(r, "proj").all_pairs()
    snap, _ = build_snapshot(ws, 1, pairs)
    assert set(snap.ann) == {"image", "text"}
    path = write_snapshot(ws, snap)
    with np.load(path) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta.pop("ann")
    meta.pop("ann_s", None)
    arrays["meta"] = np.asarray(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    old = read_snapshot(path, "proj")
    assert old.ann_index("image") is None and old.ann_index("text") is None
    snap.ann.update(image=None, text=None)
    assert old.search("text", old.text_codes[:2], 5) == snap.search("text", snap.text_codes[:2], 5)


def test_ann_files_are_pruned_with_their_version(make_workspace, r):
    ws = make_workspace("proj", n=600, n_medoids=12, ann_threshold=300)
    store_pairs(r)
    pairs = PairStore(r, "proj").all_pairs()
    store = IndexStore(r, ws, keep=1)
    (ws.index_dir).mkdir(parents=True, exist_ok=True)
    (ws.index_dir / "v0.image.faiss").write_bytes(b"orphan of a rebuild that died")
    for v in (1, 2):
        snap, _ = build_snapshot(ws, v, pairs)
        store.publish(snap)
    names = sorted(p.name for p in ws.index_dir.iterdir() if not p.name.startswith("."))
    assert names == ["v2.image.faiss", "v2.npz", "v2.text.faiss"]
