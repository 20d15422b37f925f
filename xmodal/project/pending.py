"""Items accepted for a project but not yet embedded (``POST /items``, Label Studio's
``TASKS_CREATED``, ``xmodal items add`` while it runs): the hash ``P:{project}:items:pending``,
``<modality>:<id>`` -> ``{"content", "source", "received_at"}`` (JSON).

The backend writes here and enqueues the growth job (:mod:`workers.growth`), which adds them
(:mod:`xmodal.project.items`) and then takes off exactly the entries it added: an entry written
again meanwhile (the same id with other content) stays for the next job. ``xmodal status`` and
``/metrics`` show the count (``xmodal_items_pending``).
"""

from __future__ import annotations

import json
import time

import redis

from xmodal.redis_conn import pkey

# take the entries a job added, unless one was written again since (KEYS[1]: the hash;
# ARGV: field, value, field, value, ...)
_DONE = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""


class PendingItems:
    """The items of one project waiting to be embedded."""

    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis = redis_client
        self.key = pkey(project, "items", "pending")

    def put(self, modality: str, items: dict[str, str], source: str) -> int:
        """Record ``items`` (id -> path or text); returns how many were not pending yet."""
        if not items:
            return 0
        now = time.time()
        mapping = {f"{modality}:{i}": json.dumps({"content": c, "source": source, "received_at": now},
                                                 ensure_ascii=False) for i, c in items.items()}
        pipe = self.redis.pipeline()
        for f in mapping:
            pipe.hexists(self.key, f)
        fresh = sum(1 for exists in pipe.execute() if not exists)
        self.redis.hset(self.key, mapping=mapping)
        return fresh

    def snapshot(self) -> tuple[dict[str, str], dict[str, str], dict[bytes, bytes]]:
        """``(images, texts, raw)``: what is pending now; give ``raw`` to :meth:`done`."""
        raw = self.redis.hgetall(self.key)
        out: dict[str, dict[str, str]] = {"image": {}, "text": {}}
        for f, v in raw.items():
            modality, _, item_id = f.decode("utf-8", "surrogatepass").partition(":")
            if modality in out:
                out[modality][item_id] = json.loads(v)["content"]
        return out["image"], out["text"], raw

    def done(self, raw: dict[bytes, bytes]) -> int:
        if not raw:
            return 0
        args = [x for kv in raw.items() for x in kv]
        return int(self.redis.eval(_DONE, 1, self.key, *args))

    def drop(self, modality: str, ids) -> int:
        """Take ``ids`` off before any job added them (their source was deleted); how many were."""
        fields = [f"{modality}:{i}" for i in ids]
        return int(self.redis.hdel(self.key, *fields)) if fields else 0

    def counts(self) -> dict[str, int]:
        out = {"image": 0, "text": 0}
        for f in self.redis.hkeys(self.key):
            modality = f.split(b":", 1)[0].decode()
            if modality in out:
                out[modality] += 1
        return out


def record_run(redis_client: redis.Redis, project: str, out: dict) -> None:
    """What the last growth run did (``P:{project}:items:last``; ``xmodal status``)."""
    redis_client.set(pkey(project, "items", "last"), json.dumps(out, default=str))


def last_run(redis_client: redis.Redis, project: str) -> dict | None:
    raw = redis_client.get(pkey(project, "items", "last"))
    return json.loads(raw) if raw else None
