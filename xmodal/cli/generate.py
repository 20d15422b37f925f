"""``xmodal generate``: write the synthetic shapes data set in the generic folder format."""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a small synthetic labelled image/caption data set (generic folder format)",
        description="Render scenes of coloured shapes with matching captions into OUT/images/, "
        "OUT/texts.jsonl and OUT/images.jsonl. The same parameters give byte-identical files.",
    )
    p.add_argument("--out", required=True, help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--n", type=int, default=300, help="number of images (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--captions-per-image", type=int, default=1,
                   help="captions written for every image (default 1)")
    p.add_argument("--label-by", default="shape", choices=("shape", "colour", "shape+colour"),
                   help="what the class label of an item is (default: shape)")
    p.add_argument("--lang", default="en", choices=("en", "zh", "ja"),   # synthetic.LANGS
                   help="language of the captions: en (default), zh (Chinese) or ja (Japanese), the "
                        "last two written without spaces")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmodal.datasets import synthetic

    start = time.perf_counter()
    out = synthetic.generate(args.out, n=args.n, seed=args.seed, image_size=args.size,
                             captions_per_image=args.captions_per_image, label_by=args.label_by,
                             overwrite=args.overwrite, lang=args.lang)
    n_texts = args.n * args.captions_per_image
    print(f"wrote {args.n} images and {n_texts} captions to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
