"""``xmodal items add|remove``: grow or shrink a live project's item set (workers/growth.py)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

EXAMPLES = """\
examples:
  xmodal items add --project coco --data /data/coco_more          # the generic folder format
  xmodal items add --project coco --data /data/coco_more --workers-embed
  xmodal items remove --project coco --image img/0001.jpg --text t17

Only what is new is added: an id the project has with the same content is skipped, an id it has
with other content stops the command before anything is written. The new items are embedded, the
index is rebuilt at once (searchable, ranked in Label Studio's pages and predictions), and new
items far from every medoid get new medoid tasks (XMODAL_NEW_MEDOID_PERCENTILE). A removed
item's stored pairs are kept as problems (xmodal status). Same MODEL_DIR and REDIS_URL as the
backend and the workers.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("items", help="add items to a live project, or remove some",
                              description="Add images and texts to a live project, or remove some.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="items_command", metavar="ACTION")
    a = sub.add_parser("add", help="add the new items of a data folder", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--project", required=True, help="project name")
    a.add_argument("--data", required=True, metavar="PATH",
                   help="a folder in the generic format (images/ + texts.jsonl or texts.csv)")
    a.add_argument("--workers-embed", action="store_true",
                   help="embed on the `xmodal worker` processes (chunked jobs) instead of here")
    a.add_argument("--cache-dir", default=None, metavar="DIR", help="feature cache folder")
    a.add_argument("--model-dir", default=None, metavar="DIR", help="default: $MODEL_DIR")
    a.add_argument("--json", action="store_true", help="print what was done as JSON")
    a.set_defaults(func=run_add)
    r = sub.add_parser("remove", help="remove items by id", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--project", required=True, help="project name")
    r.add_argument("--image", action="append", default=[], metavar="ID", help="an image id (repeatable)")
    r.add_argument("--text", action="append", default=[], metavar="ID", help="a text id (repeatable)")
    r.add_argument("--model-dir", default=None, metavar="DIR", help="default: $MODEL_DIR")
    r.add_argument("--json", action="store_true", help="print what was done as JSON")
    r.set_defaults(func=run_remove)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _setup(args):
    import logging

    from xmodal.errors import ConfigError
    from xmodal.project.workspace import Workspace

    if not getattr(args, "debug", False):
        for name in ("xmodal", "workers"):   # the command prints its own steps
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.model_dir:
        os.environ["MODEL_DIR"] = str(Path(args.model_dir).resolve())
    ws = Workspace.for_project(args.project)
    if not ws.exists():
        raise ConfigError(f"no project {args.project!r} under {ws.root.parent}; create it with "
                          "`xmodal project create`")
    say = (lambda _m: None) if args.json else (lambda m: print(m, flush=True))
    return ws, say


def run_add(args) -> int:
    from workers.growth import run_pending
    from xmodal.datasets import load_data
    from xmodal.project.items import new_items
    from xmodal.project.pending import PendingItems
    from xmodal.redis_conn import get_redis

    ws, say = _setup(args)
    ds, fmt = load_data(args.data, "all")
    images = dict(zip(ds.image_ids, (str(p) for p in ds.image_paths)))
    texts = dict(zip(ds.text_ids, ds.texts))
    say(f"{args.data}: {len(images)} images, {len(texts)} texts ({fmt})")
    fresh_i, fresh_t, _ = new_items(ws, images, texts)   # a conflict stops here: nothing recorded
    r = get_redis()
    pending = PendingItems(r, ws.name)
    pending.put("image", fresh_i, "cli")
    pending.put("text", fresh_t, "cli")
    out = run_pending(r, ws, workers_embed=args.workers_embed, feature_cache=args.cache_dir, say=say,
                      progress=not args.json)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        added = out.get("added") or {}
        print(f"{ws.name}: added {added.get('image', 0)} images and {added.get('text', 0)} texts"
              + (f"; index v{out['version']}" if out.get("version") else "")
              + (f"; new medoid tasks: {len(out.get('new_medoids') or [])}" if out.get("new_medoids") else ""))
    return 0


def run_remove(args) -> int:
    from workers.growth import remove
    from xmodal.redis_conn import get_redis

    ws, say = _setup(args)
    out = remove(get_redis(), ws, args.image, args.text, say=say)
    print(json.dumps(out, indent=1, default=str) if args.json else
          f"{ws.name}: removed {out['removed']['image']} images and {out['removed']['text']} texts")
    return 0
