"""What the route handlers share: Redis, MODEL_DIR, the queue, project resolution."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import redis

from backend.projects import ProjectResolver
from xmodal.jobs.queueing import enqueue_rebuild, queue_name
from xmodal.redis_conn import get_redis, model_dir

log = logging.getLogger(__name__)


@dataclass
class Backend:
    redis: redis.Redis
    model_dir: Path
    queue: str
    default_project: str | None = None
    text_encoder_loader: object = None
    image_encoder_loader: object = None
    resolver: ProjectResolver = field(init=False)

    def __post_init__(self):
        self.resolver = ProjectResolver(self.redis, self.model_dir, self.default_project)

    @classmethod
    def from_config(cls, config: dict) -> Backend:
        client = config.get("REDIS")
        if client is None:
            client = get_redis(config.get("REDIS_URL") or None)
        base = Path(config.get("MODEL_DIR") or model_dir())
        return cls(redis=client, model_dir=base, queue=config.get("XMODAL_QUEUE") or queue_name(),
                   default_project=config.get("XMODAL_PROJECT") or None,
                   text_encoder_loader=config.get("TEXT_ENCODER_LOADER"),
                   image_encoder_loader=config.get("IMAGE_ENCODER_LOADER"))

    def enqueue_rebuild(self, project: str, reason: str) -> tuple[str, bool]:
        return enqueue_rebuild(self.redis, project, reason=reason, queue=self.queue)
