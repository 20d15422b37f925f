"""Reference pairs collected from Label Studio annotations, stored in Redis.

One record per Label Studio annotation id in the hash ``P:{project}:pairs`` (JSON values):

- ``state="pair"``: ``{annotation_id, task_id, image_id, text_id, updated_at, received_at,
  source}``; a pair whose text is a description the annotator wrote has ``text_id`` None and the
  text in ``description`` (a reference text of its own, :mod:`xmodal.project.references`).
  ``source`` says how the annotator gave it: ``choice``, ``search``, ``pasted_id``,
  ``pasted_text``, ``written``;
- ``state="none"``: the annotation names no pair on purpose: the task was skipped (cancelled). It
  may later be UPDATED into a pair;
- ``state="problem"``: the annotation could not be turned into a pair (an id that is not in the
  project, "none of these" with nothing written, a task whose item is gone...): ``problem`` (a
  kind), ``message`` (for the team) and ``given`` (what the annotator entered, kept whole).
  ``xmodal status`` lists them and the task is flagged in Label Studio; a later UPDATED that names
  a pair replaces the record;
- ``state="deleted"``: a tombstone. Label Studio never reuses an annotation id and cannot
  undelete, so a tombstone is final: a late or replayed CREATED/UPDATED does not resurrect it.

Deletions of ids never seen (an ANNOTATIONS_DELETED or TASKS_DELETED that arrives before the
CREATED, or names ids that never existed) are not written into the hash: they go to the sorted
set ``P:{project}:deleted:recent`` (``a:<annotation id>``, ``t:<task id>``, scored by time), which
keeps the newest :func:`recent_deletes_max` (``$XMODAL_RECENT_DELETES``, default 10,000) for at
most :func:`recent_deletes_s` (``$XMODAL_RECENT_DELETES_S``, default one day): a late CREATED
within that window is still refused, and 100,000 unknown ids cost a bounded set instead of
100,000 tombstones. A task id that was known (its annotations, or the task registry) goes into the
set ``P:{project}:tasks:deleted`` for good. ``P:{project}:pairs:by_task`` (task id -> its live
annotation ids) lets TASKS_DELETED visit the annotations of its tasks only, not every record
(0.69 s of blocked Redis with 100,000 records).

Every write is one Lua script (atomic, so concurrent webhooks cannot interleave):

- idempotent: the same event posted twice stores one record and keeps the first ``received_at``
  (which is what the label->prediction latency is measured from); an UPDATED that names the same
  pair again (a review re-submitting the answer) only moves ``updated_at`` and is not a change;
- out-of-order safe: an event whose ``updated_at`` (Label Studio's clock, epoch seconds) is older
  than the stored one is ignored; a ``updated_at`` more than :data:`FUTURE_SLACK_S` after the
  event's receive time is clamped to the receive time (else it would freeze the annotation). Two
  different answers with the *same* ``updated_at`` have no order: the greater content wins,
  whichever arrives first, so repeating both settles on one (each repeat was a change and a
  rebuild);
- a task deleted in Label Studio takes no annotation: the write itself checks it, so a
  TASKS_DELETED racing an ANNOTATION_CREATED cannot leave a live pair on the deleted task
  (:class:`TaskDeleted`);
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

from xmodal import settings
from xmodal.redis_conn import pkey

RECENT_DELETES_MAX = 10_000
RECENT_DELETES_S = 86_400.0


def recent_deletes_max() -> int:
    """``$XMODAL_RECENT_DELETES`` (default 10,000): deletions of unseen ids remembered at most."""
    return max(1, settings.get("XMODAL_RECENT_DELETES"))


def recent_deletes_s() -> float:
    """``$XMODAL_RECENT_DELETES_S`` (default 86,400): how long they are remembered."""
    return settings.get("XMODAL_RECENT_DELETES_S")


# Whether a task was deleted in Label Studio (KEYS[3]: tasks:deleted, KEYS[5]: recent deletions),
# also used by the task registry's script.
TASK_DELETED_LUA = """
local function task_deleted(task)
  if not task or task == '' then return false end
  return redis.call('SISMEMBER', KEYS[3], task) == 1 or redis.call('ZSCORE', KEYS[5], 't:' .. task) ~= false
end
"""

# Lua shared by the scripts below. by_task values are ",a1,a2," (an id is found as ",a1,").
# KEYS of every script: 1 pairs, 2 changes, 3 deleted tasks, 4 by_task, 5 recent deletions
# (+ 6 the task registry for _DELETE_TASKS); ARGV starts with now, recent max, recent seconds.
_LIB = """
local function index_add(task, ann)
  if not task or task == '' then return end
  local cur = redis.call('HGET', KEYS[4], task) or ','
  if not string.find(cur, ',' .. ann .. ',', 1, true) then
    redis.call('HSET', KEYS[4], task, cur .. ann .. ',')
  end
end
local function index_remove(task, ann)
  if not task or task == '' then return end
  local cur = redis.call('HGET', KEYS[4], task)
  if not cur then return end
  local s, e = string.find(cur, ',' .. ann .. ',', 1, true)
  if not s then return end
  local rest = string.sub(cur, 1, s) .. string.sub(cur, e + 1)
  if rest == ',' then redis.call('HDEL', KEYS[4], task) else redis.call('HSET', KEYS[4], task, rest) end
end
local function remember(member)
  local now = tonumber(ARGV[1])
  redis.call('ZADD', KEYS[5], now, member)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[3]))
  local over = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[2])
  if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[5], 0, over - 1) end
end
local function task_of(c)   -- a record's task id as the index writes it (JSON null: none)
  if type(c['task_id']) ~= 'number' then return nil end
  return string.format('%.0f', c['task_id'])
end
""" + TASK_DELETED_LUA

# ARGV: now, recent max, recent s, annotation id, record, updated_at, digest, content, state, task id
# returns: stored | same | stale | tombstoned | task_deleted
# "same" also when only updated_at moved (a review re-submitting the answer): the newer time is
# kept (so an older event arriving later stays stale) with the first received_at, and the change
# counter is not incremented, so no rebuild is asked for. received_at is spliced in as the stored
# text: cjson would re-encode the epoch floats with 14 digits.
_PUT = _LIB + """
local id, task = ARGV[4], ARGV[10]
if task_deleted(task) then return 'task_deleted' end
if redis.call('ZSCORE', KEYS[5], 'a:' .. id) then return 'tombstoned' end
local cur = redis.call('HGET', KEYS[1], id)
local was_pair = false
if cur then
  local c = cjson.decode(cur)
  if c['state'] == 'deleted' then return 'tombstoned' end
  if c['digest'] == ARGV[7] then return 'same' end
  local old_t, new_t = tonumber(c['updated_at']), tonumber(ARGV[6])
  if old_t > new_t then return 'stale' end
  if c['content'] == ARGV[8] then
    local first = string.match(cur, '"received_at": ([^,}]+)')
    local rec = ARGV[5]
    if first then rec = string.gsub(rec, '"received_at": [^,}]+', '"received_at": ' .. first, 1) end
    redis.call('HSET', KEYS[1], id, rec)
    return 'same'
  end
  if old_t == new_t and c['content'] > ARGV[8] then return 'stale' end
  was_pair = c['state'] == 'pair'
  if task_of(c) ~= task then index_remove(task_of(c), id) end
end
redis.call('HSET', KEYS[1], id, ARGV[5])
index_add(task, id)
if was_pair or ARGV[9] == 'pair' then redis.call('INCR', KEYS[2]) end
return 'stored'
"""

# ARGV: now, recent max, recent s, annotation id, tombstone record
# returns: deleted | already | absent
_DELETE = _LIB + """
local id = ARGV[4]
local cur = redis.call('HGET', KEYS[1], id)
if not cur then
  if redis.call('ZSCORE', KEYS[5], 'a:' .. id) then return 'already' end
  remember('a:' .. id)
  return 'absent'
end
local c = cjson.decode(cur)
if c['state'] == 'deleted' then return 'already' end
redis.call('HSET', KEYS[1], id, ARGV[5])
index_remove(task_of(c), id)
if c['state'] == 'pair' then redis.call('INCR', KEYS[2]) end
return 'deleted'
"""

# ARGV: now, recent max, recent s, task ids...
# tombstone every live annotation of the given tasks; returns the annotation ids. The by_task
# index is built once from the records when a store written before it existed has none
# (KEYS[7]: the marker that it is complete).
_DELETE_TASKS = _LIB + """
if redis.call('EXISTS', KEYS[7]) == 0 then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local c = cjson.decode(all[i + 1])
    if c['state'] ~= 'deleted' then index_add(task_of(c), all[i]) end
  end
  redis.call('SET', KEYS[7], '1')
end
local gone = {}
local changed = false
for i = 4, #ARGV do
  local task = ARGV[i]
  local anns = redis.call('HGET', KEYS[4], task)
  if anns or redis.call('HEXISTS', KEYS[6], task) == 1 then
    redis.call('SADD', KEYS[3], task)
  elseif redis.call('SISMEMBER', KEYS[3], task) == 0 then
    remember('t:' .. task)
  end
  for id in string.gmatch(anns or '', '[^,]+') do
    local raw = redis.call('HGET', KEYS[1], id)
    if raw then
      local c = cjson.decode(raw)
      if c['state'] ~= 'deleted' then
        if c['state'] == 'pair' then changed = true end
        c['state'] = 'deleted'
        c['deleted_at'] = tonumber(ARGV[1])
        c['reason'] = 'task deleted'
        redis.call('HSET', KEYS[1], id, cjson.encode(c))
        table.insert(gone, id)
      end
    end
  end
  redis.call('HDEL', KEYS[4], task)
end
if changed then redis.call('INCR', KEYS[2]) end
return gone
"""


class TaskDeleted(Exception):
    """The annotation's task was deleted in Label Studio: nothing of it is stored."""

    def __init__(self, task_id):
        super().__init__(f"task {task_id} was deleted in Label Studio")
        self.task_id = task_id


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
    digest = hashlib.sha256(extra.encode("utf-8", "surrogatepass")).hexdigest() if extra is not None else ""
    tail = "" if extra is None else "|" + digest[:16]
    return f"{state}|{task_id}|{image_id}|{text_id}{tail}"


class PairStore:
    """Reference pairs of one project, keyed by Label Studio annotation id."""

    def __init__(self, redis_client: redis.Redis, project: str):
        self.redis = redis_client
        self.project = project
        self.key = pkey(project, "pairs")
        self.changes_key = pkey(project, "pairs", "changes")
        self.deleted_tasks_key = pkey(project, "tasks", "deleted")
        self.recent_key = pkey(project, "deleted", "recent")
        # every script gets the same keys (see _LIB), then its own
        self._keys = [self.key, self.changes_key, self.deleted_tasks_key,
                      pkey(project, "pairs", "by_task"), self.recent_key]
        self._put = redis_client.register_script(_PUT)
        self._delete = redis_client.register_script(_DELETE)
        self._delete_tasks = redis_client.register_script(_DELETE_TASKS)

    def _common_args(self, now: float) -> list[str]:
        return [repr(now), str(recent_deletes_max()), repr(recent_deletes_s())]

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
        status = self._put(keys=self._keys,
                           args=[*self._common_args(now), str(int(annotation_id)), json.dumps(record),
                                 repr(updated), record["digest"], record["content"], state,
                                 "" if task_id is None else str(int(task_id))]).decode()
        if status == "task_deleted":
            raise TaskDeleted(task_id)
        return status

    def put(self, annotation_id: int, task_id: int, image_id: str, text_id: str | None,
            updated_at=None, received_at: float | None = None, *, description: str | None = None,
            source: str | None = None) -> str:
        """Store/replace the pair of an annotation: ``text_id``, or a ``description`` the
        annotator wrote (then ``text_id`` is None).

        Returns ``stored`` (changed), ``same`` (idempotent repeat), ``stale`` (older than the
        stored version, ignored) or ``tombstoned`` (the annotation was deleted, ignored); raises
        :class:`TaskDeleted` when its task was deleted.
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
        remembered among the recent deletions, so that a late CREATED cannot bring it back)."""
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
                self._delete(keys=self._keys,
                             args=[*self._common_args(at), str(a), json.dumps(record)], client=pipe)
            out += [r.decode() for r in pipe.execute()]
        return out

    def delete_tasks(self, task_ids, registry_key: str | None = None) -> list[int]:
        """Label Studio deleted these tasks (and their annotations): tombstone them. A task id
        known to the project (its annotations, or ``registry_key``'s task registry hash) is
        deleted for good, another one remembered among the recent deletions. In batches of 1000
        (one script each), so that no call blocks Redis for long."""
        task_ids = [str(int(t)) for t in task_ids]
        registry_key = registry_key or pkey(self.project, "tasks")
        gone: list[int] = []
        for start in range(0, len(task_ids), 1000):
            part = task_ids[start:start + 1000]
            gone += [int(g) for g in self._delete_tasks(
                keys=[*self._keys, registry_key, pkey(self.project, "pairs", "by_task", "complete")],
                args=[*self._common_args(time.time()), *part])]
        return gone

    def is_task_deleted(self, task_id) -> bool:
        t = str(int(task_id))
        pipe = self.redis.pipeline(transaction=False)
        pipe.sismember(self.deleted_tasks_key, t)
        pipe.zscore(self.recent_key, f"t:{t}")
        member, recent = pipe.execute()
        return bool(member) or recent is not None

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
