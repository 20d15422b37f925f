"""``xmodal simulate``: the simulated-annotator loop benchmark (:mod:`xmodal.benchmarks.loop`)."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  xmodal simulate                                   # 10k synthetic items, 30 labels, /predict
  xmodal simulate --data synthetic --n 10000 --labels 30 --json sim.json
  xmodal simulate --data /data/coco_mini --labels 20
  xmodal simulate --data /data/coco_mini --labels 20 \\
      --label-studio-url http://127.0.0.1:8080 --api-key TOKEN   # latency to Label Studio
  xmodal simulate --data synthetic --n 5000 --labels 30 --busy 1 \\
      --label-studio-url http://127.0.0.1:8080 --api-key TOKEN   # 10k items, a CPU-bound neighbour

Each label goes through the real path: a Label Studio-shaped webhook to `xmodal serve`, the pair
in Redis, a rebuild by `xmodal worker`, the new index version visible in /predict (or Label
Studio's model_version). Prints Recall@10 after every label and the label -> new predictions
latency (median, p95). Uses $REDIS_URL (or the embedded server) under its own key prefix.
"""


def register(subparsers) -> None:
    from xmodal.benchmarks.loop import add_arguments

    p = subparsers.add_parser("simulate", help="simulated annotator: quality per label and "
                              "label -> prediction latency through the real loop",
                              description="Simulated-annotator benchmark of the labelling loop.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from xmodal.benchmarks.loop import main_args

    return main_args(args)
