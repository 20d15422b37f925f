"""What a rebuild costs when items are added (docs/operations.md, "Adding items").

``python -m xmodal.benchmarks.growth --n 10000 --grow 1000``: a workspace of ``n`` items with
synthetic features of the default encoders' widths (1280-d images, 384-d texts) and 20 pairs,
indexed with the default enhancements (z-scored columns, CSLS); the same after ``grow`` more
items; the median of ``--repeat`` builds of each. Appending codes to a published index instead
would not give the codes a rebuild gives: the column statistics and CSLS terms are over every
item.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.index.build import build_snapshot
from xmodal.project.workspace import Workspace


def _workspace(root: Path, n: int, seed: int = 0) -> Workspace:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 32))
    X = (Z @ rng.normal(size=(32, 1280)) + 0.15 * rng.normal(size=(n, 1280))).astype(np.float32)
    Y = (Z @ rng.normal(size=(32, 384)) + 0.15 * rng.normal(size=(n, 384))).astype(np.float32)
    ws = Workspace(root / f"n{n}")
    ws.save_config({"select": "image", "encoders": {"image": "synthetic", "text": "synthetic"},
                    "enhance": ["zscore", "csls"]})
    ids_i, ids_t = [f"i{i}" for i in range(n)], [f"t{i}" for i in range(n)]
    ws.save_items(ids_i, ids_i, ids_t, ids_t)
    ws.save_features("image", X, "synthetic")
    ws.save_features("text", Y, "synthetic")
    return ws


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--grow", type=int, default=1_000)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    pairs = [{"annotation_id": a, "image_id": f"i{a}", "text_id": f"t{a}"} for a in range(args.pairs)]
    with tempfile.TemporaryDirectory(prefix="xmodal-growth-") as tmp:
        for n in (args.n, args.n + args.grow):
            ws = _workspace(Path(tmp), n)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                build_snapshot(ws, 1, pairs)
                times.append(time.perf_counter() - t0)
            print(f"{n:>7} items, {args.pairs} pairs: rebuild median {statistics.median(times):.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)


if __name__ == "__main__":
    main()
