"""Reference pairs collected from Label Studio annotations, stored in Redis.

One record per Label Studio annotation id in the hash ``P:{project}:pairs`` (JSON values):

- ``state="pair"``: ``{annotation_id, task_id, image_id, text_id, updated_at, received_at,
  source}``; a pair whose text is a description the annotator wrote has ``text_id`` None and the
  text in ``description`` (a reference text of its own, :mod:`xmodal.index.references`).
  ``source`` says how the annotator gave it: ``choice``, ``search``, ``pasted_id``, ``pasted_text``, ``written``;
- ``state="none"``: the annotation names no pair on purpose: the task was skipped (cancelled). It
  may later be UPDATED into a pair;
- ``state="problem"``: the annotation could not be turned into a pair (an id that is not in the
  project, "none of these" with nothing written, a task whose item is gone...): ``problem`` (a
  kind), ``message`` (for the team) and ``given`` (what the annotator entered, kept whole).
  ``xmodal status`` lists them and the task is flagged in Label Studio; a later UPDATED that names
  a pair replaces the record;
- ``state="deleted"``: a tombstone. Label Studio never reuses an annotation id and cannot
  undelete, so a tombstone is final: a late or replayed CREATED/UPDATED does not resurrect it.

Every write is one Lua script (atomic, so concurrent webhooks cannot interleave):

- idempotent: the same event posted twice stores one record and keeps the first ``received_at``
  (which is what the label->prediction latency is measured from); an UPDATED that names the same
  pair again (a review re-submitting the answer) only moves ``updated_at`` and is not a change;
- out-of-order safe: an event whose ``updated_at`` (Label Studio's clock, epoch seconds) is older
  than the stored one is ignored; a ``updated_at`` more than :data:`FUTURE_SLACK_S` after the
  event's receive time is clamped to the receive time (else it would freeze the annotation);
- ``P:{project}:pairs:changes`` is incremented on every change of the set of live pairs (a record
  that was or becomes a pair); a rebuild records the value it saw, so "is the index up to date?" is
  one comparison, and a skip or a problem never looks like a pair waiting for a rebuild.

Nothing is deleted or overwritten before the incoming event has been validated by the caller;
a bad request therefore never loses a stored pair.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import datetime

import redis

from xmodal.redis_conn import pkey

# returns: stored | same | stale | tombstoned
# "same" also when only updated_at moved (a review re-submitting the answer): the newer time is
# kept (so an older event arriving later stays stale) with the first received_at, and the change
# counter is not incremented, so no rebuild is asked for. received_at is spliced in as the stored
# text: cjson would re-encode the epoch floats with 14 digits.
_PUT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local was_pair = false
if cur then
  local c = cjson.decode(cur)
  if c['state'] == 'deleted' then return 'tombstoned' end
  if c['digest'] == ARGV[4] then return 'same' end
  if tonumber(c['updated_at']) > tonumber(ARGV[3]) then return 'stale' end
  if c['content'] == ARGV[5] then
    local first = string.match(cur, '"received_at": ([^,}]+)')
    local rec = ARGV[2]
    if first then rec = string.gsub(rec, '"received_at": [^,}]+', '"received_at": ' .. first, 1) end
    redis.call('HSET', KEYS[1], ARGV[1], rec)
    return 'same'
  end
  was_pair = c['state'] == 'pair'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if was_pair or ARGV[6] == 'pair' then redis.call('INCR', KEYS[2]) end
return 'stored'
"""

# returns: deleted | already | absent
_DELETE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local state = 'absent'
if cur then
  local c = cjson.decode(cur)
  if c['state'] == 'deleted' then return 'already' end
  state = c['state']
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if state == 'pair' then redis.call('INCR', KEYS[2]) end
if cur then return 'deleted' end
return 'absent'
"""

# tombstone every live annotation of the given tasks; returns the annotation ids
_DELETE_TASKS = """
local tasks = {}
for i = 2, #ARGV do tasks[ARGV[i]] = true; redis.call('SADD', KEYS[3], ARGV[i]) end
local all = redis.call('HGETALL', KEYS[1])
local gone = {}
local changed = false
for i = 1, #all, 2 do
  local c = cjson.decode(all[i + 1])
  if c['state'] ~= 'deleted' and tasks[tostring(c['task_id'])] then
    if c['state'] == 'pair' then changed = true end
    c['state'] = 'deleted'
    c['deleted_at'] = tonumber(ARGV[1])
    c['reason'] = 'task deleted'
    redis.call('HSET', KEYS[1], all[i], cjson.encode(c))
    table.insert(gone, all[i])
  end
end
if changed then redis.call('INCR', KEYS[2]) end
return gone
"""


FUTURE_SLACK_S = 300.0   # how far Label Studio's clock may run ahead of ours


def parse_time(value) -> float | None:
    """Label Studio timestamps (ISO 8601, 'Z' suffix) or epoch numbers -> epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            out = float(value)
        except OverflowError:   # an integer of hundreds of digits
            return None
    elif isinstance(value, str):
        try:
            out = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            try:
                out = float(value)
            except ValueError:
                return None
    else:
        return None
    # inf/nan compare as nothing (Lua's tonumber('inf') is nil): no time, the receive time is used
    return out if math.isfinite(out) else None


def _content(state: str, task_id, image_id, text_id, extra: str | None = None) -> str:
    """What the annotation says, whatever its time: equal contents are not a pair change.
    ``extra``: a description's or a problem's text (hashed: records stay small to compare)."""
    tail = "" if extra is None else "|" + hashlib.sha256(extra.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{state}|{task_id}|{image_id}|{text_id}{tail}"


class PairStore:
    """Reference pairs of one project, keyed by Label Studio annotation id."""

    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis = redis_client
        self.project = project
        self.key = pkey(project, "pairs")
        self.changes_key = pkey(project, "pairs", "changes")
        self.deleted_tasks_key = pkey(project, "tasks", "deleted")
        self._put = redis_client.register_script(_PUT)
        self._delete = redis_client.register_script(_DELETE)
        self._delete_tasks = redis_client.register_script(_DELETE_TASKS)

    # -- writes --------------------------------------------------------------------------
    def _write(self, annotation_id, state: str, task_id, image_id, text_id, updated_at,
               received_at, extra: str | None = None, **fields) -> str:
        now = time.time()
        received_at = received_at or now
        updated = parse_time(updated_at)
        if updated is None or updated > received_at + FUTURE_SLACK_S:
            # a time from the future (9999-12-31) would make every later real edit 'stale':
            # beyond the clock skew allowed, the event counts as made when it arrived
            updated = received_at
        content = _content(state, task_id, image_id, text_id, extra)
        record = {
            "annotation_id": int(annotation_id), "task_id": None if task_id is None else int(task_id),
            "state": state, "image_id": image_id, "text_id": text_id,
            "updated_at": updated, "received_at": received_at,
            "digest": f"{content}|{updated!r}", "content": content,
            **{k: v for k, v in fields.items() if v is not None},
        }
        return self._put(keys=[self.key, self.changes_key],
                         args=[str(int(annotation_id)), json.dumps(record), repr(updated),
                               record["digest"], record["content"], state]).decode()

    def put(self, annotation_id: int, task_id: int, image_id: str, text_id: str | None,
            updated_at=None, received_at: float | None = None, *, description: str | None = None,
            source: str | None = None) -> str:
        """Store/replace the pair of an annotation: ``text_id``, or a ``description`` the
        annotator wrote (then ``text_id`` is None).

        Returns ``stored`` (changed), ``same`` (idempotent repeat), ``stale`` (older than the
        stored version, ignored) or ``tombstoned`` (the annotation was deleted, ignored).
        """
        if (text_id is None) == (description is None):
            raise ValueError("a pair names a text id or a description, exactly one of them")
        return self._write(annotation_id, "pair", task_id, str(image_id),
                           None if text_id is None else str(text_id), updated_at, received_at,
                           extra=description, description=description, source=source)

    def mark_none(self, annotation_id: int, task_id: int, updated_at=None,
                  received_at: float | None = None) -> str:
        """The annotation names no pair on purpose (the task was skipped): drop its pair, if any."""
        return self._write(annotation_id, "none", task_id, None, None, updated_at, received_at)

    def mark_problem(self, annotation_id: int, task_id: int | None, problem: str, message: str,
                     given: str | None = None, item_id: str | None = None, updated_at=None,
                     received_at: float | None = None) -> str:
        """The annotation could not become a pair: keep what was entered and why (see the module
        doc); drops its pair, if any, like any other answer that replaces it."""
        return self._write(annotation_id, "problem", task_id, None, None, updated_at, received_at,
                           extra=f"{problem}|{given}", problem=problem, message=message,
                           given=given, item_id=item_id)

    def delete(self, annotation_id: int, deleted_at: float | None = None) -> str:
        """Tombstone an annotation: ``deleted``, ``already`` (repeat) or ``absent`` (never seen;
        the tombstone is still written so that a late CREATED cannot bring it back)."""
        return self.delete_many([annotation_id], deleted_at)[0]

    def delete_many(self, annotation_ids, deleted_at: float | None = None) -> list[str]:
        """:meth:`delete` for each id, in pipelined batches: one round trip per 1000 ids, not two
        per id (200,000 ids of one ANNOTATIONS_DELETED took 59 s one by one)."""
        ids = [int(a) for a in annotation_ids]
        at = deleted_at or time.time()
        out: list[str] = []
        for start in range(0, len(ids), 1000):
            part = ids[start:start + 1000]
            pipe = self.redis.pipeline(transaction=False)
            for a, raw in zip(part, self.redis.hmget(self.key, [str(a) for a in part])):
                record = {"annotation_id": a, "state": "deleted", "deleted_at": at}
                if raw:
                    cur = json.loads(raw)
                    record.update(task_id=cur.get("task_id"), image_id=cur.get("image_id"),
                                  text_id=cur.get("text_id"), updated_at=cur.get("updated_at"))
                self._delete(keys=[self.key, self.changes_key], args=[str(a), json.dumps(record)],
                             client=pipe)
            out += [r.decode() for r in pipe.execute()]
        return out

    def delete_tasks(self, task_ids) -> list[int]:
        """Label Studio deleted these tasks (and their annotations): tombstone them."""
        task_ids = [str(int(t)) for t in task_ids]
        if not task_ids:
            return []
        gone = self._delete_tasks(keys=[self.key, self.changes_key, self.deleted_tasks_key],
                                  args=[repr(time.time()), *task_ids])
        return [int(g) for g in gone]

    def is_task_deleted(self, task_id) -> bool:
        return bool(self.redis.sismember(self.deleted_tasks_key, str(int(task_id))))

    # -- reads ---------------------------------------------------------------------------
    def get(self, annotation_id) -> dict | None:
        raw = self.redis.hget(self.key, str(int(annotation_id)))
        return json.loads(raw) if raw else None

    def records(self) -> dict[int, dict]:
        """Every record, tombstones included."""
        return {int(k): json.loads(v) for k, v in self.redis.hgetall(self.key).items()}

    def all_pairs(self) -> list[dict]:
        """Live pairs, oldest annotation first."""
        return pairs_from_records(self.redis.hgetall(self.key))

    def count(self) -> int:
        return len(self.all_pairs())

    def changes(self) -> int:
        return int(self.redis.get(self.changes_key) or 0)

    def annotated_task_ids(self) -> set[int]:
        """Tasks with a live annotation (a pair, a skip or a problem)."""
        return {r["task_id"] for r in self.records().values()
                if r.get("state") in ("pair", "none", "problem") and r.get("task_id") is not None}

    def problems(self) -> list[dict]:
        """Annotations that could not become a pair, oldest first."""
        return sorted((r for r in self.records().values() if r.get("state") == "problem"),
                      key=lambda r: r.get("received_at") or 0)


def pairs_from_records(raw: dict) -> list[dict]:
    """Decode an HGETALL of the pairs hash into the live pairs (annotation id order)."""
    out = []
    for _, value in raw.items():
        rec = json.loads(value)
        if rec.get("state") == "pair":
            out.append(rec)
    out.sort(key=lambda r: r["annotation_id"])
    return out
