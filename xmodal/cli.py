"""The ``xmodal`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module is imported
lazily so that ``xmodal --help`` stays fast and a missing optional dependency only breaks its own
command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xmodal.errors import XmodalError

# sub-command name -> module that defines register(subparsers)
COMMANDS = {
    "eval": "xmodal.commands.eval_cmd",
    "bench": "xmodal.commands.bench_cmd",
    "embed": "xmodal.commands.embed_cmd",
    "serve": "xmodal.commands.serve_cmd",
    "worker": "xmodal.commands.worker_cmd",
    "project": "xmodal.commands.project_cmd",
    "demo": "xmodal.commands.demo_cmd",
    "generate": "xmodal.commands.generate_cmd",
    "simulate": "xmodal.commands.simulate_cmd",
    "status": "xmodal.commands.status_cmd",
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
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("xmodal.commands"):
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except XmodalError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
