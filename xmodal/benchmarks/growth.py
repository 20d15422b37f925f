"""What a rebuild costs when items are added (docs/operations.md, "Adding items").

``python -m xmodal.benchmarks.growth real --data ../shared/data/flickr8k_train --base 5000 --add 1000``:
the issue's benchmark on real photos and captions. A project of ``base`` images and their first
captions (2 x 5,000 = 10,000 items; created with the warm feature cache, as a project that exists)
gets ``labels`` oracle pairs on its first medoids; then ``add`` more images and their first
captions are added with an empty feature cache (embedded as new items are) and the index rebuilt:
the seconds until they are searchable. A project created from scratch on the grown folder with
the same pairs is the reference: Recall@10 of both, over every grown item (the labelled ones
excluded), must agree within 2%.

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


def _folder(root: Path, rows: list[tuple[str, str, str, Path]]) -> Path:
    """A generic-format folder of ``(image id, text id, text, image file)`` rows (images copied:
    the loader refuses links out of its folder)."""
    import json
    import shutil

    (root / "images").mkdir(parents=True)
    with open(root / "texts.jsonl", "w", encoding="utf-8") as fh:
        for image_id, text_id, text, src in rows:
            shutil.copyfile(src, root / "images" / image_id)
            fh.write(json.dumps({"id": text_id, "text": text, "image": image_id}) + "\n")
    return root


def real(data: str, base: int, add: int, labels: int, seed: int = 0) -> dict:
    """The real-data benchmark of the module doc; returns its numbers."""
    from xmodal.datasets import load_data
    from xmodal.evaluation.ground_truth import GroundTruth
    from xmodal.index.files import write_snapshot
    from xmodal.labelstudio.project import ProjectSpec, create_project
    from xmodal.project.items import add_items

    ds, _ = load_data(data, "first")
    order = np.random.default_rng(seed).permutation(ds.n_images)
    if base + add > len(order):
        raise SystemExit(f"--base {base} + --add {add} is more than the {len(order)} images of {data}")
    first = {int(i): int(t) for i, t in reversed(ds.pairs)}    # each image's first caption
    rows = [(ds.image_ids[i], ds.text_ids[first[i]], ds.texts[first[i]], Path(ds.image_paths[i]))
            for i in order[:base + add].tolist() if i in first]
    out = {"data": str(data), "base_items": 2 * base, "added_items": 2 * add, "labels": labels}
    with tempfile.TemporaryDirectory(prefix="xmodal-growth-real-") as tmp:
        tmp = Path(tmp)
        grown_ds, _ = load_data(_folder(tmp / "grown", rows), "first")
        spec = dict(k=labels, model_dir=tmp / "models")
        ws = create_project(ProjectSpec(name="grown", data=_folder(tmp / "base", rows[:base]), **spec)).ws
        match = {r[0]: r[1] for r in rows}
        pairs = [{"annotation_id": a + 1, "image_id": m, "text_id": match[m], "received_at": 0.0}
                 for a, m in enumerate(ws.medoid_ids()[:labels])]
        build_snapshot(ws, 1, pairs)
        t0 = time.perf_counter()   # new items, embedded without a cache, until the index holds them
        change = add_items(ws, {r[0]: str(tmp / "grown" / "images" / r[0]) for r in rows[base:]},
                           {r[1]: r[2] for r in rows[base:]}, feature_cache=tmp / "cold")
        t1 = time.perf_counter()
        grown, _ = build_snapshot(ws, 2, pairs)
        write_snapshot(ws, grown)
        out["until_searchable_s"] = round(time.perf_counter() - t0, 1)
        out["embed_and_append_s"], out["rebuild_and_write_s"] = round(t1 - t0, 1), round(time.perf_counter() - t1, 1)
        out["steps"] = change.seconds
        scratch_ws = create_project(ProjectSpec(name="scratch", data=tmp / "grown", **spec)).ws
        scratch, _ = build_snapshot(scratch_ws, 1, pairs)
        gt = GroundTruth(grown_ds)
        refs = ({p["image_id"] for p in pairs}, {p["text_id"] for p in pairs})
        out["recall@10_grown"] = gt.recall_at_10_excluding(grown, *refs)
        out["recall@10_scratch"] = gt.recall_at_10_excluding(scratch, *refs)
    return out


def main(argv=None) -> None:
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv[:1] == ["real"]:
        import json

        p = argparse.ArgumentParser(prog="python -m xmodal.benchmarks.growth real")
        p.add_argument("--data", required=True, help="a folder in the generic format with several thousand photos")
        p.add_argument("--base", type=int, default=5000, help="images (and as many captions) the project starts with")
        p.add_argument("--add", type=int, default=1000, help="images (and as many captions) added")
        p.add_argument("--labels", type=int, default=100, help="oracle pairs on the first medoids")
        a = p.parse_args(argv[1:])
        out = real(a.data, a.base, a.add, a.labels)
        print(json.dumps(out, indent=1))
        g, s = out["recall@10_grown"], out["recall@10_scratch"]
        worst = max(abs(g[d] - s[d]) / max(s[d], 1e-9) for d in ("i2t", "t2i"))
        print(f"{out['added_items']} items added to {out['base_items']}: searchable after "
              f"{out['until_searchable_s']} s (goal < 60 s); Recall@10 i2t/t2i grown {g['i2t']}/{g['t2i']}, "
              f"from scratch {s['i2t']}/{s['t2i']} ({worst:.1%} apart, goal <= 2%)")
        return
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
