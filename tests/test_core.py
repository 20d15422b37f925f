"""Properties of the pure-numpy method core, checked against the paper's equations."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from xmodal.core.hubness import csls, hubness_terms, knn_mean
from xmodal.core.medoids import KMedoidsSelector, anytime_order, canopy_k, cosine_distances, kmeanspp_init
from xmodal.core.metrics import average_precision, mean_average_precision, recall_at_k
from xmodal.core.sif import CommonComponentRemoval, sif_weights, weighted_average
from xmodal.core.ssr import SSRIndex, cross_similarity, sparsify, ssr, standardize_columns, top_k


def blobs(n_per=30, centres=4, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(centres, dim))
    X = np.repeat(C, n_per, axis=0) + spread * rng.normal(size=(centres * n_per, dim))
    return X.astype(np.float32), np.repeat(np.arange(centres), n_per)


# -- SSR and similarity -----------------------------------------------------------------------

def test_ssr_is_cosine_to_references():
    rng = np.random.default_rng(1)
    X, refs = rng.normal(size=(7, 5)), rng.normal(size=(3, 5))
    R = ssr(X, refs)
    expected = [[x @ r / np.linalg.norm(x) / np.linalg.norm(r) for r in refs] for x in X]
    np.testing.assert_allclose(R, expected, rtol=1e-5, atol=1e-6)


def test_eq32_equals_pearson_and_eq33_equals_cosine():
    rng = np.random.default_rng(2)
    RX, RY = rng.normal(size=(6, 9)), rng.normal(size=(4, 9))
    S = cross_similarity(RX, RY, "pearson")
    for i in range(6):
        for j in range(4):
            assert S[i, j] == pytest.approx(pearsonr(RX[i], RY[j])[0], abs=1e-5)
    C = cross_similarity(RX, RY, "cosine")
    assert C[0, 0] == pytest.approx(RX[0] @ RY[0] / np.linalg.norm(RX[0]) / np.linalg.norm(RY[0]), abs=1e-5)


def test_linearly_related_modalities_retrieve_their_pairs():
    # Proposition 1: if Y is a linear image of X, SSR over matched references correlates.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 20))
    Y = X @ rng.normal(size=(20, 30)) + 0.01 * rng.normal(size=(200, 30))
    refs = np.arange(40)
    index = SSRIndex().fit(X, Y, np.c_[refs, refs])
    best, _ = index.search_texts(index.image_codes_, k=1)
    assert (best[:, 0] == np.arange(200)).mean() > 0.9


def test_incremental_pairs_equal_a_fresh_fit():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(50, 8)), rng.normal(size=(60, 6))
    pairs = np.c_[rng.choice(50, 10, replace=False), rng.choice(60, 10, replace=False)]
    grown = SSRIndex().fit(X, Y, pairs[:3]).add_pairs(pairs[3:])
    fresh = SSRIndex().fit(X, Y, pairs)
    np.testing.assert_allclose(grown.similarity(), fresh.similarity(), atol=1e-5)
    shrunk = grown.remove_pairs(pairs[3:5])
    np.testing.assert_allclose(shrunk.similarity(),
                               SSRIndex().fit(X, Y, np.vstack([pairs[:3], pairs[5:]])).similarity(), atol=1e-5)


def test_copy_false_normalises_in_place_with_the_same_index():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(60, 6)).astype(np.float32)
    pairs = np.c_[np.arange(10), np.arange(10)]
    kept = X.copy()
    faithful = SSRIndex().fit(X, Y, pairs)
    np.testing.assert_array_equal(X, kept)                      # copy=True leaves the input alone
    lean = SSRIndex(copy=False).fit(X, Y, pairs)
    assert lean.image_features_ is X                            # no second copy of the features
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(lean.similarity(), faithful.similarity(), atol=1e-6)


def test_index_rejects_pairs_outside_the_data():
    with pytest.raises(IndexError):
        SSRIndex().fit(np.eye(3), np.eye(3), [[0, 5]])


def test_new_query_codes_match_indexed_codes():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    index = SSRIndex(sparse_top_k=4, sparse_power=2.0).fit(X, Y, np.c_[np.arange(6), np.arange(6)])
    np.testing.assert_allclose(index.transform_texts(Y[:5]), index.text_codes_[:5], atol=1e-6)


def test_standardized_query_codes_match_indexed_codes():
    rng = np.random.default_rng(6)
    X, Y = np.abs(rng.normal(size=(40, 8))), rng.normal(size=(35, 7))  # non-negative "CNN" images
    pairs = np.c_[np.arange(6), np.arange(6)]
    index = SSRIndex(standardize=True).fit(X, Y, pairs)
    np.testing.assert_allclose(index.transform_images(X[:7]), index.image_codes_[:7], atol=1e-5)
    np.testing.assert_allclose(index.transform_texts(Y[10:15]), index.text_codes_[10:15], atol=1e-5)
    # the columns really are z-scored over the indexed items, per modality
    Z = standardize_columns(index.image_ssr_)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(index.image_codes_, SSRIndex().fit(X, Y, pairs)._codes(Z), atol=1e-5)
    assert not np.allclose(index.image_codes_, SSRIndex().fit(X, Y, pairs).image_codes_, atol=1e-3)


def test_standardized_incremental_pairs_equal_a_fresh_fit():
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(50, 8)), rng.normal(size=(60, 6))
    pairs = np.c_[rng.choice(50, 10, replace=False), rng.choice(60, 10, replace=False)]
    grown = SSRIndex(standardize=True).fit(X, Y, pairs[:3]).add_pairs(pairs[3:])
    fresh = SSRIndex(standardize=True).fit(X, Y, pairs)
    np.testing.assert_allclose(grown.image_codes_, fresh.image_codes_, atol=1e-5)
    np.testing.assert_allclose(grown.similarity(), fresh.similarity(), atol=1e-5)
    np.testing.assert_allclose(grown.transform_texts(Y[:4]), fresh.text_codes_[:4], atol=1e-5)
    shrunk = grown.remove_pairs(pairs[3:5])
    again = SSRIndex(standardize=True).fit(X, Y, np.vstack([pairs[:3], pairs[5:]]))
    np.testing.assert_allclose(shrunk.similarity(), again.similarity(), atol=1e-5)


def test_chunked_hubness_terms_equal_the_full_matrix():
    rng = np.random.default_rng(8)
    A, B = rng.normal(size=(53, 5)), rng.normal(size=(41, 5))
    S = (A @ B.T).astype(np.float32)
    for k, chunk in ((10, 7), (3, 100), (60, 9)):   # k above m / n is capped
        r_a, r_b = hubness_terms(A, B, k=k, chunk=chunk)
        np.testing.assert_allclose(r_a, knn_mean(S, k, axis=1), atol=1e-5)
        np.testing.assert_allclose(r_b, knn_mean(S, k, axis=0), atol=1e-5)
        np.testing.assert_allclose(r_a, np.sort(S, axis=1)[:, ::-1][:, :min(k, 41)].mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(csls(S, 10), 2 * S - knn_mean(S, 10, 1)[:, None] - knn_mean(S, 10, 0)[None],
                               atol=1e-5)
    empty_a, empty_b = hubness_terms(np.zeros((0, 5)), B)
    assert empty_a.shape == (0,) and np.all(empty_b == 0)


def test_largest_finds_the_k_largest_values_of_long_rows_and_columns_through_their_blocks():
    """The block-maxima shortcut of hubness.largest gives np.sort's k largest values (ties, a last
    block shorter than the others, k = 1, rows too short for blocks), at the positions it names."""
    from xmodal.core.hubness import BLOCK, largest

    rng = np.random.default_rng(4)
    for shape, k in (((30, 40 * BLOCK + 17), 10), ((9, 40 * BLOCK), 1), ((6, 300), 7), ((40 * BLOCK + 5, 11), 4)):
        S = rng.normal(size=shape).astype(np.float32)
        S[:, :BLOCK] = S[:, :1]                       # a whole block of equal values
        S[3] = 0.5                                     # a constant row
        for axis in (0, 1):
            kk = min(k, S.shape[axis])
            pos, vals = largest(S, kk, axis=axis)
            want = np.sort(S, axis=axis)
            want = want[:, -kk:] if axis == 1 else want[-kk:, :]
            np.testing.assert_array_equal(np.sort(vals, axis=axis), want)
            np.testing.assert_array_equal(np.take_along_axis(S, pos, axis=axis), vals)
            assert pos.shape == want.shape


def test_above_the_exact_budget_hubness_terms_come_from_a_sample(monkeypatch):
    """Exact terms cost n·m (hours at 1M × 1M per rebuild): above the budget a fixed sample of
    targets and the same quantile of its top stand in; close to the exact terms, deterministic."""
    import xmodal.core.hubness as hub

    rng = np.random.default_rng(9)
    Z = rng.normal(size=(3000, 8))                     # clustered enough for densities to differ
    A = (Z + 0.5 * rng.normal(size=Z.shape)).astype(np.float32)
    B = (Z + 0.5 * rng.normal(size=Z.shape)).astype(np.float32)
    exact_a, exact_b = hubness_terms(A, B, k=10)
    monkeypatch.setattr(hub, "MAX_EXACT_SCORES", 3000 * 600)   # a sample of 600 targets, top 2
    approx_a, approx_b = hubness_terms(A, B, k=10)
    assert np.corrcoef(exact_a, approx_a)[0, 1] > 0.8 and np.corrcoef(exact_b, approx_b)[0, 1] > 0.8
    np.testing.assert_array_equal(approx_a, hubness_terms(A, B, k=10)[0])   # the same sample


def test_sparsify_keeps_top_k_positive_values():
    R = np.array([[0.9, -0.5, 0.1, 0.4]])
    np.testing.assert_allclose(sparsify(R, 2, power=2.0), [[0.81, 0.0, 0.0, 0.16]], atol=1e-6)


def test_top_k_is_sorted_and_exact():
    scores = np.array([[0.1, 0.7, 0.3, 0.9]])
    idx, val = top_k(scores, 3)
    assert idx.tolist() == [[3, 1, 2]]
    np.testing.assert_allclose(val, [[0.9, 0.7, 0.3]])


# -- metrics ---------------------------------------------------------------------------------

def test_map_matches_hand_computed_example():
    # query 0 (label a): ranking a, b, a -> AP = (1/2)(1/1 + 2/3)
    # query 1 (label b): ranking a, b, a -> AP = 1/2
    S = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    ap = average_precision(S, ["a", "b"], ["a", "b", "a"])
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, 0.5])
    assert mean_average_precision(S, ["a", "b"], ["a", "b", "a"]) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)


def test_recall_at_k_matches_hand_computed_example():
    S = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3], [0.5, 0.9, 0.7]])
    # the coupled targets rank 1st, 3rd and 2nd
    r = recall_at_k(S, np.array([0, 0, 2]), ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    # eq. 37 with L_i = 2: fraction of relevant found in the top K
    rel = np.array([[True, True, False], [True, False, True], [False, True, True]])
    assert recall_at_k(S, rel, ks=(1,))[1] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)


# -- reference selection -------------------------------------------------------------------

def test_medoids_are_real_samples_one_per_blob():
    X, y = blobs()
    sel = KMedoidsSelector(4, random_state=0).fit(X)
    assert len(set(sel.medoid_indices_)) == 4
    assert all(0 <= m < len(X) for m in sel.medoid_indices_)
    assert sorted(y[sel.medoid_indices_]) == [0, 1, 2, 3]
    assert sel.cluster_sizes_.sum() == len(X)
    assert (sel.labels_[sel.medoid_indices_] == np.arange(4)).all()


def test_too_many_references_is_a_clear_error():
    with pytest.raises(ValueError, match="pool of 5 items"):
        KMedoidsSelector(6).fit(np.eye(5))


def test_clara_path_finds_the_same_structure():
    X, y = blobs(n_per=200, centres=5)
    sel = KMedoidsSelector(5, exact_max_n=300, sample_size=150, random_state=0).fit(X)
    assert sorted(y[sel.medoid_indices_]) == [0, 1, 2, 3, 4]


def test_sampled_kmedoids_loss_is_within_3_percent_of_full_fasterpam():
    """The CLARA path (one sample, k-means++ seeds) against FasterPAM on the full matrix, on a
    seeded CNN-like mixture: measured 1.2% above it. A 200-item sample misses by ~10%, so the
    bound tells a good sample from a poor one."""
    from xmodal.benchmarks.speed import cnn_like_features

    X = cnn_like_features(3000, dim=256, clusters=40, seed=3)
    exact = KMedoidsSelector(30, exact_max_n=3000).fit(X).inertia_
    sampled = KMedoidsSelector(30, exact_max_n=1000).fit(X)
    assert len(set(sampled.medoid_indices_)) == 30
    assert sampled.inertia_ <= exact * 1.03
    assert KMedoidsSelector(30, exact_max_n=200).fit(X).inertia_ > exact * 1.03


def test_kmeanspp_init_gives_distinct_medoids_even_on_duplicates():
    X = np.vstack([np.tile([1.0, 0.0], (5, 1)), np.tile([0.0, 1.0], (5, 1))])
    init = kmeanspp_init(cosine_distances(X), 4, np.random.default_rng(0))
    assert len(set(init.tolist())) == 4
    assert {0, 1} <= {int(i) // 5 for i in init}  # both groups are seeded before any duplicate


def test_anytime_order_puts_the_big_cluster_first():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal([5, 0, 0], 0.1, (300, 3)), rng.normal([0, 5, 0], 0.1, (20, 3)),
                   rng.normal([0, 0, 5], 0.1, (50, 3))])
    D = cosine_distances(X, X[[320, 0, 310]])
    assert anytime_order(D).tolist() == [1, 0, 2]


def test_standardized_medoids_see_groups_that_large_nuisance_dimensions_hide():
    """Three non-negative dimensions with large values unrelated to the groups dominate the raw
    cosine: the paper's k-medoids finds no group structure; on z-scored features every dimension
    has the same say and each group gets its medoid, also when the selection is extended."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 40)
    X = np.hstack([rng.uniform(0, 20, (160, 3)),
                   np.eye(4)[groups] + 0.2 + 0.2 * rng.random((160, 4))]).astype(np.float32)
    raw = KMedoidsSelector(4, random_state=0).fit(X)
    assert sorted(groups[raw.medoid_indices_]) != [0, 1, 2, 3]
    z = KMedoidsSelector(4, random_state=0, standardize=True).fit(X)
    assert sorted(groups[z.medoid_indices_]) == [0, 1, 2, 3]
    grown = KMedoidsSelector(2, random_state=0, standardize=True).fit(X).extend(X, 2)
    assert sorted(groups[grown.medoid_indices_]) == [0, 1, 2, 3]
    # a row with NaN or inf is zeroed as in the raw path, and does not poison the statistics
    broken = X.copy()
    broken[5], broken[50, 1] = np.nan, np.inf
    kept = KMedoidsSelector(4, random_state=0, standardize=True).fit(broken)
    assert sorted(groups[kept.medoid_indices_]) == [0, 1, 2, 3] and np.isfinite(kept.inertia_)
    # a constant column is no division by zero
    const = KMedoidsSelector(4, random_state=0, standardize=True).fit(np.hstack([X, np.ones((160, 1))]))
    assert sorted(groups[const.medoid_indices_]) == [0, 1, 2, 3]


def test_extend_keeps_annotated_medoids():
    X, y = blobs(centres=6)
    sel = KMedoidsSelector(3, random_state=0).fit(X)
    first = sel.medoid_indices_.copy()
    sel.extend(X, 3)
    assert sel.medoid_indices_[:3].tolist() == first.tolist()
    assert sorted(y[sel.medoid_indices_]) == [0, 1, 2, 3, 4, 5]


def test_canopy_finds_the_number_of_blobs():
    X, _ = blobs(centres=5, spread=0.02)
    assert canopy_k(X, t2=0.2) == 5


# -- SIF ------------------------------------------------------------------------------------

def test_sif_weights_and_average():
    w = sif_weights(np.array([0.0, 1e-3, 1.0]))
    np.testing.assert_allclose(w, [1.0, 0.5, 1e-3 / 1.001], rtol=1e-6)
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    avg = weighted_average([np.array([0, 1]), np.array([], dtype=int)], vectors, w)
    np.testing.assert_allclose(avg, [[0.5, 0.5], [0.0, 0.0]], atol=1e-6)


def test_common_component_removal_removes_the_first_singular_vector():
    rng = np.random.default_rng(6)
    V = rng.normal(size=(100, 10)) + 5.0 * rng.normal(size=10)  # a strong common direction
    ccr = CommonComponentRemoval().fit(V)
    out = ccr.transform(V)
    assert np.abs(out @ ccr.components_[0]).max() < 1e-4
    np.testing.assert_allclose(ccr.transform(V[:3]), out[:3], atol=1e-6)


def test_l2_normalize_zeroes_bad_rows_and_copies_only_when_asked():
    from xmodal.core.ssr import l2_normalize

    X = np.array([[np.nan, 1.0], [3.0, 4.0], [0.0, 0.0], [np.inf, 1.0]], dtype=np.float32)
    out = l2_normalize(X)
    np.testing.assert_allclose(out, [[0, 0], [0.6, 0.8], [0, 0], [0, 0]])
    assert np.isnan(X[0, 0])  # the input is untouched
    Y = np.array([[3.0, 4.0]], dtype=np.float32)
    assert l2_normalize(Y, copy=False) is Y and Y.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]


def test_a_text_reference_outside_the_indexed_texts_is_a_reference_like_any_other():
    """A written description (text row -1) gives the index a text reference fitted as if it were
    one more text item: same codes for every indexed item, same query codes."""
    from xmodal.core.ssr import SSRIndex

    X, Y = _linked(60, seed=4)
    pairs = np.c_[np.arange(8), np.arange(8)]
    extra = Y[50:51] + 0.01                     # "a description" of image 50
    written = SSRIndex().fit(X, Y[:50], np.vstack([pairs, [50, -1]]), text_reference_features=extra)
    as_item = SSRIndex().fit(X, np.vstack([Y[:50], extra]), np.vstack([pairs, [50, 50]]))
    np.testing.assert_allclose(written.text_codes_, as_item.text_codes_[:50], atol=1e-5)
    np.testing.assert_allclose(written.image_codes_, as_item.image_codes_, atol=1e-5)
    np.testing.assert_allclose(written.transform_texts(Y[:3]), as_item.transform_texts(Y[:3]), atol=1e-5)
    # removed by position, like any reference
    np.testing.assert_allclose(written.remove_references([False] * 8 + [True]).text_codes_,
                               SSRIndex().fit(X, Y[:50], pairs).text_codes_, atol=1e-5)
    with pytest.raises(ValueError, match="text_reference_features"):
        SSRIndex().fit(X, Y[:50], np.vstack([pairs, [50, -1]]))


def test_leave_one_out_equals_refitting_without_the_reference():
    from xmodal.core.calibration import leave_one_out, top_z
    from xmodal.core.ssr import SSRIndex

    X, Y = _linked(80, seed=5)
    pairs = np.c_[np.arange(10), np.arange(10)]
    full = SSRIndex().fit(X, Y, pairs)
    z, hit = leave_one_out(full.image_ssr_, full.text_ssr_, pairs)
    assert len(z) == len(hit) == 10
    for j in (0, 7):
        keep = np.arange(10) != j
        refit = SSRIndex().fit(X, Y, pairs[keep])
        s = refit.image_codes_[j] @ refit.text_codes_.T
        assert z[j] == pytest.approx(top_z(s)[0], abs=1e-4)
        assert hit[j] == (int(np.argmax(s)) == j)


@pytest.mark.parametrize("measure, standardize", [("pearson", False), ("pearson", True), ("cosine", True)])
def test_closed_form_leave_one_out_equals_building_each_reduced_index(measure, standardize):
    """Every reference scored at once from the full SSR (dropping column j from each row's sums)
    gives the scores of codes built without column j, over the same target rows; above
    max_targets the same seeded sample plus each reference's own match."""
    from xmodal.core.calibration import _loo_each, embedding_scores, loo_scores
    from xmodal.core.ssr import column_stats

    rng = np.random.default_rng(3)
    for n_t, max_targets in ((300, 20000), (3000, 500)):
        Q, T = rng.random((200, 12)).astype(np.float32), rng.random((n_t, 12)).astype(np.float32)
        T[5] = 0.5                                     # a constant row: the zero code, score 0
        pairs = np.c_[rng.choice(200, 12, replace=False), rng.choice(n_t, 12, replace=False)]
        pairs[4] = -1                                  # a reference outside the items: skipped
        stats = dict(query_stats=column_stats(Q), target_stats=column_stats(T)) if standardize else {}
        fast = list(loo_scores(Q, T, pairs, measure=measure, max_targets=max_targets, **stats))
        chosen = [j for j in range(12) if j != 4]
        sample = np.sort(np.random.default_rng(0).choice(n_t, max_targets, replace=False)) \
            if n_t > max_targets else None
        slow = list(_loo_each(Q, T, pairs, chosen, sample, measure, stats.get("query_stats"),
                              stats.get("target_stats"), None, 1.0))
        assert [j for j, _, _ in fast] == chosen
        for (j, rows, s), (_, rows_slow, s_slow) in zip(fast, slow):
            np.testing.assert_array_equal(rows, rows_slow)
            np.testing.assert_allclose(s, s_slow, atol=1e-5)
            assert pairs[j, 1] in rows and (n_t <= max_targets or len(rows) <= max_targets + 1)
        E_q, E_t = rng.normal(size=(200, 4)), rng.normal(size=(n_t, 4))
        for (j, rows, _), b in zip(fast, embedding_scores(fast, pairs, E_q, E_t)):
            np.testing.assert_allclose(b, E_t[rows] @ E_q[pairs[j, 0]], atol=1e-5)


def test_platt_calibration_is_cautious_then_follows_the_evidence():
    from xmodal.core.calibration import PlattCalibrator

    prior = PlattCalibrator()
    assert prior.predict(1.0) < 0.1 and prior.predict(4.0) == pytest.approx(0.5)
    z = np.r_[np.linspace(1, 2, 20), np.linspace(3, 4, 20)]
    hit = np.r_[np.zeros(20, bool), np.ones(20, bool)]
    fitted = PlattCalibrator().fit(z, hit)
    assert fitted.predict(1.5) < 0.3 < 0.7 < fitted.predict(3.5)     # it learnt the boundary
    assert np.all(np.diff(fitted.predict(np.linspace(0, 6, 13))) >= 0)   # and stays monotone
    assert PlattCalibrator.from_dict(fitted.to_dict()).predict(2.5) == pytest.approx(fitted.predict(2.5))
    assert fitted.to_dict()["n"] == 40 and fitted.to_dict()["hits"] == 20


def _linked(n: int, seed: int = 0):
    """Images and texts that are two linear views of one latent vector (item i <-> item i)."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 6))
    X = Z @ rng.normal(size=(6, 20)) + 0.2 * rng.normal(size=(n, 20))
    Y = Z @ rng.normal(size=(6, 12)) + 0.2 * rng.normal(size=(n, 12))
    return X.astype(np.float32), Y.astype(np.float32)


def test_recall_reads_the_places_of_the_relevant_targets_as_a_stable_sort_ranks_them():
    """Recall@K without sorting every row: the same numbers as ranking by a stable sort (ties in
    target order, NaN last), with many ties, NaNs, one or several relevant targets per query."""
    from xmodal.core.metrics import _rank, recall_any_at_k

    rng = np.random.default_rng(0)
    for _ in range(30):
        q, n = int(rng.integers(1, 30)), int(rng.integers(30, 120))
        S = np.round(rng.normal(size=(q, n)), 1).astype(np.float32)      # rounded: many ties
        S[rng.random(S.shape) < 0.05] = np.nan
        R = rng.random((q, n)) < 0.1
        R[np.arange(q), rng.integers(0, n, q)] = True
        found = np.cumsum(np.take_along_axis(R, _rank(S), axis=1), axis=1)
        assert recall_at_k(S, R, (1, 5, 10)) == {k: float(np.mean(found[:, k - 1] / R.sum(1))) for k in (1, 5, 10)}
        owner = np.concatenate([np.arange(q), rng.integers(0, q, n - q)])
        first = (owner[_rank(S)] == np.arange(q)[:, None]).argmax(axis=1)
        assert recall_any_at_k(S, owner, (1, 5, 10)) == {k: float(np.mean(first < k)) for k in (1, 5, 10)}
