"""``xmodal bench``: throughput and latency of encoders, k-medoids, SSR rebuilds and queries;
``xmodal bench load``: many simulated annotators against the real backend and workers
(:mod:`xmodal.benchmarks.load`)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from xmodal.errors import ConfigError


def _pairs(text: str, what: str) -> list[tuple[int, int]]:
    """"5000:50,20000:200" -> [(5000, 50), (20000, 200)]"""
    try:
        out = []
        for part in text.split(","):
            n, k = part.split(":")
            out.append((int(n), int(k)))
        return out
    except ValueError:
        raise ConfigError(f"{what} must look like 5000:50,20000:200 (n:k pairs), not {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark feature extraction, k-medoids, SSR rebuilds and query latency",
        description="Prints a table of medians over repeats. Synthetic features are non-negative "
        "1280-d mixtures (like pooled CNN features) and unit 384-d mixtures (like sentence "
        "embeddings).",
    )
    p.add_argument("--quick", action="store_true",
                   help="small sizes (k-medoids 2000:20,5000:50; SSR n=20000 k=100; fewer items)")
    p.add_argument("--kmedoids", default=None, help="n:k sizes for k-medoids (default 5000:50,20000:200)")
    p.add_argument("--ssr-n", type=int, default=None, help="items per modality for the SSR rebuild (default 100000)")
    p.add_argument("--ssr-k", type=int, default=None, help="references for the SSR rebuild (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per timing; the median is shown (default 3)")
    p.add_argument("--queries", type=int, default=200, help="single queries for the latency (default 200)")
    p.add_argument("--images", type=int, default=None, help="images for the encoder throughput (default 64)")
    p.add_argument("--texts", type=int, default=None, help="texts for the encoder throughput (default 500)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: encoders,kmedoids,ssr,index")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON")
    p.set_defaults(func=run)
    # `xmodal bench load ...`; plain `xmodal bench [flags]` stays the component benchmark
    sections = p.add_subparsers(dest="section", metavar="SECTION", required=False)
    load = sections.add_parser(
        "load", help="50 simulated annotators against `xmodal serve` + `xmodal worker` on loopback",
        description="Load benchmark: concurrent simulated annotators post Label Studio webhooks to a "
        "real `xmodal serve` (gunicorn) while real `xmodal worker` processes rebuild a synthetic "
        "project; prints webhook latency, coalescing, label -> new predictions latency and lost "
        "pairs next to their goals. Stops by itself and stops every process it started.",
        epilog=LOAD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    from xmodal.benchmarks.load import add_arguments

    add_arguments(load)
    load.set_defaults(func=run_load)


LOAD_EXAMPLES = """\
examples:
  xmodal bench load                                  # 50 annotators, 60 s, 10k items, 2 workers
  xmodal bench load --annotators 5 --seconds 5 --items 500 --tasks 50   # a quick look
  xmodal bench load --json load.json

Redis: $REDIS_URL (loopback only) or the embedded server, under a private key prefix and queue.
Goals printed next to the figures: webhook p99 < 50 ms, no pair lost, label -> prediction p95 < 5 s.
"""


def run_load(args: argparse.Namespace) -> int:
    from xmodal.benchmarks.load import main_args

    return main_args(args)


def run(args: argparse.Namespace) -> int:
    from xmodal.benchmarks import speed as bench

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"encoders", "kmedoids", "ssr", "index"}
    if unknown:
        raise ConfigError(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; "
                          "use encoders, kmedoids, ssr, index")
    if args.repeats < 1 or args.queries < 1:
        raise ConfigError("--repeats and --queries must be at least 1")
    quick = args.quick
    sizes = _pairs(args.kmedoids, "--kmedoids") if args.kmedoids else (
        [(2000, 20), (5000, 50)] if quick else [(5000, 50), (20000, 200)])
    ssr_n = args.ssr_n or (20000 if quick else 100_000)
    ssr_k = args.ssr_k or (100 if quick else 200)
    n_images = args.images or (16 if quick else 64)
    n_texts = args.texts or (200 if quick else 500)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say(f"machine: {bench.machine()}")
    results = []
    start = time.perf_counter()
    if "encoders" not in skip:
        say("encoders ...")
        results += bench.bench_encoders(n_images=n_images, n_texts=n_texts, repeats=args.repeats)
    if "kmedoids" not in skip:
        say(f"k-medoids {sizes} ...")
        results += bench.bench_kmedoids(sizes, repeats=args.repeats)
    if "ssr" not in skip:
        say(f"SSR n={ssr_n} k={ssr_k} ...")
        results += bench.bench_ssr(ssr_n, ssr_k, repeats=args.repeats, queries=args.queries)
    if "index" not in skip:
        say(f"index rebuilds (faithful, default) n={ssr_n} k={ssr_k} ...")
        results += bench.bench_index(ssr_n, ssr_k, repeats=args.repeats)
    print(bench.format_table(results))
    say(f"done in {time.perf_counter() - start:.0f} s")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"machine": bench.machine(), "results": [r.as_dict() for r in results]}, fh, indent=1)
    return 0
