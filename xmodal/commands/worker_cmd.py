"""``xmodal worker``: the stock ``rq worker`` on the rebuild queue (scale by starting more)."""

from __future__ import annotations

import logging
import os
import shutil
import sys

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("worker", help="run an RQ worker that rebuilds indexes",
                              description="Thin wrapper over `rq worker`: the queue is $XMODAL_QUEUE "
                              "(default xmodal), Redis is $REDIS_URL or the embedded server.")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--queue", default=None, help="queue name (default $XMODAL_QUEUE or xmodal)")
    p.add_argument("--name", default=None, help="worker name (default: rq's)")
    p.add_argument("--max-jobs", type=int, default=None)
    p.add_argument("--simple", action="store_true",
                   help="run jobs in the worker process (rq's SimpleWorker) instead of a forked "
                   "work horse per job: no per-job re-import of numpy and the index (~0.03 s "
                   "instead of ~0.45 s per rebuild on 2 cores), but a crashing job takes the worker down")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=run)


def rq_argv(args) -> list[str]:
    from workers.queueing import queue_name

    exe = shutil.which("rq", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    cmd = [exe] if exe else [sys.executable, "-c", "from rq.cli import main; main()"]
    # --with-scheduler: retries with a backoff interval are scheduled jobs
    # the Redis URL goes in $RQ_REDIS_URL (set by run), not argv: no password in `ps`
    argv = cmd + ["worker", "--with-scheduler"]
    # forked work horses inherit the rebuild's imports from the parent (see workers.preload)
    worker_class = "rq.worker.SimpleWorker" if getattr(args, "simple", False) else "workers.preload.PreloadedWorker"
    argv += ["--worker-class", worker_class]
    if args.burst:
        argv.append("--burst")
    if args.name:
        argv += ["--name", args.name]
    if args.max_jobs:
        argv += ["--max-jobs", str(args.max_jobs)]
    return argv + [args.queue or queue_name()]


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
