"""The ``xmodal`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``; heavy dependencies
(torch, encoders, the Label Studio client) are imported inside the command functions, so that
``xmodal --help`` stays fast. Examples for every command's ``--help`` are kept together below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import redis

from xmodal.errors import XmodalError

# sub-command name -> module that defines register(subparsers)
COMMANDS = {
    "eval": "xmodal.cli.eval",
    "bench": "xmodal.cli.bench",
    "embed": "xmodal.cli.embed",
    "serve": "xmodal.cli.serve",
    "worker": "xmodal.cli.worker",
    "project": "xmodal.cli.project",
    "items": "xmodal.cli.items",
    "demo": "xmodal.cli.demo",
    "generate": "xmodal.cli.generate",
    "simulate": "xmodal.cli.simulate",
    "status": "xmodal.cli.status",
}

# the examples shown at the end of each command's --help
EXAMPLES = {
    "eval": """examples:
  xmodal eval --dataset wikipedia --data ../shared/data/wikipedia_rasiwasia --n 10,50,100 --json wiki.json
  xmodal eval --dataset coco-mini --data ../shared/data/coco_mini --n 10,20,50 --seeds 0,1,2 \\
      --json coco.json --markdown coco.md --plot coco.png
  xmodal eval --dataset folder --data my_data --n 20 --select text --text-encoder minilm --json out.json""",
    "bench": """examples:
  xmodal bench --quick            # small sizes, a minute
  xmodal bench --json bench.json  # full sizes (k-medoids at n=20k takes about a minute)
  xmodal bench load               # 50 annotators x 60 s against `xmodal serve` + 2 workers, 10k items
  xmodal bench load --annotators 5 --seconds 5 --items 500 --tasks 50   # the same, small""",
    "serve": """examples:
  xmodal serve --host 0.0.0.0 --port 9090 --workers 2
  BASIC_AUTH_USER=ls BASIC_AUTH_PASS=secret REDIS_URL=redis://localhost:6379/0 xmodal serve
  gunicorn -w 2 -b 0.0.0.0:9090 backend.wsgi:app   # the same app under your own gunicorn""",
    "worker": """examples:
  xmodal worker                   # one worker; start more to scale out
  xmodal worker --burst           # process what is queued, then exit
  REDIS_URL=redis://redis:6379/0 xmodal worker --name worker-2""",
    "project": """examples:
  xmodal project create --data my_data --name products --k 50 \\
      --label-studio-url http://localhost:8080 --api-key $TOKEN --backend-url http://localhost:9090
  xmodal project create --data my_data --name products --k auto    # workspace only, k by canopy
  xmodal project grow --name products --k 80                        # more tasks, pairs kept
  xmodal project resync --name products     # replay Label Studio's annotations (lost webhooks)
  xmodal project list""",
    "demo": """examples:
  xmodal demo                                     # synthetic data, 30 labels, report in reports/
  xmodal demo --data ../shared/data/coco_mini --labels 40
  xmodal demo --with-label-studio --keep-serving  # then: xmodal demo --stop""",
    "status": """examples:
  xmodal status
  xmodal status --json""",
    "generate": """examples:
  xmodal generate --out shapes --n 300 --seed 0
  xmodal demo --data shapes""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmodal",
        description="Image<->text retrieval from a handful of labels (SSM-AL), "
        "with a Label Studio ML backend that improves with every label.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        importlib.import_module(module_name).register(sub)
        command = sub.choices[name]
        command.epilog = "\n\n".join(filter(None, [command.epilog, EXAMPLES.get(name)]))
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # commands may quieten loggers for their own output; put them back afterwards (main() also
    # runs in-process, in tests)
    quieted = ("httpx", "matplotlib")
    saved = {name: logging.getLogger(name).level for name in (*quieted, "xmodal")}
    if not args.debug:
        # one INFO line per HTTP request (project create: ~60) and matplotlib's font-cache notice
        # bury what the commands print; --debug shows them
        for name in quieted:
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return _run(args)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except XmodalError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except redis.ConnectionError as exc:
        if args.debug:
            raise
        print(f"error: cannot reach Redis ({exc}); start it or fix REDIS_URL, or unset REDIS_URL "
              "to use the embedded server", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
