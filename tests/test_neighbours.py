"""CSLS neighbourhoods kept between rebuilds (xmodal/index/neighbours.py, core/hubness.py): the
next label's rebuild rescores the last version's neighbourhoods; the rebuild job refreshes them
after the push; stale, foreign or broken ones are found again."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import image_id, synthetic_features, text_id
from xmodal.core import hubness
from xmodal.core.hubness import hubness_neighbours, hubness_terms, neighbour_terms
from xmodal.index import neighbours
from xmodal.index.build import build_snapshot


def _pairs(n):
    return [{"annotation_id": 100 + i, "image_id": image_id(i), "text_id": text_id(i)} for i in range(n)]


@pytest.mark.parametrize("budget", [None, 600])
def test_rescored_neighbourhoods_of_the_same_codes_are_the_terms(monkeypatch, budget):
    """Exact (every target) and sampled (a budget of 600 scores per direction)."""
    if budget:
        monkeypatch.setattr(hubness, "MAX_EXACT_SCORES", budget)
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    r_a, r_b, nn_a, nn_b = hubness_neighbours(A, B, 5)
    t_a, t_b = hubness_terms(A, B, 5)
    np.testing.assert_allclose(r_a, t_a, atol=1e-6)
    np.testing.assert_allclose(r_b, t_b, atol=1e-6)
    np.testing.assert_allclose(neighbour_terms(A, B, nn_a), r_a, atol=1e-5)
    np.testing.assert_allclose(neighbour_terms(B, A, nn_b), r_b, atol=1e-5)
    assert nn_a.max() < len(B) and nn_b.max() < len(A)


def _csls_workspace(make_workspace, name="nb", n=80):
    ws = make_workspace(name, n=n, enhance=["zscore", "csls"], csls_k=5)
    X, Y = synthetic_features(n, noise=0.8)
    ws.save_features("image", X, "synthetic-image")
    ws.save_features("text", Y, "synthetic-text")
    return ws


def test_one_more_label_rescores_the_last_versions_neighbourhoods(r, xenv, make_workspace):
    ws = _csls_workspace(make_workspace)
    first, _ = build_snapshot(ws, 1, _pairs(12))
    assert first.meta["csls"]["neighbours_of"] == 1                   # none kept: found, its own
    assert not neighbours.refresh(ws, first)                          # already its own
    second, _ = build_snapshot(ws, 2, _pairs(13))
    assert second.meta["csls"]["neighbours_of"] == 1 and second.meta["csls"]["pair_changes"] == 1
    exact_img, exact_txt = hubness_terms(second.image_codes, second.text_codes, 5)
    for kept, exact in ((second.image_hub, exact_img), (second.text_hub, exact_txt)):
        assert (kept <= exact + 1e-5).all()                           # a lower bound of the exact terms
        assert np.corrcoef(kept, exact)[0, 1] > 0.9
    assert neighbours.refresh(ws, second)                              # the job does it after the push
    third, _ = build_snapshot(ws, 3, _pairs(13))
    assert third.meta["csls"]["neighbours_of"] == 2
    np.testing.assert_allclose(third.image_hub, exact_img, atol=1e-5)  # its own codes' neighbourhoods
    np.testing.assert_allclose(third.text_hub, exact_txt, atol=1e-5)


def test_stale_foreign_or_broken_neighbourhoods_are_found_again(r, xenv, make_workspace):
    ws = _csls_workspace(make_workspace, "nb2")
    build_snapshot(ws, 1, _pairs(12))
    stale, _ = build_snapshot(ws, 2, _pairs(17))           # 5 changes > max(2, 17 / 4)
    assert stale.meta["csls"]["neighbours_of"] == 2
    ws.save_config(dict(ws.config, csls_k=3))              # other terms: other neighbourhoods
    other_k, _ = build_snapshot(ws, 3, _pairs(17))
    assert other_k.meta["csls"]["neighbours_of"] == 3
    (ws.index_dir / "csls-neighbours.npz").write_bytes(b"torn")
    broken, _ = build_snapshot(ws, 4, _pairs(17))
    assert broken.meta["csls"]["neighbours_of"] == 4
    np.testing.assert_allclose(broken.image_hub, hubness_terms(broken.image_codes, broken.text_codes, 3)[0],
                               atol=1e-5)


def test_the_rebuild_job_refreshes_them_after_publishing(r, xenv, make_workspace):
    from workers.rebuild import rebuild
    from xmodal.index.store import load_current
    from xmodal.project.pairs import PairStore

    ws = _csls_workspace(make_workspace, "nbjob")
    store = PairStore(r, "nbjob")
    for i in range(12):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0, received_at=time.time())
    rebuild("nbjob", redis_client=r)
    store.put(112, 1012, image_id(12), text_id(12), 1.0, received_at=time.time())
    result = rebuild("nbjob", redis_client=r)
    snap = load_current(ws, r)
    assert snap.version == result["version"] and snap.meta["csls"]["neighbours_of"] == snap.version - 1
    assert result["neighbours_s"] >= 0
    with np.load(ws.index_dir / "csls-neighbours.npz") as z:
        assert int(z["version"]) == snap.version
