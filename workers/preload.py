"""The worker classes ``xmodal worker`` runs: rq's ``Worker`` (a forked work horse per job) with the
rebuild's imports done once in the parent, and rq's ``SimpleWorker`` (``--simple``); both run the
recovery sweep.

Each job runs in a forked work horse. Without this, every horse imports the job's modules anew;
the Label Studio SDK alone takes ~1 s, which was a third of the label -> new predictions latency.
Imported here, the modules are already in every fork. Use with the stock command:
``rq worker --worker-class workers.preload.PreloadedWorker``.

Both classes start :func:`workers.recovery.start_sweeper` when they start working: a daemon thread
of the worker process that re-enqueues rebuilds whose process died (its own Redis pool; the forked
horses never use it).
"""

import contextlib

from rq.worker import SimpleWorker, Worker

import workers.problems  # noqa: F401
import workers.rebuild  # noqa: F401
import workers.resync  # noqa: F401
import xmodal.labelstudio.client  # noqa: F401  (label_studio_sdk)
import xmodal.labelstudio.push  # noqa: F401
from workers.recovery import start_sweeper
from xmodal.logfmt import setup_worker_logging

# MiniLM (the English default text encoder) embeds written references in the rebuild: importing
# PyTorch and sentence-transformers takes ~10 s here, loading the model from its package 0.3 s.
# Imported once in the parent, a horse pays only the 0.3 s. Only imports: no model runs in the
# parent, so no thread pool exists to be lost in the fork.
with contextlib.suppress(ImportError):
    import sentence_transformers  # noqa: F401


class _Recovering:
    """Mixin for rq worker classes: the project's log lines and the recovery sweep."""

    def work(self, *args, **kwargs):
        setup_worker_logging()
        start_sweeper(self)
        return super().work(*args, **kwargs)


class PreloadedWorker(_Recovering, Worker):
    """rq's ``Worker``; importing this module is most of the point, plus the recovery sweep."""


class RecoveringSimpleWorker(_Recovering, SimpleWorker):
    """rq's ``SimpleWorker`` (jobs in the worker process) with the recovery sweep."""
