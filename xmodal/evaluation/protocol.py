"""The paper's evaluation protocol (section 4.2), its baselines and the beyond-paper variants.

Usage (Python)::

    from xmodal import datasets
    from xmodal.evaluation import protocol, report
    data = protocol.prepare(datasets.load("wikipedia"))            # features, labels, split
    rows = protocol.evaluate(data, ns=[10, 50, 100], seeds=[0, 1, 2, 3, 4])
    print(report.markdown_table(rows))

Protocols (chosen from the data):

- **split** (the data set has a train/test split, e.g. Wikipedia's official 2173/693): the N
  references are chosen among the *train* items (k-medoids on one modality; the oracle returns the
  coupled item of the other), every *test* item is represented by SSR against them, and each test
  query is ranked against ALL test targets of the other modality. A data set without a split gets
  a seeded one from ``xmodal eval --holdout N --split-seed S`` (:mod:`xmodal.evaluation.splits`).
- **pool** (no split: COCO-mini, Pascal-DSCMR, a folder without splits): the N references are
  chosen among all coupled items, and retrieval runs over the rest (each method is scored on the
  items that are not its references, so the gallery always has ``pool − N`` items).

Metrics: MAP (eq. 35–36, relevance = same label) when both modalities are labelled, else
Recall@K (eq. 37, relevant = the coupled item), and ``rsum`` (R@1 + R@5 + R@10 of both
directions, one row with direction ``both``). ``eval_captions`` says which texts are evaluated:

- ``first`` (default): one text per image (the first one, e.g. COCO's first caption); the other
  texts of an image are only used by the ``+captions`` variant to average a reference's text vector.
- ``all``: the standard protocol of the literature (Karpathy & Fei-Fei 2015): every text of every
  evaluated image is a target and a query; image→text hits when ANY of the image's texts is in the
  top K among all evaluated texts (:func:`~xmodal.core.metrics.recall_any_at_k`), text→image ranks
  the evaluated images for every text. References are still chosen and coupled as with ``first``.

Methods (``method`` field of the rows):

- ``ssm-al-i`` / ``ssm-al-t``: the paper's SSM-AL_I / SSM-AL_T (k-medoids on images / texts,
  Pearson eq. 32 on the SSR, :class:`~xmodal.core.ssr.SSRIndex`).
- ``ssm-al``: the better of the two at each N — one choice per N (by the mean over seeds of the
  metric averaged over both directions), not per direction; the row's ``selection`` says which.
- ``random-refs``: N random reference pairs, same SSR (ablation of the active selection).
- ``cca``: scikit-learn CCA on the same N medoid pairs (better of the image/text medoid pairs,
  chosen like ``ssm-al``); absent when N < 2.
- ``all-pairs``: SSR with every pool pair as a reference (the ceiling; split protocol only, its
  ``n`` is the pool size).
- ``product``: what a new project does (:func:`product_settings`): its one selection (images),
  k-medoids of the z-scored features, and its index's enhancements; ``product-raw-medoids`` the
  same from the paper's medoids of the raw features; ``product+all-captions`` /
  ``product+selftrain`` the product with every caption of a reference averaged into its text
  vector / with mutual-NN pseudo-pairs (:data:`PRODUCT_VARIANTS`, issue 23); ``product+map``
  the product with the self-trained map (:mod:`xmodal.core.pseudomap`; ``--enhance ...,map``, not
  in a new project's default: its cost per rebuild).
- ``ssm-al+<variant>``: beyond the paper (:mod:`xmodal.evaluation.enhance`), better of _I/_T like
  ``ssm-al``; see :data:`VARIANTS`.

Every row: ``{"dataset", "method", "n", "direction", "metric", "value", "std", "seeds", "values",
"n_eval", "protocol", "eval_captions"}`` (+ ``"selection"`` for better-of rows); ``value`` is the mean over seeds,
``values`` the per-seed values in ``seeds`` order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from xmodal.core.medoids import KMedoidsSelector
from xmodal.core.metrics import mean_average_precision, recall_any_at_k, recall_at_k
from xmodal.core.ssr import SSRIndex
from xmodal.errors import ConfigError
from xmodal.evaluation.baselines import cca_similarity, random_references
from xmodal.evaluation.data import EvalData, prepare  # noqa: F401 (protocol.prepare is the entry point)
from xmodal.evaluation.enhance import Enhancements, average_groups, enhanced_similarity

log = logging.getLogger(__name__)


DIRECTIONS = ("i2t", "t2i")
SELECTIONS = {"image": "i", "text": "t"}
DEFAULT_KS = (1, 5, 10, 50)
EVAL_CAPTIONS = ("first", "all")
RSUM_KS = (1, 5, 10)

#: beyond-paper variants: name -> Enhancements (``+captions`` needs several texts per image)
VARIANTS: dict[str, Enhancements] = {
    "ssm-al+center": Enhancements(center=True),
    "ssm-al+csls": Enhancements(csls_k=10),
    "ssm-al+isoftmax": Enhancements(inverted_softmax_beta=20.0),
    "ssm-al+captions": Enhancements(average_captions=True),
    "ssm-al+pseudo": Enhancements(pseudo_rounds=2, csls_k=None),
    "ssm-al+qe": Enhancements(qe_top_m=3, qe_weight=0.5),
    "ssm-al+asif": Enhancements(sparse_top_k=8, sparse_power=3.0),
    "ssm-al+zscore": Enhancements(standardize=True),
    # the recommended combination: helps on COCO-mini and Pascal-DSCMR, never hurts Wikipedia
    "ssm-al++": Enhancements(standardize=True, csls_k=10, average_captions=True),
    # the first combination tried (centring instead of z-scores): as good on COCO-mini, but it
    # loses up to 2 % MAP on Wikipedia
    "ssm-al++center": Enhancements(center=True, csls_k=10, average_captions=True),
    # ssm-al++ plus self-training with mutual-NN pseudo-pairs
    "ssm-al++pseudo": Enhancements(standardize=True, csls_k=10, average_captions=True, pseudo_rounds=2),
    # issue 10, on top of the product index's settings (z-scores + CSLS); docs/results.md
    # entropic OT (Sinkhorn) over the searched items: rank by the log plan
    "product+sinkhorn": Enhancements(standardize=True, csls_k=10, sinkhorn_eps=0.1),
    # Wasserstein-Procrustes self-training of an orthogonal map between the two code spaces
    "product+procrustes": Enhancements(standardize=True, csls_k=10, procrustes_rounds=3),
    # fused Gromov-Wasserstein (intra-modal structure of the searched items), then Sinkhorn
    "product+gw": Enhancements(standardize=True, csls_k=10, gw_alpha=0.2),
    "product+gw+sinkhorn": Enhancements(standardize=True, csls_k=10, gw_alpha=0.3, sinkhorn_eps=0.1),
    # faithful SSR from the medoids of the z-scored features (the product's selection)
    "ssm-al+zmedoids": Enhancements(zscore_medoids=True),
}
PRODUCT = "product"
#: the product with the paper's k-medoids of the raw features (what `product` was until 2026-12-07)
PRODUCT_RAW_MEDOIDS = "product-raw-medoids"
#: issue 23's ideas on top of the product's own settings (its selection, medoids and index), each
#: measured against ``product`` in docs/results.md: every caption of a reference image averaged
#: into its text vector; self-training with mutual-NN pseudo-pairs among the unlabelled items;
#: the self-trained image->text map (enhancement "map", opt-in)
PRODUCT_VARIANTS = {"product+all-captions": {"average_captions": True},
                    "product+selftrain": {"pseudo_rounds": 2},
                    "product+map": {"self_map": True}}


def product_settings() -> tuple[str, Enhancements]:
    """What a new project does by default, as an evaluation method: the modality it clusters and
    its enhancements (the medoids of z-scored features, the index's settings), both read from
    :data:`xmodal.project.workspace.DEFAULT_CONFIG` (the encoders are the command's, ``auto`` by
    default as for ``project create``). Unlike ``ssm-al``, which reports the better of its two
    selections in hindsight, ``product`` uses the project's one."""
    from xmodal.project.workspace import DEFAULT_CONFIG

    enhance = DEFAULT_CONFIG["enhance"]
    return DEFAULT_CONFIG["select"], Enhancements(
        zscore_medoids="zscore-medoids" in enhance, standardize="zscore" in enhance,
        csls_k=int(DEFAULT_CONFIG["csls_k"]) if "csls" in enhance else None,
        measure=DEFAULT_CONFIG["measure"], bridge="bridge" in enhance, self_map="map" in enhance)


BASE_METHODS = ("ssm-al", "random-refs", "cca", "all-pairs")
ALL_METHODS = BASE_METHODS + (PRODUCT, PRODUCT_RAW_MEDOIDS) + tuple(PRODUCT_VARIANTS) + tuple(VARIANTS)


# -- one evaluation run ---------------------------------------------------------------------

@dataclass
class _Run:
    data: EvalData
    refs: np.ndarray          # global rows of the reference pairs
    eval_rows: np.ndarray     # global rows evaluated
    uncoupled: np.ndarray     # global rows usable as uncoupled data (pseudo-pairs)
    texts: np.ndarray         # features of the evaluated texts (one per row, or every caption)
    owner: np.ndarray         # owner[j]: the position in eval_rows of the image text j describes


def _make_run(data: EvalData, refs, rows, uncoupled, eval_captions: str) -> _Run:
    if eval_captions == "all" and data.has_captions:
        groups = [data.caption_groups[r] for r in rows]
        texts = data.all_text_features[np.concatenate(groups)]
        owner = np.repeat(np.arange(len(rows)), [len(g) for g in groups])
    else:  # one text per image (the first), as every number before the standard protocol
        texts, owner = data.text_features[rows], np.arange(len(rows))
    return _Run(data, refs, rows, uncoupled, texts, owner)


def _eval_rows(data: EvalData, refs: np.ndarray) -> np.ndarray:
    if data.train is not None:
        return np.flatnonzero(~data.train)
    return np.setdiff1d(np.arange(data.n), refs)


def _run(data: EvalData, pool: np.ndarray, selector: KMedoidsSelector, eval_captions: str) -> _Run:
    """The run whose references are the medoids of a selector fitted on ``pool``'s rows."""
    refs = pool[selector.medoid_indices_]
    rows = _eval_rows(data, refs)
    return _make_run(data, refs, rows, np.setdiff1d(pool, refs) if data.protocol == "split" else rows,
                     eval_captions)


def _faithful(run: _Run, measure: str = "pearson"):
    d = run.data
    index = SSRIndex(measure=measure).fit(d.image_features[run.refs], d.text_features[run.refs],
                                          np.stack([np.arange(len(run.refs))] * 2, axis=1))
    CX = index.transform_images(d.image_features[run.eval_rows])
    CY = index.transform_texts(run.texts)
    S = CX @ CY.T
    return S, S.T


def _enhanced(run: _Run, cfg: Enhancements):
    d = run.data
    ref_texts = d.text_features[run.refs]
    if cfg.average_captions and d.has_captions:
        ref_texts = average_groups(d.all_text_features, [d.caption_groups[r] for r in run.refs])
    pool = d.pool_rows()
    bridge = _bridge(run, cfg) if cfg.bridge and d.image_bridge is not None else None
    mapped = None
    if cfg.self_map and bridge is not None and bridge[2] > 0:   # as the index: only with the bridge on
        from xmodal.evaluation.selfmap import map_codes

        mapped = map_codes(run, cfg, bridge[2])
    S_i2t, S_t2i, _ = enhanced_similarity(
        d.image_features[run.refs], ref_texts,
        d.image_features[run.eval_rows], run.texts, cfg,
        uncoupled_images=d.image_features[run.uncoupled], uncoupled_texts=d.text_features[run.uncoupled],
        image_mean=d.image_features[pool].mean(axis=0), text_mean=d.text_features[pool].mean(axis=0),
        bridge=bridge, mapped=mapped)
    return S_i2t, S_t2i


def _bridge(run: _Run, cfg: Enhancements):
    """(centred image bridge, centred text features, weight) of the evaluated rows, the weight
    chosen from the references as the index chooses it (:func:`xmodal.core.bridge.choose_weight`,
    images asking for texts, over the references and the evaluated items)."""
    from xmodal.core.bridge import centred, choose_weight, principal_basis, project
    from xmodal.core.ssr import column_stats, ssr

    d = run.data
    rows = np.concatenate([run.refs, run.eval_rows])
    Bi, _ = centred(d.image_bridge[rows])
    Bt, text_mean = centred(d.text_features[rows])
    basis = principal_basis(Bi, Bt)   # the index keeps the bridge on its principal directions
    Bi, Bt = project(Bi, basis), project(Bt, basis)
    # the evaluated texts (every caption with eval_captions=all) on the same centre and basis;
    # the weight below is chosen from the references' first texts either way
    B_eval_texts = project(centred(run.texts, text_mean)[0], basis)
    RX = ssr(d.image_features[rows], d.image_features[run.refs])
    RY = ssr(d.text_features[rows], d.text_features[run.refs])
    stats = (column_stats(RX), column_stats(RY)) if cfg.standardize else (None, None)
    pairs = np.stack([np.arange(len(run.refs))] * 2, axis=1)
    weight, _ = choose_weight(RX, RY, Bi, Bt, pairs, measure=cfg.measure, query_stats=stats[0],
                              target_stats=stats[1], sparse_top_k=cfg.sparse_top_k,
                              sparse_power=cfg.sparse_power)
    return Bi[len(run.refs):], B_eval_texts, weight


def _cca(run: _Run):
    d = run.data
    S = cca_similarity(d.image_features[run.refs], d.text_features[run.refs],
                       d.image_features[run.eval_rows], run.texts)
    return None if S is None else (S, S.T)


def _scores(data: EvalData, S_i2t, S_t2i, run: _Run, metric: str, ks) -> dict:
    rows, owner = run.eval_rows, run.owner
    out = {}
    if metric == "map":
        li, lt = data.image_labels[rows], data.text_labels[rows][owner]  # a caption has its image's text label
        out[("i2t", "map")] = mean_average_precision(S_i2t, li, lt)
        out[("t2i", "map")] = mean_average_precision(S_t2i, lt, li)
    else:
        ks = [k for k in ks if k <= len(rows)] or [len(rows)]
        # with one text per image both are eq. 37 with L_i = 1; with every caption, image→text
        # counts a hit when any of the image's texts is in the top K (the standard protocol)
        for k, v in recall_any_at_k(S_i2t, owner, ks).items():
            out[("i2t", f"recall@{k}")] = v
        for k, v in recall_at_k(S_t2i, owner, ks).items():
            out[("t2i", f"recall@{k}")] = v
        parts = [out.get((d, f"recall@{k}")) for d in DIRECTIONS for k in RSUM_KS]
        if None not in parts:
            out[("both", "rsum")] = float(sum(parts))
    return out


def _metric(data: EvalData, metric: str) -> str:
    if metric == "auto":
        return "map" if data.labelled else "recall"
    if metric == "map" and not data.labelled:
        raise ConfigError(f"{data.name} has no labels on both modalities: MAP needs them; use --metric recall")
    if metric not in ("map", "recall"):
        raise ConfigError(f"unknown metric {metric!r}; use auto, map or recall")
    return metric


def check_sizes(data: EvalData, ns) -> None:
    """N larger than the pool (or leaving fewer than 2 items to retrieve over) is an error."""
    pool = len(data.pool_rows())
    limit = pool if data.protocol == "split" else pool - 2
    bad = [n for n in ns if n < 1 or n > limit]
    if bad:
        where = (f"the {pool} training pairs" if data.protocol == "split"
                 else f"{pool} coupled items (N ≤ {limit} leaves at least 2 to retrieve over)")
        raise ConfigError(f"N={', '.join(map(str, bad))} is out of range for {data.name}: references "
                          f"are chosen among {where}")


def evaluate(data: EvalData, ns, *, seeds=(0, 1, 2, 3, 4), select=("image", "text"),
             methods=None, metric: str = "auto", ks=DEFAULT_KS, measure: str = "pearson",
             variants: dict[str, Enhancements] | None = None, eval_captions: str = "first",
             progress: Callable[[str], None] | None = None) -> list[dict]:
    """Run the protocol; returns the JSON rows (see the module docstring).

    ``methods``: names from :data:`BASE_METHODS` and ``variants`` (default: all that apply to the
    data); ``ssm-al`` always also yields ``ssm-al-i`` / ``ssm-al-t`` for each selection in
    ``select``. ``variants`` maps method names to :class:`Enhancements` (default :data:`VARIANTS`).
    """
    variants = dict(VARIANTS if variants is None else variants)
    product_select, variants[PRODUCT] = product_settings()
    variants[PRODUCT_RAW_MEDOIDS] = replace(variants[PRODUCT], zscore_medoids=False)
    for name, change in PRODUCT_VARIANTS.items():
        variants[name] = replace(variants[PRODUCT], **change)
    product_like = (PRODUCT, PRODUCT_RAW_MEDOIDS, *PRODUCT_VARIANTS)
    valid = BASE_METHODS + tuple(variants)
    ns = sorted({int(n) for n in ns})
    seeds = [int(s) for s in seeds]
    if not ns:
        raise ConfigError("give at least one N")
    if not seeds:
        raise ConfigError("give at least one seed")
    select = tuple(select)
    bad = [s for s in select if s not in SELECTIONS]
    if bad or not select:
        raise ConfigError(f"--select must be image, text or both, not {bad or select}")
    metric = _metric(data, metric)
    if eval_captions not in EVAL_CAPTIONS:
        raise ConfigError(f"eval_captions must be first or all, not {eval_captions!r}")
    check_sizes(data, ns)
    methods = list(methods or valid)
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if "ssm-al" not in methods:
        methods.insert(0, "ssm-al")
    if data.protocol != "split" and "all-pairs" in methods:
        methods.remove("all-pairs")  # no held-out items would be left to retrieve over
    for name in ("ssm-al+captions", "product+all-captions"):
        if not data.has_captions and name in methods:
            methods.remove(name)  # one text per image: identical to ssm-al / product
    say = progress or (lambda msg: log.info(msg))
    pool = data.pool_rows()
    # per-seed results: results[(method, n, selection)][seed] = {(direction, metric): value}
    results: dict[tuple, dict[int, dict]] = {}
    n_eval: dict[tuple, int] = {}
    t0 = time.perf_counter()
    for n in ns:
        for seed in seeds:
            for sel in select:
                feats = data.image_features if sel == "image" else data.text_features
                run = _run(data, pool, KMedoidsSelector(n, random_state=seed).fit(feats[pool]), eval_captions)
                zrun = None   # the medoids of the z-scored features, made when a method asks
                todo: list[tuple[str, _Run, Callable]] = [("ssm-al", run, lambda r: _faithful(r, measure))]
                if "cca" in methods:
                    todo.append(("cca", run, _cca))
                for name in methods:
                    if name in product_like and sel != product_select:
                        continue
                    if name in variants:
                        cfg = variants[name]
                        if measure != cfg.measure:
                            cfg = replace(cfg, measure=measure)
                        if cfg.zscore_medoids and zrun is None:
                            zrun = _run(data, pool, KMedoidsSelector(n, random_state=seed, standardize=True)
                                        .fit(feats[pool]), eval_captions)
                        todo.append((name, zrun if cfg.zscore_medoids else run,
                                     lambda r, c=cfg: _enhanced(r, c)))
                for name, r, fn in todo:
                    out = fn(r)
                    if out is None:
                        continue
                    results.setdefault((name, n, sel), {})[seed] = _scores(data, *out, r, metric, ks)
                    n_eval[(name, n, sel)] = len(r.eval_rows)
            if "random-refs" in methods:
                refs = pool[random_references(len(pool), n, seed)]
                rows = _eval_rows(data, refs)
                run = _make_run(data, refs, rows, rows, eval_captions)
                results.setdefault(("random-refs", n, None), {})[seed] = _scores(
                    data, *_faithful(run, measure), run, metric, ks)
                n_eval[("random-refs", n, None)] = len(rows)
        say(f"{data.name}: N={n} done ({time.perf_counter() - t0:.1f} s)")
    if "all-pairs" in methods:
        rows = _eval_rows(data, pool)
        run = _make_run(data, pool, rows, np.zeros(0, dtype=np.int64), eval_captions)
        results[("all-pairs", len(pool), None)] = {-1: _scores(data, *_faithful(run, measure), run, metric, ks)}
        n_eval[("all-pairs", len(pool), None)] = len(rows)
    return _rows(data, results, n_eval, select, seeds, metric, eval_captions)


def _metric_order(m: str):
    if m == "map":
        return (0, 0)
    return (1, int(m.split("@")[1])) if m.startswith("recall@") else (2, 0)  # rsum last


def _primary(metric: str, keys) -> str:
    if metric == "map":
        return "map"
    return "recall@10" if any(k[1] == "recall@10" for k in keys) else sorted({k[1] for k in keys})[-1]


def _rows(data, results, n_eval, select, seeds, metric, eval_captions) -> list[dict]:
    rows = []

    def emit(method, n, per_seed: dict, selection=None, key=None):
        seed_list = [s for s in seeds if s in per_seed] if -1 not in per_seed else []
        values_by_key = {}
        for s in (seed_list or [-1]):
            for k, v in per_seed[s].items():
                values_by_key.setdefault(k, []).append(float(v))
        for (direction, m), values in sorted(values_by_key.items(), key=lambda kv: (kv[0][0], _metric_order(kv[0][1]))):
            row = {"dataset": data.name, "method": method, "n": int(n), "direction": direction,
                   "metric": m, "value": float(np.mean(values)), "std": float(np.std(values)),
                   "seeds": seed_list, "values": values, "n_eval": int(n_eval[key]),
                   "protocol": data.protocol, "eval_captions": eval_captions}
            if selection is not None:
                row["selection"] = selection
            rows.append(row)

    names = []
    for (name, n, sel) in results:
        if name not in names:
            names.append(name)
    for name in names:
        ns = sorted({n for (m, n, _) in results if m == name})
        for n in ns:
            sels = [s for s in select if (name, n, s) in results]
            if not sels:  # selection-free methods
                emit(name, n, results[(name, n, None)], key=(name, n, None))
                continue
            primary = _primary(metric, next(iter(results[(name, n, sels[0])].values())).keys())

            def score(sel):
                per_seed = results[(name, n, sel)]
                return np.mean([np.mean([v for (d, m), v in r.items() if m == primary]) for r in per_seed.values()])

            best = max(sels, key=score)
            emit(name, n, results[(name, n, best)], selection=best, key=(name, n, best))
            if name == "ssm-al":
                for sel in sels:
                    emit(f"ssm-al-{SELECTIONS[sel]}", n, results[(name, n, sel)], key=(name, n, sel))
    return rows
