"""The self-trained map (xmodal.core.pseudomap): pseudo-targets from the index's own ranking, a
ridge map fitted on them and the pairs, fused into the codes of the index and its new queries."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import image_id, synthetic_features, text_id

from xmodal.core.pseudomap import MAP_DIMS, image_map_codes, ridge, self_trained_map, soft_targets, text_map_codes
from xmodal.core.ssr import l2_normalize


def test_soft_targets_average_the_best_candidates():
    S = np.array([[0.9, 0.1, 0.8], [0.0, 1.0, 0.2]])
    T = np.eye(3)
    out = soft_targets(S, T, k=1)
    np.testing.assert_allclose(out, [[1, 0, 0], [0, 1, 0]])
    out = soft_targets(S, T, k=2, tau=1e6)        # flat softmax: the mean of the two best
    np.testing.assert_allclose(out[0], [0.5, 0, 0.5], atol=1e-5)


def test_ridge_recovers_a_linear_map_and_weights_rows():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(200, 5))
    W = rng.normal(size=(5, 3))
    np.testing.assert_allclose(ridge(A, A @ W, lam=1e-9), W, atol=1e-6)
    T = A @ W
    T[:100] = 0                                   # wrong targets, weighted away
    w = np.r_[np.full(100, 1e-9), np.ones(100)]
    np.testing.assert_allclose(ridge(A, T, lam=1e-9, weights=w), W, atol=1e-4)


def test_the_map_learns_from_unlabelled_items_what_few_pairs_cannot():
    n = 600
    X, Y = synthetic_features(n, d_image=40, d_text=20, noise=0.5, seed=1)
    pairs = np.stack([np.arange(5)] * 2, axis=1)
    # the index's codes: a noisy but informative view of the truth
    rng = np.random.default_rng(0)
    C = l2_normalize(Y + 2.0 * rng.normal(size=Y.shape).astype(np.float32))
    fitted = self_trained_map(X, Y, C, l2_normalize(Y), pairs, max_images=400, max_texts=400)
    S_map = image_map_codes(X, fitted) @ text_map_codes(Y, fitted).T
    S_codes = C @ l2_normalize(Y).T

    def r10(S):
        return float(np.mean((S > S[np.arange(n), np.arange(n)][:, None]).sum(axis=1) < 10))

    assert r10(S_map) > r10(S_codes) + 0.05
    assert fitted["matrix"].shape == (40, 20)
    assert self_trained_map(X, Y, C, Y, pairs[:1]) is None    # below two pairs: no map


def _pairs(n):
    return [{"annotation_id": 100 + i, "image_id": image_id(i), "text_id": text_id(i)} for i in range(n)]


def _workspace(make_workspace, name, enhance, d_text=16):
    """A workspace whose saved class bridge is a noisy view of the matches (so it is on)."""
    ws = make_workspace(name, n=80, n_medoids=12, enhance=enhance, csls_k=5)
    X, Y = synthetic_features(80, d_text=d_text, noise=1.0)
    ws.save_features("image", X, "synthetic-image")
    ws.save_features("text", Y, "synthetic-text")
    noisy = Y + np.random.default_rng(3).normal(size=Y.shape).astype(np.float32)
    ws.save_bridge(l2_normalize(noisy), np.arange(80), noisy)
    return ws, X, Y


def test_the_index_fuses_the_map_and_new_queries_get_the_same_codes(r, xenv, make_workspace):
    from xmodal.index.build import build_snapshot
    from xmodal.index.files import read_snapshot, write_snapshot

    ws, X, Y = _workspace(make_workspace, "mapped", ["zscore", "csls", "bridge", "map"])
    snap, _ = build_snapshot(ws, 1, _pairs(12))
    assert snap.bridge_weight > 0
    assert snap.map_weight > 0 and snap.meta["map_s"] >= 0 and snap.meta["map"]["weight"] == snap.map_weight
    assert snap.text_codes.shape[1] == 12 + Y.shape[1] + Y.shape[1]   # SSR codes, the bridge, the map
    back = read_snapshot(write_snapshot(ws, snap), "mapped")
    assert back.map_weight == snap.map_weight
    np.testing.assert_allclose(back.encode("text", Y[3:9]), snap.text_codes[3:9], atol=1e-5)
    ws.save_config(dict(ws.config, enhance=["zscore", "csls", "bridge"]))
    plain, _ = build_snapshot(ws, 2, _pairs(12))
    assert plain.map_weight == 0 and plain.text_codes.shape[1] == 12 + Y.shape[1]


def test_wide_text_features_keep_the_map_on_its_top_directions_in_the_index_and_its_file(r, xenv, make_workspace):
    """Text features wider than MAP_DIMS: the map part of the codes has MAP_DIMS columns, and a new
    text query gets the codes of its indexed item, also from the index file."""
    from xmodal.core.bridge import BRIDGE_DIMS
    from xmodal.index.build import build_snapshot
    from xmodal.index.files import read_snapshot, write_snapshot

    d_text = MAP_DIMS + 32
    ws, X, Y = _workspace(make_workspace, "mapped-wide", ["zscore", "csls", "bridge", "map"], d_text=d_text)
    snap, _ = build_snapshot(ws, 1, _pairs(12))
    assert snap.map_weight > 0 and snap.map_text_matrix.shape == (d_text, MAP_DIMS)
    assert snap.map_matrix.shape == (X.shape[1], MAP_DIMS)
    assert snap.text_codes.shape[1] == 12 + BRIDGE_DIMS + MAP_DIMS
    back = read_snapshot(write_snapshot(ws, snap), "mapped-wide")
    np.testing.assert_array_equal(back.map_text_matrix, snap.map_text_matrix)
    np.testing.assert_allclose(back.encode("text", Y[3:9]), snap.text_codes[3:9], atol=1e-5)
    np.testing.assert_allclose(back.image_codes, snap.image_codes)


def test_without_the_bridge_there_is_no_map(r, xenv, make_workspace):
    from xmodal.index.build import build_snapshot

    ws = make_workspace("unbridged", n=80, n_medoids=12, enhance=["zscore", "csls", "bridge", "map"])
    snap, _ = build_snapshot(ws, 1, _pairs(12))       # no bridge.npz: no bridge, no map
    assert snap.map_weight == 0 and snap.text_codes.shape[1] == 12 and "map" not in snap.meta


def test_the_map_image_space_is_kept_beside_the_features_and_made_again_when_they_change(r, xenv, make_workspace):
    """The image space (mean, principal directions) needs no label: computed by the first rebuild
    with the map, read by the next (the same codes as computing it), made again for new features."""
    from xmodal.core.pseudomap import image_space
    from xmodal.index.build import build_snapshot

    ws, X, Y = _workspace(make_workspace, "mapspace", ["zscore", "csls", "bridge", "map"])
    spaces = lambda: sorted((ws.root / "features" / "map-space").iterdir())  # noqa: E731
    first, _ = build_snapshot(ws, 1, _pairs(12))
    [space] = spaces()
    mean, basis = image_space(X)
    np.testing.assert_allclose(np.load(space / "mean.npy"), mean, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.load(space / "basis.npy")), np.abs(basis), atol=1e-5)
    ino = (space / "basis.npy").stat().st_ino
    again, _ = build_snapshot(ws, 2, _pairs(12))
    assert spaces() == [space] and (space / "basis.npy").stat().st_ino == ino     # read, not written again
    np.testing.assert_array_equal(again.text_codes, first.text_codes)
    np.testing.assert_array_equal(again.image_codes, first.image_codes)

    ws.save_features("image", X[:, ::-1].copy(), "synthetic-image")           # new image features
    build_snapshot(ws, 3, _pairs(12))
    [made_again] = spaces()
    assert made_again != space
    np.testing.assert_allclose(np.load(made_again / "mean.npy"), image_space(X[:, ::-1])[0], atol=1e-6)


@pytest.mark.parametrize("d_text", [20, MAP_DIMS + 32])
def test_leave_one_out_of_the_map_equals_refitting_it_without_each_pair(d_text):
    """choose_map_weight scores each reference with the map refitted without it; its rank-one
    update gives the same ranks as solving the reduced ridge anew (the oracle below), both ways,
    with the map codes on all text dimensions or on their top MAP_DIMS directions."""
    from xmodal.core.pseudomap import MAP_WEIGHT, PAIR_WEIGHT, centred_rows, choose_map_weight

    n = 300
    X, Y = synthetic_features(n, d_image=40, d_text=d_text, noise=0.5, seed=2)
    pairs = np.stack([np.arange(12)] * 2, axis=1)
    rng = np.random.default_rng(1)
    C = l2_normalize(Y + 2.0 * rng.normal(size=Y.shape).astype(np.float32))
    fitted = self_trained_map(X, Y, C, l2_normalize(Y), pairs, max_images=200, max_texts=200)
    G, R = fitted["normal"]
    P = fitted.get("text_matrix", np.eye(d_text, dtype=np.float32))
    assert P.shape == (d_text, min(d_text, MAP_DIMS))
    for select in ("image", "text"):
        oriented = pairs if select == "image" else pairs[:, ::-1]
        scored = [(j, np.arange(n), rng.normal(size=n)) for j in range(12)]
        _, evidence = choose_map_weight(fitted, X, Y, oriented, scored, select=select)
        want = {0.0: [], MAP_WEIGHT: []}
        for j, rows, s in scored:
            q, t = oriented[j]
            a, y = fitted["pair_inputs"][(j, j)]
            W = np.linalg.solve(G - PAIR_WEIGHT * np.outer(a, a), R - PAIR_WEIGHT * np.outer(a, y))
            if select == "image":
                m = text_map_codes(Y[rows], fitted) @ l2_normalize((a @ W @ P)[None])[0]
            else:
                Z = l2_normalize(centred_rows(X[rows], fitted["image_mean"]) @ fitted["basis"])
                m = l2_normalize(Z @ W @ P) @ text_map_codes(Y[q:q + 1], fitted)[0]
            for b in want:
                f = (1 - b) * s + b * m
                want[b].append(np.log1p(np.sum(f > f[t])))
        assert evidence["references"] == 12
        for b in want:
            assert abs(evidence["log_rank"][b] - float(np.mean(want[b]))) < 1e-9, (select, b)
