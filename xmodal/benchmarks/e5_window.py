"""How much of a long text matters for retrieval: e5's MAP at token windows 128/256/512
(``python -m xmodal.benchmarks.e5_window [--per-class 6]``).

Long texts are assembled from Pascal Sentences (shared data): each is the 25 captions of 5 images
of one class (~240 words, 20 classes); text→text retrieval by class, MAP over every text as a
query. The texts are English: the shared data has no long multilingual texts with labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def long_texts(per_class: int = 6, images_per_text: int = 5, seed: int = 0):
    from xmodal.datasets import DEFAULT_DATA_ROOT

    path = DEFAULT_DATA_ROOT / "pascal_sentences" / "pascal_sentences.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the shared Pascal Sentences data)")
    by_class: dict[str, list[str]] = {}
    for _, entry in sorted(json.loads(path.read_text()).items()):
        by_class.setdefault(entry["category"], []).append(" ".join(entry["captions"]))
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for cls, captions in sorted(by_class.items()):
        order = rng.permutation(len(captions))
        for t in range(per_class):
            texts.append(" ".join(captions[i] for i in order[t * images_per_text:(t + 1) * images_per_text]))
            labels.append(cls)
    return texts, np.asarray(labels)


def mean_average_precision(E: np.ndarray, labels: np.ndarray) -> float:
    """Each row a query against all the others (cosine; rows are unit norm)."""
    S = E @ E.T
    np.fill_diagonal(S, -np.inf)
    aps = []
    for i in range(len(E)):
        relevant = labels[np.argsort(-S[i])[:-1]] == labels[i]
        aps.append((np.cumsum(relevant)[relevant] / (np.flatnonzero(relevant) + 1)).mean())
    return float(np.mean(aps))


def main(argv=None) -> int:
    from xmodal.encoders.e5 import E5Encoder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=6, help="long texts per class (default 6: 120 texts)")
    p.add_argument("--windows", default="128,256,512")
    args = p.parse_args(argv)
    texts, labels = long_texts(args.per_class)
    print(f"{len(texts)} texts, {np.mean([len(t.split()) for t in texts]):.0f} words each on average")
    for window in (int(w) for w in args.windows.split(",")):
        enc = E5Encoder(max_tokens=window, progress=False)
        t0 = time.perf_counter()
        E = enc.transform(texts)
        rate = len(texts) / (time.perf_counter() - t0)
        print(f"max_tokens={window}: MAP {mean_average_precision(E, labels):.4f}  {rate:.2f} texts/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
