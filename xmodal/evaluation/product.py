"""The index enhancements measured through the product path, not the evaluation code.

``measure_product(data, enhance)`` does what a user does: ``xmodal project create`` (bootstrap:
embed, k-medoids, workspace config with ``--enhance``), then the rebuild worker's
``build_snapshot`` over the first ``labels`` medoids in anytime order answered by the oracle (the
item's first ground-truth match), then Recall@K of the :class:`~xmodal.index.snapshot.IndexSnapshot`
as it serves /predict, /search and Label Studio (``scores``: z-score statistics and CSLS included).

    python -m xmodal.evaluation.product --data ../shared/data/coco_mini --labels 20

compares the faithful index with a new project's default enhancements (``--enhance``, default
``zscore-medoids,zscore,csls,bridge``; docs/results.md, "Beyond the paper").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile


def measure_product(data, enhance: str | None, *, labels: int = 20, name: str = "product",
                    model_dir=None, image_encoder: str = "efficientnet-lite0",
                    text_encoder: str = "auto", captions: str = "all", select: str = "image",
                    feature_cache=None, seed: int = 0) -> dict:
    """Metrics of the product index after ``labels`` oracle pairs; see the module doc."""
    from xmodal.datasets import load_data
    from xmodal.evaluation.ground_truth import GroundTruth
    from xmodal.index.build import build_snapshot
    from xmodal.labelstudio.project import ProjectSpec, create_project

    with tempfile.TemporaryDirectory(prefix="xmodal-product-") as tmp:
        spec = ProjectSpec(name=name, data=data, select=select, k=labels, image_encoder=image_encoder,
                           text_encoder=text_encoder, captions=captions, enhance=enhance or "",
                           model_dir=model_dir or tmp, feature_cache=feature_cache, seed=seed)
        ws = create_project(spec).ws
        ds, _ = load_data(data, captions)
        gt = GroundTruth(ds)
        rows = ws.row_of(select)
        pairs = []
        for j, item in enumerate(ws.medoid_ids()[:labels]):
            match = gt.match(select, rows[item])
            if match is None:
                continue
            i, t = (rows[item], match) if select == "image" else (match, rows[item])
            pairs.append({"annotation_id": j + 1, "image_id": ws.ids("image")[i],
                          "text_id": ws.ids("text")[t]})
        snap, _ = build_snapshot(ws, 1, pairs)
        out = gt.evaluate_index(snap)
        out.update(pairs=snap.n_pairs, enhance=snap.enhance,
                   hubness_s=snap.meta.get("hubness_s"), bridge_weight=snap.bridge_weight,
                   images=len(snap.image_ids),
                   texts=len(snap.text_ids))
        return out


def main(argv=None) -> int:
    from xmodal.project.workspace import DEFAULT_CONFIG

    p = argparse.ArgumentParser(prog="python -m xmodal.evaluation.product", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--labels", type=int, default=20)
    p.add_argument("--enhance", default=",".join(DEFAULT_CONFIG["enhance"]),
                   help="compared with the faithful index (default: a new project's)")
    p.add_argument("--image-encoder", default="efficientnet-lite0")
    p.add_argument("--text-encoder", default="auto")
    p.add_argument("--captions", default="all", choices=("first", "all"))
    p.add_argument("--select", default="image", choices=("image", "text"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    kw = dict(labels=args.labels, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
              captions=args.captions, select=args.select)
    rows = {"faithful": measure_product(args.data, None, **kw),
            args.enhance: measure_product(args.data, args.enhance, **kw)}
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    base = rows["faithful"]
    for label, m in rows.items():
        parts = []
        for d in ("i2t", "t2i"):
            v = m.get(f"recall@10_{d}")
            gain = "" if label == "faithful" or not base.get(f"recall@10_{d}") else \
                f" ({100 * (v / base[f'recall@10_{d}'] - 1):+.1f}%)"
            parts.append(f"R@10 {d} {v:.3f}{gain}")
        bridge = f", bridge weight {m['bridge_weight']:g}" if m.get("bridge_weight") else ""
        print(f"{label:<14} {m['pairs']} pairs, {m['images']} images / {m['texts']} texts: "
              + ", ".join(parts) + bridge)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
