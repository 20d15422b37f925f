"""The command line of an ``xmodal worker``: the stock ``rq worker`` with this project's worker
classes, the scheduler (retries with backoff) and the queues in priority order.
"""

from __future__ import annotations

import os
import shutil
import sys


def rq_argv(args) -> list[str]:
    from xmodal.jobs.queueing import queue_name

    exe = shutil.which("rq", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    cmd = [exe] if exe else [sys.executable, "-c", "from rq.cli import main; main()"]
    # --with-scheduler: retries with a backoff interval are scheduled jobs
    # the Redis URL goes in $RQ_REDIS_URL (set by run), not argv: no password in `ps`
    argv = cmd + ["worker", "--with-scheduler"]
    # forked work horses inherit the rebuild's imports from the parent (see workers.preload);
    # embed chunks run in the parent, keeping their encoder between chunks (workers.embed_worker)
    # both outlive a Redis restart (workers.reconnect)
    worker_class = "workers.reconnect.ReconnectingSimpleWorker" if getattr(args, "simple", False) \
        else "workers.reconnect.ReconnectingWorker"
    argv += ["--worker-class", worker_class]
    if args.burst:
        argv.append("--burst")
    if args.name:
        argv += ["--name", args.name]
    if args.max_jobs:
        argv += ["--max-jobs", str(args.max_jobs)]
    if args.queue:
        queues = [q.strip() for q in args.queue.split(",") if q.strip()]
    else:
        from xmodal.encoders.distributed import embed_queue_name

        queues = [queue_name(), embed_queue_name()]
    return argv + queues
