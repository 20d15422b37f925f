"""The worker class ``xmodal worker`` runs: :class:`workers.preload.PreloadedWorker` (a forked work
horse per job, rebuild imports done once in the parent), except that feature-extraction chunks
(:func:`workers.embed.embed_chunk`) run in the worker process itself, as rq's ``SimpleWorker``
would run them.

Why: a work horse starts from the parent's state, so each chunk would rebuild its encoder — 0.2 s
for the EfficientNet-Lite0 ONNX session, 1.5 s to load GloVe for SIF (measured on this 2-core
machine), against ~2 s of work in a 64-image chunk and ~30 ms in a 512-text one. In the parent the
encoder is built on the first chunk and kept (``workers.embed._ENCODERS``). The price: a chunk that
crashes the interpreter (not an exception: those are caught and retried) takes the worker down;
rebuild jobs keep their isolation. Stock command: ``rq worker --worker-class
workers.embed_worker.EmbedWorker xmodal xmodal-embed``.
"""

from __future__ import annotations

from rq.worker import SimpleWorker, WorkerStatus

from workers.preload import PreloadedWorker
from xmodal.encoders.distributed import EMBED_FUNC


class EmbedWorker(PreloadedWorker):
    def execute_job(self, job, queue):
        if job.func_name != EMBED_FUNC:
            return super().execute_job(job, queue)
        execution = self.prepare_execution(job)
        self.perform_job(job, queue, execution)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.func_name == EMBED_FUNC:  # no horse to monitor: one heartbeat covers the chunk
            return SimpleWorker.get_heartbeat_ttl(self, job, working_time)
        return super().get_heartbeat_ttl(job, working_time)
