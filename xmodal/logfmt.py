"""``key=value`` log lines: every line of the backend and the workers names its project and job."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from xmodal import settings

PROJECT_LOGGERS = ("workers", "xmodal", "backend")


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: a NUL cuts a line short
# in many tools, a \r rewrites it on a terminal, and a \n or \u2028 starts a line of the caller's
# choosing (event=... forged into the log). Values come from requests, so none goes out raw.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _fmt(value) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or _CONTROL.search(text):
        text = '"' + _CONTROL.sub(_escape, text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    return text


def kv(event: str, **fields) -> str:
    """``kv("rebuild.done", project="p", job="j", ms=12.5)`` -> ``event=rebuild.done project=p ...``;
    None values are left out."""
    parts = [f"event={event}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def setup_worker_logging() -> None:
    """Show the project's log lines in an RQ worker: ``rq worker`` configures only rq's own logger,
    so the rebuild's ``event=rebuild.done project=... job=...`` lines were dropped. Level from
    ``$XMODAL_LOG_LEVEL`` (default INFO); idempotent."""
    level = getattr(logging, settings.get("XMODAL_LOG_LEVEL"), logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(getattr(h, "_xmodal", False) for h in logger.handlers):
            handler._xmodal = True
            logger.addHandler(handler)
        logger.propagate = False


Say = Callable[[str], None]   # a progress line for the person running a command


def quiet(_: str) -> None:
    """A :data:`Say` that prints nothing."""
