"""The evaluation protocol: JSON row schema, baselines, errors, the beyond-paper helpers, and the
hard floors on real data (Wikipedia: fast, precomputed features; COCO-mini: slow, encoders)."""

import json

import numpy as np
import pytest

from xmodal.datasets import DEFAULT_DATA_ROOT
from xmodal.errors import ConfigError
from xmodal.evaluation.baselines import cca_components, cca_similarity, random_references
from xmodal.evaluation.enhance import (
    Enhancements,
    average_groups,
    csls,
    enhanced_similarity,
    inverted_softmax,
    mutual_nn_pairs,
    query_expansion,
)
from xmodal.evaluation.protocol import VARIANTS, EvalData, evaluate, prepare
from xmodal.evaluation.report import markdown_table, plot

ROW_KEYS = {"dataset", "method", "n", "direction", "metric", "value", "std", "seeds", "values",
            "n_eval", "protocol", "eval_captions"}


def synthetic(n=120, classes=4, dx=24, dy=12, seed=0, split=True, labelled=True):
    """Two linearly related modalities with class structure (Proposition 1's setting)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    Z = rng.normal(size=(classes, 8))[labels] + 0.6 * rng.normal(size=(n, 8))
    X = Z @ rng.normal(size=(8, dx)) + 0.3 * rng.normal(size=(n, dx))
    Y = Z @ rng.normal(size=(8, dy)) + 0.3 * rng.normal(size=(n, dy))
    train = (np.arange(n) % 5 != 0) if split else None
    lab = labels.astype(str).astype(object) if labelled else None
    return EvalData("synth", X.astype(np.float32), Y.astype(np.float32),
                             image_labels=lab, text_labels=lab, train=train)


# -- schema and baselines ---------------------------------------------------------------------

def test_rows_schema_and_methods():
    data = synthetic()
    rows = evaluate(data, [2, 5, 10], seeds=[0, 1])
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    json.loads(json.dumps(rows))  # plain JSON, no NaN/numpy types
    assert {r["direction"] for r in rows} == {"i2t", "t2i"}
    assert {r["metric"] for r in rows} == {"map"}
    methods = {r["method"] for r in rows}
    assert {"ssm-al", "ssm-al-i", "ssm-al-t", "random-refs", "cca", "all-pairs", "ssm-al++"} <= methods
    assert "ssm-al+captions" not in methods  # one text per image: identical to ssm-al
    for r in rows:
        assert isinstance(r["value"], float) and 0.0 <= r["value"] <= 1.0
        assert r["protocol"] == "split" and r["n_eval"] == 24
        if r["method"] == "all-pairs":
            assert r["n"] == 96 and r["seeds"] == [] and r["std"] == 0.0
        else:
            assert r["seeds"] == [0, 1] and len(r["values"]) == 2
            assert r["value"] == pytest.approx(np.mean(r["values"]))
            assert r["std"] == pytest.approx(np.std(r["values"]))
        if r["method"] == "ssm-al" or r["method"] in VARIANTS:
            assert r["selection"] in ("image", "text")
    # ssm-al is one of ssm-al-i / ssm-al-t, the same choice in both directions
    for n in (2, 5, 10):
        best = [r for r in rows if r["method"] == "ssm-al" and r["n"] == n]
        assert len({r["selection"] for r in best}) == 1
        twin = f"ssm-al-{best[0]['selection'][0]}"
        for r in best:
            same = next(s for s in rows if s["method"] == twin and s["n"] == n and s["direction"] == r["direction"])
            assert same["value"] == r["value"]
    # random pairs are worse than matched references on this data; CCA too at small N
    at10 = {(r["method"], r["direction"]): r["value"] for r in rows if r["n"] == 10}
    assert at10[("ssm-al", "i2t")] > 0.4  # chance is 0.25


def test_pool_protocol_recall_rows():
    data = synthetic(n=60, split=False, labelled=False)
    rows = evaluate(data, [5, 20], seeds=[0], methods=["ssm-al", "random-refs", "cca"])
    metrics = {n: {r["metric"] for r in rows if r["n"] == n} for n in (5, 20)}
    assert metrics[5] == {"recall@1", "recall@5", "recall@10", "recall@50", "rsum"}
    assert metrics[20] == {"recall@1", "recall@5", "recall@10", "rsum"}  # K > gallery (40) is dropped
    for r in (r for r in rows if r["metric"] == "rsum"):  # R@1 + R@5 + R@10 of both directions
        parts = [_value(rows, r["method"], r["n"], d, f"recall@{k}") for d in ("i2t", "t2i") for k in (1, 5, 10)]
        assert r["direction"] == "both" and r["value"] == pytest.approx(sum(parts))
    assert "all-pairs" not in {r["method"] for r in rows}  # no held-out items would remain
    for r in rows:
        assert r["protocol"] == "pool" and r["n_eval"] == 60 - r["n"]


def test_n_larger_than_pool_is_a_clear_error():
    with pytest.raises(ConfigError, match="N=200 is out of range"):
        evaluate(synthetic(), [10, 200], seeds=[0])
    with pytest.raises(ConfigError, match="leaves at least 2"):
        evaluate(synthetic(n=30, split=False), [29], seeds=[0])
    with pytest.raises(ConfigError, match="unknown method"):
        evaluate(synthetic(), [5], seeds=[0], methods=["vsepp"])
    with pytest.raises(ConfigError, match="MAP needs them"):
        evaluate(synthetic(labelled=False), [5], seeds=[0], metric="map")


def test_cca_handles_tiny_n():
    assert cca_components(1, 100, 10) == 0 and cca_components(3, 100, 10) == 2
    assert cca_components(500, 128, 10) == 10
    rng = np.random.default_rng(0)
    assert cca_similarity(rng.normal(size=(1, 5)), rng.normal(size=(1, 3)),
                          rng.normal(size=(4, 5)), rng.normal(size=(6, 3))) is None
    S = cca_similarity(rng.normal(size=(2, 50)), rng.normal(size=(2, 3)),
                       rng.normal(size=(4, 50)), rng.normal(size=(6, 3)))
    assert S.shape == (4, 6) and np.isfinite(S).all()
    rows = evaluate(synthetic(), [1, 3], seeds=[0], methods=["ssm-al", "cca"])
    assert {r["n"] for r in rows if r["method"] == "cca"} == {3}  # N=1: no canonical direction


def test_random_references_seeded():
    a, b = random_references(50, 10, seed=3), random_references(50, 10, seed=3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10
    with pytest.raises(ValueError):
        random_references(5, 6)


def test_markdown_and_plot(tmp_path):
    rows = evaluate(synthetic(), [3, 6], seeds=[0, 1], methods=["ssm-al", "cca", "all-pairs"])
    md = markdown_table(rows)
    assert "| method | N=3 | N=6 |" in md and "all-pairs (all 96 pairs)" in md and "±" in md
    plot(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


# -- the beyond-paper helpers ------------------------------------------------------------------

def test_csls_demotes_a_hub():
    S = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.3], [0.8, 0.1, 0.7]], dtype=np.float32)
    assert (S.argmax(axis=1) == 0).all()  # text 0 is every image's best: a hub
    C = csls(S, k=2)
    assert C.argmax(axis=1).tolist() == [1, 0, 2]
    assert inverted_softmax(S, beta=10).argmax(axis=1).tolist() != [0, 0, 0]


def test_mutual_nn_pairs():
    S = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]])
    pairs, scores = mutual_nn_pairs(S)
    assert pairs.tolist() == [[0, 0], [2, 2]] and scores.tolist() == [0.9, 0.7]
    assert mutual_nn_pairs(S, max_pairs=1)[0].tolist() == [[0, 0]]
    assert mutual_nn_pairs(S, min_score=0.8)[0].tolist() == [[0, 0]]


def test_average_groups_and_query_expansion():
    F = np.array([[1, 0], [0, 1], [3, 0]], dtype=np.float32)
    np.testing.assert_allclose(average_groups(F, [[0, 1], [2]]), [[0.5, 0.5], [3, 0]])
    np.testing.assert_allclose(average_groups(F, [[0, 2]], normalize=True), [[1, 0]])
    Q = np.eye(3, dtype=np.float32)
    assert query_expansion(Q, Q, top_m=1).argmax(axis=1).tolist() == [0, 1, 2]


def test_enhanced_similarity_defaults_equal_the_paper():
    from xmodal.core.ssr import SSRIndex

    data = synthetic()
    refs, q = np.arange(10), np.arange(50, 90)
    index = SSRIndex().fit(data.image_features[refs], data.text_features[refs], np.stack([np.arange(10)] * 2, 1))
    expected = index.transform_images(data.image_features[q]) @ index.transform_texts(data.text_features[q]).T
    S, St, info = enhanced_similarity(data.image_features[refs], data.text_features[refs],
                                      data.image_features[q], data.text_features[q])
    np.testing.assert_allclose(S, expected, atol=1e-5)
    np.testing.assert_allclose(St, expected.T, atol=1e-5)
    S2, _, info = enhanced_similarity(
        data.image_features[refs], data.text_features[refs], data.image_features[q], data.text_features[q],
        Enhancements(center=True, csls_k=5, pseudo_rounds=2, standardize=True),
        uncoupled_images=data.image_features[10:50], uncoupled_texts=data.text_features[10:50])
    assert S2.shape == (40, 40) and 0 < len(info["pseudo_pairs"]) <= 10


# -- hard floors on real data -----------------------------------------------------------------

def _need(sub):
    path = DEFAULT_DATA_ROOT / sub
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (the shared data sets live next to the repository "
                    "in ../shared/data; see its README)")
    return path


@pytest.fixture(scope="module")
def wikipedia_rows():
    from xmodal import datasets

    data = prepare(datasets.load_wikipedia(_need("wikipedia_rasiwasia")))
    return evaluate(data, [10, 50, 100], seeds=[0, 1, 2, 3, 4],
                    methods=["ssm-al", "cca", "product", "product-raw-medoids"])


def _value(rows, method, n, direction, metric="map"):
    return next(r["value"] for r in rows if r["method"] == method and r["n"] == n
                and r["direction"] == direction and r["metric"] == metric)


@pytest.mark.parametrize("n, i2t, t2i", [(10, 0.18, 0.13), (100, 0.20, 0.15)])
def test_wikipedia_floor(wikipedia_rows, n, i2t, t2i):
    """SSM-AL (better of _I/_T), mean MAP over seeds 0-4 on the official 693 test items."""
    assert _value(wikipedia_rows, "ssm-al", n, "i2t") >= i2t
    assert _value(wikipedia_rows, "ssm-al", n, "t2i") >= t2i


@pytest.mark.parametrize("n", [10, 50, 100])
def test_wikipedia_ssm_al_beats_cca(wikipedia_rows, n):
    for d in ("i2t", "t2i"):
        assert _value(wikipedia_rows, "ssm-al", n, d) > _value(wikipedia_rows, "cca", n, d)


def test_cli_eval_writes_json_markdown_plot(tmp_path):
    _need("wikipedia_rasiwasia")
    from xmodal.cli.main import main

    out = tmp_path / "rows.json"
    rc = main(["eval", "--dataset", "wikipedia", "--n", "10", "--seeds", "0", "--methods",
               "ssm-al,random-refs,cca", "--json", str(out), "--markdown", str(tmp_path / "t.md"),
               "--plot", str(tmp_path / "p.png"), "--quiet"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert {r["method"] for r in rows} == {"ssm-al", "ssm-al-i", "ssm-al-t", "random-refs", "cca"}
    assert (tmp_path / "t.md").read_text().startswith("**wikipedia — map**")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert _value(rows, "ssm-al-i", 10, "i2t") == pytest.approx(0.1843, abs=5e-4)  # the lead's check
    assert main(["eval", "--dataset", "wikipedia", "--n", "5000", "--quiet"]) == 1  # N > pool
    # its own split is kept: --holdout is refused, not silently replacing the official split
    assert main(["eval", "--dataset", "wikipedia", "--n", "10", "--holdout", "100", "--quiet"]) == 1


def _mean(rows, method, ns, metric="map"):
    return float(np.mean([_value(rows, method, n, d, metric) for n in ns for d in ("i2t", "t2i")]))


def test_wikipedia_product_beats_faithful_and_cca_at_10_and_50(wikipedia_rows):
    """``product`` (medoids of z-scored features, z-scores, CSLS): measured .194/.144 and
    .215/.160 against faithful .187/.133 and .197/.150 (N=100: .223/.165 against .214/.170, t2i
    lower: not asserted); above CCA at every N; over all N above the raw medoids (+2.8%)."""
    for n in (10, 50):
        for d in ("i2t", "t2i"):
            assert _value(wikipedia_rows, "product", n, d) >= _value(wikipedia_rows, "ssm-al", n, d)
    for n in (10, 50, 100):
        for d in ("i2t", "t2i"):
            assert _value(wikipedia_rows, "product", n, d) > _value(wikipedia_rows, "cca", n, d)
    assert _mean(wikipedia_rows, "product", (10, 50, 100)) > _mean(wikipedia_rows, "product-raw-medoids", (10, 50, 100))


def test_pascal_dscmr_z_scored_medoids_help_the_product():
    """The held-out set: ``product`` over N=5, 10, 20, 50 and both directions, measured MAP .465
    from the medoids of z-scored features against .441 from the raw ones (+5.4%), and above the
    faithful index on the same (image) selection, .458."""
    from xmodal import datasets

    data = prepare(datasets.load_pascal_dscmr(_need("pascal_sentences")))
    ns = (5, 10, 20, 50)
    rows = evaluate(data, list(ns), seeds=[0, 1, 2, 3, 4], select=("image",),
                    methods=["ssm-al", "product", "product-raw-medoids"])
    product = _mean(rows, "product", ns)
    assert product >= 1.03 * _mean(rows, "product-raw-medoids", ns)
    assert product > _mean(rows, "ssm-al-i", ns)


@pytest.fixture(scope="module")
def coco_rows():
    from xmodal import datasets

    pytest.importorskip("xmodal.encoders")
    data = prepare(datasets.load_coco_mini(_need("coco_mini"), captions="all"),
                            image_encoder="efficientnet-lite0", text_encoder="minilm", progress=False)
    return evaluate(data, [20], seeds=[0, 1, 2, 3, 4],
                             methods=["ssm-al", "random-refs", "ssm-al++"])


@pytest.mark.slow
def test_coco_mini_recall_at_20(coco_rows):
    for d in ("i2t", "t2i"):
        faithful = _value(coco_rows, "ssm-al", 20, d, "recall@10")
        assert faithful > _value(coco_rows, "random-refs", 20, d, "recall@10")
        assert faithful >= 0.42  # measured .436 / .502 (mean of seeds 0-4)
        improved = _value(coco_rows, "ssm-al++", 20, d, "recall@10")
        assert improved >= 0.45
        assert improved >= 1.12 * faithful  # measured +31 % / +16 % (seeds 0-4)


@pytest.mark.slow
def test_coco_mini_faithful_floor_default_run(coco_rows):
    """The issue's floor for one run with the product's defaults (SSM-AL_I, seed 0): measured
    .453 / .518. On the mean of seeds 0-4 image->text is .436 (both _I and _T), below .45:
    reported as a miss in docs/results.md and the README, and guarded by the >= .42 above."""
    for d in ("i2t", "t2i"):
        row = next(r for r in coco_rows if r["method"] == "ssm-al-i" and r["n"] == 20
                   and r["direction"] == d and r["metric"] == "recall@10")
        assert row["values"][row["seeds"].index(0)] >= 0.45


@pytest.mark.slow
def test_coco_mini_enhanced_product_index_beats_faithful(tmp_path):
    """The product path (project create --enhance, rebuild's build_snapshot, IndexSnapshot.scores)
    after 20 oracle labels: measured R@10 .218/.519 faithful, .433/.797 with a new project's
    defaults (z-scored medoids, zscore, csls, the class bridge at weight .85; .245/.570 with
    zscore,csls alone)."""
    from xmodal.evaluation.product import measure_product
    from xmodal.project.workspace import DEFAULT_CONFIG

    pytest.importorskip("xmodal.encoders")
    data = _need("coco_mini")
    defaults = DEFAULT_CONFIG["enhance"]
    faithful = measure_product(data, None, labels=20, model_dir=tmp_path / "a")
    enhanced = measure_product(data, ",".join(defaults), labels=20, model_dir=tmp_path / "b")
    assert faithful["enhance"] == [] and enhanced["enhance"] == defaults
    assert faithful["pairs"] == enhanced["pairs"] == 20
    assert faithful["bridge_weight"] == 0 and enhanced["bridge_weight"] > 0
    for d in ("i2t", "t2i"):
        assert enhanced[f"recall@10_{d}"] >= 1.2 * faithful[f"recall@10_{d}"]
    assert enhanced["recall@10_i2t"] >= 1.5 * faithful["recall@10_i2t"]


# -- xmodal bench (smoke, tiny sizes) ----------------------------------------------------------

def test_bench_smoke_tiny_sizes():
    from xmodal.benchmarks import speed as bench

    X = bench.cnn_like_features(300, dim=64, clusters=5)
    assert X.shape == (300, 64) and X.dtype == np.float32 and (X >= 0).all()
    results = bench.bench_kmedoids([(300, 5)], repeats=1, compare_pam=False)
    results += bench.bench_ssr(n=500, k=10, repeats=1, queries=5)
    assert all(r.value is not None and r.value > 0 for r in results)
    table = bench.format_table(results)
    assert "add_pairs(1 pair)" in table and "p95" in table


def test_bench_index_times_both_full_rebuilds_and_the_one_pair_update(tmp_path):
    """The index section at a tiny size: both full rebuilds and the default's one-pair update are
    timed, the update over the kept columns and version 2's neighbourhoods (what a label does)."""
    from xmodal.benchmarks import speed as bench

    faithful, default, update = bench.bench_index(n=2000, k=12, repeats=1, workdir=tmp_path)
    assert all(r.value > 0 and len(r.extra["times"]) == 1 for r in (faithful, default, update))
    assert "codes 12 wide" in faithful.note and "x the faithful" in default.note
    assert "k=11→12" in update.what and "version 2's neighbourhoods (1 pair changed)" in update.note


def test_product_is_what_a_new_project_does(tmp_path, monkeypatch):
    """``product`` in eval = a new workspace's defaults (its selection, its enhancements), with the
    same default text encoder as ``project create``; no hindsight choice of the selection."""
    from xmodal.cli.eval import register
    from xmodal.encoders import DEFAULT_TEXT_ENCODER
    from xmodal.evaluation.protocol import PRODUCT, PRODUCT_RAW_MEDOIDS, product_settings
    from xmodal.labelstudio.project import ProjectSpec
    from xmodal.project.workspace import Workspace

    select, cfg = product_settings()
    new = Workspace(tmp_path / "new").save_config({})
    assert select == new["select"] and cfg.measure == new["measure"]
    assert ((["zscore-medoids"] if cfg.zscore_medoids else []) + (["zscore"] if cfg.standardize else [])
            + (["csls"] if cfg.csls_k else []) + (["bridge"] if cfg.bridge else [])
            + (["map"] if cfg.self_map else [])) == new["enhance"]
    assert cfg.csls_k in (None, new["csls_k"])
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    eval_args = sub.choices["eval"].parse_args(["--dataset", "folder"])
    assert eval_args.text_encoder == ProjectSpec(name="x", data=".").text_encoder == DEFAULT_TEXT_ENCODER

    rows = evaluate(synthetic(), [5], seeds=[0, 1], methods=[PRODUCT, PRODUCT_RAW_MEDOIDS])
    for method in (PRODUCT, PRODUCT_RAW_MEDOIDS):
        product = [r for r in rows if r["method"] == method]
        assert {r["direction"] for r in product} == {"i2t", "t2i"}
        assert all(r["selection"] == select for r in product)


def test_zmedoids_is_the_faithful_index_on_the_medoids_of_z_scored_features():
    """``ssm-al+zmedoids`` changes the selection only: the same numbers as faithful SSR computed by
    hand from ``KMedoidsSelector(standardize=True)``'s medoids."""
    from xmodal.core.medoids import KMedoidsSelector
    from xmodal.core.metrics import recall_at_k
    from xmodal.core.ssr import SSRIndex

    data = synthetic(split=False)
    rows = evaluate(data, [6], seeds=[0], select=("image",), methods=["ssm-al+zmedoids"], metric="recall")
    got = {r["direction"]: r["value"] for r in rows
           if r["method"] == "ssm-al+zmedoids" and r["metric"] == "recall@5"}
    refs = KMedoidsSelector(6, random_state=0, standardize=True).fit(data.image_features).medoid_indices_
    rest = np.setdiff1d(np.arange(data.n), refs)
    index = SSRIndex().fit(data.image_features[refs], data.text_features[refs],
                           np.stack([np.arange(6)] * 2, axis=1))
    S = index.transform_images(data.image_features[rest]) @ index.transform_texts(data.text_features[rest]).T
    want = recall_at_k(S, np.arange(len(rest)), [5])[5], recall_at_k(S.T, np.arange(len(rest)), [5])[5]
    assert (got["i2t"], got["t2i"]) == pytest.approx(want)


# -- the standard protocol: every caption, a seeded held-out split (issue 23) ------------------

def test_recall_any_at_k_by_hand():
    from xmodal.core.metrics import recall_any_at_k

    # 2 images, 5 texts: texts 0, 1 describe image 0, texts 2, 3, 4 image 1
    owner = np.array([0, 0, 1, 1, 1])
    S = np.array([[0.1, 0.5, 0.9, 0.0, 0.2],    # image 0: its best text (1) is 2nd -> miss at 1, hit at 2
                  [0.0, 0.9, 0.1, 0.8, 0.2]])   # image 1: text 3 is 2nd -> miss at 1, hit at 2
    assert recall_any_at_k(S, owner, (1, 2, 5)) == {1: 0.0, 2: 1.0, 5: 1.0}
    S[1, 3] = 1.0                               # now image 1's text 3 is first
    assert recall_any_at_k(S, owner, (1, 2)) == {1: 0.5, 2: 1.0}
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_any_at_k(S, np.array([0, 0, 0, 0, 0]))


def _with_captions(data: EvalData, copies: int) -> EvalData:
    """Every image described by ``copies`` identical texts (its first text repeated)."""
    from dataclasses import replace

    groups = [np.arange(i * copies, (i + 1) * copies) for i in range(data.n)]
    return replace(data, all_text_features=np.repeat(data.text_features, copies, axis=0), caption_groups=groups)


def test_every_caption_protocol_on_duplicated_captions():
    """With each text given twice, the faithful index scores both copies alike, so (hand-derived):
    text→image is unchanged, and an image whose text ranked r-th (0-based) among the 24 test texts
    ranks 2r-th among the 48, i.e. image→text R@2K with every caption = R@K with the first."""
    first_data = synthetic(labelled=False)
    data = _with_captions(first_data, 2)
    first = evaluate(data, [5, 10], seeds=[0, 1], methods=["ssm-al"], ks=(1, 2, 5, 10))
    every = evaluate(data, [5, 10], seeds=[0, 1], methods=["ssm-al"], ks=(1, 2, 5, 10), eval_captions="all")
    assert {r["eval_captions"] for r in first} == {"first"} and {r["eval_captions"] for r in every} == {"all"}
    assert first == evaluate(first_data, [5, 10], seeds=[0, 1], methods=["ssm-al"], ks=(1, 2, 5, 10))
    for n in (5, 10):
        for m in ("ssm-al-i", "ssm-al-t"):
            for k in (1, 2, 5, 10):
                assert _value(every, m, n, "t2i", f"recall@{k}") == _value(first, m, n, "t2i", f"recall@{k}")
            for k in (1, 5):
                assert _value(every, m, n, "i2t", f"recall@{2 * k}") == _value(first, m, n, "i2t", f"recall@{k}")
    assert any(_value(every, m, n, "i2t", "recall@10") < _value(first, m, n, "i2t", "recall@10")
               for n in (5, 10) for m in ("ssm-al-i", "ssm-al-t"))  # the copies push the right text down
    table = markdown_table(every)
    assert "**synth — rsum** (mean ± std over 2 seeds; R@1 + R@5 + R@10 of i2t and t2i; every caption" in table


def test_holdout_split_is_seeded_and_scores_only_the_held_out_images():
    from xmodal.evaluation.splits import hold_out, holdout_mask

    a, b = holdout_mask(100, 30, seed=0), holdout_mask(100, 30, seed=1)
    assert (~a).sum() == 30 and np.array_equal(a, holdout_mask(100, 30, seed=0)) and not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="between 1 and 99"):
        holdout_mask(100, 100)
    with pytest.raises(ConfigError, match="its own train/test split"):
        hold_out(synthetic(), 10)
    data = hold_out(synthetic(n=60, split=False, labelled=False), 20, seed=3)
    assert data.protocol == "split" and data.meta["split_seed"] == 3 and data.meta["holdout"] == 20
    rows = evaluate(data, [5], seeds=[0], methods=["ssm-al", "random-refs"])
    assert {r["n_eval"] for r in rows} == {20} and {r["protocol"] for r in rows} == {"split"}


def test_product_variants_use_the_products_settings():
    """``product+all-captions`` averages every caption of a reference: with identical captions it
    is the product itself; without several captions it is not run. ``product+selftrain`` runs on
    the product's one selection."""
    plain = synthetic(labelled=False)
    data = _with_captions(plain, 3)
    rows = evaluate(data, [5], seeds=[0], methods=["product", "product+all-captions", "product+selftrain"])
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert _value(rows, "product+all-captions", 5, d, f"recall@{k}") == \
                _value(rows, "product", 5, d, f"recall@{k}")
    selections = {r["selection"] for r in rows if r["method"].startswith("product")}
    assert len(selections) == 1
    assert "product+all-captions" not in {r["method"] for r in evaluate(plain, [5], seeds=[0],
                                                                         methods=["product+all-captions"])}


@pytest.mark.slow
def test_cli_every_caption_on_a_held_out_split_of_coco_mini(tmp_path):
    """The command a team runs on its own photos: every caption scored, 59 of COCO-mini's 159
    images held out (references among the other 100), rows and tables say so."""
    _need("coco_mini")
    from xmodal.cli.main import main

    out, md = tmp_path / "rows.json", tmp_path / "t.md"
    assert main(["eval", "--dataset", "coco-mini", "--eval-captions", "all", "--holdout", "59",
                 "--split-seed", "0", "--n", "10", "--seeds", "0", "--methods", "ssm-al,product",
                 "--json", str(out), "--markdown", str(md), "--quiet"]) == 0
    rows = json.loads(out.read_text())
    assert {r["eval_captions"] for r in rows} == {"all"} and {r["protocol"] for r in rows} == {"split"}
    assert {r["n_eval"] for r in rows} == {59}
    rsum = _value(rows, "product", 10, "both", "rsum")
    assert rsum == pytest.approx(sum(_value(rows, "product", 10, d, f"recall@{k}")
                                     for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert rsum > _value(rows, "ssm-al", 10, "both", "rsum")   # the product's lead holds held out
    assert "**coco-mini — rsum**" in md.read_text()
