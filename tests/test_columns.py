"""SSR columns kept between rebuilds (xmodal/index/columns.py): the codes of a fresh fit, one new
column per modality after one more label, nothing mixed across item sets, nothing lost to a torn
append."""

from __future__ import annotations

import numpy as np

from tests.conftest import image_id, synthetic_features, text_id
from xmodal.core.ssr import SSRIndex, l2_normalize
from xmodal.index.build import build_snapshot
from xmodal.index.columns import column_dir, cosine_columns


def _pairs(n, start=0):
    return [{"annotation_id": 100 + i, "image_id": image_id(i), "text_id": text_id(i)}
            for i in range(start, start + n)]


def _fresh(ws, n_pairs):
    """The codes of a z-scored index fitted on the features directly (no kept column)."""
    index = SSRIndex(standardize=True).fit(ws.load_features("image"), ws.load_features("text"),
                                           [(i, i) for i in range(n_pairs)])
    return index.image_codes_, index.text_codes_


def _kept_rows(ws, modality):
    return np.load(column_dir(ws, modality) / "rows.npy")[:, 0].astype(int).tolist()


def test_kept_columns_give_the_codes_of_a_fresh_fit_and_one_more_label_adds_one(r, xenv, make_workspace):
    ws = make_workspace("cols", n=40, enhance=["zscore"])
    first, _ = build_snapshot(ws, 1, _pairs(12))
    img, txt = _fresh(ws, 12)
    np.testing.assert_allclose(first.image_codes, img, atol=1e-5)
    np.testing.assert_allclose(first.text_codes, txt, atol=1e-5)
    assert _kept_rows(ws, "image") == list(range(12)) == _kept_rows(ws, "text")

    size = (column_dir(ws, "image") / "columns.f32").stat().st_size
    second, _ = build_snapshot(ws, 2, _pairs(13))
    assert _kept_rows(ws, "image") == list(range(13))                       # one column more
    assert (column_dir(ws, "image") / "columns.f32").stat().st_size == size + 40 * 4
    img, txt = _fresh(ws, 13)
    np.testing.assert_allclose(second.image_codes, img, atol=1e-5)
    np.testing.assert_allclose(second.text_codes, txt, atol=1e-5)
    # a new query is encoded as its indexed item is
    np.testing.assert_allclose(second.encode("text", ws.load_features("text")[5:9]), second.text_codes[5:9],
                               atol=1e-5)


def test_columns_kept_in_label_order_are_read_in_place_and_any_other_order_gives_the_same(r, xenv, make_workspace):
    """Columns are kept in the order the pairs ask for them (the labels' order): the next rebuild
    reads them as one slice of the kept file, not a copy; pairs in another order (a label
    removed, duplicates) get the same columns copied."""
    from xmodal.index.columns import open_columns

    ws = make_workspace("cols-order", n=40, enhance=["zscore"])
    order = [7, 3, 11, 0, 5]
    cols = open_columns(ws, "image")
    R, (mean, std) = cols.get(order)
    assert _kept_rows(ws, "image") == order                                 # as asked, not sorted
    again, (mean2, std2) = open_columns(ws, "image").get(order)
    assert isinstance(again.base, np.memmap) and not again.flags.writeable  # the kept file itself
    np.testing.assert_array_equal(again, R)
    shuffled = [5, 7, 0, 3, 3]
    other, (mean3, _) = open_columns(ws, "image").get(shuffled)
    assert other.flags.writeable                                            # a copy
    at = [order.index(r) for r in shuffled]
    np.testing.assert_array_equal(other, R[:, at])
    np.testing.assert_array_equal(mean3, mean[at])
    X = l2_normalize(ws.load_features("image"))
    cosines = X @ X[order].T
    np.testing.assert_allclose(R, (cosines - cosines.mean(axis=0)) / cosines.std(axis=0), atol=1e-4)   # z-scored
    np.testing.assert_allclose(mean, cosines.mean(axis=0), atol=1e-6)
    raw, _ = open_columns(ws, "image").get(order, z_scored=False)           # the faithful index's
    np.testing.assert_allclose(raw, cosines, atol=1e-5)


def test_new_features_get_new_columns_and_the_old_ones_go(r, xenv, make_workspace):
    ws = make_workspace("cols2", n=40, enhance=["zscore"])
    build_snapshot(ws, 1, _pairs(6))
    old = column_dir(ws, "image")
    X, Y = synthetic_features(40, seed=5)
    ws.save_features("image", X, "synthetic-image")        # items re-embedded: a new file
    snap, _ = build_snapshot(ws, 2, _pairs(6))
    assert column_dir(ws, "image") != old and not old.exists()
    img, _ = _fresh(ws, 6)
    np.testing.assert_allclose(snap.image_codes, img, atol=1e-5)


def test_bytes_a_crash_left_behind_are_cut_and_nothing_is_misread(r, xenv, make_workspace):
    ws = make_workspace("cols3", n=40, enhance=["zscore"])
    build_snapshot(ws, 1, _pairs(5))
    data = column_dir(ws, "text") / "columns.f32"
    with open(data, "ab") as f:                            # an append whose rows.npy never came
        f.write(np.full(17, 9.0, np.float32).tobytes())
    snap, _ = build_snapshot(ws, 2, _pairs(7))
    assert data.stat().st_size == 7 * 40 * 4 and _kept_rows(ws, "text") == list(range(7))
    _, txt = _fresh(ws, 7)
    np.testing.assert_allclose(snap.text_codes, txt, atol=1e-5)
    (column_dir(ws, "text") / "rows.npy").write_bytes(b"torn")   # unreadable: computed again
    again, _ = build_snapshot(ws, 3, _pairs(7))
    np.testing.assert_allclose(again.text_codes, txt, atol=1e-5)


def test_rows_that_cannot_be_normalised_have_cosine_zero_as_l2_normalize_makes_them():
    X = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    X[2] = 0.0
    X[4, 1] = np.nan
    X[6, 0] = np.inf
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    with_norms, _ = cosine_columns(X, rows=[0, 1, 3], norms=norms)
    plain, found = cosine_columns(X, rows=[0, 1, 3])          # the norms found in the same pass
    np.testing.assert_allclose(found, norms)
    np.testing.assert_allclose(with_norms, plain, atol=1e-6)
    np.testing.assert_allclose(plain.T, l2_normalize(X) @ l2_normalize(X[[0, 1, 3]]).T, atol=1e-6)
    assert np.isfinite(with_norms).all() and not with_norms[:, [2, 4, 6]].any()


def test_the_faithful_index_gets_the_cosines_back_from_the_kept_z_scores(r, xenv, make_workspace):
    """Columns are kept z-scored (the default index's codes skip that pass); an index without
    z-scores reads the same kept columns and gets the codes of a faithful fit."""
    ws = make_workspace("cols-faithful", n=40, enhance=["zscore"])
    build_snapshot(ws, 1, _pairs(8))                          # kept by the default index
    ws.save_config(dict(ws.config, enhance=[]))
    snap, _ = build_snapshot(ws, 2, _pairs(10))               # 8 kept, 2 new
    index = SSRIndex().fit(ws.load_features("image"), ws.load_features("text"), [(i, i) for i in range(10)])
    np.testing.assert_allclose(snap.image_codes, index.image_codes_, atol=1e-5)
    np.testing.assert_allclose(snap.text_codes, index.text_codes_, atol=1e-5)
    assert _kept_rows(ws, "image") == list(range(10))
