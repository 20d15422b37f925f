"""The gunicorn worker of ``xmodal serve``: gthread, with a deadline on every read and write of a
client's socket.

gthread hands a connection to a thread once its first bytes arrive, and the thread then reads
the request head with no time limit: 300 clients that each sent half a head and stopped held
every thread, and ``/health`` went unanswered for as long as they stayed (found by a fuzzing
run). The body already has its deadline (``$XMODAL_BODY_TIMEOUT_S``, :mod:`backend.jsonbody`);
this worker sets ``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` on each client socket, so any single read or
write that waits longer than ``$XMODAL_SOCKET_TIMEOUT_S`` (default 10) fails and the connection is
closed. Python's own socket timeouts would not do: gthread puts its sockets back in blocking
mode before every request, which clears them; the kernel's do not go away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct

from gunicorn.workers.gthread import ThreadWorker


def socket_timeout() -> float:
    """``$XMODAL_SOCKET_TIMEOUT_S`` (default 10): the longest one read or write of a client may wait."""
    return max(0.1, float(os.environ.get("XMODAL_SOCKET_TIMEOUT_S") or 10))


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class _StalledClient(logging.Filter):
    """gunicorn logs a client that hit the deadline as "Socket error processing request." with a
    traceback; one line per stalled client says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            record.msg, record.args = ("a client sent nothing for %.0f s in the middle of a request: "
                                       "connection closed ($XMODAL_SOCKET_TIMEOUT_S)", (socket_timeout(),))
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class DeadlineThreadWorker(ThreadWorker):
    """``gthread`` whose client sockets time out (see the module doc)."""

    def init_process(self):
        logging.getLogger("gunicorn.error").addFilter(_StalledClient())
        super().init_process()

    def enqueue_req(self, conn):
        timeval = _timeval(socket_timeout())
        with contextlib.suppress(OSError):   # a socket closed meanwhile: gunicorn handles that
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        super().enqueue_req(conn)
