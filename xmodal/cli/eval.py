"""``xmodal eval``: the paper's evaluation protocol on a data set (MAP / Recall@K per N)."""

from __future__ import annotations

import argparse
import sys
import time

from xmodal.encoders import DEFAULT_TEXT_ENCODER, TEXT_ENCODER_HELP
from xmodal.errors import ConfigError

DATASETS = ("wikipedia", "coco-mini", "pascal-dscmr", "folder")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, e.g. 10,50,100 (got {text!r})") from None
    if not values:
        raise ConfigError(f"{what} is empty")
    return values


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate SSM-AL and baselines with the paper's protocol (MAP / Recall@K vs N)",
        description="Choose N reference pairs by k-medoids (the oracle returns their true pair), "
        "represent every item by SSR and rank the other modality; report MAP (labelled data) or "
        "Recall@K (coupling only) per N and direction for SSM-AL_I/_T, random references, CCA, "
        "all pairs and the beyond-paper variants, averaged over seeds.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which loader reads --data")
    p.add_argument("--data", default=None,
                   help="data set folder (default for named data sets: ../shared/data/<name> "
                   "next to the repository)")
    p.add_argument("--n", default="10,50,100", help="numbers of reference pairs N (default 10,50,100)")
    p.add_argument("--select", default="both", choices=("image", "text", "both"),
                   help="cluster images (SSM-AL_I), texts (SSM-AL_T) or both (default)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="k-medoids / random-reference seeds (default 0,1,2,3,4)")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods (default: all that apply), e.g. ssm-al,cca,random-refs")
    p.add_argument("--metric", default="auto", choices=("auto", "map", "recall"),
                   help="auto: MAP when both modalities are labelled, else Recall@K (default)")
    p.add_argument("--measure", default="pearson", choices=("pearson", "cosine"),
                   help="SSR similarity: pearson (eq. 32, default) or cosine (eq. 33)")
    p.add_argument("--image-encoder", default=None,
                   help="image encoder for raw images (default efficientnet-lite0)")
    p.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, metavar="NAME",
                   help="text encoder for raw texts: " + TEXT_ENCODER_HELP)
    p.add_argument("--captions", default="all", choices=("first", "all"),
                   help="coco-mini: load the first or all 5 captions (the +captions variants average all of "
                   "a reference's captions; --eval-captions all scores them all). Default all")
    p.add_argument("--eval-captions", default="first", choices=("first", "all"),
                   help="first: one text per image is a target/query (default, the numbers of earlier "
                   "runs); all: the standard protocol, every text of the evaluated images (image→text "
                   "hits when any of its texts is in the top K; every text is a text→image query)")
    p.add_argument("--holdout", type=int, default=None, metavar="N",
                   help="data without a split: hold N images (and their texts) out, chosen by "
                   "--split-seed; references are chosen among the rest and retrieval runs over the "
                   "held-out images only")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --holdout draw (default 0)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default: the encoders' cache)")
    p.add_argument("--json", dest="json_out", default=None, help="write the result rows to this JSON file")
    p.add_argument("--markdown", default=None, help="write the tables to this Markdown file")
    p.add_argument("--plot", default=None, help="write MAP–N / Recall@10–N curves to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmodal import datasets
    from xmodal.encoders import check_encoder_name
    from xmodal.evaluation import protocol, report

    check_encoder_name("image", args.image_encoder)  # before the data set is loaded and embedded
    check_encoder_name("text", args.text_encoder)
    ns = _int_list(args.n, "--n")
    seeds = _int_list(args.seeds, "--seeds")
    select = ("image", "text") if args.select == "both" else (args.select,)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    start = time.perf_counter()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    kwargs = {"captions": args.captions} if args.dataset == "coco-mini" else {}
    dataset = datasets.load(args.dataset, args.data, **kwargs)
    say(dataset.describe())
    data = protocol.prepare(dataset, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
                            cache_dir=args.cache_dir, progress=not args.quiet)
    if args.holdout is not None:
        from xmodal.evaluation.splits import hold_out

        data = hold_out(data, args.holdout, args.split_seed)
        say(f"held out {args.holdout} images (split seed {args.split_seed}); references among the "
            f"other {int(data.train.sum())}")
    if data.meta.get("text_encoder_choice"):
        say(f"text encoder: {data.meta['text_encoder_name']} ({data.meta['text_encoder_choice']})")
    protocol.check_sizes(data, ns)  # before any long computation
    say(f"{data.n} coupled items, protocol {data.protocol}, "
        f"{'MAP' if data.labelled and args.metric != 'recall' else 'Recall@K'}; seeds {seeds}")
    rows = protocol.evaluate(data, ns, seeds=seeds, select=select, methods=methods,
                             metric=args.metric, measure=args.measure, eval_captions=args.eval_captions,
                             progress=say)
    table = report.markdown_table(rows) + "\n" + report.delta_table(rows)
    print(table)
    if args.json_out:
        report.write_json(rows, args.json_out)
        say(f"wrote {len(rows)} rows to {args.json_out}")
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
        say(f"wrote {args.markdown}")
    if args.plot:
        report.plot(rows, args.plot)
        say(f"wrote {args.plot}")
    say(f"done in {time.perf_counter() - start:.1f} s")
    return 0
