"""The worker classes ``xmodal worker`` runs, which outlive a Redis restart.

rq's work loop quits on any exception it does not expect: its dequeue waits out a Redis outage
(with a backoff), but the other steps of the loop do not, so a Redis that went away while a
worker took a job (preparing its execution, watching its work horse, the heartbeat after it, the
maintenance step) ended the worker ("found an unhandled exception, quitting..."), and with it
every later rebuild until someone restarted it (an adversarial run: ``redis-cli shutdown``, the
worker gone, the index stale for minutes).

:class:`Reconnecting` catches a Redis connection or timeout error in those steps, lets a work
horse that still runs finish (it has its own connection and its own job timeout), then waits for
Redis with a backoff (1 s doubling to 30 s; ``event=worker.redis_lost`` then
``event=worker.redis_back``) and goes on with the loop. Nothing is lost with the job it was taking:
the recovery sweep (:mod:`workers.recovery`) re-enqueues a rebuild whose job is lost (popped
from the queue, never started) or died (started, no lease). A SIGTERM meanwhile still stops the
worker. Stock command: ``rq worker --worker-class workers.reconnect.ReconnectingWorker``.
"""

from __future__ import annotations

import logging
import time

import redis

from workers.embed_worker import EmbedWorker
from workers.preload import RecoveringSimpleWorker
from xmodal import settings
from xmodal.logfmt import kv

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
MAX_BACKOFF_S = 30.0


class Reconnecting:
    """Mixin for rq worker classes (see the module doc)."""

    def execute_job(self, job, queue):
        pause = settings.get("XMODAL_TEST_DEQUEUE_PAUSE_S")
        if pause:   # test hook: a job taken from the queue, not yet recorded as started
            time.sleep(pause)
        return self._surviving_redis("taking a job", super().execute_job, job, queue, job_id=job.id)

    def heartbeat(self, *args, **kwargs):
        return self._surviving_redis("heartbeat", super().heartbeat, *args, **kwargs)

    def check_for_suspension(self, *args, **kwargs):
        return self._surviving_redis("suspension check", super().check_for_suspension, *args, **kwargs)

    def run_maintenance_tasks(self, *args, **kwargs):
        return self._surviving_redis("maintenance", super().run_maintenance_tasks, *args, **kwargs)

    def _surviving_redis(self, step: str, fn, *args, job_id: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            log.warning(kv("worker.redis_lost", worker=self.name, step=step, job=job_id,
                           error=f"{type(exc).__name__}: {exc}"))
        if self.horse_pid:   # a rebuild still running: let it end on its own (lease, job timeout)
            self.wait_for_horse()
            self._horse_pid = 0
        self._wait_for_redis()
        return None

    def _wait_for_redis(self) -> None:
        delay, t0 = 1.0, time.monotonic()
        while not self._stop_requested:
            try:
                self.connection.ping()
            except REDIS_ERRORS:
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            log.warning(kv("worker.redis_back", worker=self.name, waited_s=round(time.monotonic() - t0, 1)))
            return


class ReconnectingWorker(Reconnecting, EmbedWorker):
    """The default: :class:`workers.embed_worker.EmbedWorker` (a forked horse per rebuild,
    embed chunks in the worker) that outlives a Redis restart."""


class ReconnectingSimpleWorker(Reconnecting, RecoveringSimpleWorker):
    """``xmodal worker --simple``: jobs in the worker process, outliving a Redis restart."""
