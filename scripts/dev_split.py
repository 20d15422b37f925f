"""Research runs on a development split of a folder data set (issue 23): ideas measured before any
of them goes into the product, never on the held-out test images.

The split is docs/results.md's: ``--holdout 1000 --split-seed 0`` holds the test images out (not
read again here); inside the other images, 1,000 are held out again (seed 100) as the development
set and the references are chosen among the rest. Every caption is a text (the standard protocol);
rsum and Recall@10 of ``product`` (a new project's defaults, ``xmodal eval``'s code) per variant,
mean of the seeds.

    python scripts/dev_split.py smoothing --data ../shared/data/flickr8k_train [--map]
    python scripts/dev_split.py selection --data ../shared/data/flickr8k_train

``smoothing``: each score averaged with those of the item's nearest neighbours in its own
modality's features (images, texts or both; k neighbours, mixed at weight a). ``selection``: the
references chosen by TypiClust (k-means clusters, the most typical point of each: the highest
inverse mean distance to its 20 nearest neighbours) or ProbCover (greedy coverage of balls of the
median 10-NN distance) instead of k-medoids, all on the z-scored image features.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from xmodal import datasets
from xmodal.core.medoids import KMedoidsSelector
from xmodal.core.ssr import l2_normalize
from xmodal.evaluation import protocol as P
from xmodal.evaluation.splits import hold_out


def development_split(data):
    data = hold_out(data, 1000, 0)
    keep = np.flatnonzero(data.train)             # the test images are dropped here
    sub = replace(data, image_features=data.image_features[keep], text_features=data.text_features[keep],
                  image_labels=None, text_labels=None, train=None,
                  caption_groups=[data.caption_groups[r] for r in keep],
                  image_bridge=None if data.image_bridge is None else data.image_bridge[keep])
    return hold_out(sub, 1000, 100)


def neighbours(F, k):
    F = l2_normalize(F)
    S = F @ F.T
    return np.argpartition(-S, k, axis=1)[:, :k + 1]     # k neighbours and the item itself


def smoothing_variants(run, S):
    out = {"product": S}
    for k in (5, 10):
        ni, nt = neighbours(run.data.image_features[run.eval_rows], k), neighbours(run.texts, k)
        by_image, by_text = S[ni].mean(axis=1), S.T[nt].mean(axis=1).T
        for a in (0.5, 1.0):
            out[f"images k{k} a{a}"] = (1 - a) * S + a * by_image
            out[f"texts k{k} a{a}"] = (1 - a) * S + a * by_text
            out[f"both k{k} a{a}"] = (1 - a) * S + a * (by_image + by_text) / 2
    return out


def selections(F, n, seed):
    from sklearn.cluster import KMeans

    Z = (F - F.mean(0)) / (F.std(0) + 1e-6)
    Zn = l2_normalize(Z.astype(np.float32))
    D = 1 - Zn @ Zn.T
    np.fill_diagonal(D, np.inf)
    typical = 1.0 / (np.partition(D, 20, axis=1)[:, :20].mean(1) + 1e-9)
    labels = KMeans(n, n_init=1, random_state=seed).fit(Zn).labels_
    typiclust = [m[np.argmax(typical[m])] for m in (np.flatnonzero(labels == c) for c in range(n))]
    cover = D <= np.median(np.sort(D, axis=1)[:, :10].mean(1))
    np.fill_diagonal(cover, True)
    covered, probcover = np.zeros(len(D), bool), []
    for _ in range(n):
        j = int(np.argmax((cover & ~covered).sum(1)))
        probcover.append(j)
        covered |= cover[j]
    return {"k-medoids": KMedoidsSelector(n, random_state=seed, standardize=True).fit(F).medoid_indices_,
            "typiclust": np.array(typiclust), "probcover": np.array(probcover)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", choices=("smoothing", "selection"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", default="20,100")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--map", action="store_true", help="product with the opt-in self-trained map")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    data = development_split(P.prepare(datasets.load("folder", args.data), cache_dir=args.cache_dir))
    _, cfg = P.product_settings()
    cfg = replace(cfg, self_map=args.map)
    pool = data.pool_rows()
    results: dict = {}
    for n in map(int, args.n.split(",")):
        for seed in map(int, args.seeds.split(",")):
            if args.experiment == "smoothing":
                sel = KMedoidsSelector(n, random_state=seed, standardize=True).fit(data.image_features[pool])
                run = P._run(data, pool, sel, "all")
                S = np.asarray(P._enhanced(run, cfg)[0], np.float64)
                scored = {name: (run, V) for name, V in smoothing_variants(run, S).items()}
            else:
                scored = {}
                for name, idx in selections(data.image_features[pool].astype(np.float64), n, seed).items():
                    run = P._run(data, pool, SimpleNamespace(medoid_indices_=np.asarray(idx)), "all")
                    scored[name] = (run, P._enhanced(run, cfg)[0])
            for name, (run, V) in scored.items():
                m = P._scores(data, V, V.T, run, "recall", P.DEFAULT_KS)
                results.setdefault((n, name), []).append(m)
    for (n, name), ms in results.items():
        mean = lambda key: np.mean([m[key] for m in ms])  # noqa: E731
        print(f"N={n:<4} {name:18s} rsum {mean(('both', 'rsum')):.3f}  R@10 i2t {mean(('i2t', 'recall@10')):.3f} "
              f"t2i {mean(('t2i', 'recall@10')):.3f}")


if __name__ == "__main__":
    main()
