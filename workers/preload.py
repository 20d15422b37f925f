"""The worker classes ``xmodal worker`` runs: rq's ``Worker`` (a forked work horse per job) with the
rebuild's imports done once in the parent, and rq's ``SimpleWorker`` (``--simple``); both run the
recovery sweep.

Each job runs in a forked work horse. Without this, every horse imports the job's modules anew;
the Label Studio client took ~1 s when it was built on label-studio-sdk, a third of the label -> new
predictions latency.
Imported here, the modules are already in every fork. Use with the stock command:
``rq worker --worker-class workers.preload.PreloadedWorker``.

Both classes start :func:`workers.recovery.start_sweeper` when they start working: a daemon thread
of the worker process that re-enqueues rebuilds whose process died (its own Redis pool; the forked
horses never use it).
"""

import contextlib
import logging

import httpx
from rq.utils import now
from rq.worker import SimpleWorker, Worker

import workers.problems  # noqa: F401
import workers.rebuild  # noqa: F401
import workers.resync  # noqa: F401
import xmodal.labelstudio.client  # noqa: F401  (httpx)
import xmodal.labelstudio.push  # noqa: F401
from workers.recovery import start_sweeper
from xmodal import settings
from xmodal.logfmt import kv, setup_worker_logging

log = logging.getLogger(__name__)


def scheduler_check_s() -> float:
    """``$XMODAL_SCHEDULER_CHECK_S`` (default 15): how often a worker checks its scheduler child."""
    return settings.get("XMODAL_SCHEDULER_CHECK_S")

# MiniLM (the English default text encoder) embeds written references in the rebuild on ONNX
# Runtime + tokenizers: importing them and the encoder module took 0.4-0.6 s on the busy 2-core
# host, the first text after that 0.7-0.8 s (loading the cached graph), 1.0-1.3 s without the
# imports. Imported once in the parent, a horse pays only the load. Only imports: no session is
# created in the parent, so no thread pool exists to be lost in the fork.
with contextlib.suppress(ImportError):
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    import xmodal.encoders.minilm  # noqa: F401


# httpx imports its transports (h11, certifi, ssl contexts) when its first Client is made: 0.46 s
# on the busy host, paid by every work horse's push before its first request to Label Studio
# (0.6-1.1 s of "prep" before the first PATCH in the browser test); a throwaway client made and
# closed here (no connection, no thread) leaves the horses 0.04 s.
httpx.Client().close()


class _Recovering:
    """Mixin for rq worker classes: the project's log lines and the recovery sweep."""

    def work(self, *args, **kwargs):
        setup_worker_logging()
        start_sweeper(self)
        return super().work(*args, **kwargs)

    # -- commands (kill-horse, shutdown) listened for with a short wait --------------------------
    # rq 3.0 reads its command channel with get_message(timeout=60) in a thread; at exit it
    # unsubscribes, then stops and joins that thread. Unsubscribed, redis-py's get_message waits on
    # its "subscribed" event for the whole timeout, and a burst worker that had finished its jobs
    # hung at exit for up to 60 s (46 s seen; the fault tests kill it at 60 s). One second is
    # still prompt for a command.
    def subscribe(self):
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler)

    # -- a dead scheduler child is restarted ---------------------------------------------------
    # rq restarts its scheduler process only in its maintenance step, every 10 minutes, and an
    # idle worker wakes from BLPOP every 405 s: scheduled retries sat overdue for minutes. The
    # worker now wakes every $XMODAL_SCHEDULER_CHECK_S (default 15) and runs rq's own restart
    # (maintenance in the main process) as soon as the scheduler child is gone.
    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        if timeout is not None:
            timeout = max(1, min(int(timeout), int(scheduler_check_s())))
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    @property
    def should_run_maintenance_tasks(self):
        if super().should_run_maintenance_tasks:
            return True
        sched = getattr(self, "scheduler", None)
        if sched is None or (sched._process is not None and sched._process.is_alive()):
            return False
        if (now() - self.last_cleaned_at).total_seconds() < scheduler_check_s():
            return False
        if sched._process is not None:   # ours died (the lock of another worker's is not ours)
            log.warning(kv("worker.scheduler_dead", worker=self.name, pid=sched._process.pid,
                           exitcode=sched._process.exitcode, action="restarting"))
        return True


class PreloadedWorker(_Recovering, Worker):
    """rq's ``Worker``; importing this module is most of the point, plus the recovery sweep."""


class RecoveringSimpleWorker(_Recovering, SimpleWorker):
    """rq's ``SimpleWorker`` (jobs in the worker process) with the recovery sweep."""
