"""``xmodal worker``: the stock ``rq worker`` on the rebuild queue, then the feature-extraction
queue (scale by starting more; rq takes its queues in priority order, so rebuilds go first).
"""

from __future__ import annotations

import os
import sys

from workers.command import rq_argv


def register(subparsers) -> None:
    p = subparsers.add_parser("worker", help="run an RQ worker that rebuilds indexes",
                              description="Thin wrapper over `rq worker`: the queue is $XMODAL_QUEUE "
                              "(default xmodal), Redis is $REDIS_URL or the embedded server.")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--queue", default=None, metavar="NAME[,NAME]",
                   help="queues in priority order (default: $XMODAL_QUEUE or xmodal, then "
                   "$XMODAL_EMBED_QUEUE or xmodal-embed: rebuilds first, then feature-extraction "
                   "chunks of `xmodal embed --distributed`); e.g. --queue xmodal-embed for an "
                   "embedding-only worker")
    p.add_argument("--name", default=None, help="worker name (default: rq's)")
    p.add_argument("--max-jobs", type=int, default=None)
    p.add_argument("--simple", action="store_true",
                   help="run jobs in the worker process (rq's SimpleWorker) instead of a forked "
                   "work horse per job: no per-job re-import of numpy and the index (~0.03 s "
                   "instead of ~0.45 s per rebuild on 2 cores), but a crashing job takes the worker down")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=run)


def run(args) -> int:
    from xmodal.redis_conn import redis_url

    argv = rq_argv(args)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    env = dict(os.environ, RQ_REDIS_URL=redis_url())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
    return 0  # not reached
