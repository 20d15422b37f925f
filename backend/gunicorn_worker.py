"""The gunicorn worker of ``xmodal serve``: gthread, handing a thread only requests that arrived
whole, within a deadline.

gthread hands a connection to a thread as soon as its first bytes arrive, and the thread then
reads the request head and body at the client's pace. Deadlines per read do not help against a
client that trickles: one byte every 2 s held a request for 48 s although the body deadline was
10 s (each read got its byte in time), and 200 such clients (more than the 2 x 64 threads) left
``/health`` and ``/webhook`` unanswered for as long as they kept trickling (an adversarial run;
earlier, 300 half-sent request heads did the same).

So this worker reads requests the way a buffering proxy does, in its main loop and without a
thread: a new or kept-alive connection sits in gunicorn's poller, whatever bytes arrive are
appended to its buffer, and only when the buffer holds a whole request (the head, and the body
its ``Content-Length`` or chunked framing announces) does the request go to a thread, which
parses it from the buffer and never waits for the client. A trickling client costs a buffer and a
socket, not a thread, so ``/health`` and webhooks keep their usual latency however many there are
(up to gunicorn's ``--worker-connections``, 1000 per worker). Limits, each answered from the main
loop with a JSON error and the connection closed:

- the whole request (head and body) within ``$XMODAL_BODY_TIMEOUT_S`` (default 10) of its
  connection (kept alive: of its turn), else **408** (a connection that sent nothing is closed);
- a body over ``$XMODAL_MAX_CONTENT_LENGTH`` (announced, or counted as chunks arrive): **413**;
- the buffers of one worker hold at most ``$XMODAL_BUFFER_BYTES`` (default 4 x the body limit):
  a request that would go past that is a **503** (retry), so many large slow bodies cannot take
  the worker's memory.

The thread phase keeps a kernel timeout on each read and write of a client socket
(``$XMODAL_SOCKET_TIMEOUT_S``, default 10: ``SO_RCVTIMEO`` / ``SO_SNDTIMEO``, which gthread's own
blocking mode does not clear), for a response that a client does not read. TLS and HTTP/2 are
not used by ``xmodal serve``; with either configured the worker reads as plain gthread does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import selectors
import socket
import struct
import time
from functools import partial

from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

from backend.jsonbody import max_content_length, too_large_message
from xmodal import settings

_HEAD_END = b"\r\n\r\n"
_EXPECT = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*(?=\r\n)", re.IGNORECASE)


def request_timeout() -> float:
    """``$XMODAL_BODY_TIMEOUT_S`` (default 10): the longest a whole request may take to arrive."""
    return settings.get("XMODAL_BODY_TIMEOUT_S")


def socket_timeout() -> float:
    """``$XMODAL_SOCKET_TIMEOUT_S`` (default 10): the longest one read or write of a client may wait."""
    return settings.get("XMODAL_SOCKET_TIMEOUT_S")


def buffer_budget() -> int:
    """``$XMODAL_BUFFER_BYTES`` (default 4 x the body limit): bytes one worker buffers at most."""
    return settings.get("XMODAL_BUFFER_BYTES") or 4 * max_content_length()


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class _StalledClient(logging.Filter):
    """gunicorn logs a client that hit the socket deadline as "Socket error processing request."
    with a traceback; one line per stalled client says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            record.msg, record.args = ("a client sent nothing for %.0f s in the middle of a request: "
                                       "connection closed ($XMODAL_SOCKET_TIMEOUT_S)", (socket_timeout(),))
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _Incoming:
    """The bytes of one request as they arrive, and whether they are a whole request yet."""

    def __init__(self, data: bytes, deadline: float):
        self.buf = bytearray(data)
        self.deadline = deadline
        self.body_start = None     # index after the head, once it is complete
        self.searched = 0          # the head's end is not before this index
        self.scan = 0              # chunked: where the next chunk-size line starts
        self.body = 0              # body bytes counted so far (chunked)
        self.length = None         # Content-Length, when announced
        self.chunked = False
        self.continued = False     # "100 Continue" sent

    def state(self, max_head: int, limit: int) -> str:
        """``partial``, ``whole`` (dispatch), ``too_large`` or ``head`` (a head gunicorn will
        refuse: dispatched for its 4xx)."""
        if self.body_start is None:
            end = self.buf.find(_HEAD_END, self.searched)
            if end < 0:   # next time, only where new bytes could complete it (a head sent byte by byte)
                self.searched = max(0, len(self.buf) - len(_HEAD_END) + 1)
                return "head" if len(self.buf) > max_head else "partial"
            self.body_start = end + len(_HEAD_END)
            framing = self._framing(bytes(self.buf[:end]))
            if framing != "ok":
                return framing
            self.scan = self.body_start
        if self.chunked:
            return self._chunks(limit)
        if self.length > limit:
            return "too_large"
        return "whole" if len(self.buf) - self.body_start >= self.length else "partial"

    def _framing(self, head: bytes) -> str:
        lengths, codings = [], []
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings.append(value.strip().lower())
        if codings and (lengths or codings[-1].split(b",")[-1].strip() != b"chunked"):
            return "head"                          # ambiguous or unsupported: gunicorn refuses it
        if len(set(lengths)) > 1 or (lengths and not lengths[0].isdigit()):
            return "head"
        self.chunked = bool(codings)
        self.length = int(lengths[0]) if lengths else 0
        return "ok"

    def _chunks(self, limit: int) -> str:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", self.scan)
            if eol < 0:
                return "head" if len(buf) - self.scan > 1024 else "partial"
            size_text = bytes(buf[self.scan:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                return "head"
            if size == 0:                          # the last chunk, then trailers to a blank line
                at = eol + 2
                while True:
                    end = buf.find(b"\r\n", at)
                    if end < 0:
                        return "partial"
                    if end == at:
                        return "whole"
                    at = end + 2
            self.body += size
            if self.body > limit:
                return "too_large"
            if len(buf) < eol + 2 + size + 2:
                return "partial"
            self.scan = eol + 2 + size + 2

    def ask_for_body(self, sock) -> int:
        """A client that sent ``Expect: 100-continue`` waits for this before its body; the
        header then goes (gunicorn would send a second "100 Continue" to a client that already
        sent everything). Returns how many bytes the buffer lost."""
        if self.continued or self.body_start is None:
            return 0
        head = bytes(self.buf[:self.body_start])
        self.continued = True
        if not _EXPECT.search(head):
            return 0
        stripped = _EXPECT.sub(b"", head)
        self.buf[:self.body_start] = stripped
        self.scan -= len(head) - len(stripped)
        self.body_start = len(stripped)
        with contextlib.suppress(OSError):
            sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return len(head) - len(stripped)


def _answer(sock, status: str, message: str) -> None:
    """A short JSON error, sent without blocking (what does not fit is dropped), then closed."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(head + body)


class DeadlineThreadWorker(ThreadWorker):
    """``gthread`` that buffers whole requests in its main loop (see the module doc)."""

    def init_process(self):
        logging.getLogger("gunicorn.error").addFilter(_StalledClient())
        self.incoming: dict = {}        # connection -> _Incoming
        self.buffered = 0               # bytes held in them
        cfg = self.cfg
        field = (cfg.limit_request_field_size or 8190) + 2
        self.max_head = max(65536, (cfg.limit_request_line or 8190) + 4
                            + (cfg.limit_request_fields or 100) * field)
        super().init_process()

    def _buffering(self, conn) -> bool:
        return not self.cfg.is_ssl and not negotiation.prior_knowledge_allowed(self.cfg, conn.client)

    # -- a request arrives (main loop) ---------------------------------------------------------
    def enqueue_req(self, conn):
        """Every path gthread takes to a thread comes here: accepted, kept alive and readable
        again, or with the next request already read ahead. Buffer first, then dispatch."""
        if getattr(conn, "x_whole", False) or not self._buffering(conn):
            conn.x_whole = False
            timeval = _timeval(socket_timeout())
            with contextlib.suppress(OSError):   # a socket closed meanwhile: gunicorn handles that
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            super().enqueue_req(conn)
            return
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        self.incoming[conn] = _Incoming(ahead, time.monotonic() + request_timeout())
        self.buffered += len(ahead)
        conn.sock.setblocking(False)
        if not self._progress(conn):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _readable(self, conn, _sock):
        incoming = self.incoming.get(conn)
        if incoming is None:
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:                                    # the client went away
            self._drop(conn)
            return
        if self.buffered + len(data) > buffer_budget():
            self._drop(conn, "503 Service Unavailable", "the backend is receiving too many large "
                       "requests at once; retry in a few seconds (XMODAL_BUFFER_BYTES)")
            return
        incoming.buf += data
        self.buffered += len(data)
        self._progress(conn)

    def _progress(self, conn) -> bool:
        """Dispatch, refuse, or keep waiting; True when the connection left the buffering."""
        incoming = self.incoming[conn]
        state = incoming.state(self.max_head, max_content_length())
        if state == "too_large":
            self._drop(conn, "413 Payload Too Large", too_large_message(max_content_length()))
            return True
        if state == "partial":
            self.buffered -= incoming.ask_for_body(conn.sock)
            return False
        self._forget(conn)                              # whole, or a head gunicorn answers itself
        if conn.parser is None:
            conn.x_ahead = bytes(incoming.buf)
        else:
            conn.parser.unreader.unread(bytes(incoming.buf))
        conn.data_ready = True
        conn.x_whole = True
        self.enqueue_req(conn)
        return True

    def _forget(self, conn) -> None:
        incoming = self.incoming.pop(conn, None)
        if incoming is not None:
            self.buffered -= len(incoming.buf)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn, status: str | None = None, message: str | None = None) -> None:
        self._forget(conn)
        if status is not None:
            _answer(conn.sock, status, message)
        self.nr_conns -= 1
        conn.close()

    # -- deadlines (main loop, at least once a second) ----------------------------------------
    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        now = time.monotonic()
        for conn, incoming in list(self.incoming.items()):
            if force or now >= incoming.deadline:
                if incoming.buf and not force:
                    self._drop(conn, "408 Request Timeout",
                               f"the request did not arrive whole within {request_timeout():g} s "
                               "(XMODAL_BODY_TIMEOUT_S)")
                else:
                    self._drop(conn)

    # -- in the thread -----------------------------------------------------------------------
    def handle(self, conn):
        ahead = conn.__dict__.pop("x_ahead", None)
        if ahead is not None:   # a new connection: its parser is made here, as gthread does it
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(ahead)
        return super().handle(conn)
